package reports

import (
	"encoding/xml"
	"fmt"
	"io"
	"strings"
	"time"
)

type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Errors   int          `xml:"errors,attr"`
	Time     string       `xml:"time,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name       string          `xml:"name,attr"`
	Tests      int             `xml:"tests,attr"`
	Failures   int             `xml:"failures,attr"`
	Errors     int             `xml:"errors,attr"`
	Skipped    int             `xml:"skipped,attr"`
	Time       string          `xml:"time,attr"`
	Timestamp  string          `xml:"timestamp,attr,omitempty"`
	Properties []junitProperty `xml:"properties>property"`
	Cases      []junitCase     `xml:"testcase"`
	SystemOut  *junitText      `xml:"system-out,omitempty"`
}

type junitProperty struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

type junitCase struct {
	Classname string        `xml:"classname,attr"`
	Name      string        `xml:"name,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitProblem `xml:"failure,omitempty"`
	Error     *junitProblem `xml:"error,omitempty"`
	SystemOut *junitText    `xml:"system-out,omitempty"`
}

type junitProblem struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr"`
	Text    string `xml:",cdata"`
}

// junitText is element text written as CDATA, so multi-line output stays
// readable in the file.
type junitText struct {
	Text string `xml:",cdata"`
}

// WriteJUnit writes JUnit XML for CI: <testsuites> holding one <testsuite>
// named after the scenario, with the seed, the replay command and the
// result as properties, and these testcases:
//
//   - one per cycle phase: classname "cycle-0007.ext4", name "mkfs" (a
//     name's second occurrence in a cycle is "mount#2"), time in seconds; a failed phase has a <failure> whose text is the phase error
//     followed by the message and diagnosis of the run's Failures for that
//     cycle and phase, and the phase output as <system-out>;
//   - one per run-level check: classname "checks", name the check's name;
//   - one per Failure that matches no phase: classname "failures";
//   - one for the verdict: classname "run", name "result", which fails when
//     the run failed and is an <error> when it was aborted or never decided,
//     so CI is red whenever the run was not a pass.
//
// Failure texts and outputs are CDATA, bounded (see ExcerptMaxBytes) and
// made valid UTF-8; characters XML cannot carry become U+FFFD.
func WriteJUnit(w io.Writer, run *Run) error {
	suite := junitSuite{
		Name:      run.Scenario,
		Time:      junitSeconds(run.Duration()),
		Timestamp: junitTimestamp(run.Start),
		Properties: []junitProperty{
			{"seed", fmt.Sprint(run.Seed)},
			{"replay", run.Replay},
			{"result", run.Result.String()},
			{"stop_reason", run.StopReason},
		},
		SystemOut: xmlText(junitSystemOut(run)),
	}

	matched := make([]bool, len(run.Failures))
	for i := range run.Cycles {
		c := &run.Cycles[i]
		class := fmt.Sprintf("cycle-%04d", c.Index)
		if c.Filesystem != "" {
			class += "." + c.Filesystem
		}
		for j, label := range phaseLabels(c) {
			ph := &c.Phases[j]
			tc := junitCase{Classname: class, Name: label, Time: junitSeconds(ph.Duration), SystemOut: xmlText(ph.Output)}
			if ph.Failed() {
				var body strings.Builder
				body.WriteString(ph.Err)
				for k := range run.Failures {
					f := &run.Failures[k]
					if f.Cycle == c.Index && f.Phase == ph.Name {
						matched[k] = true
						body.WriteString("\n\n" + failureText(f))
					}
				}
				tc.Failure = &junitProblem{Message: firstLine(ph.Err), Type: "phase", Text: xmlSafe(body.String())}
			}
			suite.Cases = append(suite.Cases, tc)
		}
	}
	for _, ch := range run.Checks {
		tc := junitCase{Classname: "checks", Name: ch.Name, Time: junitSeconds(ch.Duration)}
		if !ch.Passed {
			tc.Failure = &junitProblem{Message: firstLine(ch.Message), Type: "check", Text: xmlSafe(ch.Message)}
		}
		suite.Cases = append(suite.Cases, tc)
	}
	for k := range run.Failures {
		if matched[k] {
			continue
		}
		f := &run.Failures[k]
		name := fmt.Sprintf("failure-%03d", k)
		if f.Phase != "" {
			name += ": " + f.Phase
		}
		if f.Cycle >= 0 {
			name += fmt.Sprintf(" (cycle %d)", f.Cycle)
		}
		suite.Cases = append(suite.Cases, junitCase{
			Classname: "failures", Name: name, Time: "0",
			Failure: &junitProblem{Message: firstLine(f.Message), Type: "failure", Text: xmlSafe(failureText(f))},
		})
	}
	suite.Cases = append(suite.Cases, resultCase(run))

	for _, tc := range suite.Cases {
		suite.Tests++
		if tc.Failure != nil {
			suite.Failures++
		}
		if tc.Error != nil {
			suite.Errors++
		}
	}
	doc := junitSuites{
		Name: "dst torture", Tests: suite.Tests, Failures: suite.Failures, Errors: suite.Errors,
		Time: suite.Time, Suites: []junitSuite{suite},
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return fmt.Errorf("reports: write junit for %q: %w", run.Scenario, err)
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return fmt.Errorf("reports: write junit for %q: %w", run.Scenario, err)
	}
	if _, err := io.WriteString(w, "\n"); err != nil {
		return fmt.Errorf("reports: write junit for %q: %w", run.Scenario, err)
	}
	return nil
}

func resultCase(run *Run) junitCase {
	tc := junitCase{Classname: "run", Name: "result", Time: junitSeconds(run.Duration())}
	why := run.StopReason
	if why == "" {
		why = "run " + run.Result.String()
	}
	switch run.Result {
	case ResultPass:
	case ResultFail:
		tc.Failure = &junitProblem{Message: firstLine(why), Type: "result", Text: xmlSafe(why + "\nreplay: " + run.Replay)}
	default:
		tc.Error = &junitProblem{Message: firstLine(why), Type: run.Result.String(), Text: xmlSafe(why + "\nreplay: " + run.Replay)}
	}
	return tc
}

func failureText(f *Failure) string {
	var b strings.Builder
	b.WriteString(f.Message)
	for _, l := range f.Diagnosis {
		b.WriteString("\n" + l)
	}
	if f.Bundle != "" {
		b.WriteString("\nbundle: " + f.Bundle)
	}
	return b.String()
}

func junitSystemOut(run *Run) string {
	var b strings.Builder
	fmt.Fprintf(&b, "result: %s\n", run.Result)
	if run.StopReason != "" {
		fmt.Fprintf(&b, "stop reason: %s\n", run.StopReason)
	}
	if run.Replay != "" {
		fmt.Fprintf(&b, "replay: %s\n", run.Replay)
	}
	if run.Topology != "" {
		fmt.Fprintf(&b, "topology:\n%s\n", run.Topology)
	}
	return b.String()
}

func junitSeconds(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	return fmt.Sprintf("%.3f", d.Seconds())
}

func junitTimestamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02T15:04:05")
}

// xmlSafe is excerpt with the characters XML 1.0 cannot carry (control
// characters other than tab, newline and return; U+FFFE, U+FFFF) replaced
// by U+FFFD: CDATA, unlike escaped text, gets no such replacement from
// encoding/xml.
func xmlSafe(s string) string {
	s = excerpt(s)
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\t' || r == '\n' || r == '\r':
			return r
		case r < 0x20 || r == 0xFFFE || r == 0xFFFF:
			return '\uFFFD'
		}
		return r
	}, s)
}

// xmlText wraps a non-empty text for a <system-out> element.
func xmlText(s string) *junitText {
	if s == "" {
		return nil
	}
	return &junitText{xmlSafe(s)}
}
