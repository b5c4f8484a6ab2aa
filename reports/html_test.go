// report.html is self-contained, escapes every string and shows what a run
// had; this is checked by rendering the empty, passing and failing runs and
// looking for external references, the fault bands, the escaped diagnosis,
// and by parsing each inline SVG as strict XML.
package reports

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func renderHTML(t *testing.T, run *Run) string {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, WriteHTML(&b, run))
	return b.String()
}

var svgRE = regexp.MustCompile(`(?s)<svg[ >].*?</svg>`)

// requireSelfContained fails on anything a browser would fetch.
func requireSelfContained(t *testing.T, html string) {
	t.Helper()
	lower := strings.ToLower(html)
	for _, bad := range []string{"http://", "https://", "src=", "<script", "<link", "@import", "<img", "<iframe", "xmlns"} {
		require.NotContains(t, lower, bad)
	}
	for _, m := range regexp.MustCompile(`url\(([^)]*)\)`).FindAllStringSubmatch(lower, -1) {
		require.True(t, strings.HasPrefix(m[1], "#"), "url(%s) must point inside the page", m[1])
	}
}

// requireWellFormedSVG parses every inline SVG as strict XML.
func requireWellFormedSVG(t *testing.T, html string) int {
	t.Helper()
	svgs := svgRE.FindAllString(html, -1)
	for _, s := range svgs {
		dec := xml.NewDecoder(strings.NewReader(s))
		dec.Strict = true
		for {
			_, err := dec.Token()
			if err == io.EOF {
				break
			}
			require.NoError(t, err, "svg must be well-formed:\n%.2000s", s)
		}
	}
	return len(svgs)
}

func TestHTMLEmptyRun(t *testing.T) {
	html := renderHTML(t, emptyRun())
	requireSelfContained(t, html)
	require.Contains(t, html, "<svg")
	require.Equal(t, 2, strings.Count(html, `class="chart"`))
	require.Contains(t, html, "no samples")
	require.Contains(t, html, "No faults were injected.")
	require.Contains(t, html, "No cycles ran.")
	require.Contains(t, html, ">unknown</span>")
	require.NotContains(t, html, "still running", "a run that never started is not running")
	requireWellFormedSVG(t, html)
}

func TestHTMLPassingRun(t *testing.T) {
	run := passingRun()
	html := renderHTML(t, run)
	requireSelfContained(t, html)
	requireWellFormedSVG(t, html)
	require.Contains(t, html, `class="badge r-pass">pass</span>`)
	require.Contains(t, html, "mirror3-ext4-smoke")
	require.Contains(t, html, "<code>dst torture run --scenario mirror3-ext4-smoke --seed 42</code>")
	require.Contains(t, html, "3.2 GB", "bytes are humanized")
	require.Contains(t, html, "123,456")
	require.Contains(t, html, "12.00s", "fault 0 recovered 12s after it was lifted")
	require.Contains(t, html, `data-fault="0"`)
	require.Contains(t, html, ">kill-node</text>", "the band is labelled with the fault kind")
	require.NotContains(t, html, "no samples")
	require.NotContains(t, html, `class="fail"`)
	require.Contains(t, html, "MB/s")
	require.Contains(t, html, "Latency (ms)")
}

func TestHTMLFailingRun(t *testing.T) {
	run := failingRun(2)
	html := renderHTML(t, run)
	requireSelfContained(t, html)
	require.Equal(t, 2+len(sortedKinds(run.Faults))+min(len(run.Faults), FaultRowsMax), requireWellFormedSVG(t, html),
		"two charts plus one colour chip per kind in the legend and per fault row")
	require.Contains(t, html, `class="badge r-fail">fail</span>`)

	for i := range run.Faults {
		require.Equal(t, 2, strings.Count(html, fmt.Sprintf(`data-fault="%d"`, i)), "fault %d has a band on both charts", i)
		require.Contains(t, html, fmt.Sprintf(`id="fault-%d"`, i))
	}

	require.NotContains(t, html, "<bad>")
	require.Contains(t, html, `sector 0x1f3000 &lt;bad&gt;: want write #812 &amp; got &#34;stale&#34; write #790 from node-2`)
	require.Contains(t, html, "stripe-mirror-xfs-kill-1733-cycle7")
	require.Contains(t, html, `<dt>first failure</dt><dd class="bad"><a href="#failure-0">cycle 7 · verify</a>: file /mnt/dst/d03/f0172 differs`)
	require.Contains(t, html, `id="failure-0"`)
	require.Contains(t, html, `<h3>run <span class="note">`, "a run-level failure names no cycle")
	require.Contains(t, html, `verify failed in cycle 7 &lt;xfs&gt; &amp; stopped &#34;early&#34;`)
	require.Contains(t, html, `title="verify: 1 file differs &lt;see diagnosis&gt; &amp; 0 missing"`, "failed phase cell carries its error")
	require.Contains(t, html, `<tr class="fail"><td class="num">7</td><td>xfs</td>`)
	require.Contains(t, html, `<span class="bad">FAIL</span>`)
	require.Contains(t, html, "not recorded", "a fault without a recovery time says so")
	require.Contains(t, html, "full", "a full resync is marked")
}

func TestHTMLEscapesFaultKindInsideSVG(t *testing.T) {
	run := passingRun()
	run.Faults[0].Kind = `<script>alert("x")</script>`
	run.Faults[0].Note = `a & b`
	html := renderHTML(t, run)
	require.NotContains(t, html, "<script>")
	require.Contains(t, html, "&lt;script&gt;")
	requireWellFormedSVG(t, html)
}

func TestHTMLUnsetEndSaysStillRunning(t *testing.T) {
	run := passingRun()
	run.End = time.Time{}
	run.Faults[0].End = time.Time{}
	html := renderHTML(t, run)
	require.Contains(t, html, "still running")
	require.Contains(t, html, "to the end")
	require.Contains(t, html, `data-fault="0"`)
}

func TestCycleRowsKeepFailedCyclesWhenCapped(t *testing.T) {
	cycles := make([]Cycle, CycleRowsMax+500)
	for i := range cycles {
		cycles[i] = Cycle{Index: i, Filesystem: "ext4", Phases: []Phase{{Name: "mkfs", Duration: time.Second}}}
	}
	cycles[3].Phases[0].Err = "mkfs failed"
	names, rows, omitted := cycleRows(cycles)
	require.Equal(t, []string{"mkfs"}, names)
	require.Len(t, rows, CycleRowsMax)
	require.Equal(t, 500, omitted)
	require.Equal(t, 3, rows[0].Index, "the failed early cycle is kept")
	require.True(t, rows[0].Failed)
	require.Equal(t, "fail", rows[0].Cells[0].Class)
	require.Equal(t, len(cycles)-1, rows[len(rows)-1].Index, "the latest cycle is kept")
}

func TestPhaseLabelsNumberRepeats(t *testing.T) {
	c := Cycle{Phases: []Phase{{Name: "mount"}, {Name: "write"}, {Name: "mount"}, {Name: "mount"}}}
	require.Equal(t, []string{"mount", "write", "mount#2", "mount#3"}, phaseLabels(&c))
}

func TestExcerptBoundsAndKeepsTail(t *testing.T) {
	s := "HEAD" + strings.Repeat("x", 3*ExcerptMaxBytes) + "TAIL"
	e := excerpt(s)
	require.Less(t, len(e), ExcerptMaxBytes+64)
	require.True(t, strings.HasPrefix(e, "HEAD"))
	require.True(t, strings.HasSuffix(e, "TAIL"))
	require.Contains(t, e, "bytes cut")
	require.Equal(t, "a\uFFFDb", excerpt("a\xffb"))
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0", 250 * time.Microsecond: "250µs", 12500 * time.Microsecond: "12.5ms",
		1500 * time.Millisecond: "1.50s", 95 * time.Second: "1m35s", 3*time.Hour + 2*time.Second: "3h0m2s",
		-2 * time.Second: "-2.00s",
	} {
		require.Equal(t, want, formatDuration(d), "%v", time.Duration(d))
	}
}
