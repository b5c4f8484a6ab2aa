package sim_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// script is a scripted sequence: the simulator's own (testdata/*.json,
// each a bug the simulator found, failing on the engine before its fix)
// or one the engine model test saved (its testdata/model-failures, the
// same format), replayed step by step in virtual time.
type script struct {
	Layout   string `json:"layout"`
	Note     string `json:"note,omitempty"`
	Geometry string `json:"geometry,omitempty"` // "model" (the default) or "random"
	// MonitorMs is the engine's probe interval in ms (0: the geometry's).
	MonitorMs int          `json:"monitor_ms,omitempty"`
	Seed      int64        `json:"seed,omitempty"`
	Replay    string       `json:"replay,omitempty"`
	Error     string       `json:"error,omitempty"`
	Steps     []scriptStep `json:"steps"`
}

// scriptStep is one step, in the engine model's vocabulary (see
// model_cmds_test.go) and the simulator's own: power (cut member's
// power), wait (ms of virtual time), and the fault proxy's hold (the next
// write to member), release (newer data over it, then deliver it), lose
// (the reply to the next write or FLUSH) and slow (ms per frame).
type scriptStep struct {
	Op     string `json:"op"`
	Member int    `json:"member,omitempty"`
	Off    int64  `json:"off,omitempty"`
	Len    int64  `json:"len,omitempty"`
	Ops    int    `json:"ops,omitempty"`
	Ms     int    `json:"ms,omitempty"`
}

func loadScript(path string) (script, error) {
	var sc script
	b, err := os.ReadFile(path)
	if err != nil {
		return sc, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sc); err != nil {
		return sc, fmt.Errorf("%s: %w", path, err)
	}
	return sc, nil
}

// runScript replays sc in a bubble and returns the broken invariant, if
// any, and the trace.
func runScript(t *testing.T, sc script) (err error, trace []string) {
	geo := modelGeometry
	if sc.Geometry == "random" {
		geo = randomGeometry
	}
	geo.monitor = time.Duration(sc.MonitorMs) * time.Millisecond
	stall := time.AfterFunc(time.Minute, func() { panic("sim: a script made no progress for a minute of wall time") })
	defer stall.Stop()
	synctest.Test(t, func(t *testing.T) {
		s, e := newSim(t, uint64(sc.Seed), geo)
		if e != nil {
			err = e
			return
		}
		s.strict = false
		defer func() { trace = s.Trace() }()
		ctx := context.Background()
		for k, st := range sc.Steps {
			if err = s.scripted(ctx, k, st); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		err = s.settle(ctx)
	})
	return err, trace
}

// scripted runs one step of a script.
func (s *sim) scripted(ctx context.Context, k int, st scriptStep) error {
	e := s.st.Engine()
	i := st.Member
	if i < 0 || i >= len(s.nodes) {
		return fmt.Errorf("step %d: no member %d", k, i)
	}
	switch st.Op {
	case "write", "zeroes", "trim", "read":
		if st.Off < 0 || st.Len <= 0 || st.Off+st.Len > e.Size() {
			return fmt.Errorf("step %d: %s %d+%d is outside the device (%d bytes)", k, st.Op, st.Off, st.Len, e.Size())
		}
	}
	switch st.Op {
	case "write":
		return s.write(ctx, st.Off, s.payload(st.Len))
	case "zeroes":
		return s.write(ctx, st.Off, make([]byte, st.Len))
	case "trim":
		return s.trim(ctx, st.Off, st.Len)
	case "read":
		return s.read(ctx, fmt.Sprintf("step %d: read %d+%d", k, st.Off, st.Len), st.Off, st.Len)
	case "flush":
		return s.flush(ctx)
	case "kill", "power":
		if s.nodes[i].up {
			s.logf("%s %d", st.Op, i)
			return s.stopNode(i, st.Op == "power")
		}
	case "restart":
		if !s.nodes[i].up {
			s.logf("restart %d", i)
			return s.startNode(i)
		}
	case "replace":
		s.logf("replace the media of %d", i)
		return s.replaceMedia(i)
	case "suspend":
		s.logf("suspend %d: %v", i, e.Suspend(i))
	case "resume":
		s.logf("resume %d: %v", i, e.Resume(ctx, i))
	case "hang":
		s.links[i].setHung()
		s.logf("hang %d", i)
	case "cut":
		s.links[i].setCut()
		s.logf("cut %d", i)
	case "heal":
		s.links[i].heal()
		s.logf("heal %d", i)
	case "replace-online":
		return s.replaceOnline(ctx, i)
	case "hold":
		s.links[i].hold()
		s.logf("hold back the next write on %d", i)
	case "release":
		return s.releaseHeld(ctx, i)
	case "lose":
		s.links[i].loseReply()
		s.logf("lose the reply to the next write or flush on %d", i)
	case "slow":
		s.links[i].setSlow(time.Duration(st.Ms) * time.Millisecond)
		s.logf("slow %d: %dms per frame", i, st.Ms)
	case "wait":
		s.logf("wait %dms", st.Ms)
		time.Sleep(time.Duration(st.Ms) * time.Millisecond)
	case "settle":
		return s.settle(ctx)
	case "crash":
		return s.crash(ctx, -1, nil, 0)
	case "crash-degraded":
		return s.crashDegraded(ctx, i)
	case "crashwrite":
		return s.crash(ctx, st.Ops, s.payload(st.Len), st.Off)
	default:
		return fmt.Errorf("step %d: unknown op %q", k, st.Op)
	}
	return nil
}

func scriptName(path string) string { return strings.TrimSuffix(filepath.Base(path), ".json") }

// TestSimScripts replays the simulator's saved sequences: each is a bug it
// found, and each must pass.
func TestSimScripts(t *testing.T) {
	paths, err := filepath.Glob("testdata/*.json")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no scripts in testdata: %v", err)
	}
	for _, p := range paths {
		t.Run(scriptName(p), func(t *testing.T) {
			sc, err := loadScript(p)
			if err != nil {
				t.Fatal(err)
			}
			if err, trace := runScript(t, sc); err != nil {
				t.Log("note: " + sc.Note + "\ntrace:\n" + strings.Join(trace, "\n"))
				t.Fatal(err)
			}
		})
	}
}

// TestSimModelFailures replays in the simulator the mirror sequences the
// engine model test saved (storage/engine/testdata/model-failures): the
// same steps, on a mirror of the model's geometry, under the simulator's
// invariants. Linear and stripe sequences are the model's alone: the
// simulator builds mirrors.
func TestSimModelFailures(t *testing.T) {
	paths, err := filepath.Glob("../engine/testdata/model-failures/*.json")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no saved model failures: %v", err)
	}
	ran := 0
	for _, p := range paths {
		sc, err := loadScript(p)
		if err != nil {
			t.Fatal(err)
		}
		if sc.Layout != "mirror" {
			continue
		}
		ran++
		t.Run(scriptName(p), func(t *testing.T) {
			if err, trace := runScript(t, sc); err != nil {
				t.Log("note: " + sc.Note + "\ntrace:\n" + strings.Join(trace, "\n"))
				t.Fatal(err)
			}
		})
	}
	t.Logf("%d mirror sequences of %d replayed", ran, len(paths))
}
