// Plans replay from their seed, stay within their budgets, and every planned
// op applied to the manifest describes the same bytes as a plain in-memory
// model of the files; proved without a kernel by planning many seeded phases.
package fsload

import (
	"math/rand/v2"
	"path"
	"testing"

	"github.com/stretchr/testify/require"
)

func planOpts() PlanOptions {
	return PlanOptions{WriteBytes: 8 << 20, LiveBytesMax: 12 << 20, OpsMax: 80}
}

func TestPlanReplaysFromSeed(t *testing.T) {
	plan := func(seed uint64) [][]Op {
		m := NewManifest(seed)
		var phases [][]Op
		for i := range 4 {
			ops := Plan(rand.New(rand.NewPCG(seed, uint64(i))), m, planOpts())
			for _, op := range ops {
				require.NoError(t, m.apply(op, false))
			}
			phases = append(phases, ops)
		}
		return phases
	}
	a, b := plan(11), plan(11)
	require.Equal(t, a, b, "seed 11")
	require.NotEqual(t, a, plan(12))
}

func TestPlanBounds(t *testing.T) {
	kinds := map[OpKind]int{}
	pageish := 0
	for seed := range uint64(20) {
		m := NewManifest(seed)
		o := planOpts()
		for i := range 5 {
			ops := Plan(rand.New(rand.NewPCG(seed, uint64(i))), m, o)
			require.LessOrEqual(t, len(ops), o.OpsMax)
			var written int64
			for _, op := range ops {
				kinds[op.Kind]++
				if op.Kind == OpCreate && (op.Len%BlockSize <= 1 || op.Len%BlockSize == BlockSize-1) {
					pageish++
				}
				written += op.written()
				require.NoError(t, m.apply(op, false), "seed %d phase %d: %v", seed, i, op)
				require.LessOrEqual(t, m.LiveBytes(), o.LiveBytesMax, "seed %d phase %d after %v", seed, i, op)
			}
			// The budget may be exceeded by at most the last op.
			require.Less(t, written-ops[len(ops)-1].written(), o.WriteBytes)
			m.MarkSynced()
		}
	}
	for _, k := range []OpKind{OpCreate, OpRewrite, OpPatch, OpTruncate, OpDelete, OpRename} {
		require.Positive(t, kinds[k], "op kind %v never planned", k)
	}
	require.Positive(t, pageish, "no page-sized or page±1 file planned")
}

// model is the reference: each path's bytes in memory.
type model map[string][]byte

func (md model) apply(seed uint64, m *Manifest, op Op) {
	stamp := func(id uint64, gen uint32, off, n int64) []byte {
		b := make([]byte, n)
		FillStamp(b, seed, id, gen, off)
		return b
	}
	switch op.Kind {
	case OpCreate:
		md[op.Path] = stamp(op.ID, 1, 0, op.Len)
	case OpRewrite:
		md[op.Path] = stamp(m.Files[op.Path].ID, op.Gen, 0, op.Len)
	case OpPatch:
		b := md[op.Path]
		if end := op.Off + op.Len; end > int64(len(b)) {
			b = append(b, make([]byte, end-int64(len(b)))...)
		}
		copy(b[op.Off:], stamp(m.Files[op.Path].ID, op.Gen, op.Off, op.Len))
		md[op.Path] = b
	case OpTruncate:
		b := md[op.Path]
		if op.Len <= int64(len(b)) {
			b = b[:op.Len]
		} else {
			b = append(b, make([]byte, op.Len-int64(len(b)))...)
		}
		md[op.Path] = b
	case OpDelete:
		delete(md, op.Path)
	case OpRename:
		md[op.To] = md[op.Path]
		delete(md, op.Path)
	}
}

func TestManifestMatchesModel(t *testing.T) {
	for seed := range uint64(6) {
		m := NewManifest(seed)
		md := model{}
		o := PlanOptions{WriteBytes: 2 << 20, LiveBytesMax: 4 << 20, OpsMax: 60, FileBytesMax: 256 << 10}
		for i := range 4 {
			for _, op := range Plan(rand.New(rand.NewPCG(seed, uint64(i))), m, o) {
				md.apply(seed, m, op)
				require.NoError(t, m.Apply(op), "seed %d: %v", seed, op)
				require.Equal(t, path.Clean(op.Path), op.Path)
			}
			require.Len(t, m.Paths(), len(md), "seed %d phase %d", seed, i)
			for p, want := range md {
				e := m.Files[p]
				require.NotNil(t, e, "seed %d: %s", seed, p)
				got := make([]byte, e.Size)
				e.ReadAt(seed, got, 0)
				require.Equal(t, want, got, "seed %d phase %d: %s", seed, i, p)
				require.Equal(t, e.Sum(seed), e.SHA256, "seed %d: %s", seed, p)
			}
			m.MarkSynced()
		}
	}
}
