// Test helpers shared by the tests of this package: a loopback server over
// a memory backend and a client dialled to it.
package nbd_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	. "dst/storage/nbd"

	"dst/storage/node"
)

// startServer serves exps on a loopback port and returns its address; the
// server is shut down when the test ends.
func startServer(t testing.TB, opts ServerOptions) (*Server, string) {
	t.Helper()
	srv, err := NewServer(opts)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = srv.Shutdown(sctx)
		cancel()
		<-done
	})
	return srv, ln.Addr().String()
}

// singleExport is the usual test server: one export over a memory backend.
func singleExport(t testing.TB, size int) (*node.Memory, string) {
	m := node.NewMemory(size)
	_, addr := startServer(t, ServerOptions{Exports: []*Export{{Name: "mem", Size: int64(size), Flags: node.MemoryFlags, Backend: m}}})
	return m, addr
}

func dial(t testing.TB, addr string, opts ClientOptions) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, "tcp", addr, opts)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}
