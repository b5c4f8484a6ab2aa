// Assembly tests over in-memory members that outlive engine restarts:
// blank members become a storage; a clean restart serves everything; a
// replica that missed writes is resynced only where the survivors'
// bitmaps say, even across an engine restart; wiped media is copied whole;
// a foreign member is refused unless it may be replaced.
package engine

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/meta"
	"dst/storage/nbd"
	"dst/storage/node"
	"dst/storage/spec"
)

// kept is a member that survives Close, like a disk across engine restarts.
type kept struct{ *node.Memory }

func (kept) Close() error { return nil }

type cluster struct {
	mems map[string]*node.Memory
	tree spec.Tree
}

func newCluster(size int, urls ...string) *cluster {
	c := &cluster{mems: map[string]*node.Memory{}, tree: spec.Mirror()}
	for _, u := range urls {
		c.mems[u] = node.NewMemory(size)
		c.tree.Members = append(c.tree.Members, spec.Member(u))
	}
	return c
}

// withMembers makes a mirror of the given media, named m0, m1, ...
func (c *cluster) withMembers(mems ...*node.Memory) *cluster {
	for i, m := range mems {
		u := string(rune('0' + i))
		c.mems["m"+u] = m
		c.tree.Members = append(c.tree.Members, spec.Member("m"+u))
	}
	return c
}

func (c *cluster) assemble(t *testing.T, opts AssembleOptions) (*Storage, error) {
	opts.Open = func(_ context.Context, u string) (node.Node, error) { return kept{c.mems[u]}, nil }
	opts.RegionSize = 64 << 10
	return Assemble(context.Background(), c.tree, opts)
}

func (c *cluster) data(s *Storage, i int, u string) []byte {
	return c.mems[u].Bytes(int(s.DataOffset(i)), int(s.Engine().Size()))
}

func fill(rng *rand.Rand, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
	return p
}

func TestAssembleCreateAndCleanRestart(t *testing.T) {
	c := newCluster(4<<20, "a", "b")
	ctx := testkit.Context(t, 60*time.Second)
	s, err := c.assemble(t, AssembleOptions{})
	require.NoError(t, err)
	require.True(t, s.created)
	rng := rand.New(rand.NewPCG(1, 1))
	want := fill(rng, int(s.Engine().Size()))
	require.NoError(t, s.Engine().WriteAt(ctx, want, 0, 0))
	require.NoError(t, s.Close(ctx))

	s, err = c.assemble(t, AssembleOptions{})
	require.NoError(t, err)
	defer s.Close(ctx)
	require.False(t, s.created)
	for _, st := range s.Engine().Status() {
		require.Equal(t, "in-sync", st.State, "a clean restart serves every member")
	}
	got := make([]byte, len(want))
	require.NoError(t, s.Engine().ReadAt(ctx, got, 0))
	require.True(t, bytes.Equal(want, got))
}

func TestAssembleStaleMemberResyncsFromBitmap(t *testing.T) {
	c := newCluster(4<<20, "a", "b")
	ctx := testkit.Context(t, 60*time.Second)
	quick := AssembleOptions{Engine: Options{ActivityQuiet: 20 * time.Millisecond}}
	s, err := c.assemble(t, quick)
	require.NoError(t, err)
	e := s.Engine()
	rng := rand.New(rand.NewPCG(2, 2))
	model := fill(rng, int(e.Size()))
	require.NoError(t, e.WriteAt(ctx, model, 0, 0))
	// Flushed, so b holds every write when it goes (a member leaving with
	// writes not flushed is also given the regions active then).
	require.NoError(t, e.Flush(ctx))
	// b goes away; three regions are written meanwhile.
	c.mems["b"].SetFail(errors.New("node killed"))
	for _, off := range []int64{0, 200 << 10, 3 << 20} {
		p := fill(rng, 5000)
		require.NoError(t, e.WriteAt(ctx, p, off, 0))
		copy(model[off:], p)
	}
	require.NoError(t, e.Flush(ctx))
	require.Equal(t, "failed", e.Status()[1].State)
	// Once the activity log is quiet, a's bitmap holds just what b missed.
	require.Eventually(t, func() bool { return e.Activity().ActiveRegions == 0 }, 10*time.Second, 5*time.Millisecond)
	// The engine itself dies here (no clean close) and b comes back.
	e.Close()
	c.mems["b"].SetFail(nil)

	s, err = c.assemble(t, quick)
	require.NoError(t, err)
	defer s.Close(ctx)
	e = s.Engine()
	require.Equal(t, "in-sync", e.Status()[0].State)
	require.Equal(t, "failed", e.Status()[1].State)
	require.Equal(t, 3, e.Status()[1].DirtyRegions, "exactly the regions b missed, from a's bitmap")
	require.NoError(t, e.Rejoin(ctx, 1, false, nil))
	require.Equal(t, int64(3*64<<10), e.Status()[1].ResyncedBytes)
	require.True(t, bytes.Equal(model, c.data(s, 0, "a")))
	require.True(t, bytes.Equal(model, c.data(s, 1, "b")), "b caught up")
}

func TestAssembleWipedMemberCopiedWhole(t *testing.T) {
	c := newCluster(2<<20, "a", "b")
	ctx := testkit.Context(t, 60*time.Second)
	s, err := c.assemble(t, AssembleOptions{})
	require.NoError(t, err)
	rng := rand.New(rand.NewPCG(3, 3))
	model := fill(rng, int(s.Engine().Size()))
	require.NoError(t, s.Engine().WriteAt(ctx, model, 0, 0))
	require.NoError(t, s.Close(ctx))
	c.mems["b"] = node.NewMemory(2 << 20) // new disk

	s, err = c.assemble(t, AssembleOptions{})
	require.NoError(t, err)
	defer s.Close(ctx)
	e := s.Engine()
	require.Equal(t, "failed", e.Status()[1].State)
	require.NoError(t, e.Rejoin(ctx, 1, false, nil))
	require.Equal(t, e.Size(), e.Status()[1].ResyncedBytes, "a blank member is copied whole")
	require.True(t, bytes.Equal(model, c.data(s, 1, "b")))
}

func TestAssembleRefusesForeignMember(t *testing.T) {
	c := newCluster(2<<20, "a", "b", "c")
	ctx := testkit.Context(t, 60*time.Second)
	s, err := c.assemble(t, AssembleOptions{})
	require.NoError(t, err)
	require.NoError(t, s.Close(ctx))
	other := newCluster(2<<20, "x", "y")
	s2, err := other.assemble(t, AssembleOptions{})
	require.NoError(t, err)
	require.NoError(t, s2.Close(ctx))
	c.mems["b"] = other.mems["y"] // a disk of another storage

	// With two storages tied there is no telling which is meant.
	_, err = newCluster(2<<20).withMembers(c.mems["a"], other.mems["x"]).assemble(t, AssembleOptions{})
	require.ErrorIs(t, err, meta.ErrAmbiguous)
	_, err = c.assemble(t, AssembleOptions{})
	require.ErrorIs(t, err, meta.ErrRefused)
	require.ErrorContains(t, err, "member 1 (b)")
	s, err = c.assemble(t, AssembleOptions{Replace: []string{"b"}})
	require.NoError(t, err, "a member listed in Replace is overwritten")
	defer s.Close(ctx)
	require.NoError(t, s.Engine().Rejoin(ctx, 1, false, nil))
}

func TestAssembleUncleanRestartCopiesReplicas(t *testing.T) {
	c := newCluster(2<<20, "a", "b")
	ctx := testkit.Context(t, 60*time.Second)
	s, err := c.assemble(t, AssembleOptions{})
	require.NoError(t, err)
	require.NoError(t, s.Engine().WriteAt(ctx, []byte("x"), 0, nbd.CmdFlagFUA))
	s.Engine().Close() // crash: no clean flag
	s, err = c.assemble(t, AssembleOptions{})
	require.NoError(t, err)
	defer s.Close(ctx)
	states := []string{s.Engine().Status()[0].State, s.Engine().Status()[1].State}
	require.Equal(t, []string{"in-sync", "failed"}, states, "the non-source replica is recopied after a crash")
}

// After a crash, each mirror keeps one whole child as its source and
// recopies the others; members under no mirror are served as they are, so
// a linear member without replica does not stop the restart, and a mirror
// of a stripe keeps the stripe whole.
func TestAssembleUncleanRestartComposite(t *testing.T) {
	leaf := spec.Member
	cases := []struct {
		name string
		tree spec.Tree
		want []string
	}{
		{"linear(mirror(a,b),c)", spec.Linear(spec.Mirror(leaf("a"), leaf("b")), leaf("c")),
			[]string{"in-sync", "failed", "in-sync"}},
		{"mirror(stripe(a,b),c)", spec.Mirror(spec.Stripe(64<<10, leaf("a"), leaf("b")), leaf("c")),
			[]string{"in-sync", "in-sync", "failed"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &cluster{mems: map[string]*node.Memory{}, tree: tc.tree}
			for _, u := range tc.tree.Leaves() {
				c.mems[u] = node.NewMemory(2 << 20)
			}
			ctx := testkit.Context(t, 60*time.Second)
			s, err := c.assemble(t, AssembleOptions{})
			require.NoError(t, err)
			p := make([]byte, s.Engine().Size())
			rng := rand.New(rand.NewPCG(1, 2))
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			require.NoError(t, s.Engine().WriteAt(ctx, p, 0, nbd.CmdFlagFUA))
			s.Engine().Close() // crash: no clean flag
			s, err = c.assemble(t, AssembleOptions{})
			require.NoError(t, err)
			defer s.Close(ctx)
			var states []string
			for _, st := range s.Engine().Status() {
				states = append(states, st.State)
			}
			require.Equal(t, tc.want, states)
			got := make([]byte, len(p))
			require.NoError(t, s.Engine().ReadAt(ctx, got, 0), "every byte is readable from the kept replicas")
			require.True(t, bytes.Equal(p, got))
			for i, st := range states {
				if st == "failed" {
					require.NoError(t, s.Engine().Rejoin(ctx, i, false, nil))
				}
			}
		})
	}
}

// flushFails is a kept member whose FLUSH fails.
type flushFails struct{ kept }

func (flushFails) Flush(context.Context) error { return errors.New("flush: input/output error") }

// An assembly that fails after it made the engine stops it: in a
// testing/synctest bubble, a worker left running fails the test (the
// simulator found this: an unclean restart whose first FLUSH failed).
func TestAssembleFailureStopsTheEngine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCluster(2<<20, "a", "b")
		ctx := context.Background()
		s, err := c.assemble(t, AssembleOptions{})
		require.NoError(t, err)
		require.NoError(t, s.Engine().WriteAt(ctx, []byte("x"), 0, 0))
		s.Abandon() // a crash: the superblocks stay unclean
		_, err = Assemble(ctx, c.tree, AssembleOptions{RegionSize: 64 << 10,
			Open: func(_ context.Context, u string) (node.Node, error) {
				if u == "a" {
					return flushFails{kept{c.mems[u]}}, nil
				}
				return kept{c.mems[u]}, nil
			}})
		require.ErrorContains(t, err, "flush after an unclean stop")
	})
}
