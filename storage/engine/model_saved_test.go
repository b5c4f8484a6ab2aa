// Saved model failures and the model's sharpness: every JSON file under
// testdata/model-failures is a command sequence a model property once
// failed on, replayed against the engine as it is and required to pass;
// and a planted bug (a replica that acknowledges one write without making
// it) must make the property fail, with a saved shrunk sequence that fails
// again on the bug and passes without it.
package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/leanovate/gopter/commands"
	"github.com/stretchr/testify/require"

	"dst/internal/proptest"
	"dst/storage/nbd"
	"dst/storage/node"
)

// modelFailuresDir holds the saved sequences, relative to the package.
const modelFailuresDir = "testdata/model-failures"

// savedFailure is one saved sequence.
type savedFailure struct {
	Layout string      `json:"layout"`         // a key of modelGeometries
	Note   string      `json:"note,omitempty"` // what the sequence found, for people
	Seed   int64       `json:"seed,omitempty"`
	Replay string      `json:"replay,omitempty"` // the replay line of the run that found it
	Error  string      `json:"error,omitempty"`  // the postcondition that failed then
	Steps  []*modelCmd `json:"steps,omitempty"`
}

// saveFailure writes f to dir as LAYOUT-SEED.json and returns the path.
func saveFailure(dir string, f savedFailure) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	// The header as JSON, then one step per line, so files diff well.
	steps := f.Steps
	f.Steps = nil
	head, err := json.MarshalIndent(f, "", "\t")
	if err != nil {
		return "", err
	}
	var b bytes.Buffer
	b.Write(bytes.TrimSuffix(head, []byte("\n}")))
	b.WriteString(",\n\t\"steps\": [")
	for i, st := range steps {
		line, err := json.Marshal(st)
		if err != nil {
			return "", err
		}
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("\n\t\t")
		b.Write(line)
	}
	b.WriteString("\n\t]\n}\n")
	path := filepath.Join(dir, fmt.Sprintf("%s-%d.json", f.Layout, f.Seed))
	return path, os.WriteFile(path, b.Bytes(), 0o644)
}

// loadFailure reads a saved sequence and checks its layout and ops.
func loadFailure(path string) (savedFailure, error) {
	var f savedFailure
	b, err := os.ReadFile(path)
	if err != nil {
		return f, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return f, fmt.Errorf("%s: %w", path, err)
	}
	if modelGeometries[f.Layout] == nil {
		return f, fmt.Errorf("%s: layout %q is not one of the model's", path, f.Layout)
	}
	for i, c := range f.Steps {
		if c == nil || !validOp(c.Op) {
			return f, fmt.Errorf("%s: step %d: %+v is not a model command", path, i, c)
		}
	}
	return f, nil
}

func validOp(op string) bool {
	for _, o := range modelOps {
		if o == op {
			return true
		}
	}
	return false
}

func TestModelSavedFailures(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the model test runs real NBD servers")
	}
	paths, err := filepath.Glob(filepath.Join(modelFailuresDir, "*.json"))
	require.NoError(t, err)
	require.NotEmpty(t, paths, "no saved sequences in %s", modelFailuresDir)
	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) {
			f, err := loadFailure(path)
			require.NoError(t, err)
			msg := runSequence(t, modelRun{g: modelGeometries[f.Layout]}, f.Steps)
			require.Empty(t, msg, "%s (%s; found with %s: %s)", path, f.Note, f.Replay, f.Error)
		})
	}
}

func TestModelSavedFailureRoundTrip(t *testing.T) {
	in := savedFailure{Layout: "stripe", Seed: -3, Replay: "seed -3 (replay: make prop SEED=-3)", Error: "x",
		Steps: []*modelCmd{{Op: "write", Off: 12288, Len: 4097}, {Op: "hang", Member: 2}, {Op: "crash"}}}
	path, err := saveFailure(t.TempDir(), in)
	require.NoError(t, err)
	require.Equal(t, "stripe--3.json", filepath.Base(path))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Contains(t, string(b), "\n\t\t{\"op\":\"hang\",\"member\":2},\n", "one step per line")
	out, err := loadFailure(path)
	require.NoError(t, err)
	require.Equal(t, in, out)

	bad := filepath.Join(t.TempDir(), "bad.json")
	require.NoError(t, os.WriteFile(bad, []byte(`{"layout":"mirror","steps":[{"op":"explode"}]}`), 0o644))
	_, err = loadFailure(bad)
	require.ErrorContains(t, err, "is not a model command")
}

// dropOneWrite is a planted bug: it acknowledges the first data-area write
// whose length is not a multiple of 512 without making it.
type dropOneWrite struct {
	node.Node
	dataOffset int64
	dropped    atomic.Bool
}

func (d *dropOneWrite) WriteAt(ctx context.Context, p []byte, off int64, flags nbd.CmdFlags) error {
	if off >= d.dataOffset && len(p)%512 != 0 && d.dropped.CompareAndSwap(false, true) {
		return nil
	}
	return d.Node.WriteAt(ctx, p, off, flags)
}

// SetVerify passes Assemble's media check on to the remote node.
func (d *dropOneWrite) SetVerify(v func(context.Context, *nbd.Client) error) {
	d.Node.(*node.Remote).SetVerify(v)
}

func TestModelCatchesDroppedReplicaWrite(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the model test runs real NBD servers")
	}
	g := modelGeometries["mirror"]
	buggy := modelRun{g: g, plant: func(i int, n node.Node) node.Node {
		if i != 1 {
			return n
		}
		return &dropOneWrite{Node: n, dataOffset: g.areas[i].DataOffset}
	}}
	var last []*modelCmd
	var lastMsg string
	catching := buggy
	catching.onFail = func(cmds []*modelCmd, msg string) { last, lastMsg = cmds, msg }
	params := proptest.Params(t, 40) // the check stops at the first failure
	params.MaxShrinkCount = 30
	r := commands.Prop(catching.commands(t)).Check(params)
	require.False(t, r.Passed(), "the model let a replica that drops a write through (%v)", r.Status)
	require.NotEmpty(t, last)
	t.Logf("caught after %d passing sequences: %s\nshrunk: %v", r.Succeeded, lastMsg, last)

	path, err := saveFailure(t.TempDir(), savedFailure{Layout: "mirror", Seed: params.Seed(),
		Replay: proptest.ReplayLine(params.Seed()), Error: lastMsg, Steps: last})
	require.NoError(t, err)
	f, err := loadFailure(path)
	require.NoError(t, err)
	require.NotEmpty(t, runSequence(t, buggy, f.Steps), "the saved sequence must fail again on the planted bug")
	require.Empty(t, runSequence(t, modelRun{g: g}, f.Steps), "the saved sequence must pass on the engine as it is")
}
