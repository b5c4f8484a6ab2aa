// Engine tests over in-memory members: every byte a client writes through
// linear, stripe and mirror layouts (odd member sizes, pieces that split
// inside a page) reads back and lands on the member the layout names; a
// failed linear member fails only its range; a failed mirror replica drops
// out without a client error, and resync makes the replicas identical.
package engine

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"dst/internal/testkit"
	"dst/storage/layout"
	"dst/storage/membership"
	"dst/storage/nbd"
	"dst/storage/node"
)

const dataOffset = 4096

// rig is an engine over memory members, with the layout built from leaves
// of the given data sizes.
type rig struct {
	e     *Engine
	mems  []*node.Memory
	l     layout.Layout
	model []byte
}

func leaves(t testing.TB, sizes ...int64) ([]layout.Layout, []*node.Memory) {
	var ls []layout.Layout
	var ms []*node.Memory
	for i, s := range sizes {
		l, err := layout.NewLeaf(i, dataOffset, s)
		require.NoError(t, err)
		ls = append(ls, l)
		ms = append(ms, node.NewMemory(int(dataOffset+s)))
	}
	return ls, ms
}

func newRig(t testing.TB, l layout.Layout, mems []*node.Memory) *rig {
	nodes := make([]node.Node, len(mems))
	for i, m := range mems {
		nodes[i] = m
	}
	e, err := New(l, nodes, Options{RegionSize: 64 << 10})
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	return &rig{e: e, mems: mems, l: l, model: make([]byte, l.Size())}
}

// write writes random bytes at [off, off+n) and records them in the model.
func (r *rig) write(t testing.TB, rng *rand.Rand, off, n int64) {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
	require.NoError(t, r.e.WriteAt(testkit.Context(t, 60*time.Second), p, off, 0), "write %d+%d", off, n)
	copy(r.model[off:], p)
}

// verify reads the whole device through the engine and compares it with
// the model, and checks that each member holds what the layout maps to it.
func (r *rig) verify(t testing.TB) {
	got := make([]byte, len(r.model))
	require.NoError(t, r.e.ReadAt(testkit.Context(t, 60*time.Second), got, 0))
	require.True(t, bytes.Equal(r.model, got), "device content differs from the model")
	exts := r.l.Map(nil, 0, r.l.Size(), 0, layout.AllReplicas)
	for _, x := range exts {
		m := r.mems[x.Member]
		if r.e.members[x.Member].State() != InSync {
			continue
		}
		require.True(t, bytes.Equal(r.model[x.BufOffset:x.BufOffset+x.Length], m.Bytes(int(x.Offset), int(x.Length))),
			"member %d at %d+%d differs", x.Member, x.Offset, x.Length)
	}
}

// boundaryWrites writes around every leaf boundary: pages that straddle
// it, a byte either side, and spans of several members.
func (r *rig) boundaryWrites(t testing.TB, rng *rand.Rand) {
	size := r.l.Size()
	anchors := []int64{0, size}
	for _, x := range r.l.Map(nil, 0, size, 0, layout.FirstReplica) {
		anchors = append(anchors, x.BufOffset)
	}
	for _, a := range anchors {
		for _, d := range []int64{-4097, -4096, -513, -1, 0, 1, 511, 4095} {
			for _, n := range []int64{1, 512, 4096, 4097, 70000} {
				off := min(max(a+d, 0), size-1)
				r.write(t, rng, off, min(n, size-off))
			}
		}
	}
}

func TestLinearOddSizes(t *testing.T) {
	ls, ms := leaves(t, 1000003, 4097, 70001)
	l, err := layout.NewLinear(ls...)
	require.NoError(t, err)
	r := newRig(t, l, ms)
	rng := rand.New(rand.NewPCG(1, 2))
	r.boundaryWrites(t, rng)
	r.write(t, rng, 0, l.Size()) // one request over all three members
	r.boundaryWrites(t, rng)
	r.verify(t)
}

func TestStripeAndComposition(t *testing.T) {
	ls, ms := leaves(t, 300000, 300001, 299999, 310000)
	s1, err := layout.NewStripe(64<<10, ls[0], ls[1])
	require.NoError(t, err)
	s2, err := layout.NewStripe(4096, ls[2], ls[3])
	require.NoError(t, err)
	m, err := layout.NewMirror(s1, s2)
	require.NoError(t, err)
	r := newRig(t, m, ms)
	rng := rand.New(rand.NewPCG(3, 4))
	r.boundaryWrites(t, rng)
	r.verify(t)
}

func TestLinearMemberGoneFailsOnlyItsRange(t *testing.T) {
	ls, ms := leaves(t, 1<<20, 1<<20, 1<<20)
	l, err := layout.NewLinear(ls...)
	require.NoError(t, err)
	r := newRig(t, l, ms)
	ms[1].SetFail(node.ErrUnavailable)
	ctx := testkit.Context(t, 60*time.Second)
	p := make([]byte, 8192)
	require.NoError(t, r.e.WriteAt(ctx, p, 0, 0))
	require.NoError(t, r.e.ReadAt(ctx, p, 2<<20))
	require.ErrorIs(t, r.e.ReadAt(ctx, p, 1<<20+4096), node.ErrUnavailable)
	require.ErrorIs(t, r.e.WriteAt(ctx, p, 1<<20-4096, 0), node.ErrUnavailable, "a write straddling into the lost member")
	require.Equal(t, "in-sync", r.e.Status()[1].State, "linear members do not degrade")
	ms[1].SetFail(nil)
	require.NoError(t, r.e.ReadAt(ctx, p, 1<<20+4096), "I/O resumes when the member is back")
}

func mirror2(t testing.TB) *rig {
	ls, ms := leaves(t, 1<<20, 1<<20+777)
	m, err := layout.NewMirror(ls...)
	require.NoError(t, err)
	return newRig(t, m, ms)
}

func TestMirrorDegradesAndResyncs(t *testing.T) {
	r := mirror2(t)
	rng := rand.New(rand.NewPCG(5, 6))
	ctx := testkit.Context(t, 60*time.Second)
	r.write(t, rng, 0, r.l.Size())
	r.mems[1].SetFail(errors.New("disk pulled"))
	// Writes go on without client errors; reads too.
	r.write(t, rng, 100, 5000)
	r.write(t, rng, 300000, 1)
	r.write(t, rng, r.l.Size()-4097, 4097)
	require.Equal(t, "failed", r.e.Status()[1].State)
	require.Equal(t, 3, r.e.Status()[1].DirtyRegions)
	r.verify(t)
	require.NoError(t, r.e.Flush(ctx))
	// The member returns: only what it missed is copied.
	r.mems[1].SetFail(nil)
	require.NoError(t, r.e.Rejoin(ctx, 1, false, nil))
	require.Equal(t, "in-sync", r.e.Status()[1].State)
	require.Equal(t, int64(3*64<<10), r.e.Status()[1].ResyncedBytes)
	requireIdentical(t, r)
	// Reads are served by both again: fail member 0 and read from 1.
	r.mems[0].SetFail(errors.New("other disk pulled"))
	r.verify(t)
}

func requireIdentical(t testing.TB, r *rig) {
	t.Helper()
	a := r.mems[0].Bytes(dataOffset, int(r.l.Size()))
	b := r.mems[1].Bytes(dataOffset, int(r.l.Size()))
	require.True(t, bytes.Equal(a, b), "replicas differ after resync")
	require.True(t, bytes.Equal(a, r.model), "replicas differ from what was written")
}

func TestMirrorReadFailsOverToOtherReplica(t *testing.T) {
	r := mirror2(t)
	rng := rand.New(rand.NewPCG(7, 8))
	r.write(t, rng, 0, r.l.Size())
	r.mems[0].SetFail(errors.New("bad sector"))
	r.mems[1].SetFail(nil)
	r.verify(t) // reads that hit member 0 are retried on member 1
	require.Equal(t, "failed", r.e.Status()[0].State)
	// The last replica is never failed by the engine: its error is the
	// client's error.
	r.mems[1].SetFail(errors.New("both gone"))
	require.ErrorContains(t, r.e.ReadAt(testkit.Context(t, 60*time.Second), make([]byte, 10), 0), "both gone")
	require.Equal(t, "in-sync", r.e.Status()[1].State)
}

func TestResyncWithConcurrentWrites(t *testing.T) {
	r := mirror2(t)
	rng := rand.New(rand.NewPCG(9, 10))
	ctx := testkit.Context(t, 60*time.Second)
	r.write(t, rng, 0, r.l.Size())
	require.NoError(t, r.e.Suspend(1))
	require.Error(t, r.e.Suspend(0), "the last in-sync replica cannot be suspended")
	for range 50 {
		r.write(t, rng, rng.Int64N(r.l.Size()-9000), 1+rng.Int64N(9000))
	}
	// Resume (full copy) while writers hammer disjoint slices.
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	for w := range 4 {
		g.Go(func() error {
			wr := rand.New(rand.NewPCG(uint64(w), 99))
			slice := r.l.Size() / 4
			for range 200 {
				if gctx.Err() != nil {
					return nil
				}
				off := int64(w)*slice + wr.Int64N(slice-5000)
				p := make([]byte, 1+wr.Int64N(5000))
				for i := range p {
					p[i] = byte(wr.Uint32())
				}
				if err := r.e.WriteAt(gctx, p, off, 0); err != nil {
					return err
				}
				mu.Lock()
				copy(r.model[off:], p)
				mu.Unlock()
			}
			return nil
		})
	}
	require.NoError(t, r.e.Rejoin(ctx, 1, true, nil))
	require.NoError(t, g.Wait())
	requireIdentical(t, r)
}

func TestFlushFansOutToWrittenMembers(t *testing.T) {
	ls, ms := leaves(t, 1<<20, 1<<20)
	l, err := layout.NewLinear(ls...)
	require.NoError(t, err)
	r := newRig(t, l, ms)
	ctx := testkit.Context(t, 60*time.Second)
	require.NoError(t, r.e.Flush(ctx))
	require.Equal(t, []int{0, 0}, []int{ms[0].Flushes(), ms[1].Flushes()}, "nothing written, nothing flushed")
	require.NoError(t, r.e.WriteAt(ctx, []byte{1}, 1<<20+5, 0))
	require.NoError(t, r.e.Flush(ctx))
	require.Equal(t, []int{0, 1}, []int{ms[0].Flushes(), ms[1].Flushes()})
	require.NoError(t, r.e.WriteAt(ctx, make([]byte, 10), 1<<20-5, nbd.CmdFlagFUA))
	ms[0].SetFail(errors.New("flush failed"))
	require.Error(t, r.e.Flush(ctx), "a non-redundant member's failed flush fails the flush")
	ms[0].SetFail(nil)
	require.NoError(t, r.e.Flush(ctx), "the unflushed member is flushed on the next try")
	require.Equal(t, 2, ms[0].Flushes(), "the failed flush and its retry")
}

func TestTrimAndZeroesSplitLikeWrites(t *testing.T) {
	r := mirror2(t)
	rng := rand.New(rand.NewPCG(11, 12))
	ctx := testkit.Context(t, 60*time.Second)
	r.write(t, rng, 0, r.l.Size())
	require.NoError(t, r.e.WriteZeroes(ctx, 1000, 70000, 0))
	clear(r.model[1000:71000])
	require.NoError(t, r.e.Trim(ctx, 200000, 4096, 0))
	clear(r.model[200000:204096]) // memory members read trimmed bytes as zeroes
	r.verify(t)
	requireIdentical(t, r)
}

func TestNewValidates(t *testing.T) {
	ls, ms := leaves(t, 1000)
	_, err := New(ls[0], nil, Options{})
	require.Error(t, err)
	big, err := layout.NewLeaf(0, dataOffset, 1<<30)
	require.NoError(t, err)
	_, err = New(big, []node.Node{ms[0]}, Options{})
	require.ErrorContains(t, err, "beyond the node")
}

func TestReleaseHandsSuspendedMemberToMonitor(t *testing.T) {
	r := mirror2(t)
	rng := rand.New(rand.NewPCG(11, 12))
	ctx := testkit.Context(t, 60*time.Second)
	r.write(t, rng, 0, r.l.Size())
	require.ErrorIs(t, r.e.Release(1), ErrBusy, "an in-sync member cannot be released")
	require.NoError(t, r.e.Suspend(1))
	for range 20 {
		r.write(t, rng, rng.Int64N(r.l.Size()-9000), 1+rng.Int64N(9000))
	}
	require.NoError(t, r.e.Release(1))
	require.Equal(t, "failed", r.e.Status()[1].State)
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.e.Run(mctx, MonitorOptions{Interval: 10 * time.Millisecond}) }()
	for r.e.Status()[1].State != "in-sync" {
		select {
		case <-ctx.Done():
			t.Fatalf("member 1 never rejoined: %+v", r.e.Status())
		case <-time.After(5 * time.Millisecond):
		}
	}
	cancel()
	require.NoError(t, <-done)
	requireIdentical(t, r)
}

// Two overlapping writes in flight at once must land in the same order on
// every replica: the second waits until the first is done everywhere
// (found by the torture harness: replicas differed where two concurrent
// raw writes overlapped). Held here on replica 1, the first write keeps
// the second off both replicas.
func TestOverlappingWritesSameOrderOnEveryReplica(t *testing.T) {
	ls, ms := leaves(t, 1<<20, 1<<20)
	m, err := layout.NewMirror(ls...)
	require.NoError(t, err)
	block := make(chan struct{})
	ms[1].Block, ms[1].Entered = block, make(chan struct{}, 16)
	r := newRig(t, m, ms)
	ctx := testkit.Context(t, 60*time.Second)
	a, b := bytes.Repeat([]byte{0xaa}, 100), bytes.Repeat([]byte{0xbb}, 100)
	errs := make(chan error, 3)
	go func() { errs <- r.e.WriteAt(ctx, a, 0, 0) }()
	<-ms[1].Entered // a is on replica 0 and held on replica 1
	go func() { errs <- r.e.WriteAt(ctx, b, 50, 0) }()
	require.Never(t, func() bool { return ms[0].Bytes(int(dataOffset)+120, 1)[0] == 0xbb }, 100*time.Millisecond, 5*time.Millisecond,
		"the overlapping write went out while the first was still in flight")
	close(block)
	require.NoError(t, <-errs)
	require.NoError(t, <-errs)
	want := append(append([]byte{}, a[:50]...), b...)
	for i, mem := range ms {
		require.Equal(t, want, mem.Bytes(int(dataOffset), 150), "replica %d", i)
	}
}

// TestMemberThatFailsDuringResyncIsNotInSync: a member that leaves
// service while it is being copied (a failed flush, say) missed the
// writes since; the copy must not end by declaring it in sync (the
// torture harness's media errors found replicas that differed so).
func TestMemberThatFailsDuringResyncIsNotInSync(t *testing.T) {
	r := mirror2(t)
	rng := rand.New(rand.NewPCG(11, 12))
	ctx := testkit.Context(t, 60*time.Second)
	r.write(t, rng, 0, r.l.Size())
	require.NoError(t, r.e.Suspend(1))
	m := r.e.members[1]
	done := make(chan error, 1)
	go func() { done <- r.e.Rejoin(ctx, 1, true, rate.NewLimiter(rate.Limit(2<<20), 64<<10)) }()
	require.Eventually(t, func() bool { return m.resyncedBytes.Load() > 0 }, 10*time.Second, time.Millisecond)
	r.e.leave(ctx, m, membership.PieceFailed, errors.New("write failed"))
	r.write(t, rng, 0, 4096) // skips member 1
	err := <-done
	require.ErrorContains(t, err, "left service")
	require.Equal(t, "failed", r.e.Status()[1].State)
	require.True(t, r.e.wholeDue(1), "a whole copy that did not finish is still due")
	require.NoError(t, r.e.Rejoin(ctx, 1, false, nil))
	requireIdentical(t, r)
}
