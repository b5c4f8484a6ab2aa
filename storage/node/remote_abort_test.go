// Abort ends what a Remote has in flight or waiting at once — a request on
// the wire of a peer that does not answer, a request waiting for a
// connection — without waiting for the budget, and the node goes on
// serving afterwards.
package node_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/storage/node"
)

func TestRemoteAbort(t *testing.T) {
	m := node.NewMemory(1 << 20)
	m.Block, m.Entered = make(chan struct{}), make(chan struct{}, 1024)
	p := startPeer(t, "127.0.0.1:0", m, peerOptions{size: 1 << 20})
	r := newRemote(t, p.url(), node.RemoteOptions{RequestTimeout: time.Minute, Budget: time.Minute, PingInterval: -1})
	ready(t, r)

	// On the wire, unanswered.
	failed := make(chan error, 1)
	go func() { failed <- r.WriteAt(context.Background(), pattern(2, 512), 0, 0) }()
	<-m.Entered
	start := time.Now()
	r.Abort(errors.New("test says stop"))
	select {
	case err := <-failed:
		require.ErrorIs(t, err, node.ErrUnavailable)
		require.ErrorIs(t, err, node.ErrAborted)
		t.Logf("the request ended %v after Abort", time.Since(start).Round(time.Microsecond))
	case <-time.After(10 * time.Second):
		t.Fatal("the request on the wire was not aborted")
	}

	// The node goes on: it reconnects and serves.
	close(m.Block) // the peer answers again
	ready(t, r)
	ctx := ctxFor(t, 30*time.Second)
	require.NoError(t, r.WriteAt(ctx, pattern(3, 512), 4096, 0))
	got := make([]byte, 512)
	require.NoError(t, r.ReadAt(ctx, got, 4096))
	require.Equal(t, pattern(3, 512), got)

	// Waiting for a connection: the peer is gone.
	p.stop()
	waiting := make(chan error, 1)
	go func() { waiting <- r.ReadAt(context.Background(), got, 0) }()
	time.Sleep(200 * time.Millisecond) // let it reach the wait
	r.Abort(errors.New("peer is gone"))
	select {
	case err := <-waiting:
		require.ErrorIs(t, err, node.ErrAborted)
	case <-time.After(10 * time.Second):
		t.Fatal("the request waiting for a connection was not aborted")
	}
}
