// A remote node carries every command to an in-process NBD server over a
// memory node and back (reads, writes with and without FUA, flush, trim,
// write zeroes, cache, requests split at the peer's maximum block), learns
// size and flags from the handshake, returns the peer's NBD errors as they
// are without retrying them, and on Close fails the calls in flight, waits
// for them and leaves no goroutine behind — checked against the memory
// node's own bytes, the node's counters and the goroutine stacks.
package node_test

import (
	"bytes"
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"dst/storage/nbd"
	"dst/storage/node"
)

func TestRemoteRoundTrip(t *testing.T) {
	const size = 1 << 20
	m, p := startMemory(t, size)
	r := newRemote(t, p.url(), node.RemoteOptions{})
	ready(t, r)
	ctx := ctxFor(t, 30*time.Second)

	assert.Equal(t, int64(size), r.Size())
	assert.Equal(t, node.MemoryFlags, r.Flags(), "flags %v", r.Flags())
	assert.Equal(t, p.url(), r.String())
	assert.Equal(t, node.StateConnected, r.State())

	require.NoError(t, r.WriteAt(ctx, pattern(0x5a, 3000), 4097, 0))
	require.NoError(t, r.WriteAt(ctx, pattern(0x11, 8192), 65536, nbd.CmdFlagFUA))
	require.Equal(t, pattern(0x5a, 3000), m.Bytes(4097, 3000), "the write reached the peer")
	got := make([]byte, 8192)
	require.NoError(t, r.ReadAt(ctx, got, 65536))
	require.Equal(t, pattern(0x11, 8192), got)

	flushes := m.Flushes()
	require.NoError(t, r.Flush(ctx))
	require.Equal(t, flushes+1, m.Flushes())

	require.NoError(t, r.Trim(ctx, 65536, 4096, 0))
	require.Equal(t, make([]byte, 4096), m.Bytes(65536, 4096), "the memory node zeroes trimmed bytes")
	require.NoError(t, r.WriteZeroes(ctx, 69632, 4096, nbd.CmdFlagNoHole))
	require.Equal(t, make([]byte, 4096), m.Bytes(69632, 4096))
	require.NoError(t, r.Cache(ctx, 0, size))
	require.NoError(t, r.WriteAt(ctx, nil, 0, 0), "an empty write is no request")

	mt := r.Metrics()
	assert.Equal(t, uint64(8), mt.Requests)
	assert.Equal(t, uint64(3000+8192+8192), mt.Bytes)
	assert.Zero(t, mt.Retries)
	assert.Zero(t, mt.Failures)
	assert.Equal(t, uint64(1), mt.Connects)
	assert.Zero(t, mt.Reconnects)
}

func TestRemoteSplitsAtMaxBlock(t *testing.T) {
	const size = 4 << 20
	m := node.NewMemory(size)
	p := startPeer(t, "127.0.0.1:0", m, peerOptions{size: size, maxBlock: 64 << 10})
	r := newRemote(t, p.url(), node.RemoteOptions{})
	ready(t, r)
	ctx := ctxFor(t, 30*time.Second)
	info, ok := r.Info()
	require.True(t, ok)
	require.Equal(t, uint32(64<<10), info.MaxBlock)

	data := make([]byte, 1<<20+512)
	for i := range data {
		data[i] = byte(i * 7)
	}
	require.NoError(t, r.WriteAt(ctx, data, 1000, nbd.CmdFlagFUA))
	require.Equal(t, data, m.Bytes(1000, len(data)))
	got := make([]byte, len(data))
	require.NoError(t, r.ReadAt(ctx, got, 1000))
	require.True(t, bytes.Equal(data, got), "a 1 MiB read in 64 KiB parts")
	require.Equal(t, uint64(2), r.Metrics().Requests, "parts are one request each")
}

func TestRemoteErrorsAreNotRetried(t *testing.T) {
	m, p := startMemory(t, 1<<20)
	r := newRemote(t, p.url(), node.RemoteOptions{})
	ready(t, r)
	ctx := ctxFor(t, 30*time.Second)
	for _, errno := range []nbd.Errno{nbd.EIO, nbd.ENOSPC, nbd.EPERM, nbd.EINVAL} {
		m.SetFail(errno)
		err := r.WriteAt(ctx, pattern(1, 512), 0, 0)
		require.ErrorIs(t, err, errno)
		require.NotErrorIs(t, err, node.ErrUnavailable)
		require.Contains(t, err.Error(), "WRITE offset 0 length 512")
		require.Contains(t, err.Error(), p.url(), "the error names the node")
	}
	m.SetFail(nil)
	err := r.ReadAt(ctx, make([]byte, 4096), 1<<20)
	require.ErrorIs(t, err, nbd.EINVAL, "beyond the end: the server refuses")
	mt := r.Metrics()
	assert.Zero(t, mt.Retries)
	assert.Equal(t, uint64(5), mt.Failures)
	assert.Zero(t, mt.Unavailable)
	assert.Zero(t, mt.Fences, "an error reply says nothing against the connection")
}

func TestRemoteReadOnlyExport(t *testing.T) {
	m := node.NewMemory(1 << 20)
	p := startPeer(t, "127.0.0.1:0", m, peerOptions{size: 1 << 20, flags: node.MemoryFlags | nbd.FlagReadOnly})
	r := newRemote(t, p.url(), node.RemoteOptions{})
	ready(t, r)
	ctx := ctxFor(t, 30*time.Second)
	require.NotZero(t, r.Flags()&nbd.FlagReadOnly)
	require.ErrorIs(t, r.WriteAt(ctx, pattern(1, 512), 0, 0), nbd.EPERM)
	require.ErrorIs(t, r.Trim(ctx, 0, 512, 0), nbd.EPERM)
	require.NoError(t, r.ReadAt(ctx, make([]byte, 512), 0))
}

func TestRemoteClose(t *testing.T) {
	m := node.NewMemory(1 << 20)
	m.Block, m.Entered = make(chan struct{}), make(chan struct{}, 16)
	defer close(m.Block)
	p := startPeer(t, "127.0.0.1:0", m, peerOptions{size: 1 << 20})
	addr, err := node.ParseURL(p.url())
	require.NoError(t, err)
	st := newStates()
	r, err := node.NewRemote(addr, node.RemoteOptions{PingInterval: -1, OnState: st.onState})
	require.NoError(t, err)
	ran := make(chan error, 1)
	go func() { ran <- r.Run(context.Background()) }()
	ready(t, r)

	// A call in flight on a peer that does not answer: Close fails it and
	// waits for it.
	failed := make(chan error, 1)
	go func() { failed <- r.WriteAt(context.Background(), pattern(2, 512), 0, 0) }()
	<-m.Entered
	start := time.Now()
	require.NoError(t, r.Close())
	t.Logf("Close took %v", time.Since(start))
	// Close released the call; its goroutine may not have run yet to
	// report it (seen under -race), but it must not wait for the peer.
	select {
	case err := <-failed:
		require.ErrorIs(t, err, node.ErrUnavailable)
	case <-time.After(time.Second):
		t.Fatal("the call in flight is still waiting a second after Close")
	}
	require.NoError(t, <-ran, "Run returns nil after Close")
	require.Equal(t, node.StateStopped, r.State())
	stacks := make([]byte, 1<<20)
	stacks = stacks[:runtime.Stack(stacks, true)]
	for _, frame := range []string{"node.(*Remote)", "nbd.(*Client).receive"} {
		require.NotContains(t, string(stacks), frame, "a goroutine of the node outlived Close")
	}
	st.wait(t, time.Second, "stopped", isState(node.StateStopped, nil))

	ctx := ctxFor(t, 5*time.Second)
	require.ErrorIs(t, r.ReadAt(ctx, make([]byte, 512), 0), node.ErrUnavailable, "calls after Close fail at once")
	require.ErrorIs(t, r.Run(ctx), node.ErrUnavailable, "Run after Close")
	require.NoError(t, r.Close(), "Close twice")
}

func TestRemoteNewErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		addr node.Address
	}{
		{"no network", node.Address{Addr: "x:1"}},
		{"no address", node.Address{Network: "tcp"}},
		{"TLS without config", node.Address{Network: "tcp", Addr: "x:1", TLS: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := node.NewRemote(tc.addr, node.RemoteOptions{})
			require.ErrorIs(t, err, node.ErrBadURL)
		})
	}
}
