// The in-place path (NowaitBackend): requests the backend takes at once
// are served by the connection's reader and their replies sent in bursts;
// requests it refuses, larger ones and everything else go to the workers.
// Mixed at random under many requests in flight, every read returns what
// was written and every error reaches its own request.
package nbd_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	. "dst/storage/nbd"

	"dst/internal/testkit"
	"dst/storage/node"
	"dst/storage/node/nodetest"
)

func TestInPlaceMixedWithWorkers(t *testing.T) {
	const size = 8 << 20
	m := nodetest.NewNowait(size)
	var rmu sync.Mutex
	var mixing atomic.Bool
	mixing.Store(true)
	rng := rand.New(rand.NewPCG(1, 2))
	m.Refuse = func(bool, int64, int) bool { // about one in three goes to a worker
		rmu.Lock()
		defer rmu.Unlock()
		return mixing.Load() && rng.IntN(3) == 0
	}
	_, addr := startServer(t, ServerOptions{Exports: []*Export{{Name: "m", Size: size, Flags: node.MemoryFlags, Backend: m}}})
	c := dial(t, addr, ClientOptions{})
	ctx := testkit.Context(t, 30*time.Second)

	// 16 writers, each owning a 512 KiB region: write, read back, compare,
	// with sizes on both sides of the in-place limit and some FUA.
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 7))
			base := int64(w) * (512 << 10)
			for i := range 60 {
				n := 512 * (1 + r.IntN(255)) // up to ~128 KiB
				off := base + int64(512*r.IntN((512<<10-n)/512+1))
				p := make([]byte, n)
				for j := range p {
					p[j] = byte(w*31 + i + j)
				}
				var flags CmdFlags
				if i%7 == 0 {
					flags = CmdFlagFUA
				}
				if err := c.WriteAt(ctx, p, off, flags); err != nil {
					errs <- err
					return
				}
				got := make([]byte, n)
				if err := c.ReadAt(ctx, got, off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, p) {
					errs <- errors.New("read back differs")
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.NoError(t, c.Flush(ctx))
	require.NotZero(t, m.Served.Load(), "nothing was served in place")
	require.NotZero(t, m.Refused.Load(), "nothing was refused")

	// A backend error on the in-place path reaches the request as EIO,
	// and the connection stays up.
	mixing.Store(false)
	m.SetFail(errors.New("media error"))
	require.ErrorIs(t, c.ReadAt(ctx, make([]byte, 4096), 0), EIO)
	require.ErrorIs(t, c.WriteAt(ctx, make([]byte, 4096), 0, 0), EIO)
	m.SetFail(nil)
	require.NoError(t, c.ReadAt(ctx, make([]byte, 4096), 0))
}

// Requests pipelined in one burst are served in place and their replies
// held and sent together; a shutdown then still drains cleanly.
func TestInPlaceBurstThenShutdown(t *testing.T) {
	const size = 1 << 20
	m := nodetest.NewNowait(size)
	srv, addr := startServer(t, ServerOptions{Exports: []*Export{{Name: "m", Size: size, Flags: node.MemoryFlags, Backend: m}}})
	c := dial(t, addr, ClientOptions{})
	ctx := testkit.Context(t, 30*time.Second)
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() {
			p := bytes.Repeat([]byte{byte(i)}, 4096)
			require.NoError(t, c.WriteAt(ctx, p, int64(i)*4096, 0))
		})
	}
	wg.Wait()
	for i := range 64 {
		got := make([]byte, 4096)
		require.NoError(t, c.ReadAt(ctx, got, int64(i)*4096))
		require.Equal(t, bytes.Repeat([]byte{byte(i)}, 4096), got)
	}
	// A write whose payload has not fully arrived goes to a worker, so
	// not quite all of them are served in place.
	require.Greater(t, m.Served.Load(), int64(64))
	sctx, cancel := context.WithTimeout(context.Background(), 5e9)
	defer cancel()
	require.NoError(t, srv.Shutdown(sctx))
}
