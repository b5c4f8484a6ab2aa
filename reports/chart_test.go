// The charts scale any series onto the plot: tick and coordinate arithmetic
// is checked on table cases, and whole charts are built from all-zero, one,
// huge, non-finite and early samples and their coordinates checked to lie in
// the plot.
package reports

import (
	"math"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestNiceTicks(t *testing.T) {
	for _, tc := range []struct {
		lo, hi   float64
		from, to float64
		step     float64
	}{
		{0, 0, 0, 1, 0.2},
		{0, 7.3, 0, 8, 2},
		{0, 1, 0, 1, 0.2},
		{0, 250, 0, 250, 50},
		{-3, 9, -5, 10, 5},
		{-3, 7, -4, 8, 2},
		{0, 1e15, 0, 1e15, 2e14},
		{0, 0.0042, 0, 0.005, 0.001},
		{5, 5, 0, 6, 2},
	} {
		ticks, from, to := niceTicks(tc.lo, tc.hi, 5)
		require.InDelta(t, tc.from, from, 1e-9*math.Max(1, math.Abs(tc.to)), "%+v", tc)
		require.InDelta(t, tc.to, to, 1e-9*math.Max(1, math.Abs(tc.to)), "%+v", tc)
		require.InDelta(t, tc.step, ticks[1]-ticks[0], 1e-9*tc.step, "%+v", tc)
		require.LessOrEqual(t, from, tc.lo)
		require.GreaterOrEqual(t, to, tc.hi)
		require.LessOrEqual(t, len(ticks), 11)
	}
}

func TestNiceTicksDegenerate(t *testing.T) {
	for _, r := range [][2]float64{{math.NaN(), 1}, {0, math.Inf(1)}, {-math.MaxFloat64, math.MaxFloat64}} {
		ticks, from, to := niceTicks(r[0], r[1], 5)
		require.NotEmpty(t, ticks)
		require.True(t, finite(from) && finite(to) && to > from, "%v", r)
	}
}

func TestTimeTicks(t *testing.T) {
	for _, tc := range []struct {
		lo, hi float64
		step   float64
		first  string
	}{
		{0, 1, 0.2, "0.0s"},
		{0, 120, 15, "0:00"},
		{0, 8 * 3600, 3600, "0:00"},
		{0, 1800, 300, "0:00"},
		{-90, 600, 120, "0:00"},
		{-300, 600, 120, "-4:00"},
		{0, 3 * 86400, 43200, "0:00"},
		{0, 40 * 86400, 8 * 86400, "0:00"},
	} {
		ticks, step := timeTicks(tc.lo, tc.hi, 8)
		require.Equal(t, tc.step, step, "%+v", tc)
		require.LessOrEqual(t, len(ticks), 9)
		require.GreaterOrEqual(t, len(ticks), 2)
		for i := 1; i < len(ticks); i++ {
			require.Greater(t, ticks[i], ticks[i-1])
		}
		require.GreaterOrEqual(t, ticks[0], tc.lo)
		require.LessOrEqual(t, ticks[len(ticks)-1], tc.hi+1e-6)
		require.Equal(t, tc.first, formatOffset(ticks[0], step, tc.hi-tc.lo), "%+v", tc)
	}
	require.Equal(t, "1:05", formatOffset(3900, 300, 7200))
	require.Equal(t, "1:05:07", formatOffset(3907, 30, 7200))
	require.Equal(t, "2:05", formatOffset(125, 15, 600))
	require.Equal(t, "-1:30", formatOffset(-90, 30, 600))
	require.Equal(t, "0.4s", formatOffset(0.4, 0.2, 1))
}

func TestFormatTick(t *testing.T) {
	require.Equal(t, "0", formatTick(0, []float64{0, 0.2}))
	require.Equal(t, "0.2", formatTick(0.2, []float64{0, 0.2}))
	require.Equal(t, "0.005", formatTick(0.005, []float64{0, 0.001}))
	require.Equal(t, "250", formatTick(250, []float64{0, 50}))
	require.Equal(t, "2e+14", formatTick(2e14, []float64{0, 2e14}))
}

var coordRE = regexp.MustCompile(`-?[0-9]+(\.[0-9]+)?`)

// requireInPlot checks every coordinate of every series lies in the plot.
func requireInPlot(t *testing.T, v chartView) {
	t.Helper()
	for _, s := range v.Series {
		nums := coordRE.FindAllString(s.D, -1)
		require.Zero(t, len(nums)%2, s.D)
		for i := 0; i < len(nums); i += 2 {
			x, err := strconv.ParseFloat(nums[i], 64)
			require.NoError(t, err)
			y, err := strconv.ParseFloat(nums[i+1], 64)
			require.NoError(t, err)
			require.True(t, x >= chartLeft-0.05 && x <= chartLeft+plotWidth+0.05, "x %v of %s", x, s.Name)
			require.True(t, y >= chartTop-0.05 && y <= chartTop+plotHeight+0.05, "y %v of %s", y, s.Name)
		}
	}
	for _, tk := range append(append([]tickView{}, v.XTicks...), v.YTicks...) {
		p, err := strconv.ParseFloat(tk.Pos, 64)
		require.NoError(t, err)
		require.False(t, math.IsNaN(p) || math.IsInf(p, 0))
		require.NotContains(t, tk.Label, "NaN")
		require.NotContains(t, tk.Label, "Inf")
	}
}

func chartsOf(t *testing.T, run *Run) []chartView {
	t.Helper()
	charts, _ := buildCharts(run, runOrigin(run), kindColors(run.Faults))
	require.Len(t, charts, 2)
	for _, c := range charts {
		requireInPlot(t, c)
	}
	return charts
}

func samplesAt(start time.Time, n int, f func(i int) Sample) []Sample {
	out := make([]Sample, n)
	for i := range out {
		out[i] = f(i)
		out[i].T = start.Add(time.Duration(i) * time.Second)
	}
	return out
}

func TestChartAllZeroSamples(t *testing.T) {
	run := &Run{Start: fixtureStart, End: fixtureStart.Add(time.Minute)}
	run.Samples = samplesAt(fixtureStart, 60, func(int) Sample { return Sample{} })
	c := chartsOf(t, run)[0]
	require.False(t, c.Empty)
	require.Equal(t, "B/s", c.Unit)
	require.Equal(t, "1.0", c.YTicks[len(c.YTicks)-1].Label, "an all-zero series gets a 0..1 scale")
	require.Equal(t, 1, strings.Count(c.Series[0].D, "M"), "one unbroken line")
	bottom := px(chartTop + plotHeight)
	require.Contains(t, c.Series[0].D, " "+bottom, "zero is drawn on the x axis")
}

func TestChartOneSample(t *testing.T) {
	run := &Run{Samples: []Sample{{T: fixtureStart, WriteBytesPerSec: 5e6, LatencyP99: 3 * time.Millisecond}}}
	charts := chartsOf(t, run)
	require.Len(t, charts[0].Series[0].Dots, 1, "a single point is drawn as a dot")
	require.Equal(t, "MB/s", charts[0].Unit)
	require.Equal(t, "ms", charts[1].Unit)
	require.Equal(t, "time since start (seconds)", charts[0].XTitle, "a zero span becomes one second")
}

func TestChartHugeValues(t *testing.T) {
	run := &Run{Start: fixtureStart, End: fixtureStart.Add(10 * time.Second)}
	run.Samples = samplesAt(fixtureStart, 10, func(i int) Sample {
		return Sample{WriteBytesPerSec: 1e18 * float64(i), ReadBytesPerSec: 1, LatencyP99: time.Duration(math.MaxInt64), LatencyP50: time.Hour}
	})
	charts := chartsOf(t, run)
	require.Equal(t, "GB/s", charts[0].Unit)
	require.Equal(t, "s", charts[1].Unit)
}

func TestChartNonFiniteValuesAreGaps(t *testing.T) {
	run := &Run{Start: fixtureStart, End: fixtureStart.Add(10 * time.Second)}
	run.Samples = samplesAt(fixtureStart, 10, func(i int) Sample {
		v := 1e6
		switch i {
		case 4:
			v = math.NaN()
		case 7:
			v = math.Inf(1)
		}
		return Sample{WriteBytesPerSec: v}
	})
	c := chartsOf(t, run)[0]
	require.Equal(t, 3, strings.Count(c.Series[0].D, "M"), "two gaps split the line in three")
	require.Len(t, c.Series[0].Dots, 8)
}

func TestChartSamplesBeforeStartAndFirstFault(t *testing.T) {
	run := &Run{Start: fixtureStart, End: fixtureStart.Add(10 * time.Minute)}
	run.Samples = samplesAt(fixtureStart.Add(-2*time.Minute), 12*60, func(int) Sample { return Sample{WriteBytesPerSec: 1e8} })
	run.Faults = []Fault{
		{Kind: "kill-node", Start: fixtureStart.Add(5 * time.Minute), End: fixtureStart.Add(6 * time.Minute), Recovered: fixtureStart.Add(7 * time.Minute)},
		{Kind: "cut-link", Start: fixtureStart.Add(-time.Hour), End: fixtureStart.Add(-59 * time.Minute)},
		{Kind: "stop-node", Start: fixtureStart.Add(9 * time.Minute)}, // lasts to the end
	}
	c := chartsOf(t, run)[0]
	require.True(t, strings.HasPrefix(c.XTicks[0].Label, "-"), "time before the start has negative offsets: %v", c.XTicks[0])
	require.Len(t, c.Bands, 3)
	for _, b := range c.Bands {
		x, _ := strconv.ParseFloat(b.X, 64)
		w, _ := strconv.ParseFloat(b.W, 64)
		require.GreaterOrEqual(t, x, float64(chartLeft)-0.05)
		require.LessOrEqual(t, x+w, float64(chartLeft+plotWidth)+0.05)
		require.GreaterOrEqual(t, w, 1.0)
	}
	require.NotEmpty(t, c.Bands[0].RecW, "the recovery tail is drawn")
	require.Empty(t, c.Bands[1].RecW)
	require.Equal(t, float64(chartLeft+plotWidth), mustFloat(t, c.Bands[2].X)+mustFloat(t, c.Bands[2].W), "an open fault reaches the right edge")
	require.Equal(t, "kill-node", c.Bands[0].Kind)
	require.NotEmpty(t, c.Bands[0].LabelX)
}

func mustFloat(t *testing.T, s string) float64 {
	t.Helper()
	f, err := strconv.ParseFloat(s, 64)
	require.NoError(t, err)
	return f
}

func TestChartLabelsDoNotOverlap(t *testing.T) {
	run := &Run{Start: fixtureStart, End: fixtureStart.Add(time.Hour)}
	for i := 0; i < 50; i++ {
		s := fixtureStart.Add(time.Duration(i) * 10 * time.Second)
		run.Faults = append(run.Faults, Fault{Kind: "delay-link", Start: s, End: s.Add(5 * time.Second)})
	}
	c := chartsOf(t, run)[0]
	require.Len(t, c.Bands, 50, "every fault has a band")
	labelled, end := 0, math.Inf(-1)
	for _, b := range c.Bands {
		if b.LabelX == "" {
			continue
		}
		labelled++
		x := mustFloat(t, b.LabelX)
		require.GreaterOrEqual(t, x, end)
		end = x + float64(len(b.Kind))*labelCharPx
	}
	require.Greater(t, labelled, 0)
	require.Less(t, labelled, 50)
}

func TestDownsample(t *testing.T) {
	in := samplesAt(fixtureStart, 10_000, func(i int) Sample {
		return Sample{WriteBytesPerSec: 100, LatencyP99: time.Duration(i%97) * time.Millisecond, LatencyMax: time.Second}
	})
	in[5000].LatencyP99 = time.Hour
	in[5001].WriteBytesPerSec = math.NaN()
	out := Downsample(in, 300)
	require.LessOrEqual(t, len(out), 300)
	require.Greater(t, len(out), 290)
	var maxP99 time.Duration
	for i, s := range out {
		require.InDelta(t, 100, s.WriteBytesPerSec, 1e-9, "a NaN is left out of the mean")
		maxP99 = max(maxP99, s.LatencyP99)
		if i > 0 {
			require.True(t, s.T.After(out[i-1].T))
		}
		require.Equal(t, time.Second, s.LatencyMax)
	}
	require.Equal(t, time.Hour, maxP99, "a p99 spike survives downsampling")
	require.Equal(t, 100.0, in[0].WriteBytesPerSec, "the input is untouched")
}

func TestDownsampleSmallAndUnsorted(t *testing.T) {
	require.Nil(t, Downsample(nil, 10))
	require.Nil(t, Downsample([]Sample{{}}, 0))
	in := []Sample{{T: fixtureStart.Add(2 * time.Second)}, {T: fixtureStart}, {T: fixtureStart.Add(time.Second)}}
	out := Downsample(in, 10)
	require.Len(t, out, 3)
	require.Equal(t, fixtureStart, out[0].T)
	require.Equal(t, fixtureStart.Add(2*time.Second), in[0].T, "the input is untouched")
	same := []Sample{{T: fixtureStart, OpsPerSec: 1}, {T: fixtureStart, OpsPerSec: 3}, {T: fixtureStart, OpsPerSec: 5}}
	one := Downsample(same, 2)
	require.Len(t, one, 1, "samples at one instant merge into one point")
	require.Equal(t, 3.0, one[0].OpsPerSec)
}
