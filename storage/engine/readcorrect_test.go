package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/layout"
	"dst/storage/node"
)

// faultyMirror is a mirror of two memory members, each behind a Faulty
// node whose rules the test sets.
func faultyMirror(t *testing.T) (*Engine, []*node.Memory, []*node.Faulty) {
	ls, ms := leaves(t, 1<<20, 1<<20)
	m, err := layout.NewMirror(ls...)
	require.NoError(t, err)
	var fs []*node.Faulty
	nodes := make([]node.Node, len(ms))
	for i, mem := range ms {
		fs = append(fs, node.NewFaulty(mem, nil, nil))
		nodes[i] = fs[i]
	}
	e, err := New(m, nodes, Options{RegionSize: 64 << 10})
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	return e, ms, fs
}

func setRules(t *testing.T, f *node.Faulty, rules ...node.FaultRule) {
	data, err := json.Marshal(map[string]any{"rules": rules})
	require.NoError(t, err)
	parsed, err := node.ParseFaultRules(data)
	require.NoError(t, err)
	f.SetInjector(parsed)
}

// md's read-error correction: a range one replica fails to read with EIO
// is served from the other and rewritten on the failing one, which stays
// in sync; if the rewrite fails too, it leaves service with the range
// recorded as missed, and the read is still served.
func TestReadErrorCorrected(t *testing.T) {
	ctx := testkit.Context(t, 30*time.Second)
	e, ms, rules := faultyMirror(t)
	data := bytes.Repeat([]byte("dst!"), 16<<10) // 64 KiB
	require.NoError(t, e.WriteAt(ctx, data, 128<<10, 0))
	// Member 0's media rots in the range and reports it on read, once.
	at := int64(dataOffset + 128<<10 + 4096)
	require.NoError(t, ms[0].WriteAt(context.Background(), make([]byte, 8192), at, 0))
	setRules(t, rules[0], node.FaultRule{Op: "read", Action: "eio", Offset: at, Length: 8192, Count: 1})

	got := make([]byte, len(data))
	require.NoError(t, e.ReadAt(ctx, got, 128<<10), "served from member 1")
	require.Equal(t, data, got)
	st := e.Status()
	require.Equal(t, "in-sync", st[0].State, "member 0 stays in service")
	require.Equal(t, int64(1), st[0].ReadErrorsCorrected)
	require.Equal(t, ms[1].Bytes(int(dataOffset+128<<10), len(data)), ms[0].Bytes(int(dataOffset+128<<10), len(data)),
		"the bad range was rewritten on member 0")

	// Again, but member 0 cannot take the rewrite either: it leaves.
	require.NoError(t, ms[0].WriteAt(context.Background(), make([]byte, 4096), at, 0))
	setRules(t, rules[0],
		node.FaultRule{Op: "read", Action: "eio", Offset: at, Length: 4096},
		node.FaultRule{Op: "write", Action: "eio", Offset: at, Length: 4096})
	require.NoError(t, e.ReadAt(ctx, got, 128<<10))
	require.Equal(t, data, got)
	st = e.Status()
	require.Equal(t, "failed", st[0].State)
	require.Positive(t, st[0].DirtyRegions, "the range it could not take is recorded as missed")
	require.Equal(t, int64(1), st[0].ReadErrorsCorrected)

	// A media error on the last replica stands: EIO, nothing left to ask.
	setRules(t, rules[1], node.FaultRule{Op: "read", Action: "eio", Offset: at, Length: 4096})
	require.ErrorContains(t, e.ReadAt(ctx, got, 128<<10), "media error")
}
