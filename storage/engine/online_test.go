// Membership changes of a running storage (online.go): a replica added
// and one removed by Reassemble keep the data and every write
// acknowledged before, over the same nodes; a change the running storage
// knows it cannot make is refused with the storage unchanged; a new
// membership that does not assemble after all leaves the old one serving.
package engine

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/meta"
	"dst/storage/nbd"
	"dst/storage/node"
	"dst/storage/spec"
)

// closeCounted is a kept memory node that counts its Close calls, and
// can fail its superblock writes from the failAt-th one on (0: never).
type closeCounted struct {
	kept
	closed  atomic.Int32
	supers  atomic.Int32
	failAt  atomic.Int32
	failFor atomic.Int32 // how many superblock writes fail from failAt
}

func (n *closeCounted) Close() error { n.closed.Add(1); return nil }

func (n *closeCounted) WriteAt(ctx context.Context, p []byte, off int64, flags nbd.CmdFlags) error {
	if off < 2*meta.SuperblockSize {
		k := n.supers.Add(1)
		if at := n.failAt.Load(); at != 0 && k >= at && k < at+n.failFor.Load() {
			return errors.New("superblock write refused (test)")
		}
	}
	return n.kept.WriteAt(ctx, p, off, flags)
}

// online is a cluster whose nodes are opened once, as dst serve opens them.
type online struct {
	*cluster
	nodes map[string]*closeCounted
}

func newOnline(size int, urls ...string) *online {
	o := &online{cluster: newCluster(size, urls...), nodes: map[string]*closeCounted{}}
	return o
}

func (o *online) open(_ context.Context, u string) (node.Node, error) {
	m := o.mems[u]
	if m == nil {
		return nil, errors.New("no such node (test)")
	}
	if o.nodes[u] == nil {
		o.nodes[u] = &closeCounted{kept: kept{m}}
	}
	return o.nodes[u], nil
}

func (o *online) start(t *testing.T) *Storage {
	t.Helper()
	s, err := Assemble(context.Background(), o.tree, AssembleOptions{Open: o.open, RegionSize: 64 << 10})
	require.NoError(t, err)
	return s
}

// reassemble prepares the change to tree and makes it.
func reassemble(ctx context.Context, s *Storage, tree spec.Tree, opts ReassembleOptions) (*Storage, error) {
	c, err := s.PrepareChange(ctx, tree, opts)
	if err != nil {
		return s, err
	}
	return s.Reassemble(ctx, c)
}

func TestReassembleAddsAndRemovesReplica(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	m := spec.Member
	o := newOnline(4<<20, "a", "b")
	s := o.start(t)
	e := s.Engine()
	rng := rand.New(rand.NewPCG(7, 7))
	model := fill(rng, int(e.Size()))
	require.NoError(t, e.WriteAt(ctx, model, 0, 0)) // acknowledged, not flushed
	gen := s.Generation()

	// A third replica, larger: the rest stays unused.
	o.mems["c"] = node.NewMemory(5 << 20)
	s2, err := reassemble(ctx, s, spec.Mirror(m("a"), m("b"), m("c")), ReassembleOptions{})
	require.NoError(t, err)
	require.NotSame(t, s, s2)
	require.Equal(t, []string{"in-sync", "in-sync", "failed"}, states(s2), "the replica added waits for its copy")
	require.Greater(t, s2.Generation(), gen, "recorded at a new generation")
	for i, u := range []string{"a", "b"} {
		sb := o.super(t, u)
		require.Equal(t, i, sb.MemberIndex)
		require.Equal(t, 3, sb.MemberCount, "the new membership is recorded before anything is served")
		require.Equal(t, meta.Mask(0b011), sb.InSync)
		require.True(t, bytes.Equal(model, o.data(s2, i, u)), "the write acknowledged before is on %s", u)
	}
	require.Zero(t, o.nodes["a"].closed.Load()+o.nodes["b"].closed.Load(), "the nodes stay open")
	e2 := s2.Engine()
	require.NoError(t, e2.Rejoin(ctx, 2, false, nil))
	require.Equal(t, e2.Size(), e2.Status()[2].ResyncedBytes, "copied whole")
	require.True(t, bytes.Equal(model, o.data(s2, 2, "c")))

	// The first replica removed: the others renumber.
	more := fill(rng, 64<<10)
	require.NoError(t, e2.WriteAt(ctx, more, 1<<20, nbd.CmdFlagFUA))
	copy(model[1<<20:], more)
	s3, err := reassemble(ctx, s2, spec.Mirror(m("b"), m("c")), ReassembleOptions{})
	require.NoError(t, err)
	require.Equal(t, []string{"in-sync", "in-sync"}, states(s3))
	require.Equal(t, int32(1), o.nodes["a"].closed.Load(), "the replica removed is closed")
	require.Equal(t, "mirror(b, c)", s3.Tree().String())
	for i, u := range []string{"b", "c"} {
		require.Equal(t, i, o.super(t, u).MemberIndex)
		require.True(t, bytes.Equal(model, o.data(s3, i, u)), u)
	}
	require.NoError(t, s3.Close(ctx))

	// A start with the config that names the new membership finds it
	// clean and in sync; the one removed is not in its table.
	o.tree = spec.Mirror(m("b"), m("c"))
	o.nodes = map[string]*closeCounted{}
	s4 := o.start(t)
	defer s4.Close(ctx)
	require.Equal(t, []string{"in-sync", "in-sync"}, states(s4))
	table := o.super(t, "b").Members
	require.NotContains(t, table[:2], o.super(t, "a").MemberID)
	got := make([]byte, len(model))
	require.NoError(t, s4.Engine().ReadAt(ctx, got, 0))
	require.True(t, bytes.Equal(model, got))
}

func TestReassembleRefusals(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	m := spec.Member
	for _, tc := range []struct {
		name  string
		tree  spec.Tree
		setup func(t *testing.T, o *online, s *Storage)
		want  string
	}{
		{"the same membership", spec.Mirror(m("a"), m("b")), nil, "is mirror(a, b) already"},
		{"two replicas added", spec.Mirror(m("a"), m("b"), m("c"), m("d")), nil, "one replica of a mirror"},
		{"members swapped and one added", spec.Mirror(m("b"), m("a"), m("c")), nil, "a: recorded member 0"},
		{"a replica added that does not open", spec.Mirror(m("a"), m("b"), m("x")), nil, "no such node"},
		{"a replica added that does not answer", spec.Mirror(m("a"), m("b"), m("c")),
			func(_ *testing.T, o *online, _ *Storage) { o.mems["c"].SetFail(errors.New("connection refused")) }, "does not answer"},
		{"a smaller replica added", spec.Mirror(m("a"), m("b"), m("c")),
			func(_ *testing.T, o *online, _ *Storage) { o.mems["c"] = node.NewMemory(3 << 20) }, "at least as large"},
		{"a replica of another storage added", spec.Mirror(m("a"), m("b"), m("c")),
			func(t *testing.T, o *online, _ *Storage) {
				other := &cluster{mems: map[string]*node.Memory{"c": o.mems["c"], "d": node.NewMemory(4 << 20)},
					tree: spec.Mirror(m("c"), m("d"))}
				other.written(t, 9)
			}, "add it with force"},
		{"the only in-sync replica removed", spec.Mirror(m("b")),
			func(t *testing.T, _ *online, s *Storage) {
				require.NoError(t, s.Engine().Suspend(1))
				require.NoError(t, s.Engine().Release(1))
			},
			"the only in-sync replica"},
		{"a member suspended", spec.Mirror(m("a"), m("b"), m("c")),
			func(t *testing.T, _ *online, s *Storage) { require.NoError(t, s.Engine().Suspend(1)) }, "suspended: resume it first"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := newOnline(4<<20, "a", "b")
			o.mems["c"], o.mems["d"] = node.NewMemory(4<<20), node.NewMemory(4<<20)
			s := o.start(t)
			defer s.Close(ctx)
			if tc.setup != nil {
				tc.setup(t, o, s)
			}
			gen := s.Generation()
			before := bytes.Clone(o.mems["a"].Bytes(0, 2*meta.SuperblockSize))
			s2, err := reassemble(ctx, s, tc.tree, ReassembleOptions{})
			require.ErrorIs(t, err, ErrBadChange)
			require.ErrorContains(t, err, tc.want)
			t.Log(err)
			require.Same(t, s, s2, "the storage is unchanged")
			require.Equal(t, gen, s.Generation())
			require.Equal(t, before, o.mems["a"].Bytes(0, 2*meta.SuperblockSize), "nothing written")
			if n := o.nodes["c"]; n != nil {
				require.Equal(t, int32(1), n.closed.Load(), "the node opened for the change is closed")
			}
			p := []byte("still serves")
			require.NoError(t, s.Engine().WriteAt(ctx, p, 0, nbd.CmdFlagFUA))
		})
	}
}

// The storage changed between the check and the change: the change is
// checked again, refused, and the node it opened is closed.
func TestReassembleChecksAgain(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	m := spec.Member
	o := newOnline(4<<20, "a", "b")
	o.mems["c"] = node.NewMemory(4 << 20)
	s := o.start(t)
	defer s.Close(ctx)
	c, err := s.PrepareChange(ctx, spec.Mirror(m("a"), m("b"), m("c")), ReassembleOptions{})
	require.NoError(t, err)
	require.Equal(t, "mirror(a, b, c)", c.Tree().String())
	require.NoError(t, s.Engine().Suspend(0))
	s2, err := s.Reassemble(ctx, c)
	require.ErrorIs(t, err, ErrBadChange)
	require.ErrorContains(t, err, "member 0 is suspended")
	require.Same(t, s, s2)
	require.Equal(t, int32(1), o.nodes["c"].closed.Load())
	require.Equal(t, 2, o.super(t, "b").MemberCount)
}

// The new membership passes the checks but does not assemble (a
// superblock write fails): the old one is assembled again over the same
// nodes and serves the data; the node added is closed.
func TestReassembleFailsBackToOldMembership(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	m := spec.Member
	o := newOnline(4<<20, "a", "b")
	s := o.start(t)
	model := fill(rand.New(rand.NewPCG(8, 8)), int(s.Engine().Size()))
	require.NoError(t, s.Engine().WriteAt(ctx, model, 0, 0))
	a := o.nodes["a"]
	// The clean mark goes through; the new membership's record fails on
	// a, and so on both of a's slots... once: the old one's goes through.
	a.failAt.Store(a.supers.Load() + 2)
	a.failFor.Store(1)
	o.mems["c"] = node.NewMemory(4 << 20)
	back, err := reassemble(ctx, s, spec.Mirror(m("a"), m("b"), m("c")), ReassembleOptions{})
	require.Error(t, err)
	require.NotErrorIs(t, err, ErrBadChange)
	require.ErrorContains(t, err, "the old membership serves again")
	t.Log(err)
	require.NotNil(t, back)
	defer back.Close(ctx)
	require.Equal(t, "mirror(a, b)", back.Tree().String())
	require.Equal(t, int32(1), o.nodes["c"].closed.Load())
	require.Zero(t, a.closed.Load())
	got := make([]byte, len(model))
	require.NoError(t, back.Engine().ReadAt(ctx, got, 0))
	require.True(t, bytes.Equal(model, got))
	// a missed the new membership's record that b took: it catches up
	// from b's bitmap, which the clean stop left empty.
	for i, st := range back.Engine().Status() {
		if st.State != "in-sync" {
			require.NoError(t, back.Engine().Rejoin(ctx, i, false, nil))
		}
		st = back.Engine().Status()[i]
		require.Equal(t, "in-sync", st.State)
		require.Zero(t, st.ResyncedBytes, "member %d: nothing to copy", i)
	}
}
