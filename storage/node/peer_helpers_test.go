// Helpers of the remote node tests: an in-process NBD server (nbd.Server
// over any backend) on a loopback port that a test can stop and restart
// on the same address, a remote node whose Run and Close the test's
// cleanup bounds, and a recorder of its state changes.
package node_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/nbd"
	"dst/storage/node"
)

// peer is an nbd.Server serving one backend on a loopback address.
type peer struct {
	t      testing.TB
	addr   string
	srv    *nbd.Server
	cancel context.CancelFunc
	served chan error
	once   sync.Once
}

// peerOptions describe the export a peer serves.
type peerOptions struct {
	size     int64
	flags    nbd.TransmissionFlags // zero: node.MemoryFlags
	maxBlock uint32
}

// startPeer serves b on addr ("127.0.0.1:0" for a new port) until stop
// or the end of the test.
func startPeer(t testing.TB, addr string, b nbd.Backend, o peerOptions) *peer {
	t.Helper()
	if o.flags == 0 {
		o.flags = node.MemoryFlags
	}
	srv, err := nbd.NewServer(nbd.ServerOptions{Exports: []*nbd.Export{{
		Name: "mem", Size: o.size, Flags: o.flags, MaxBlock: o.maxBlock, Backend: b,
	}}})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	p := &peer{t: t, addr: ln.Addr().String(), srv: srv, cancel: cancel, served: make(chan error, 1)}
	go func() { p.served <- srv.Serve(ctx, ln) }()
	t.Cleanup(p.stop)
	return p
}

// startMemory serves a new memory node of size bytes.
func startMemory(t testing.TB, size int) (*node.Memory, *peer) {
	m := node.NewMemory(size)
	return m, startPeer(t, "127.0.0.1:0", m, peerOptions{size: int64(size)})
}

// stop shuts the server down as dst export does on SIGTERM: requests in
// flight complete, new ones get ESHUTDOWN, connections close. Backends
// blocked past 5 s are released by cancelling the serving context.
func (p *peer) stop() {
	p.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		go func() { // a blocked backend must not hold Shutdown forever
			<-ctx.Done()
			p.cancel()
		}()
		_ = p.srv.Shutdown(ctx)
		p.cancel()
		select {
		case <-p.served:
		case <-time.After(10 * time.Second):
			p.t.Errorf("peer %s: Serve did not return", p.addr)
		}
	})
}

// url returns the peer's NBD URL.
func (p *peer) url() string { return "nbd://" + p.addr + "/mem" }

// stateEvent is one call of OnState.
type stateEvent struct {
	state node.State
	err   error
}

// states records OnState calls; wait takes them in order.
type states struct{ ch chan stateEvent }

func newStates() *states { return &states{ch: make(chan stateEvent, 1024)} }

func (s *states) onState(st node.State, err error) {
	select {
	case s.ch <- stateEvent{st, err}:
	default:
		panic("states: more than 1024 state changes unread")
	}
}

// wait returns the first event from now on that match accepts, failing
// the test after d.
func (s *states) wait(t testing.TB, d time.Duration, what string, match func(stateEvent) bool) stateEvent {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		select {
		case e := <-s.ch:
			t.Logf("state %v (%v)", e.state, e.err)
			if match(e) {
				return e
			}
		case <-deadline.C:
			t.Fatalf("no %s within %v", what, d)
		}
	}
}

func isState(st node.State, target error) func(stateEvent) bool {
	return func(e stateEvent) bool {
		return e.state == st && (target == nil || errors.Is(e.err, target))
	}
}

// newRemote makes a remote node for url with opts (its Logger and, if
// unset, OnState filled in), runs it, and closes it when the test ends,
// checking that Run returned.
func newRemote(t testing.TB, url string, opts node.RemoteOptions) *node.Remote {
	t.Helper()
	addr, err := node.ParseURL(url)
	require.NoError(t, err)
	opts.Logger = testkit.Logger(t)
	r, err := node.NewRemote(addr, opts)
	require.NoError(t, err)
	ran := make(chan error, 1)
	go func() { ran <- r.Run(context.Background()) }()
	t.Cleanup(func() {
		closed := make(chan struct{})
		go func() {
			r.Close()
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(20 * time.Second):
			t.Errorf("Close did not return within 20 s")
		}
		select {
		case err := <-ran:
			require.NoError(t, err)
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return after Close")
		}
	})
	return r
}

// ready waits until r is connected.
func ready(t testing.TB, r *node.Remote) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, r.Ready(ctx))
}

// ctxFor returns a context that ends after d or with the test.
func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
