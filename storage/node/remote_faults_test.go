// A remote node survives its peer's failures as its contract says: a
// server restarted under a stream of writes costs the callers nothing (no
// error, every byte intact, a reconnect counted); a server down for longer
// than the retries fails a request with ErrUnavailable within the budget
// and the node recovers by itself when the server returns; a hung peer
// (the memory node's Block hook) makes tries time out, the connection is
// fenced and re-established and the request resent until it completes;
// an idle connection to a hung peer is found out by the ping alone; and a
// peer restarted with other media is seen at the reconnect (Size, OnState).
// Each is driven by stopping, blocking and restarting in-process NBD
// servers on one loopback address, and observed through OnState, the
// metrics and the memory node's bytes.
package node_test

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"dst/storage/nbd"
	"dst/storage/node"
)

// fastOptions make a node that notices failures within a second.
func fastOptions(st *states) node.RemoteOptions {
	return node.RemoteOptions{
		DialTimeout:    time.Second,
		RequestTimeout: time.Second,
		Retries:        5,
		BackoffMin:     10 * time.Millisecond,
		BackoffMax:     100 * time.Millisecond,
		PingInterval:   -1,
		OnState:        st.onState,
	}
}

func TestRemoteServerRestart(t *testing.T) {
	const (
		writers   = 4
		blocks    = 16 // per writer
		blockSize = 4096
		size      = writers * blocks * blockSize
	)
	m, p := startMemory(t, size)
	st := newStates()
	opts := fastOptions(st)
	opts.Budget = 20 * time.Second // a restart is no reason to give up
	r := newRemote(t, p.url(), opts)
	ready(t, r)

	// Writer w stamps its blocks, round after round, with (w, round).
	stop := make(chan struct{})
	progress := make(chan int, 1024)
	last := make([]int, writers) // the last round each writer completed
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			buf := make([]byte, blockSize)
			ctx := context.Background()
			for round := 1; ; round++ {
				for b := range blocks {
					binary.LittleEndian.PutUint64(buf, uint64(w))
					binary.LittleEndian.PutUint64(buf[8:], uint64(round))
					if err := r.WriteAt(ctx, buf, int64((w*blocks+b)*blockSize), 0); err != nil {
						errs <- err
						return
					}
				}
				last[w] = round
				select {
				case progress <- w:
				default:
				}
				select {
				case <-stop:
					return
				default:
				}
			}
		})
	}
	rounds := func(n int) {
		t.Helper()
		timeout := time.After(20 * time.Second)
		for range n {
			select {
			case <-progress:
			case err := <-errs:
				t.Fatalf("a writer failed: %v", err)
			case <-timeout:
				t.Fatalf("the writers made no progress")
			}
		}
	}

	rounds(8)
	for restart := range 2 {
		p.stop()
		st.wait(t, 10*time.Second, "lost connection", isState(node.StateConnecting, nil))
		p = startPeer(t, p.addr, m, peerOptions{size: size})
		st.wait(t, 10*time.Second, "reconnect", isState(node.StateConnected, nil))
		rounds(8)
		t.Logf("restart %d done: %+v", restart, r.Metrics())
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
			gw, gr := binary.LittleEndian.Uint64(got), binary.LittleEndian.Uint64(got[8:])
			require.Equal(t, uint64(w), gw, "block %d of writer %d", b, w)
			require.Equal(t, uint64(last[w]), gr, "block %d of writer %d holds the last round", b, w)
		}
	}
	mt := r.Metrics()
	assert.GreaterOrEqual(t, mt.Reconnects, uint64(2))
	assert.Zero(t, mt.Failures)
	t.Logf("metrics: %+v", mt)
}

func TestRemoteServerDownLongerThanRetries(t *testing.T) {
	m, p := startMemory(t, 1<<20)
	st := newStates()
	opts := fastOptions(st)
	opts.RequestTimeout, opts.Retries = 100*time.Millisecond, 3 // budget: 4 × 100 ms
	r := newRemote(t, p.url(), opts)
	ready(t, r)
	ctx := ctxFor(t, 30*time.Second)
	require.NoError(t, r.WriteAt(ctx, pattern(7, 512), 0, 0))

	p.stop()
	st.wait(t, 10*time.Second, "lost connection", isState(node.StateConnecting, nil))
	start := time.Now()
	err := r.WriteAt(ctx, pattern(8, 512), 0, 0)
	elapsed := time.Since(start)
	require.ErrorIs(t, err, node.ErrUnavailable)
	t.Logf("failed after %v: %v", elapsed, err)
	assert.GreaterOrEqual(t, elapsed, 400*time.Millisecond, "the request waited its budget")
	assert.Less(t, elapsed, 400*time.Millisecond+time.Second, "and not much longer")
	assert.Equal(t, uint64(1), r.Metrics().Unavailable)

	p = startPeer(t, p.addr, m, peerOptions{size: 1 << 20})
	st.wait(t, 10*time.Second, "reconnect", isState(node.StateConnected, nil))
	require.NoError(t, r.WriteAt(ctx, pattern(9, 512), 0, 0), "the node recovered by itself")
	require.Equal(t, pattern(9, 512), m.Bytes(0, 512))
}

func TestRemoteHungPeer(t *testing.T) {
	m := node.NewMemory(1 << 20)
	m.Block = make(chan struct{})
	p := startPeer(t, "127.0.0.1:0", m, peerOptions{size: 1 << 20})
	st := newStates()
	opts := fastOptions(st)
	opts.RequestTimeout, opts.Retries = 200*time.Millisecond, 20
	r := newRemote(t, p.url(), opts)
	ready(t, r)

	done := make(chan error, 1)
	go func() { done <- r.WriteAt(context.Background(), pattern(0x42, 4096), 8192, 0) }()
	for range 2 {
		st.wait(t, 10*time.Second, "a fence after a timeout", isState(node.StateConnecting, node.ErrTimeout))
		st.wait(t, 10*time.Second, "a reconnect", isState(node.StateConnected, nil))
	}
	close(m.Block) // the peer wakes up: the current try completes
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the write did not complete after the peer woke up")
	}
	require.Equal(t, pattern(0x42, 4096), m.Bytes(8192, 4096))
	mt := r.Metrics()
	t.Logf("metrics: %+v", mt)
	assert.GreaterOrEqual(t, mt.Timeouts, uint64(2))
	assert.GreaterOrEqual(t, mt.Retries, uint64(2))
	assert.GreaterOrEqual(t, mt.Fences, uint64(2))
	assert.GreaterOrEqual(t, mt.Reconnects, uint64(2))
	assert.Zero(t, mt.Failures)
	_ = p
}

func TestRemotePingFindsDeadPeer(t *testing.T) {
	m := node.NewMemory(1 << 20)
	m.Block = make(chan struct{})
	defer close(m.Block)
	p := startPeer(t, "127.0.0.1:0", m, peerOptions{size: 1 << 20})
	st := newStates()
	opts := fastOptions(st)
	opts.RequestTimeout, opts.PingInterval = 200*time.Millisecond, 100*time.Millisecond
	r := newRemote(t, p.url(), opts)
	ready(t, r)

	// No request at all: only the ping can notice that the peer hangs.
	e := st.wait(t, 10*time.Second, "a fence after a ping timeout", isState(node.StateConnecting, node.ErrTimeout))
	require.Contains(t, e.err.Error(), "ping")
	st.wait(t, 10*time.Second, "a reconnect", isState(node.StateConnected, nil))
	mt := r.Metrics()
	assert.GreaterOrEqual(t, mt.Pings, uint64(1))
	assert.GreaterOrEqual(t, mt.Timeouts, uint64(1))
	assert.Zero(t, mt.Requests, "no request was needed")
}

func TestRemotePingKeepsHealthyConnection(t *testing.T) {
	_, p := startMemory(t, 1<<20)
	st := newStates()
	opts := fastOptions(st)
	opts.PingInterval = 20 * time.Millisecond
	r := newRemote(t, p.url(), opts)
	ready(t, r)
	st.wait(t, time.Second, "connected", isState(node.StateConnected, nil))
	ctx := ctxFor(t, 10*time.Second)
	for r.Metrics().Pings < 5 {
		select {
		case e := <-st.ch:
			t.Fatalf("state changed on a healthy connection: %v (%v)", e.state, e.err)
		case <-ctx.Done():
			t.Fatal("fewer than 5 pings in 10 s")
		case <-time.After(10 * time.Millisecond):
		}
	}
	assert.Zero(t, r.Metrics().Fences)
}

func TestRemoteSizeLearnedAtReconnect(t *testing.T) {
	m, p := startMemory(t, 1<<20)
	st := newStates()
	r := newRemote(t, p.url(), fastOptions(st))
	ready(t, r)
	st.wait(t, time.Second, "connected", isState(node.StateConnected, nil))
	require.Equal(t, int64(1<<20), r.Size())

	p.stop()
	big := node.NewMemory(2 << 20)
	startPeer(t, p.addr, big, peerOptions{size: 2 << 20, flags: node.MemoryFlags &^ nbd.FlagSendCache})
	e := st.wait(t, 10*time.Second, "a size change", isState(node.StateConnected, node.ErrSizeChanged))
	require.ErrorIs(t, e.err, node.ErrFlagsChanged, "the flags changed too")
	require.Contains(t, e.err.Error(), "1048576 -> 2097152 bytes")
	require.Equal(t, int64(2<<20), r.Size())
	require.Zero(t, r.Flags()&nbd.FlagSendCache)
	ctx := ctxFor(t, 10*time.Second)
	require.NoError(t, r.WriteAt(ctx, pattern(3, 512), 2<<20-512, 0), "the new end is reachable")
	require.Equal(t, pattern(3, 512), big.Bytes(2<<20-512, 512))
	_ = m
}
