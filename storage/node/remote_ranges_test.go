// Through a real NBD server, a remote node never has two overlapping
// write-like requests in flight at once — a backend wrapper records every
// overlap it sees and holds each write a moment to give one a chance, and
// the same workload with the range table switched off shows that the
// wrapper does catch them — while writes to disjoint ranges do run in
// parallel: a backend barrier lets them through only once all of them are
// inside the peer together.
package node_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/storage/nbd"
	"dst/storage/node"
)

// overlapDetector is a backend that counts write-like requests that
// overlap one still running, holding each for hold.
type overlapDetector struct {
	*node.Memory
	hold time.Duration

	mu         sync.Mutex
	active     map[[2]int64]int
	overlaps   int
	maxRunning int
}

func (d *overlapDetector) enter(off, length int64) func() {
	k := [2]int64{off, off + length}
	d.mu.Lock()
	for a, n := range d.active {
		if n > 0 && a[0] < k[1] && k[0] < a[1] {
			d.overlaps++
		}
	}
	d.active[k]++
	running := 0
	for _, n := range d.active {
		running += n
	}
	d.maxRunning = max(d.maxRunning, running)
	d.mu.Unlock()
	time.Sleep(d.hold) // widen the window an overlap would need; not a wait for an event
	return func() {
		d.mu.Lock()
		d.active[k]--
		d.mu.Unlock()
	}
}

func (d *overlapDetector) WriteAt(ctx context.Context, p []byte, off int64, f nbd.CmdFlags) error {
	defer d.enter(off, int64(len(p)))()
	return d.Memory.WriteAt(ctx, p, off, f)
}

func (d *overlapDetector) Trim(ctx context.Context, off, n int64, f nbd.CmdFlags) error {
	defer d.enter(off, n)()
	return d.Memory.Trim(ctx, off, n, f)
}

func (d *overlapDetector) WriteZeroes(ctx context.Context, off, n int64, f nbd.CmdFlags) error {
	defer d.enter(off, n)()
	return d.Memory.WriteZeroes(ctx, off, n, f)
}

// overlapWorkload has 8 callers send write-like requests that overlap
// heavily (4 KiB at multiples of 1 KiB) and returns what the peer saw.
func overlapWorkload(t *testing.T, disable bool) (overlaps, maxRunning int) {
	const size = 64 << 10
	d := &overlapDetector{Memory: node.NewMemory(size), hold: 2 * time.Millisecond, active: map[[2]int64]int{}}
	p := startPeer(t, "127.0.0.1:0", d, peerOptions{size: size})
	addr, err := node.ParseURL(p.url())
	require.NoError(t, err)
	r, err := node.NewRemote(addr, node.RemoteOptions{PingInterval: -1})
	require.NoError(t, err)
	if disable {
		node.DisableRangeTable(r)
	}
	go r.Run(context.Background())
	defer r.Close()
	ready(t, r)
	ctx := ctxFor(t, 60*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for c := range 8 {
		wg.Go(func() {
			buf := pattern(byte(c), 4096)
			for i := range 20 {
				off := int64((c+i)%8) * 1024
				var err error
				switch i % 5 {
				case 3:
					err = r.Trim(ctx, off, 4096, 0)
				case 4:
					err = r.WriteZeroes(ctx, off, 4096, 0)
				default:
					err = r.WriteAt(ctx, buf, off, 0)
				}
				if err != nil {
					errs <- fmt.Errorf("caller %d request %d: %w", c, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	require.Zero(t, node.RangesInFlight(r), "every slot was released")
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.overlaps, d.maxRunning
}

func TestRemoteOverlappingWritesNeverInFlightTogether(t *testing.T) {
	overlaps, _ := overlapWorkload(t, false)
	require.Zero(t, overlaps, "overlapping write-like requests reached the peer together")

	overlaps, maxRunning := overlapWorkload(t, true)
	t.Logf("without the range table: %d overlaps, up to %d writes at once", overlaps, maxRunning)
	require.NotZero(t, overlaps, "the detector must catch overlaps when the table is off")
}

// barrier is a backend whose writes return only once n of them are
// running at the same time (or its context ends).
type barrier struct {
	*node.Memory
	n       int
	mu      sync.Mutex
	entered int
	all     chan struct{}
}

func (b *barrier) WriteAt(ctx context.Context, p []byte, off int64, f nbd.CmdFlags) error {
	b.mu.Lock()
	b.entered++
	if b.entered == b.n {
		close(b.all)
	}
	b.mu.Unlock()
	select {
	case <-b.all:
	case <-ctx.Done():
		return ctx.Err()
	}
	return b.Memory.WriteAt(ctx, p, off, f)
}

func TestRemoteDisjointWritesRunInParallel(t *testing.T) {
	const n, size = 16, 1 << 20
	b := &barrier{Memory: node.NewMemory(size), n: n, all: make(chan struct{})}
	p := startPeer(t, "127.0.0.1:0", b, peerOptions{size: size})
	r := newRemote(t, p.url(), node.RemoteOptions{PingInterval: -1, RequestTimeout: 20 * time.Second, Retries: -1})
	ready(t, r)
	ctx := ctxFor(t, 30*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			// Adjacent ranges: they touch but do not overlap.
			errs <- r.WriteAt(ctx, pattern(byte(i), 4096), int64(i)*4096, 0)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err, "a write waited for a disjoint one: the barrier of %d was never reached", n)
	}
	for i := range n {
		require.Equal(t, pattern(byte(i), 4096), b.Bytes(i*4096, 4096))
	}
}
