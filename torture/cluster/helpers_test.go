// Helpers of the cluster tests, proven by their use there: the dst binary
// built once per run, a cluster per test closed on any exit with its logs
// printed on failure, and a sequential writer whose model of the last
// acknowledged bytes of each slot is checked by reading back.
package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/storage/nbd"

	"dst/internal/dstbin"
	"dst/internal/proc"
	"dst/internal/testkit"
)

// dstBinary is the dst binary TestMain built.
var dstBinary string

// TestMain builds the dst binary, unless DST_BINARY names one to use.
func TestMain(m *testing.M) { os.Exit(dstbin.Run(m, &dstBinary)) }

// fastEngine are short engine timings, so faults are noticed in about a
// second.
var fastEngine = EngineSpec{
	RequestTimeout: time.Second,
	Retries:        1,
	BackoffMax:     200 * time.Millisecond,
	PingInterval:   200 * time.Millisecond,
	ConnectTimeout: 5 * time.Second,
	ResyncRate:     -1,
	ResyncInterval: 100 * time.Millisecond,
	RegionSize:     64 << 10,
}

// startCluster starts topo for the test; it is closed when the test ends,
// and its logs are printed if the test failed.
func startCluster(t *testing.T, ctx context.Context, topo Topology) *Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("starts dst processes; skipped in -short mode")
	}
	dir := t.TempDir()
	lg := slog.New(slog.NewTextHandler(testkit.LogWriter(t), &slog.HandlerOptions{Level: slog.LevelInfo}))
	c, err := Start(ctx, Options{Binary: dstBinary, Dir: dir, Topology: topo, Logger: lg})
	require.NoError(t, err, "start %s", topo)
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := c.Close(cctx)
		if t.Failed() {
			for _, path := range c.Logs() {
				t.Logf("--- %s:\n%s", path, proc.Tail(path, 2<<10))
			}
		}
		require.NoError(t, err, "close")
	})
	t.Logf("cluster %s: device %d bytes at %s, dir %s", topo, c.Size(), c.Engine().Addr(), dir)
	return c
}

// dial connects an NBD client to the engine, closed when the test ends.
func dial(t *testing.T, ctx context.Context, c *Cluster) *nbd.Client {
	t.Helper()
	cl, err := nbd.Dial(ctx, "tcp", c.Engine().Addr(), nbd.ClientOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { cl.Close() })
	return cl
}

// writer writes seeded blocks to non-overlapping slots of the device, one
// write at a time, and remembers what each slot got last.
type writer struct {
	cl     *nbd.Client
	slots  []int64
	length int
	rng    *rand.Rand

	mu   sync.Mutex
	want map[int64][]byte
	err  error

	writes atomic.Int64
	stop   chan struct{}
	done   chan struct{}
}

// newWriter makes slots of length bytes across a device of size bytes:
// one straddling each boundary and n more at random.
func newWriter(cl *nbd.Client, size int64, boundaries []int64, length, n int, seed uint64) *writer {
	rng := rand.New(rand.NewPCG(seed, 1))
	var cand []int64
	for _, b := range boundaries {
		cand = append(cand, b-int64(length)/2-int64(rng.IntN(64)))
	}
	for range n {
		cand = append(cand, rng.Int64N(size-int64(length)))
	}
	slices.Sort(cand)
	w := &writer{cl: cl, length: length, rng: rng, want: map[int64][]byte{}}
	next := int64(0)
	for _, off := range cand {
		if off >= next && off >= 0 && off+int64(length) <= size {
			w.slots = append(w.slots, off)
			next = off + int64(length)
		}
	}
	return w
}

// writeOne writes fresh bytes to slot i and records them once acknowledged.
func (w *writer) writeOne(ctx context.Context, i int) error {
	buf := make([]byte, w.length)
	for j := range buf {
		buf[j] = byte(w.rng.Uint32())
	}
	off := w.slots[i]
	// One write is bounded, never cancelled halfway: a cancelled write
	// would leave the slot's content unknown.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	defer cancel()
	if err := w.cl.WriteAt(wctx, buf, off, 0); err != nil {
		return fmt.Errorf("write slot %d at %#x: %w", i, off, err)
	}
	w.mu.Lock()
	w.want[off] = buf
	w.mu.Unlock()
	w.writes.Add(1)
	return nil
}

// fill writes every slot once.
func (w *writer) fill(t *testing.T, ctx context.Context) {
	t.Helper()
	for i := range w.slots {
		require.NoError(t, w.writeOne(ctx, i))
	}
}

// start writes random slots until stopped.
func (w *writer) start(ctx context.Context) {
	w.stop, w.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			case <-ctx.Done():
				return
			default:
			}
			if err := w.writeOne(ctx, w.rng.IntN(len(w.slots))); err != nil {
				w.mu.Lock()
				w.err = err
				w.mu.Unlock()
				return
			}
		}
	}()
}

// halt stops the writer and requires that no write failed.
func (w *writer) halt(t *testing.T) {
	t.Helper()
	close(w.stop)
	<-w.done // bounded: one write takes at most 20 s
	w.mu.Lock()
	defer w.mu.Unlock()
	require.NoError(t, w.err)
}

// waitWrites waits until n more writes completed than when it was called.
func (w *writer) waitWrites(t *testing.T, n int64, what string) {
	t.Helper()
	target := w.writes.Load() + n
	deadline := time.Now().Add(20 * time.Second)
	for w.writes.Load() < target {
		w.mu.Lock()
		err := w.err
		w.mu.Unlock()
		require.NoError(t, err, what)
		require.True(t, time.Now().Before(deadline), "%s: %d writes in 20 s, want %d", what, w.writes.Load(), target)
		time.Sleep(10 * time.Millisecond) // polling progress, bounded by the deadline
	}
}

// verify reads every written slot back through the engine.
func (w *writer) verify(t *testing.T, ctx context.Context, what string) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	got := make([]byte, w.length)
	for off, want := range w.want {
		require.NoError(t, w.cl.ReadAt(ctx, got, off), "%s: read %#x", what, off)
		require.Equal(t, want, got, "%s: slot at %#x", what, off)
	}
}

// requireConverged requires that every mirror's replicas are identical.
func requireConverged(t *testing.T, ctx context.Context, c *Cluster) {
	t.Helper()
	div, err := c.Converged(ctx)
	require.NoError(t, err)
	require.Empty(t, div)
}
