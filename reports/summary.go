package reports

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
)

// SummaryFormatVersion is written as format_version in summary.json and
// changes when a field changes meaning or disappears.
const SummaryFormatVersion = 1

// SummarySamplesMax bounds the samples in summary.json: a longer series is
// downsampled like the charts (see [Downsample]); sample_count keeps the
// original length.
const SummarySamplesMax = 1000

// Summary is the content of summary.json: the [Run] with its fields at the
// top level (snake_case: scenario, seed, replay, start, end, result,
// stop_reason, counters, samples, faults, cycles, failures, resyncs,
// checks), durations as float seconds (duration_s, latency_p99_s, ...) and a
// few derived totals. Non-finite rates (NaN, ±Inf) are written as 0, which
// JSON requires.
type Summary struct {
	FormatVersion int `json:"format_version"`
	Run
	DurationS float64 `json:"duration_s"`
	// SampleCount is the number of samples the run had before downsampling.
	SampleCount  int `json:"sample_count"`
	FailedPhases int `json:"failed_phases"`
	FailedChecks int `json:"failed_checks"`
}

// NewSummary builds the summary of a run. The run is not modified.
func NewSummary(run *Run) *Summary {
	s := &Summary{
		FormatVersion: SummaryFormatVersion,
		Run:           *run,
		DurationS:     run.Duration().Seconds(),
		SampleCount:   len(run.Samples),
	}
	s.Samples = Downsample(run.Samples, SummarySamplesMax)
	for i := range s.Samples {
		p := &s.Samples[i]
		p.WriteBytesPerSec = finiteOrZero(p.WriteBytesPerSec)
		p.ReadBytesPerSec = finiteOrZero(p.ReadBytesPerSec)
		p.OpsPerSec = finiteOrZero(p.OpsPerSec)
	}
	for i := range run.Cycles {
		for j := range run.Cycles[i].Phases {
			if run.Cycles[i].Phases[j].Failed() {
				s.FailedPhases++
			}
		}
	}
	for _, c := range run.Checks {
		if !c.Passed {
			s.FailedChecks++
		}
	}
	return s
}

// WriteSummary writes summary.json for the run, indented.
func WriteSummary(w io.Writer, run *Run) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(NewSummary(run)); err != nil {
		return fmt.Errorf("reports: write summary for %q: %w", run.Scenario, err)
	}
	return nil
}

// ReadSummary parses what WriteSummary wrote.
func ReadSummary(r io.Reader) (*Summary, error) {
	var s Summary
	if err := json.NewDecoder(r).Decode(&s); err != nil {
		return nil, fmt.Errorf("reports: read summary: %w", err)
	}
	return &s, nil
}

func finiteOrZero(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	return v
}
