// Through the fault proxy of nbdtest between a remote node and an
// in-process server: a lost reply makes the try time out, the connection
// is fenced and the request resent and acknowledged; cuts under a stream
// of writes cost the callers nothing and every byte is intact; a write
// held in the network when its connection is fenced and cut never lands
// after the newer write to its range; and — the documented limit of
// client-side fencing — a write the far side still holds after the client
// closed its connection can land late, which the last test pins down.
package node_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"dst/storage/nbd"
	"dst/storage/nbd/nbdproxy"
	"dst/storage/nbd/nbdtest"
	"dst/storage/node"
)

// proxied serves a memory node of size bytes behind a fault proxy and
// returns a remote node connected through the proxy.
func proxied(t *testing.T, size int, opts node.RemoteOptions) (*node.Memory, *nbdproxy.Proxy, *node.Remote) {
	t.Helper()
	m, p := startMemory(t, size)
	px := nbdtest.StartProxy(t, "tcp", p.addr, nbdproxy.Options{})
	r := newRemote(t, "nbd://"+px.Addr()+"/mem", opts)
	ready(t, r)
	return m, px, r
}

// once returns a match function that accepts the first request match
// accepts, and no other.
func once(match func(nbd.Request) bool) func(nbd.Request) bool {
	var done atomic.Bool
	return func(req nbd.Request) bool {
		return match(req) && done.CompareAndSwap(false, true)
	}
}

func writeAt(off uint64) func(nbd.Request) bool {
	return func(req nbd.Request) bool { return req.Cmd == nbd.CmdWrite && req.Offset == off }
}

func TestProxyLostReplyIsResent(t *testing.T) {
	st := newStates()
	opts := fastOptions(st)
	opts.RequestTimeout = 200 * time.Millisecond
	m, px, r := proxied(t, 1<<20, opts)
	ctx := ctxFor(t, 30*time.Second)

	px.DropReplies(once(writeAt(65536)))
	start := time.Now()
	require.NoError(t, r.WriteAt(ctx, pattern(0xd1, 4096), 65536, 0))
	t.Logf("acknowledged after %v", time.Since(start))
	st.wait(t, time.Second, "a fence after the timeout", isState(node.StateConnecting, node.ErrTimeout))
	require.Equal(t, pattern(0xd1, 4096), m.Bytes(65536, 4096))
	mt := r.Metrics()
	assert.Equal(t, uint64(1), mt.Timeouts)
	assert.Equal(t, uint64(1), mt.Retries)
	assert.Equal(t, uint64(1), mt.Reconnects)
	assert.Equal(t, int64(1), px.Stats().RepliesDropped)
	assert.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond)
}

func TestProxyCutsDuringWrites(t *testing.T) {
	const (
		writers   = 4
		blocks    = 16
		blockSize = 4096
		size      = writers * blocks * blockSize
	)
	st := newStates()
	opts := fastOptions(st)
	opts.Budget = 20 * time.Second
	m, px, r := proxied(t, size, opts)

	stop := make(chan struct{})
	progress := make(chan struct{}, 4096)
	last := make([]uint64, writers)
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			buf := make([]byte, blockSize)
			for round := uint64(1); ; round++ {
				for b := range blocks {
					binary.LittleEndian.PutUint64(buf, uint64(w))
					binary.LittleEndian.PutUint64(buf[8:], round)
					if err := r.WriteAt(context.Background(), buf, int64((w*blocks+b)*blockSize), 0); err != nil {
						errs <- err
						return
					}
					select {
					case progress <- struct{}{}:
					default:
					}
				}
				last[w] = round
				select {
				case <-stop:
					return
				default:
				}
			}
		})
	}
	writes := func(n int) {
		t.Helper()
		timeout := time.After(20 * time.Second)
		for range n {
			select {
			case <-progress:
			case err := <-errs:
				t.Fatalf("a writer failed: %v", err)
			case <-timeout:
				t.Fatal("the writers made no progress")
			}
		}
	}
	writes(100)
	for range 5 {
		px.Cut()
		st.wait(t, 10*time.Second, "a reconnect after the cut", isState(node.StateConnected, nil))
		writes(100)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("writer: %v", err)
	}
	for w := range writers {
		for b := range blocks {
			got := m.Bytes((w*blocks+b)*blockSize, 16)
			require.Equal(t, uint64(w), binary.LittleEndian.Uint64(got), "block %d of writer %d", b, w)
			require.Equal(t, last[w], binary.LittleEndian.Uint64(got[8:]), "block %d of writer %d holds the last round", b, w)
		}
	}
	mt := r.Metrics()
	t.Logf("metrics: %+v; proxy cuts: %d", mt, px.Stats().Cuts)
	assert.GreaterOrEqual(t, mt.Reconnects, uint64(5))
	assert.Zero(t, mt.Failures)
}

// heldWrite sends an old write (0xaa) to 64 KiB that the proxy holds,
// waits until the node fenced its connection for it and the write was
// resent and acknowledged on a new connection, then lets fence (the
// network's part) happen and writes 0xbb over the same range. It returns
// the memory node and the proxy's release function.
func heldWrite(t *testing.T, afterFence func(px *nbdproxy.Proxy)) (*node.Memory, *nbdproxy.Proxy, func()) {
	st := newStates()
	opts := fastOptions(st)
	opts.RequestTimeout = 200 * time.Millisecond
	m, px, r := proxied(t, 1<<20, opts)
	ctx := ctxFor(t, 30*time.Second)

	release := px.HoldWrites(once(func(req nbd.Request) bool { return req.Offset == 65536 }))
	old := make(chan error, 1)
	go func() { old <- r.WriteAt(ctx, pattern(0xaa, 4096), 65536, 0) }()
	st.wait(t, 10*time.Second, "a fence after the held write timed out", isState(node.StateConnecting, node.ErrTimeout))
	afterFence(px)
	require.NoError(t, <-old, "the old write was resent and acknowledged")
	require.Equal(t, pattern(0xaa, 4096), m.Bytes(65536, 4096))
	require.NoError(t, r.WriteAt(ctx, pattern(0xbb, 4096), 65536, 0), "the newer write")
	require.Equal(t, pattern(0xbb, 4096), m.Bytes(65536, 4096))
	assert.Equal(t, int64(1), px.Stats().Held)
	return m, px, release
}

func TestProxyHeldWriteDiesWithItsConnection(t *testing.T) {
	m, px, release := heldWrite(t, func(px *nbdproxy.Proxy) {
		px.Cut() // the network drops what it held on the fenced connection
	})
	release()
	ctx := ctxFor(t, 10*time.Second)
	require.NoError(t, px.Wait(ctx, func(s nbdproxy.Stats) bool { return s.HeldDropped+s.Released >= 1 }))
	st := px.Stats()
	require.Equal(t, int64(1), st.HeldDropped, "the held old write died with its connection")
	require.Zero(t, st.Released)
	require.Equal(t, pattern(0xbb, 4096), m.Bytes(65536, 4096), "the newer write stays")
}

// Beyond client-side fencing: the proxy here plays a peer that keeps
// what it read from a connection the client has closed (a stopped
// process resumed, a disk that hung) and delivers it later. Client-side
// fencing alone cannot stop that old write from landing after the newer
// one; the dst server can: the node's new connection carried a fence
// (nbd.OptFence), so the server closed the old connection and drops what
// arrives on it.
func TestProxyStaleWriteFencedByServer(t *testing.T) {
	m, px, release := heldWrite(t, func(*nbdproxy.Proxy) {})
	release()
	ctx := ctxFor(t, 10*time.Second)
	require.NoError(t, px.Wait(ctx, func(s nbdproxy.Stats) bool { return s.Released+s.HeldDropped >= 1 }))
	require.Never(t, func() bool { return !bytes.Equal(m.Bytes(65536, 4096), pattern(0xbb, 4096)) },
		500*time.Millisecond, time.Millisecond, "the stale write landed after the newer one")
}
