// JUnit output has the shape CI tools expect; this is checked by parsing it
// back with encoding/xml into independent structs and counting testcases,
// failures and errors for the empty, passing and failing runs.
package reports

import (
	"bytes"
	"encoding/xml"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

type xSuites struct {
	XMLName  xml.Name `xml:"testsuites"`
	Tests    int      `xml:"tests,attr"`
	Failures int      `xml:"failures,attr"`
	Errors   int      `xml:"errors,attr"`
	Suites   []xSuite `xml:"testsuite"`
}

type xSuite struct {
	Name       string `xml:"name,attr"`
	Tests      int    `xml:"tests,attr"`
	Failures   int    `xml:"failures,attr"`
	Errors     int    `xml:"errors,attr"`
	Time       string `xml:"time,attr"`
	Properties []struct {
		Name  string `xml:"name,attr"`
		Value string `xml:"value,attr"`
	} `xml:"properties>property"`
	Cases     []xCase `xml:"testcase"`
	SystemOut string  `xml:"system-out"`
}

type xCase struct {
	Classname string    `xml:"classname,attr"`
	Name      string    `xml:"name,attr"`
	Time      string    `xml:"time,attr"`
	Failure   *xProblem `xml:"failure"`
	Error     *xProblem `xml:"error"`
	SystemOut string    `xml:"system-out"`
}

type xProblem struct {
	Message string `xml:"message,attr"`
	Text    string `xml:",chardata"`
}

func parseJUnit(t *testing.T, b []byte) xSuites {
	t.Helper()
	var s xSuites
	dec := xml.NewDecoder(bytes.NewReader(b))
	dec.Strict = true
	require.NoError(t, dec.Decode(&s), "junit must parse:\n%s", b)
	require.Len(t, s.Suites, 1)
	su := s.Suites[0]
	failures, errs := 0, 0
	for _, c := range su.Cases {
		require.NotEmpty(t, c.Classname)
		require.NotEmpty(t, c.Name)
		require.NotEmpty(t, c.Time)
		if c.Failure != nil {
			failures++
		}
		if c.Error != nil {
			errs++
		}
	}
	require.Equal(t, len(su.Cases), su.Tests)
	require.Equal(t, failures, su.Failures)
	require.Equal(t, errs, su.Errors)
	require.Equal(t, su.Tests, s.Tests)
	return s
}

func renderJUnit(t *testing.T, run *Run) xSuites {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, WriteJUnit(&b, run))
	require.True(t, strings.HasPrefix(b.String(), "<?xml"))
	return parseJUnit(t, b.Bytes())
}

func TestJUnitEmptyRunIsOneErroredResult(t *testing.T) {
	s := renderJUnit(t, emptyRun())
	su := s.Suites[0]
	require.Equal(t, 1, su.Tests)
	require.Equal(t, 0, su.Failures)
	require.Equal(t, 1, su.Errors, "a run without a verdict must not look green")
	require.Equal(t, "run", su.Cases[0].Classname)
	require.Equal(t, "result", su.Cases[0].Name)
}

func TestJUnitPassingRun(t *testing.T) {
	run := passingRun()
	su := renderJUnit(t, run).Suites[0]
	phases := 0
	for _, c := range run.Cycles {
		phases += len(c.Phases)
	}
	require.Equal(t, phases+len(run.Checks)+1, su.Tests)
	require.Zero(t, su.Failures)
	require.Zero(t, su.Errors)
	require.Equal(t, run.Scenario, su.Name)
	require.Equal(t, "120.000", su.Time)
	props := map[string]string{}
	for _, p := range su.Properties {
		props[p.Name] = p.Value
	}
	require.Equal(t, "42", props["seed"])
	require.Equal(t, run.Replay, props["replay"])

	require.Equal(t, "cycle-0000.ext4", su.Cases[0].Classname)
	require.Equal(t, "mkfs", su.Cases[0].Name)
	require.Equal(t, "0.050", su.Cases[0].Time)
	require.Equal(t, "mount#2", su.Cases[6].Name, "a repeated phase name gets a unique testcase name")
	require.Equal(t, "mkfs ok", su.Cases[0].SystemOut)
}

func TestJUnitFailingRun(t *testing.T) {
	run := failingRun(1)
	su := renderJUnit(t, run).Suites[0]
	// verify of cycle 7, the failed check, the run-level failure that
	// matches no phase, and the verdict.
	require.Equal(t, 4, su.Failures)
	require.Zero(t, su.Errors)

	var verify *xCase
	for i := range su.Cases {
		c := &su.Cases[i]
		if c.Classname == "cycle-0007.xfs" && c.Name == "verify" {
			verify = c
		}
	}
	require.NotNil(t, verify)
	require.NotNil(t, verify.Failure)
	require.Equal(t, "verify: 1 file differs <see diagnosis> & 0 missing", verify.Failure.Message)
	require.Contains(t, verify.Failure.Text, nastyDiagnosis, "the diagnosis survives XML escaping")
	require.Contains(t, verify.Failure.Text, "bundle: /var/lib/dst/failures/")
	require.Contains(t, verify.SystemOut, "\uFFFD", "bytes XML cannot carry are replaced")

	last := su.Cases[len(su.Cases)-1]
	require.Equal(t, "run", last.Classname)
	require.NotNil(t, last.Failure)
	require.Equal(t, run.StopReason, last.Failure.Message)

	var check *xCase
	for i := range su.Cases {
		if su.Cases[i].Classname == "checks" && su.Cases[i].Name == "replicas identical" {
			check = &su.Cases[i]
		}
	}
	require.NotNil(t, check)
	require.NotNil(t, check.Failure)
}

func TestJUnitAbortedRunIsAnError(t *testing.T) {
	run := passingRun()
	run.Result = ResultAborted
	run.StopReason = "interrupted"
	su := renderJUnit(t, run).Suites[0]
	require.Equal(t, 1, su.Errors)
	require.Equal(t, "interrupted", su.Cases[len(su.Cases)-1].Error.Message)
}

func TestJUnitMessageIsOneBoundedLine(t *testing.T) {
	long := strings.Repeat("x", 2000) + "\nsecond line"
	require.Len(t, firstLine(long), firstLineMaxBytes+len("…"))
	require.Equal(t, "first", firstLine("first\nsecond"))
}

func TestJUnitCDATATerminatorAndControlBytes(t *testing.T) {
	run := failingRun(0.25)
	run.Failures[0].Diagnosis = append(run.Failures[0].Diagnosis, "array]]>end", "bell\x07here")
	su := renderJUnit(t, run).Suites[0]
	var text string
	for _, c := range su.Cases {
		if c.Failure != nil && c.Classname == "cycle-0007.xfs" {
			text = c.Failure.Text
		}
	}
	require.Contains(t, text, "array]]>end", "a CDATA terminator in the text is split, not fatal")
	require.Contains(t, text, "bell\uFFFDhere")
}
