package reports

import (
	"encoding/json"
	"fmt"
	"time"
)

// Result is the verdict of a run.
type Result uint8

const (
	// ResultUnknown is the zero value: the runner never set a verdict. It is
	// reported like an aborted run, never like a pass.
	ResultUnknown Result = iota
	// ResultPass means every cycle and every check passed.
	ResultPass
	// ResultFail means a cycle phase or a check failed.
	ResultFail
	// ResultAborted means the run stopped before it could decide (interrupted,
	// harness error, setup failure).
	ResultAborted
)

var resultNames = [...]string{"unknown", "pass", "fail", "aborted"}

// String returns "unknown", "pass", "fail" or "aborted".
func (r Result) String() string {
	if int(r) < len(resultNames) {
		return resultNames[r]
	}
	return fmt.Sprintf("result(%d)", uint8(r))
}

// MarshalText encodes the result as its name.
func (r Result) MarshalText() ([]byte, error) {
	if int(r) >= len(resultNames) {
		return nil, fmt.Errorf("reports: marshal result: invalid value %d", uint8(r))
	}
	return []byte(r.String()), nil
}

// UnmarshalText decodes a name written by MarshalText.
func (r *Result) UnmarshalText(b []byte) error {
	for i, n := range resultNames {
		if string(b) == n {
			*r = Result(i)
			return nil
		}
	}
	return fmt.Errorf("reports: unmarshal result: unknown name %q", b)
}

// Run is everything the torture runner collected about one run. The zero
// value is a valid, empty run. Times are wall-clock; durations are
// time.Duration in Go and float seconds (names ending in _s) in JSON.
type Run struct {
	Scenario    string `json:"scenario"`
	Description string `json:"description,omitempty"`
	Seed        int64  `json:"seed"`
	// Replay is the shell command that replays this run from its seed.
	Replay string    `json:"replay,omitempty"`
	Start  time.Time `json:"start,omitzero"`
	// End is when the run stopped; zero while it runs.
	End        time.Time `json:"end,omitzero"`
	Result     Result    `json:"result"`
	StopReason string    `json:"stop_reason,omitempty"`
	// Topology is free text (several lines) describing nodes and layout.
	Topology string   `json:"topology,omitempty"`
	Counters Counters `json:"counters"`

	// Samples are the time series, about one per second, in time order.
	Samples  []Sample  `json:"samples,omitempty"`
	Faults   []Fault   `json:"faults,omitempty"`
	Cycles   []Cycle   `json:"cycles,omitempty"`
	Failures []Failure `json:"failures,omitempty"`
	Resyncs  []Resync  `json:"resyncs,omitempty"`
	Checks   []Check   `json:"checks,omitempty"`
}

// Duration is End minus Start, or zero when either is unset.
func (r *Run) Duration() time.Duration {
	if r.Start.IsZero() || r.End.IsZero() || r.End.Before(r.Start) {
		return 0
	}
	return r.End.Sub(r.Start)
}

// Counters are the totals of a run.
type Counters struct {
	Cycles         int64 `json:"cycles"`
	BytesWritten   int64 `json:"bytes_written"`
	BytesVerified  int64 `json:"bytes_verified"`
	FaultsInjected int64 `json:"faults_injected"`
	Ops            int64 `json:"ops"`
	// CrashResyncBytes are the bytes the engine's restarts after kills
	// and power losses marked to copy from the mirrors' activity logs.
	CrashResyncBytes int64 `json:"crash_resync_bytes,omitempty"`
}

// Sample is one point of the time series: rates over the second before T
// and the latency distribution of the requests completed in it.
type Sample struct {
	T                time.Time     `json:"t"`
	WriteBytesPerSec float64       `json:"write_bytes_per_s"`
	ReadBytesPerSec  float64       `json:"read_bytes_per_s"`
	LatencyP50       time.Duration `json:"-"`
	LatencyP99       time.Duration `json:"-"`
	LatencyMax       time.Duration `json:"-"`
	OpsPerSec        float64       `json:"ops_per_s"`
}

type sampleJSON struct {
	sampleNoMethods
	LatencyP50S float64 `json:"latency_p50_s"`
	LatencyP99S float64 `json:"latency_p99_s"`
	LatencyMaxS float64 `json:"latency_max_s"`
}

type sampleNoMethods Sample

// MarshalJSON writes latencies as float seconds.
func (s Sample) MarshalJSON() ([]byte, error) {
	return json.Marshal(sampleJSON{sampleNoMethods(s), s.LatencyP50.Seconds(), s.LatencyP99.Seconds(), s.LatencyMax.Seconds()})
}

// UnmarshalJSON reads what MarshalJSON wrote.
func (s *Sample) UnmarshalJSON(b []byte) error {
	var j sampleJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*s = Sample(j.sampleNoMethods)
	s.LatencyP50, s.LatencyP99, s.LatencyMax = seconds(j.LatencyP50S), seconds(j.LatencyP99S), seconds(j.LatencyMaxS)
	return nil
}

// Fault is one injected fault: it was active from Start to End and the
// storage was back to normal (for example resync finished) at Recovered.
type Fault struct {
	Kind   string    `json:"kind"`
	Target string    `json:"target,omitempty"`
	Start  time.Time `json:"start"`
	// End is when the fault was lifted; zero means it lasted to the end of
	// the run.
	End time.Time `json:"end,omitzero"`
	// Recovered is when the system was healthy again; zero means never (or
	// not measured).
	Recovered time.Time `json:"recovered,omitzero"`
	Note      string    `json:"note,omitempty"`
}

// Recovery is how long after the fault was lifted the system recovered;
// ok is false when that is not known.
func (f *Fault) Recovery() (d time.Duration, ok bool) {
	if f.Recovered.IsZero() {
		return 0, false
	}
	from := f.End
	if from.IsZero() {
		from = f.Start
	}
	if f.Recovered.Before(from) {
		return 0, true
	}
	return f.Recovered.Sub(from), true
}

// Cycle is one loop of the workload (mkfs, mount, write, ... or the raw
// block workload).
type Cycle struct {
	Index int `json:"index"`
	// Filesystem is "ext4", "xfs", "btrfs" or "raw".
	Filesystem string  `json:"filesystem,omitempty"`
	Phases     []Phase `json:"phases,omitempty"`
}

// Failed reports whether a phase of the cycle failed.
func (c *Cycle) Failed() bool {
	for i := range c.Phases {
		if c.Phases[i].Failed() {
			return true
		}
	}
	return false
}

// Phase is one step of a cycle: mkfs, mount, write, sync, umount, fsck,
// verify, raw-write, raw-verify, ...
type Phase struct {
	Name     string        `json:"name"`
	Start    time.Time     `json:"start,omitzero"`
	Duration time.Duration `json:"-"`
	// Err is empty when the phase passed.
	Err string `json:"err,omitempty"`
	// Output is an excerpt of what the phase printed (tool output).
	Output string `json:"output,omitempty"`
}

// Failed reports whether the phase failed.
func (p *Phase) Failed() bool { return p.Err != "" }

type phaseNoMethods Phase

type phaseJSON struct {
	phaseNoMethods
	DurationS float64 `json:"duration_s"`
}

// MarshalJSON writes the duration as float seconds.
func (p Phase) MarshalJSON() ([]byte, error) {
	return json.Marshal(phaseJSON{phaseNoMethods(p), p.Duration.Seconds()})
}

// UnmarshalJSON reads what MarshalJSON wrote.
func (p *Phase) UnmarshalJSON(b []byte) error {
	var j phaseJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*p = Phase(j.phaseNoMethods)
	p.Duration = seconds(j.DurationS)
	return nil
}

// Failure is one thing that went wrong, with what the harness decoded about
// it.
type Failure struct {
	// Cycle is the index of the cycle, or -1 for a run-level failure.
	Cycle   int       `json:"cycle"`
	Phase   string    `json:"phase,omitempty"`
	Time    time.Time `json:"time,omitzero"`
	Message string    `json:"message"`
	// Diagnosis are preformatted lines, for example decoded bad sectors.
	Diagnosis []string `json:"diagnosis,omitempty"`
	// Bundle is the path of the failure bundle that replays it.
	Bundle string `json:"bundle,omitempty"`
}

// Resync is one mirror member brought back in sync.
type Resync struct {
	Member   string        `json:"member"`
	Start    time.Time     `json:"start,omitzero"`
	Bytes    int64         `json:"bytes"`
	Duration time.Duration `json:"-"`
	// Full is true for a full copy (new media), false for a bitmap resync.
	Full bool `json:"full"`
}

type resyncNoMethods Resync

type resyncJSON struct {
	resyncNoMethods
	DurationS float64 `json:"duration_s"`
}

// MarshalJSON writes the duration as float seconds.
func (r Resync) MarshalJSON() ([]byte, error) {
	return json.Marshal(resyncJSON{resyncNoMethods(r), r.Duration.Seconds()})
}

// UnmarshalJSON reads what MarshalJSON wrote.
func (r *Resync) UnmarshalJSON(b []byte) error {
	var j resyncJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*r = Resync(j.resyncNoMethods)
	r.Duration = seconds(j.DurationS)
	return nil
}

// Check is one run-level check, such as "replicas identical" or "resync
// within bound".
type Check struct {
	Name     string        `json:"name"`
	Passed   bool          `json:"passed"`
	Message  string        `json:"message,omitempty"`
	Duration time.Duration `json:"-"`
}

type checkNoMethods Check

type checkJSON struct {
	checkNoMethods
	DurationS float64 `json:"duration_s"`
}

// MarshalJSON writes the duration as float seconds.
func (c Check) MarshalJSON() ([]byte, error) {
	return json.Marshal(checkJSON{checkNoMethods(c), c.Duration.Seconds()})
}

// UnmarshalJSON reads what MarshalJSON wrote.
func (c *Check) UnmarshalJSON(b []byte) error {
	var j checkJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*c = Check(j.checkNoMethods)
	c.Duration = seconds(j.DurationS)
	return nil
}

// seconds converts float seconds to a Duration, saturating instead of
// overflowing.
func seconds(s float64) time.Duration {
	const maxS = float64(1<<63-1) / float64(time.Second)
	switch {
	case s != s: // NaN
		return 0
	case s >= maxS:
		return 1<<63 - 1
	case s <= -maxS:
		return -1 << 63
	}
	return time.Duration(s * float64(time.Second))
}
