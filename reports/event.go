package reports

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

// EventKind says what an event is about.
type EventKind string

// The kinds the harness writes; others are allowed.
const (
	EventRun      EventKind = "run"      // run start, stop, verdict
	EventCycle    EventKind = "cycle"    // a cycle starts or ends
	EventPhase    EventKind = "phase"    // a cycle phase ends (Duration, Err)
	EventOp       EventKind = "op"       // one workload operation
	EventFault    EventKind = "fault"    // a fault is injected or lifted
	EventRecovery EventKind = "recovery" // the system is healthy again
	EventResync   EventKind = "resync"   // a mirror member resync progresses or ends
	EventCheck    EventKind = "check"    // a check ran
	EventNote     EventKind = "note"     // anything else worth a line
)

// EventTextMaxBytes bounds Detail and Err of one event; longer texts are
// cut to an excerpt when written.
const EventTextMaxBytes = 64 << 10

// MaxEventLineBytes bounds one line of events.jsonl, for the writer and the
// reader alike.
const MaxEventLineBytes = 1 << 20

// ErrEventField is returned for a free-form field whose key is one of the
// fixed keys.
var ErrEventField = errors.New("reports: event field collides with a fixed key")

// Event is one line of events.jsonl:
//
//	{"time":"2026-11-25T03:04:05.123456789Z","kind":"phase","cycle":7,
//	 "phase":"fsck","target":"node-2","detail":"...","err":"...",
//	 "duration_s":1.25, ...free-form fields}
//
// time, kind and cycle are always written; the others when not empty.
// Fields are written at the top level after the fixed keys, sorted by key;
// read back, numbers in Fields are float64 (encoding/json's default).
type Event struct {
	Time time.Time
	Kind EventKind
	// Cycle is the cycle in progress.
	Cycle    int
	Phase    string
	Target   string
	Detail   string
	Err      string
	Duration time.Duration
	Fields   map[string]any
}

type eventFixed struct {
	Time      time.Time `json:"time"`
	Kind      EventKind `json:"kind"`
	Cycle     int       `json:"cycle"`
	Phase     string    `json:"phase,omitempty"`
	Target    string    `json:"target,omitempty"`
	Detail    string    `json:"detail,omitempty"`
	Err       string    `json:"err,omitempty"`
	DurationS float64   `json:"duration_s,omitempty"`
}

var eventFixedKeys = []string{"time", "kind", "cycle", "phase", "target", "detail", "err", "duration_s"}

// MarshalJSON writes the event as one JSON object with Fields flattened in.
func (e Event) MarshalJSON() ([]byte, error) {
	b, err := json.Marshal(eventFixed{
		Time: e.Time, Kind: e.Kind, Cycle: e.Cycle, Phase: e.Phase, Target: e.Target,
		Detail: excerptN(e.Detail, EventTextMaxBytes), Err: excerptN(e.Err, EventTextMaxBytes),
		DurationS: e.Duration.Seconds(),
	})
	if err != nil {
		return nil, err
	}
	if len(e.Fields) == 0 {
		return b, nil
	}
	keys := make([]string, 0, len(e.Fields))
	for k := range e.Fields {
		if slices.Contains(eventFixedKeys, k) {
			return nil, fmt.Errorf("%w: %q", ErrEventField, k)
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	buf := bytes.NewBuffer(b[:len(b)-1]) // drop the closing brace
	for _, k := range keys {
		kb, _ := json.Marshal(k) // a string always marshals
		vb, err := json.Marshal(e.Fields[k])
		if err != nil {
			return nil, fmt.Errorf("field %q: %w", k, err)
		}
		buf.WriteByte(',')
		buf.Write(kb)
		buf.WriteByte(':')
		buf.Write(vb)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// UnmarshalJSON reads what MarshalJSON wrote; unknown keys go to Fields.
func (e *Event) UnmarshalJSON(b []byte) error {
	var fixed eventFixed
	if err := json.Unmarshal(b, &fixed); err != nil {
		return err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		return err
	}
	*e = Event{
		Time: fixed.Time, Kind: fixed.Kind, Cycle: fixed.Cycle, Phase: fixed.Phase, Target: fixed.Target,
		Detail: fixed.Detail, Err: fixed.Err, Duration: seconds(fixed.DurationS),
	}
	for k, raw := range all {
		if slices.Contains(eventFixedKeys, k) {
			continue
		}
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("field %q: %w", k, err)
		}
		if e.Fields == nil {
			e.Fields = map[string]any{}
		}
		e.Fields[k] = v
	}
	return nil
}
