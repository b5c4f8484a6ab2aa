package reports

import (
	"fmt"
	"math"
	"strings"
)

// Chart geometry in SVG user units (the viewBox; the page scales it).
const (
	chartWidth   = 960
	chartHeight  = 280
	chartLeft    = 70 // room for y tick labels and the unit
	chartRight   = 16
	chartTop     = 30 // room for the legend and band labels
	chartBottom  = 44 // room for x tick labels and the axis title
	plotWidth    = chartWidth - chartLeft - chartRight
	plotHeight   = chartHeight - chartTop - chartBottom
	labelCharPx  = 6.5 // approximate width of one 11px label character
	dotsMaxCount = 60  // series this short also get a dot per point
	// absurdValue bounds what the chart draws: beyond it (or NaN/Inf) a
	// value is a gap, so the scale arithmetic stays finite.
	absurdValue = 1e300
)

// ChartPointsMax is how many points a chart draws at most; longer series are
// downsampled (see [Downsample]). About two pixels per point.
const ChartPointsMax = 480

// FaultBandsMax bounds the bands drawn on a chart; faults past it are listed
// in the table but not shaded.
const FaultBandsMax = 2000

// chartSpec is what a chart shows, in data units: x in seconds since the
// run's origin, y already scaled to the display unit.
type chartSpec struct {
	id         string // unique per page, used for the clip path
	title      string
	unit       string // y axis unit, such as "MB/s"
	xmin, xmax float64
	series     []seriesSpec
	bands      []bandSpec
}

type seriesSpec struct {
	name, color string
	x, y        []float64
}

// bandSpec is one fault window [x0, x1] with its recovery tail [x1, rec]
// (rec NaN when unknown).
type bandSpec struct {
	index       int // index of the fault in Run.Faults
	x0, x1, rec float64
	kind, color string
	title       string // tooltip
}

// chartView is a chart ready for the template: every number is already a
// string in SVG user units.
type chartView struct {
	ID, Title, Unit string
	Width, Height   int
	Plot            rect
	XTicks, YTicks  []tickView
	XTitle          string
	Bands           []bandView
	Series          []seriesView
	Legend          []legendView
	Empty           bool

	// Derived positions the template needs.
	PlotRight, PlotBottom, TickLabelX, XTickEnd, XLabelY string
	XTitleX, XTitleY, CenterX, CenterY                   string
}

type rect struct{ X, Y, W, H string }

type tickView struct {
	Pos, Label string // Pos is x for x ticks and y for y ticks
}

type bandView struct {
	Index          int
	X, W           string
	RecX, RecW     string // recovery tail; RecW empty when none
	Color, Kind    string
	Title          string
	LabelX, LabelY string // LabelX empty when the label does not fit
}

type seriesView struct {
	Name, Color, D string
	Dots           []pointView
}

type pointView struct{ X, Y string }

type legendView struct {
	Name, Color string
	X, TextX    string
}

func buildChart(spec chartSpec) chartView {
	v := chartView{
		ID: spec.id, Title: spec.title, Unit: spec.unit,
		Width: chartWidth, Height: chartHeight,
		Plot:      rect{px(chartLeft), px(chartTop), px(plotWidth), px(plotHeight)},
		PlotRight: px(chartLeft + plotWidth), PlotBottom: px(chartTop + plotHeight),
		TickLabelX: px(chartLeft - 6), XTickEnd: px(chartTop + plotHeight + 5),
		XLabelY: px(chartTop + plotHeight + 17), XTitleX: px(chartLeft + plotWidth/2),
		XTitleY: px(chartHeight - 6), CenterX: px(chartLeft + plotWidth/2), CenterY: px(chartTop + plotHeight/2),
	}
	xmin, xmax := spec.xmin, spec.xmax
	if !finite(xmin) || !finite(xmax) || xmax <= xmin {
		xmin, xmax = 0, 1
	}
	xs := func(x float64) float64 { return chartLeft + (x-xmin)/(xmax-xmin)*plotWidth }

	ymin, ymax, ok := yRange(spec.series)
	v.Empty = !ok
	yTicks, ylo, yhi := niceTicks(ymin, ymax, 5)
	ys := func(y float64) float64 { return chartTop + (yhi-y)/(yhi-ylo)*plotHeight }

	for _, t := range yTicks {
		v.YTicks = append(v.YTicks, tickView{px(ys(t)), formatTick(t, yTicks)})
	}
	xt, xstep := timeTicks(xmin, xmax, 8)
	for _, t := range xt {
		v.XTicks = append(v.XTicks, tickView{px(xs(t)), formatOffset(t, xstep, xmax-xmin)})
	}
	v.XTitle = "time since start (" + offsetFormatName(xstep, xmax-xmin) + ")"

	labelEnd := math.Inf(-1)
	for i, b := range spec.bands {
		if i == FaultBandsMax {
			break
		}
		x0, x1 := clamp(b.x0, xmin, xmax), clamp(b.x1, xmin, xmax)
		if !finite(b.x0) || !finite(b.x1) || b.x1 < xmin || b.x0 > xmax {
			continue
		}
		bv := bandView{
			Index: b.index, X: px(xs(x0)), W: px(math.Max(xs(x1)-xs(x0), 1)),
			Color: b.color, Kind: b.kind, Title: b.title,
		}
		if finite(b.rec) && b.rec > b.x1 {
			r0, r1 := xs(x1), xs(clamp(b.rec, xmin, xmax))
			if r1 > r0 {
				bv.RecX, bv.RecW = px(r0), px(r1-r0)
			}
		}
		if lx := xs(x0) + 2; lx >= labelEnd+4 && lx < chartLeft+plotWidth-20 {
			bv.LabelX, bv.LabelY = px(lx), px(chartTop+11)
			labelEnd = lx + float64(len(b.kind))*labelCharPx
		}
		v.Bands = append(v.Bands, bv)
	}

	legendX := float64(chartLeft + plotWidth)
	for i := len(spec.series) - 1; i >= 0; i-- {
		s := spec.series[i]
		legendX -= 24 + float64(len(s.name))*labelCharPx
		v.Legend = append([]legendView{{s.name, s.color, px(legendX), px(legendX + 18)}}, v.Legend...)
		v.Series = append([]seriesView{seriesPath(s, xs, ys)}, v.Series...)
	}
	return v
}

// seriesPath draws a series as one path; a non-finite or absurd value
// breaks the line.
func seriesPath(s seriesSpec, xs, ys func(float64) float64) seriesView {
	var d strings.Builder
	sv := seriesView{Name: s.name, Color: s.color}
	pen := false
	n := min(len(s.x), len(s.y))
	for i := 0; i < n; i++ {
		if !drawable(s.x[i]) || !drawable(s.y[i]) {
			pen = false
			continue
		}
		x, y := px(xs(s.x[i])), px(ys(s.y[i]))
		if pen {
			d.WriteString("L")
		} else {
			d.WriteString("M")
			pen = true
		}
		d.WriteString(x + " " + y + " ")
		if n <= dotsMaxCount {
			sv.Dots = append(sv.Dots, pointView{x, y})
		}
	}
	sv.D = strings.TrimSpace(d.String())
	return sv
}

func drawable(v float64) bool { return finite(v) && math.Abs(v) <= absurdValue }

// yRange is the range of the drawable values, including 0; ok is false when
// there is none.
func yRange(series []seriesSpec) (lo, hi float64, ok bool) {
	for _, s := range series {
		for _, y := range s.y {
			if !drawable(y) {
				continue
			}
			ok = true
			lo, hi = math.Min(lo, y), math.Max(hi, y)
		}
	}
	return lo, hi, ok
}

// niceTicks returns about n tick values at a 1, 2 or 5 times a power of ten
// step covering [lo, hi], and the covered range. An empty range [v, v]
// becomes [min(v,0), max(v,0)+1]; a non-finite one becomes [0, 1].
func niceTicks(lo, hi float64, n int) (ticks []float64, from, to float64) {
	if !finite(lo) {
		lo = 0
	}
	if !finite(hi) {
		hi = 0
	}
	if !finite(hi - lo) {
		lo, hi = 0, 1
	}
	if !(hi > lo) {
		lo, hi = math.Min(lo, 0), math.Max(lo, 0)+1
	}
	step := niceStep((hi - lo) / float64(n))
	from = math.Floor(lo/step) * step
	to = math.Ceil(hi/step) * step
	if !finite(from) || !finite(to) {
		return niceTicks(0, 1, n)
	}
	if to <= from {
		to = from + step
	}
	for i := 0; ; i++ {
		t := from + float64(i)*step
		if t > to+step/2 || i > 4*n {
			break
		}
		ticks = append(ticks, t)
	}
	return ticks, from, to
}

// niceStep rounds raw up to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if !(raw > 0) || !finite(raw) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= raw {
			return m * p
		}
	}
	return 10 * p
}

// formatTick prints a tick with as many decimals as the step needs.
func formatTick(v float64, ticks []float64) string {
	if v == 0 {
		return "0"
	}
	step := 1.0
	if len(ticks) > 1 {
		step = ticks[1] - ticks[0]
	}
	if math.Abs(v) >= 1e6 || step < 1e-3 {
		return fmt.Sprintf("%.3g", v)
	}
	decimals := 0
	if step < 1 {
		decimals = int(math.Ceil(-math.Log10(step) - 1e-9))
	}
	return fmt.Sprintf("%.*f", decimals, v)
}

// timeSteps are the tick steps, in seconds, that read well on a clock.
var timeSteps = []float64{
	0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30,
	60, 120, 300, 600, 900, 1800,
	3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400,
}

// timeTicks returns at most about n ticks over [lo, hi] seconds at a clock
// step, and the step.
func timeTicks(lo, hi float64, n int) ([]float64, float64) {
	span := hi - lo
	step := timeSteps[len(timeSteps)-1]
	for _, s := range timeSteps {
		if span/s <= float64(n) {
			step = s
			break
		}
	}
	for span/step > float64(n) { // longer than n days
		step *= 2
	}
	var ticks []float64
	for t := math.Ceil(lo/step) * step; t <= hi+step*1e-9; t += step {
		ticks = append(ticks, t)
	}
	return ticks, step
}

// formatOffset prints seconds since start as h:mm:ss, h:mm, m:ss or s.s
// depending on the span and the step.
func formatOffset(sec, step, span float64) string {
	sign := ""
	if sec < 0 {
		sign, sec = "-", -sec
	}
	if step < 1 {
		return fmt.Sprintf("%s%.1fs", sign, sec)
	}
	total := int64(math.Round(sec))
	h, m, s := total/3600, total/60%60, total%60
	switch {
	case span >= 3600 && step >= 60:
		return fmt.Sprintf("%s%d:%02d", sign, h, m)
	case span >= 3600:
		return fmt.Sprintf("%s%d:%02d:%02d", sign, h, m, s)
	default:
		return fmt.Sprintf("%s%d:%02d", sign, total/60, s)
	}
}

func offsetFormatName(step, span float64) string {
	switch {
	case step < 1:
		return "seconds"
	case span >= 3600 && step >= 60:
		return "h:mm"
	case span >= 3600:
		return "h:mm:ss"
	default:
		return "m:ss"
	}
}

func clamp(v, lo, hi float64) float64 { return math.Max(lo, math.Min(hi, v)) }

// px formats an SVG coordinate.
func px(v float64) string { return fmt.Sprintf("%.1f", v) }
