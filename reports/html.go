package reports

import (
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
)

// Bounds of the HTML tables: every failed row is kept, passing rows past
// the bound are left out and counted.
const (
	// CycleRowsMax bounds the cycles table: failed cycles plus the most
	// recent ones.
	CycleRowsMax = 1000
	// FaultRowsMax bounds the faults table (the first ones are kept).
	FaultRowsMax = 2000
	// FailureRowsMax bounds the failures listed in full.
	FailureRowsMax = 200
	// ExcerptMaxBytes bounds any one preformatted text (diagnosis, output).
	ExcerptMaxBytes = 16 << 10
)

//go:embed report.html.tmpl
var reportTemplateText string

var reportTemplate = template.Must(template.New("report").Parse(reportTemplateText))

// faultPalette colours fault kinds in order of first appearance.
var faultPalette = []string{
	"#f4a6a6", "#f7c98b", "#b9d98c", "#9fd3e0", "#c4b3e6", "#f2b5d4", "#d6c49a", "#a9c5f0",
}

const (
	colorWrite = "#1f6fd1"
	colorRead  = "#2e9d4f"
	colorP50   = "#6b4fbb"
	colorP99   = "#d1491f"
)

// WriteHTML renders the run as one self-contained HTML page: no script,
// font, stylesheet or image is fetched from anywhere.
func WriteHTML(w io.Writer, run *Run) error {
	if err := reportTemplate.Execute(w, buildPage(run)); err != nil {
		return fmt.Errorf("reports: render html for %q: %w", run.Scenario, err)
	}
	return nil
}

type pageView struct {
	Run                  *Run
	Result, ResultClass  string
	Started, Ended       string
	Duration             string
	Counters             []counterView
	Kinds                []legendView
	Charts               []chartView
	Faults               []faultRow
	FaultsOmitted        int
	PhaseNames           []string
	Cycles               []cycleRow
	CyclesOmitted        int
	Failures             []failureRow
	FailuresOmitted      int
	Resyncs              []resyncRow
	Checks               []checkRow
	ChecksFailed         int
	SampleCount, Plotted int
	SampleCountText      string
	FirstFailure         *failureRow
}

type counterView struct{ Label, Value, Class string }

type faultRow struct {
	Index                      int
	Kind, Color, Target        string
	At, Lasted, Recovery, Note string
	RecoveryClass              string
}

type cycleRow struct {
	Index      int
	Filesystem string
	Cells      []cellView
	Total      string
	Failed     bool
}

type cellView struct{ Text, Title, Class string }

type failureRow struct {
	Index              int
	Cycle              string // "cycle 7" or "run"
	Headline           string // first line of Message
	Phase, At, Message string
	Diagnosis, Output  string
	Bundle             string
}

type resyncRow struct {
	Member, Kind, At, Bytes, Duration, Rate string
}

type checkRow struct {
	Name, Message, Duration string
	Passed                  bool
}

func buildPage(run *Run) pageView {
	origin := runOrigin(run)
	p := pageView{
		Run:             run,
		Result:          run.Result.String(),
		ResultClass:     "r-" + run.Result.String(),
		Started:         formatWall(run.Start),
		Ended:           formatWall(run.End),
		Duration:        formatDuration(run.Duration()),
		SampleCount:     len(run.Samples),
		SampleCountText: humanize.Comma(int64(len(run.Samples))),
	}
	if run.Result > ResultAborted {
		p.ResultClass = "r-unknown"
	}
	if run.End.IsZero() && !run.Start.IsZero() {
		p.Ended = "still running"
	}

	failedPhases := 0
	for i := range run.Cycles {
		for j := range run.Cycles[i].Phases {
			if run.Cycles[i].Phases[j].Failed() {
				failedPhases++
			}
		}
	}
	for _, c := range run.Checks {
		if !c.Passed {
			p.ChecksFailed++
		}
	}
	c := run.Counters
	p.Counters = []counterView{
		{"cycles", humanize.Comma(c.Cycles), ""},
		{"written", humanize.Bytes(nonNeg(c.BytesWritten)), ""},
		{"verified", humanize.Bytes(nonNeg(c.BytesVerified)), ""},
		{"ops", humanize.Comma(c.Ops), ""},
		{"faults injected", humanize.Comma(c.FaultsInjected), ""},
		{"failed phases", humanize.Comma(int64(failedPhases)), failClass(failedPhases > 0)},
		{"failed checks", fmt.Sprintf("%d of %d", p.ChecksFailed, len(run.Checks)), failClass(p.ChecksFailed > 0)},
	}
	if c.CrashResyncBytes > 0 {
		p.Counters = append(p.Counters, counterView{"crash resync", humanize.IBytes(nonNeg(c.CrashResyncBytes)), ""})
	}
	if d := run.Duration(); d > 0 && c.BytesWritten > 0 {
		rate := float64(c.BytesWritten) / d.Seconds()
		p.Counters = append(p.Counters, counterView{"mean write rate", humanize.Bytes(uint64(rate)) + "/s", ""})
	}

	colors := kindColors(run.Faults)
	for _, k := range sortedKinds(run.Faults) {
		p.Kinds = append(p.Kinds, legendView{Name: k, Color: colors[k]})
	}
	p.Charts, p.Plotted = buildCharts(run, origin, colors)
	p.Faults, p.FaultsOmitted = faultRows(run, origin, colors)
	p.PhaseNames, p.Cycles, p.CyclesOmitted = cycleRows(run.Cycles)
	p.Failures, p.FailuresOmitted = failureRows(run, origin)
	if len(p.Failures) > 0 {
		p.FirstFailure = &p.Failures[0]
	}
	for _, r := range run.Resyncs {
		row := resyncRow{
			Member: r.Member, Kind: "bitmap", At: formatOffsetFrom(origin, r.Start),
			Bytes: humanize.Bytes(nonNeg(r.Bytes)), Duration: formatDuration(r.Duration),
		}
		if r.Full {
			row.Kind = "full"
		}
		if r.Duration > 0 {
			row.Rate = humanize.Bytes(uint64(float64(nonNeg(r.Bytes))/r.Duration.Seconds())) + "/s"
		}
		p.Resyncs = append(p.Resyncs, row)
	}
	for _, ch := range run.Checks {
		p.Checks = append(p.Checks, checkRow{ch.Name, excerpt(ch.Message), formatDuration(ch.Duration), ch.Passed})
	}
	return p
}

// runOrigin is time zero of the charts and offsets: the run's start, or the
// earliest time the run mentions.
func runOrigin(run *Run) time.Time {
	if !run.Start.IsZero() {
		return run.Start
	}
	var o time.Time
	early := func(t time.Time) {
		if !t.IsZero() && (o.IsZero() || t.Before(o)) {
			o = t
		}
	}
	for i := range run.Samples {
		early(run.Samples[i].T)
	}
	for i := range run.Faults {
		early(run.Faults[i].Start)
	}
	for i := range run.Cycles {
		for j := range run.Cycles[i].Phases {
			early(run.Cycles[i].Phases[j].Start)
		}
	}
	return o
}

func buildCharts(run *Run, origin time.Time, colors map[string]string) ([]chartView, int) {
	pts := Downsample(run.Samples, ChartPointsMax)
	off := func(t time.Time) float64 {
		if t.IsZero() {
			return math.NaN()
		}
		return t.Sub(origin).Seconds()
	}
	xmin, xmax := 0.0, run.Duration().Seconds()
	widen := func(x float64) {
		if finite(x) {
			xmin, xmax = math.Min(xmin, x), math.Max(xmax, x)
		}
	}
	x := make([]float64, len(pts))
	for i := range pts {
		x[i] = off(pts[i].T)
		widen(x[i])
	}
	for i := range run.Faults {
		widen(off(run.Faults[i].Start))
		widen(off(run.Faults[i].End))
	}
	if xmax-xmin < 1 {
		xmax = xmin + 1
	}

	var bands []bandSpec
	for i := range run.Faults {
		f := &run.Faults[i]
		x1 := off(f.End)
		if f.End.IsZero() {
			x1 = xmax
		}
		bands = append(bands, bandSpec{
			index: i, x0: off(f.Start), x1: x1, rec: off(f.Recovered),
			kind: f.Kind, color: colors[f.Kind], title: faultTitle(f, origin),
		})
	}

	var wmax, rmax, lmax float64
	for i := range pts {
		wmax = maxFinite(wmax, pts[i].WriteBytesPerSec)
		rmax = maxFinite(rmax, pts[i].ReadBytesPerSec)
		lmax = math.Max(lmax, pts[i].LatencyP99.Seconds())
		lmax = math.Max(lmax, pts[i].LatencyP50.Seconds())
	}
	rateUnit, rateDiv := rateScale(math.Max(wmax, rmax))
	latUnit, latMul := latencyScale(lmax)
	w, r := make([]float64, len(pts)), make([]float64, len(pts))
	p50, p99 := make([]float64, len(pts)), make([]float64, len(pts))
	for i := range pts {
		w[i] = pts[i].WriteBytesPerSec / rateDiv
		r[i] = pts[i].ReadBytesPerSec / rateDiv
		p50[i] = pts[i].LatencyP50.Seconds() * latMul
		p99[i] = pts[i].LatencyP99.Seconds() * latMul
	}
	return []chartView{
		buildChart(chartSpec{
			id: "throughput", title: "Throughput", unit: rateUnit, xmin: xmin, xmax: xmax, bands: bands,
			series: []seriesSpec{{"write", colorWrite, x, w}, {"read", colorRead, x, r}},
		}),
		buildChart(chartSpec{
			id: "latency", title: "Latency", unit: latUnit, xmin: xmin, xmax: xmax, bands: bands,
			series: []seriesSpec{{"p50", colorP50, x, p50}, {"p99", colorP99, x, p99}},
		}),
	}, len(pts)
}

func maxFinite(m, v float64) float64 {
	if drawable(v) {
		return math.Max(m, v)
	}
	return m
}

// rateScale picks the SI unit that keeps the largest rate readable.
func rateScale(maxBytesPerSec float64) (string, float64) {
	switch {
	case maxBytesPerSec >= 1e9:
		return "GB/s", 1e9
	case maxBytesPerSec >= 1e6:
		return "MB/s", 1e6
	case maxBytesPerSec >= 1e3:
		return "kB/s", 1e3
	}
	return "B/s", 1
}

// latencyScale picks µs, ms or s for the largest latency in seconds.
func latencyScale(maxSec float64) (string, float64) {
	switch {
	case maxSec >= 1:
		return "s", 1
	case maxSec >= 1e-3:
		return "ms", 1e3
	}
	return "µs", 1e6
}

func faultTitle(f *Fault, origin time.Time) string {
	var b strings.Builder
	b.WriteString(strings.TrimSpace(f.Kind + " " + f.Target))
	fmt.Fprintf(&b, "\nfrom %s", formatOffsetFrom(origin, f.Start))
	if !f.End.IsZero() {
		fmt.Fprintf(&b, " to %s", formatOffsetFrom(origin, f.End))
	} else {
		b.WriteString(" to the end")
	}
	if d, ok := f.Recovery(); ok {
		fmt.Fprintf(&b, "\nrecovered %s later", formatDuration(d))
	}
	if f.Note != "" {
		b.WriteString("\n" + f.Note)
	}
	return b.String()
}

func kindColors(faults []Fault) map[string]string {
	m := map[string]string{}
	for i := range faults {
		if _, ok := m[faults[i].Kind]; !ok {
			m[faults[i].Kind] = faultPalette[len(m)%len(faultPalette)]
		}
	}
	return m
}

func sortedKinds(faults []Fault) []string {
	var ks []string
	seen := map[string]bool{}
	for i := range faults {
		if k := faults[i].Kind; !seen[k] {
			seen[k] = true
			ks = append(ks, k)
		}
	}
	return ks
}

func faultRows(run *Run, origin time.Time, colors map[string]string) ([]faultRow, int) {
	n := min(len(run.Faults), FaultRowsMax)
	rows := make([]faultRow, 0, n)
	for i := range run.Faults[:n] {
		f := &run.Faults[i]
		row := faultRow{
			Index: i, Kind: f.Kind, Color: colors[f.Kind], Target: f.Target,
			At: formatOffsetFrom(origin, f.Start), Note: f.Note,
			Lasted: "to the end", Recovery: "not recorded", RecoveryClass: "warn",
		}
		if !f.End.IsZero() {
			row.Lasted = formatDuration(f.End.Sub(f.Start))
		}
		if d, ok := f.Recovery(); ok {
			row.Recovery, row.RecoveryClass = formatDuration(d), ""
		}
		rows = append(rows, row)
	}
	return rows, len(run.Faults) - n
}

// cycleRows lays the cycles out with one column per phase label (in order
// of first appearance, see phaseLabels). Past CycleRowsMax, it keeps every failed cycle and the
// most recent passing ones.
func cycleRows(cycles []Cycle) (names []string, rows []cycleRow, omitted int) {
	col := map[string]int{}
	for i := range cycles {
		for _, label := range phaseLabels(&cycles[i]) {
			if _, ok := col[label]; !ok {
				col[label] = len(names)
				names = append(names, label)
			}
		}
	}
	keep := make([]bool, len(cycles))
	budget := CycleRowsMax
	for i := range cycles {
		if cycles[i].Failed() {
			keep[i] = true
			budget--
		}
	}
	for i := len(cycles) - 1; i >= 0 && budget > 0; i-- {
		if !keep[i] {
			keep[i] = true
			budget--
		}
	}
	for i := range cycles {
		if !keep[i] {
			omitted++
			continue
		}
		c := &cycles[i]
		row := cycleRow{Index: c.Index, Filesystem: c.Filesystem, Cells: make([]cellView, len(names)), Failed: c.Failed()}
		var total time.Duration
		for j, label := range phaseLabels(c) {
			ph := &c.Phases[j]
			total += ph.Duration
			cell := &row.Cells[col[label]]
			cell.Text = formatDuration(ph.Duration)
			if ph.Failed() {
				cell.Class, cell.Title = "fail", excerpt(ph.Err)
			}
		}
		row.Total = formatDuration(total)
		rows = append(rows, row)
	}
	return names, rows, omitted
}

func failureRows(run *Run, origin time.Time) ([]failureRow, int) {
	n := min(len(run.Failures), FailureRowsMax)
	rows := make([]failureRow, 0, n)
	for _, f := range run.Failures[:n] {
		row := failureRow{
			Index: len(rows), Cycle: "run", Phase: f.Phase, Headline: firstLine(f.Message), At: formatOffsetFrom(origin, f.Time),
			Message: excerpt(f.Message), Diagnosis: excerpt(strings.Join(f.Diagnosis, "\n")),
			Bundle: f.Bundle,
		}
		if f.Cycle >= 0 {
			row.Cycle = fmt.Sprintf("cycle %d", f.Cycle)
			if ph := findPhase(run.Cycles, f.Cycle, f.Phase); ph != nil {
				row.Output = excerpt(ph.Output)
			}
		}
		rows = append(rows, row)
	}
	return rows, len(run.Failures) - n
}

func findPhase(cycles []Cycle, index int, name string) *Phase {
	i := slices.IndexFunc(cycles, func(c Cycle) bool { return c.Index == index })
	if i < 0 {
		return nil
	}
	for j := range cycles[i].Phases {
		if cycles[i].Phases[j].Name == name {
			return &cycles[i].Phases[j]
		}
	}
	return nil
}

func failClass(failed bool) string {
	if failed {
		return "fail"
	}
	return ""
}

func nonNeg(v int64) uint64 {
	if v < 0 {
		return 0
	}
	return uint64(v)
}

// phaseLabels names the phases of a cycle uniquely: a name's second
// occurrence in the cycle (a remount, say) is "mount#2".
func phaseLabels(c *Cycle) []string {
	labels := make([]string, len(c.Phases))
	seen := map[string]int{}
	for i := range c.Phases {
		name := c.Phases[i].Name
		seen[name]++
		labels[i] = name
		if k := seen[name]; k > 1 {
			labels[i] = fmt.Sprintf("%s#%d", name, k)
		}
	}
	return labels
}
