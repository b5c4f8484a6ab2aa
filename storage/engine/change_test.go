// Changes of membership by the config at a start (change.go): a replica
// added is copied whole and the storage keeps its data; a replica removed
// never comes back as in sync; a crash while the change's superblocks
// are written assembles with either config; anything that is not one
// replica added or removed is refused with what the members record.
package engine

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/meta"
	"dst/storage/node"
	"dst/storage/spec"
)

// written creates the storage over c's tree and writes random data; it
// returns the data, the storage closed cleanly.
func (c *cluster) written(t *testing.T, seed uint64) []byte {
	t.Helper()
	ctx := testkit.Context(t, 60*time.Second)
	s, err := c.assemble(t, AssembleOptions{})
	require.NoError(t, err)
	model := fill(rand.New(rand.NewPCG(seed, seed)), int(s.Engine().Size()))
	require.NoError(t, s.Engine().WriteAt(ctx, model, 0, 0))
	require.NoError(t, s.Close(ctx))
	return model
}

func (c *cluster) super(t *testing.T, u string) meta.Superblock {
	t.Helper()
	b := c.mems[u].Bytes(0, 2*meta.SuperblockSize)
	sb, _, err := meta.Newest(b[:meta.SuperblockSize], b[meta.SuperblockSize:])
	require.NoError(t, err)
	return sb
}

func states(s *Storage) []string {
	var out []string
	for _, st := range s.Engine().Status() {
		out = append(out, st.State)
	}
	return out
}

func TestChangeAddsReplica(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	c := newCluster(4<<20, "a", "b")
	model := c.written(t, 1)
	c.mems["c"] = node.NewMemory(5 << 20) // larger: the rest stays unused
	c.tree = spec.Mirror(spec.Member("a"), spec.Member("c"), spec.Member("b"))
	s, err := c.assemble(t, AssembleOptions{})
	require.NoError(t, err)
	require.Equal(t, []string{"in-sync", "failed", "in-sync"}, states(s), "the replica added waits for its copy")
	require.Equal(t, int64(len(model)), s.Engine().Size(), "the storage keeps its size")
	for i, u := range []string{"a", "c", "b"} {
		if u == "c" {
			continue // blank until its copy begins
		}
		sb := c.super(t, u)
		require.Equal(t, i, sb.MemberIndex, u)
		require.Equal(t, 3, sb.MemberCount, u)
		require.Equal(t, c.tree.Shape(), sb.Layout, u)
		require.Equal(t, meta.Mask(0b101), sb.InSync, "recorded before anything is copied")
	}
	require.NoError(t, s.Engine().Rejoin(ctx, 1, false, nil))
	require.Equal(t, s.Engine().Size(), s.Engine().Status()[1].ResyncedBytes, "copied whole")
	for i, u := range []string{"a", "c", "b"} {
		require.True(t, bytes.Equal(model, c.data(s, i, u)), u)
	}
	require.NoError(t, s.Close(ctx))

	s, err = c.assemble(t, AssembleOptions{})
	require.NoError(t, err)
	defer s.Close(ctx)
	require.Equal(t, []string{"in-sync", "in-sync", "in-sync"}, states(s))
}

func TestChangeRemovesReplica(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	c := newCluster(4<<20, "a", "b", "c")
	model := c.written(t, 2)
	old := c.tree
	c.tree = spec.Mirror(spec.Member("a"), spec.Member("c"))
	s, err := c.assemble(t, AssembleOptions{})
	require.NoError(t, err)
	require.Equal(t, []string{"in-sync", "in-sync"}, states(s))
	require.True(t, bytes.Equal(model, c.data(s, 1, "c")))
	sb := c.super(t, "c")
	require.Equal(t, 1, sb.MemberIndex)
	require.Equal(t, 2, sb.MemberCount)
	require.NoError(t, s.Close(ctx))

	// Listed again, the member removed is a replica added: copied whole,
	// never in sync on its old superblock.
	c.tree = old
	s, err = c.assemble(t, AssembleOptions{})
	require.NoError(t, err)
	defer s.Close(ctx)
	require.Equal(t, []string{"in-sync", "failed", "in-sync"}, states(s))
	require.NoError(t, s.Engine().Rejoin(ctx, 1, false, nil))
	require.Equal(t, s.Engine().Size(), s.Engine().Status()[1].ResyncedBytes)
}

// A crash while the change's superblocks are written: b's still has the
// old numbering (its slots as before the start). Either config assembles,
// and b serves its data.
func TestChangeInterruptedAssemblesWithEitherConfig(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	for _, name := range []string{"new config", "old config"} {
		t.Run(name, func(t *testing.T) {
			c := newCluster(4<<20, "a", "b")
			model := c.written(t, 3)
			old := c.tree
			before := bytes.Clone(c.mems["b"].Bytes(0, 2*meta.SuperblockSize))
			c.mems["c"] = node.NewMemory(4 << 20)
			c.tree = spec.Mirror(spec.Member("a"), spec.Member("c"), spec.Member("b"))
			s, err := c.assemble(t, AssembleOptions{})
			require.NoError(t, err)
			s.Abandon() // the engine dies; b's superblock write never happened
			require.NoError(t, c.mems["b"].WriteAt(ctx, before, 0, 0))
			require.Equal(t, 1, c.super(t, "b").MemberIndex)

			// After the crash b is copied what the activity log marked
			// (nothing was written), not whole: it is the member it was.
			want := []string{"in-sync", "failed", "failed"}
			bAt := 2
			if name == "old config" {
				c.tree, want, bAt = old, []string{"in-sync", "failed"}, 1
			}
			s, err = c.assemble(t, AssembleOptions{})
			require.NoError(t, err)
			defer s.Close(ctx)
			require.Equal(t, want, states(s))
			require.Zero(t, c.super(t, "a").MemberIndex, "a stays first")
			require.NoError(t, s.Engine().Rejoin(ctx, bAt, false, nil))
			require.Zero(t, s.Engine().Status()[bAt].ResyncedBytes, "b is not copied whole")
			require.True(t, bytes.Equal(model, c.data(s, bAt, "b")))
			require.Equal(t, bAt, c.super(t, "b").MemberIndex, "renumbered now")
		})
	}
}

func TestChangeRefusals(t *testing.T) {
	m := spec.Member
	for _, tc := range []struct {
		name  string
		tree  spec.Tree
		setup func(c *cluster)
		want  string
	}{
		{"two replicas added", spec.Mirror(m("a"), m("b"), m("c"), m("d")), nil, "one replica of a mirror"},
		{"members swapped and one added", spec.Mirror(m("b"), m("a"), m("c")), nil, "a: recorded member 0"},
		{"a linear member removed", spec.Linear(m("a")), nil, "the members record 2 as mirror(#0,#1)"},
		{"a replica added that does not answer", spec.Mirror(m("a"), m("b"), m("c")),
			func(c *cluster) { c.mems["c"].SetFail(errors.New("connection refused")) }, "does not answer"},
		{"a smaller replica added", spec.Mirror(m("a"), m("b"), m("c")),
			func(c *cluster) { c.mems["c"] = node.NewMemory(3 << 20) }, "at least as large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(4<<20, "a", "b")
			c.written(t, 4)
			for _, u := range tc.tree.Leaves() {
				if c.mems[u] == nil {
					c.mems[u] = node.NewMemory(4 << 20)
				}
			}
			if tc.setup != nil {
				tc.setup(c)
			}
			before := bytes.Clone(c.mems["a"].Bytes(0, 2*meta.SuperblockSize))
			c.tree = tc.tree
			_, err := c.assemble(t, AssembleOptions{})
			require.ErrorContains(t, err, tc.want)
			t.Log(err)
			require.Equal(t, before, c.mems["a"].Bytes(0, 2*meta.SuperblockSize), "nothing written")
		})
	}
}

// A crash while the change's first superblocks are written, at every
// point: any subset of the members kept the superblock they had before
// the start (their write never happened). The next start assembles with
// the new config and with the old one, every replica ends with the data,
// and a replica removed that comes back is copied whole.
func TestChangeInterruptedAnySubset(t *testing.T) {
	ctx := testkit.Context(t, 120*time.Second)
	m := spec.Member
	for _, tc := range []struct {
		name     string
		old, new spec.Tree
		blank    string // the medium added, blank before
		removed  string
	}{
		{"add at the front", spec.Mirror(m("a"), m("b")), spec.Mirror(m("c"), m("a"), m("b")), "c", ""},
		{"remove the first", spec.Mirror(m("a"), m("b"), m("c")), spec.Mirror(m("b"), m("c")), "", "a"},
	} {
		for mask := range 1 << 3 {
			for _, restartWith := range []string{"new", "old"} {
				t.Run(fmt.Sprintf("%s/kept %03b/%s config", tc.name, mask, restartWith), func(t *testing.T) {
					c := &cluster{mems: map[string]*node.Memory{}, tree: tc.old}
					for _, u := range []string{"a", "b", "c"} {
						c.mems[u] = node.NewMemory(4 << 20)
					}
					model := c.written(t, uint64(mask))
					before := map[string][]byte{}
					for _, u := range tc.new.Leaves() {
						before[u] = bytes.Clone(c.mems[u].Bytes(0, 2*meta.SuperblockSize))
					}
					c.tree = tc.new
					s, err := c.assemble(t, AssembleOptions{})
					require.NoError(t, err)
					s.Abandon()
					for i, u := range tc.new.Leaves() {
						if mask&(1<<i) != 0 {
							require.NoError(t, c.mems[u].WriteAt(ctx, before[u], 0, 0))
						}
					}
					if restartWith == "old" {
						c.tree = tc.old
					}
					s, err = c.assemble(t, AssembleOptions{})
					require.NoError(t, err)
					defer s.Close(ctx)
					e := s.Engine()
					for i, st := range e.Status() {
						if st.State != "in-sync" {
							require.NoError(t, e.Rejoin(ctx, i, false, nil), "member %d", i)
						}
					}
					for i, u := range c.tree.Leaves() {
						st := e.Status()[i]
						require.Equal(t, "in-sync", st.State, u)
						// A removal recorded on no member did not happen.
						recorded := mask&(1<<len(tc.new.Leaves())-1) != 1<<len(tc.new.Leaves())-1
						if u == tc.blank || u == tc.removed && recorded {
							require.Equal(t, e.Size(), st.ResyncedBytes+st.ResyncZeroedBytes, "%s is copied whole", u)
						} else {
							require.Zero(t, st.ResyncedBytes, "%s is the member it was", u)
						}
						require.True(t, bytes.Equal(model, c.data(s, i, u)), u)
					}
				})
			}
		}
	}
}
