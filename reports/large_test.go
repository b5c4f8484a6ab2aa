// An overnight-sized run (30k samples, 500 cycles) renders to a page a
// browser opens quickly; this is checked by a size bound on its HTML and
// JSON, and measured by a benchmark of Write.
package reports

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

// Bounds for the large run. The HTML is mostly the cycles table (500 rows of
// ten phases); the charts are at most ChartPointsMax points each.
const (
	largeHTMLMaxBytes    = 512 << 10
	largeSummaryMaxBytes = 1 << 20
)

func TestLargeRunStaysSmall(t *testing.T) {
	run := largeRun()
	require.Len(t, run.Samples, 30_000)
	require.Len(t, run.Cycles, 500)

	var html bytes.Buffer
	require.NoError(t, WriteHTML(&html, run))
	t.Logf("html %d bytes, %d faults", html.Len(), len(run.Faults))
	require.Less(t, html.Len(), largeHTMLMaxBytes)
	for _, c := range svgRE.FindAllString(html.String(), 2) {
		require.Less(t, len(c), 120<<10, "a chart of 30k samples is downsampled")
	}
	requireSelfContained(t, html.String())

	var summary bytes.Buffer
	require.NoError(t, WriteSummary(&summary, run))
	t.Logf("summary %d bytes", summary.Len())
	require.Less(t, summary.Len(), largeSummaryMaxBytes)
}

func BenchmarkWriteLargeRun(b *testing.B) {
	run := largeRun()
	dir := b.TempDir()
	b.ReportAllocs()
	for b.Loop() {
		if err := Write(dir, run); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWriteHTMLLargeRun(b *testing.B) {
	run := largeRun()
	var buf bytes.Buffer
	b.ReportAllocs()
	for b.Loop() {
		buf.Reset()
		if err := WriteHTML(&buf, run); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(buf.Len()), "html-bytes")
}
