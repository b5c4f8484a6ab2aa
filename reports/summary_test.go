// summary.json round-trips a run with stable snake_case names; this is
// checked by writing the empty, passing and failing runs, reading them back
// into a Summary and into a generic map, and by a huge, NaN-laden series.
package reports

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func roundTripSummary(t *testing.T, run *Run) (*Summary, map[string]any) {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, WriteSummary(&b, run))
	var m map[string]any
	require.NoError(t, json.Unmarshal(b.Bytes(), &m))
	s, err := ReadSummary(&b)
	require.NoError(t, err)
	return s, m
}

func TestSummaryEmptyRun(t *testing.T) {
	s, m := roundTripSummary(t, emptyRun())
	require.Equal(t, SummaryFormatVersion, s.FormatVersion)
	require.Equal(t, ResultUnknown, s.Result)
	require.Equal(t, "unknown", m["result"])
	require.Zero(t, s.SampleCount)
	require.NotContains(t, m, "start", "unset times are left out")
}

func TestSummaryFailingRunRoundTrips(t *testing.T) {
	run := failingRun(0.25)
	s, m := roundTripSummary(t, run)
	for _, k := range []string{"format_version", "scenario", "description", "seed", "replay", "start", "end", "result",
		"stop_reason", "topology", "counters", "samples", "faults", "cycles", "failures", "resyncs", "checks",
		"duration_s", "sample_count", "failed_phases", "failed_checks"} {
		require.Contains(t, m, k)
	}
	require.Equal(t, "fail", m["result"])
	counters := m["counters"].(map[string]any)
	for _, k := range []string{"cycles", "bytes_written", "bytes_verified", "faults_injected", "ops"} {
		require.Contains(t, counters, k)
	}
	sample := m["samples"].([]any)[0].(map[string]any)
	for _, k := range []string{"t", "write_bytes_per_s", "read_bytes_per_s", "latency_p50_s", "latency_p99_s", "latency_max_s", "ops_per_s"} {
		require.Contains(t, sample, k)
	}
	phase := m["cycles"].([]any)[0].(map[string]any)["phases"].([]any)[0].(map[string]any)
	require.Contains(t, phase, "duration_s")
	require.NotContains(t, phase, "Duration")

	require.Equal(t, 900.0, s.DurationS)
	require.Equal(t, len(run.Samples), s.SampleCount)
	require.Equal(t, 1, s.FailedPhases)
	require.Equal(t, 1, s.FailedChecks)

	// Everything but the (downsampled) samples comes back equal.
	got := s.Run
	require.Len(t, got.Samples, len(run.Samples), "900 samples fit without downsampling")
	for i := range got.Samples {
		require.True(t, got.Samples[i].T.Equal(run.Samples[i].T))
		require.InDelta(t, run.Samples[i].LatencyP99, got.Samples[i].LatencyP99, 1)
	}
	got.Samples, run.Samples = nil, nil
	requireSameTimes(t, run, &got)
	require.Equal(t, run.Failures[0].Diagnosis, got.Failures[0].Diagnosis)
	require.Equal(t, run.Cycles[7].Phases[6], got.Cycles[7].Phases[6])
	require.Equal(t, strings.ToValidUTF8(run.Cycles[7].Phases[7].Output, "\uFFFD"), got.Cycles[7].Phases[7].Output,
		"invalid UTF-8 in tool output becomes U+FFFD")
	require.Equal(t, run.Resyncs, got.Resyncs)
	require.Equal(t, run.Checks, got.Checks)
	require.Equal(t, run.Counters, got.Counters)
}

// requireSameTimes compares runs whose times went through JSON (which drops
// the monotonic clock and may change the location) by normalising both.
func requireSameTimes(t *testing.T, want, got *Run) {
	t.Helper()
	wb, err := json.Marshal(want)
	require.NoError(t, err)
	gb, err := json.Marshal(got)
	require.NoError(t, err)
	require.JSONEq(t, string(wb), string(gb))
}

func TestSummaryDownsamplesAndSanitizes(t *testing.T) {
	run := &Run{Start: fixtureStart, End: fixtureStart.Add(10 * time.Hour), Result: ResultPass}
	run.Samples = samplesAt(fixtureStart, 36_000, func(i int) Sample {
		return Sample{WriteBytesPerSec: math.Inf(1), ReadBytesPerSec: 1, OpsPerSec: math.NaN()}
	})
	s, _ := roundTripSummary(t, run)
	require.Equal(t, 36_000, s.SampleCount)
	require.LessOrEqual(t, len(s.Samples), SummarySamplesMax)
	require.Greater(t, len(s.Samples), SummarySamplesMax/2)
	for _, p := range s.Samples {
		require.Zero(t, p.WriteBytesPerSec)
		require.Zero(t, p.OpsPerSec)
		require.Equal(t, 1.0, p.ReadBytesPerSec)
	}
	require.True(t, math.IsInf(run.Samples[0].WriteBytesPerSec, 1), "the run is untouched")
}

func TestResultText(t *testing.T) {
	for _, r := range []Result{ResultUnknown, ResultPass, ResultFail, ResultAborted} {
		b, err := r.MarshalText()
		require.NoError(t, err)
		var back Result
		require.NoError(t, back.UnmarshalText(b))
		require.Equal(t, r, back)
	}
	_, err := Result(9).MarshalText()
	require.Error(t, err)
	require.Equal(t, "result(9)", Result(9).String())
	var r Result
	require.Error(t, r.UnmarshalText([]byte("green")))
}

func TestSummaryRejectsGarbage(t *testing.T) {
	_, err := ReadSummary(bytes.NewReader([]byte(`{"result":"green"}`)))
	require.Error(t, err)
}
