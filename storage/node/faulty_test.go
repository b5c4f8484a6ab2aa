package node_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/nbd"
	"dst/storage/node"
)

func TestFaultyInjectsByRange(t *testing.T) {
	ctx := testkit.Context(t, 10*time.Second)
	mem := node.NewMemory(64 << 10)
	require.NoError(t, mem.WriteAt(ctx, pattern(9, 64<<10), 0, 0))
	rules, err := node.ParseFaultRules([]byte(`{"seed": 3, "rules": [
		{"op": "read", "offset": 8192, "length": 4096, "action": "eio"},
		{"op": "write", "offset": 16384, "length": 4096, "action": "lose"},
		{"op": "write", "offset": 24576, "length": 512, "action": "flip", "count": 1},
		{"op": "read", "offset": 32768, "length": 512, "action": "flip"},
		{"op": "flush", "action": "eio", "count": 1}]}`))
	require.NoError(t, err)
	var seen []node.Action
	f := node.NewFaulty(mem, rules, func(_ node.Op, a node.Action) { seen = append(seen, a) })

	buf := make([]byte, 4096)
	require.NoError(t, f.ReadAt(ctx, buf, 0))
	err = f.ReadAt(ctx, buf, 8192-100)
	require.ErrorIs(t, err, nbd.EIO, "a latent sector error")
	require.Equal(t, nbd.EIO, nbd.ErrnoOf(err))

	require.NoError(t, f.WriteAt(ctx, pattern(1, 4096), 16384, 0), "a lost write reports success")
	require.Equal(t, pattern(9, 4096), mem.Bytes(16384, 4096))

	require.NoError(t, f.WriteAt(ctx, pattern(2, 4096), 24576, 0))
	require.Equal(t, pattern(2, 4096)[512:], mem.Bytes(24576+512, 4096-512))
	require.NotEqual(t, pattern(2, 512), mem.Bytes(24576, 512), "one bit flipped in the rule's range")
	require.Equal(t, 1, bitsDiffer(pattern(2, 512), mem.Bytes(24576, 512)))
	require.NoError(t, f.WriteAt(ctx, pattern(2, 512), 24576, 0), "count 1: the second write is clean")
	require.Equal(t, pattern(2, 512), mem.Bytes(24576, 512))

	require.NoError(t, f.ReadAt(ctx, buf, 32768))
	require.Equal(t, 1, bitsDiffer(buf, pattern(9, 4096)), "a flip on read")
	require.Equal(t, pattern(9, 4096), mem.Bytes(32768, 4096), "the media is intact")

	require.ErrorIs(t, f.Flush(ctx), nbd.EIO)
	require.NoError(t, f.Flush(ctx))
	require.Len(t, seen, 5)
	require.Equal(t, []int{1, 1, 1, 1, 1}, rules.Hits())

	f.SetInjector(nil)
	require.NoError(t, f.ReadAt(ctx, buf, 8192))
}

func bitsDiffer(a, b []byte) int {
	n := 0
	for i := range a {
		for x := a[i] ^ b[i]; x != 0; x &= x - 1 {
			n++
		}
	}
	return n
}

func TestFaultRulesAreChecked(t *testing.T) {
	for text, want := range map[string]string{
		`{"rules": [{"op": "seek", "action": "eio"}]}`:                 `op "seek"`,
		`{"rules": [{"op": "read", "action": "melt"}]}`:                `action "melt"`,
		`{"rules": [{"op": "flush", "action": "flip"}]}`:               "flip needs op read or write",
		`{"rules": [{"op": "read", "action": "lose"}]}`:                "lose needs op write",
		`{"rules": [{"op": "read", "action": "eio", "percent": 200}]}`: "percent 200",
		`{"rules": [{"op": "read", "action": "eio", "offst": 1}]}`:     `unknown field "offst"`,
	} {
		_, err := node.ParseFaultRules([]byte(text))
		require.ErrorContains(t, err, want, text)
	}
}

func TestFaultRulesPercentIsSeeded(t *testing.T) {
	count := func() int {
		r, err := node.NewFaultRules(11, node.FaultRule{Op: "read", Action: "eio", Percent: 30})
		require.NoError(t, err)
		n := 0
		for i := range 1000 {
			if r.Inject(node.Op{Kind: node.OpRead, Off: int64(i) * 512, Len: 512}).Kind == node.FailEIO {
				n++
			}
		}
		return n
	}
	n := count()
	require.Equal(t, n, count(), "the same seed decides the same")
	require.InDelta(t, 300, n, 60)
}
