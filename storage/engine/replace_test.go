// Online replacement: a new node takes a member's position under client
// writes and is copied whole; the old medium is refused at its old
// position afterwards, with what to change; a crash in the middle of the
// copy restarts it; bad requests change nothing.
package engine

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/node"
	"dst/storage/spec"
)

// spares gives c media that are not in its tree (yet): replacements.
func (c *cluster) spares(size int, urls ...string) {
	for _, u := range urls {
		c.mems[u] = node.NewMemory(size)
	}
}

// replaceOpts are assemble options whose Open knows every medium of c,
// and fails for a URL it does not know, like a node that does not answer.
func (c *cluster) replaceOpts(o AssembleOptions) AssembleOptions {
	o.Open = func(_ context.Context, u string) (node.Node, error) {
		m, ok := c.mems[u]
		if !ok {
			return nil, fmt.Errorf("dial %s: connection refused", u)
		}
		return kept{m}, nil
	}
	o.RegionSize = 64 << 10
	o.Monitor.Interval = 5 * time.Millisecond
	return o
}

func waitInSync(t *testing.T, e *Engine, i int) {
	t.Helper()
	require.Eventually(t, func() bool {
		st := e.Status()[i]
		return st.State == InSync.String() && st.DirtyRegions == 0
	}, 30*time.Second, 2*time.Millisecond, "member %d in sync", i)
}

func TestReplaceMemberOnline(t *testing.T) {
	c := newCluster(4<<20, "a", "b")
	c.spares(8<<20, "c") // larger media take the member's area as it was
	ctx := testkit.Context(t, 60*time.Second)
	o := c.replaceOpts(AssembleOptions{})
	o.Monitor.ResyncBytesPerSec = 2 << 20 // the 4 MiB copy takes about 1 s (2 MiB burst): client writes land during it
	s, err := Assemble(ctx, c.tree, o)
	require.NoError(t, err)
	e := s.Engine()
	rctx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- s.Run(rctx) }()

	rng := rand.New(rand.NewPCG(7, 7))
	model := fill(rng, int(e.Size()))
	require.NoError(t, e.WriteAt(ctx, model, 0, 0))
	var mu sync.Mutex
	var wg sync.WaitGroup
	var writes atomic.Int64
	done := make(chan struct{})
	wg.Go(func() { // client writes all along
		rng := rand.New(rand.NewPCG(8, 8))
		for k := 0; ; k++ {
			select {
			case <-done:
				return
			default:
			}
			off := rng.Int64N(e.Size() - 8192)
			p := fill(rng, 1+rng.IntN(8192))
			mu.Lock()
			err := e.WriteAt(ctx, p, off, 0)
			if err == nil {
				copy(model[off:], p)
			}
			mu.Unlock()
			if !assert.NoError(t, err, "client write %d", k) { // not require: this is not the test's goroutine
				return
			}
			writes.Add(1)
		}
	})

	require.NoError(t, s.ReplaceMember(ctx, 1, "c", ReplaceOptions{Force: true}))
	url, n := s.Member(1)
	require.Equal(t, "c", url)
	require.Equal(t, c.mems["c"], n.(kept).Memory)
	atReplace := writes.Load()
	waitInSync(t, e, 1)
	require.Greater(t, writes.Load(), atReplace, "client writes landed during the copy")
	close(done)
	wg.Wait()
	require.NoError(t, e.Flush(ctx))
	require.True(t, bytes.Equal(model, c.data(s, 0, "a")))
	require.True(t, bytes.Equal(model, c.mems["c"].Bytes(int(s.DataOffset(1)), int(e.Size()))), "the replacement holds every byte")
	require.Greater(t, e.Status()[1].ResyncedBytes+e.Status()[1].ResyncZeroedBytes, int64(0))
	stop()
	require.NoError(t, <-ran)
	require.NoError(t, s.Close(ctx))

	// The config naming the replacement: a clean start, both in sync.
	tree := spec.Mirror(spec.Member("a"), spec.Member("c"))
	s, err = Assemble(ctx, tree, c.replaceOpts(AssembleOptions{}))
	require.NoError(t, err)
	for i, st := range s.Engine().Status() {
		require.Equal(t, InSync.String(), st.State, "member %d", i)
	}
	require.NoError(t, s.Close(ctx))

	// The old config: the old medium is refused, with what to change.
	_, err = Assemble(ctx, c.tree, c.replaceOpts(AssembleOptions{}))
	require.ErrorContains(t, err, "put the replacement's URL at this position")
	// Listed under replace, it is copied whole instead.
	s, err = Assemble(ctx, c.tree, c.replaceOpts(AssembleOptions{Replace: []string{"b"}}))
	require.NoError(t, err)
	require.Equal(t, Failed.String(), s.Engine().Status()[1].State)
	require.True(t, s.Engine().wholeDue(1))
	s.Abandon()
}

// A crash in the middle of the replacement's copy: started again with
// the replacement in the config, it is copied whole once more; the old
// medium is refused already.
func TestReplaceMemberCrashDuringCopy(t *testing.T) {
	c := newCluster(4<<20, "a", "b")
	c.spares(4<<20, "c")
	ctx := testkit.Context(t, 60*time.Second)
	slow := AssembleOptions{Monitor: MonitorOptions{ResyncBytesPerSec: 1 << 20}}
	s, err := Assemble(ctx, c.tree, c.replaceOpts(slow))
	require.NoError(t, err)
	e := s.Engine()
	rng := rand.New(rand.NewPCG(9, 9))
	model := fill(rng, int(e.Size()))
	require.NoError(t, e.WriteAt(ctx, model, 0, 0))
	rctx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- s.Run(rctx) }()
	require.NoError(t, s.ReplaceMember(ctx, 1, "c", ReplaceOptions{Force: true}))
	require.Eventually(t, func() bool { return e.Status()[1].ResyncedBytes > 0 }, 10*time.Second, time.Millisecond)
	stop()
	<-ran
	s.Abandon() // the crash

	_, err = Assemble(ctx, c.tree, c.replaceOpts(AssembleOptions{}))
	require.ErrorContains(t, err, "a replacement", "the old medium never comes back as in sync")
	tree := spec.Mirror(spec.Member("a"), spec.Member("c"))
	s, err = Assemble(ctx, tree, c.replaceOpts(AssembleOptions{}))
	require.NoError(t, err)
	defer s.Close(ctx)
	e = s.Engine()
	require.Equal(t, Failed.String(), e.Status()[1].State)
	require.NoError(t, e.Rejoin(ctx, 1, false, nil))
	require.True(t, bytes.Equal(model, c.mems["c"].Bytes(int(s.DataOffset(1)), int(e.Size()))))
}

func TestReplaceMemberRefusals(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	c := newCluster(4<<20, "a", "b")
	c.spares(4<<20, "c")
	c.spares(1<<20, "small")
	s, err := Assemble(ctx, c.tree, c.replaceOpts(AssembleOptions{}))
	require.NoError(t, err)
	defer s.Close(ctx)
	gen := s.Generation()
	for _, tc := range []struct {
		name  string
		i     int
		url   string
		force bool
		is    error
		says  string
	}{
		{"index out of range", 2, "c", true, ErrBadReplacement, "members 0 to 1"},
		{"healthy without force", 1, "c", false, ErrMemberHealthy, "with force"},
		{"a member already", 1, "a", true, ErrBadReplacement, "member 0 already"},
		{"does not answer", 1, "nowhere", true, ErrBadReplacement, "connection refused"},
		{"too small", 1, "small", true, ErrBadReplacement, "bytes, the member needs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := s.ReplaceMember(ctx, tc.i, tc.url, ReplaceOptions{Force: tc.force})
			require.ErrorIs(t, err, tc.is)
			require.ErrorContains(t, err, tc.says)
			require.Equal(t, gen, s.Generation(), "nothing recorded")
			for i, st := range s.Engine().Status() {
				require.Equal(t, InSync.String(), st.State, "member %d untouched", i)
			}
		})
	}
	// A node of this storage: b's medium under another URL.
	c.mems["b2"] = c.mems["b"]
	err = s.ReplaceMember(ctx, 0, "b2", ReplaceOptions{Force: true})
	require.ErrorIs(t, err, ErrBadReplacement)
	require.ErrorContains(t, err, "carries member 1 of this storage already")
	// No other replica in sync: a is suspended, b is the only copy.
	require.NoError(t, s.Engine().Suspend(0))
	err = s.ReplaceMember(ctx, 1, "c", ReplaceOptions{Force: true})
	require.ErrorIs(t, err, ErrNoReplica)
	require.NoError(t, s.Engine().Resume(ctx, 0))
	require.Equal(t, InSync.String(), s.Engine().Status()[1].State)
}

func TestReplaceMemberWithoutReplica(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	c := &cluster{mems: map[string]*node.Memory{"a": node.NewMemory(4 << 20), "b": node.NewMemory(4 << 20)},
		tree: spec.Linear(spec.Member("a"), spec.Member("b"))}
	c.spares(4<<20, "c")
	s, err := Assemble(ctx, c.tree, c.replaceOpts(AssembleOptions{}))
	require.NoError(t, err)
	defer s.Close(ctx)
	err = s.ReplaceMember(ctx, 1, "c", ReplaceOptions{Force: true})
	require.ErrorIs(t, err, ErrNoReplica)
	require.ErrorContains(t, err, "under no mirror")
}
