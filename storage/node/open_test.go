// Open dispatches every member URL form to the right node (file: to a
// File, nbd:// and nbd+unix:// to a connected Remote whose size is known on
// return), refuses missing files, bad URLs and unreachable peers with an
// error naming the URL, and leaves nothing running when it fails; checked
// against temporary files and an in-process NBD server on loopback.
package node_test

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/nbd"
	"dst/storage/node"
)

func TestFilePath(t *testing.T) {
	for _, tc := range []struct{ url, path string }{
		{"file:/srv/dst/local.img", "/srv/dst/local.img"},
		{"file:///srv/dst/local.img", "/srv/dst/local.img"},
		{"file://localhost/srv/x.img", "/srv/x.img"},
		{"file:rel/x.img", "rel/x.img"},
		{"file:/a/../b%20c.img", "/b c.img"},
	} {
		got, err := node.FilePath(tc.url)
		require.NoError(t, err, tc.url)
		require.Equal(t, tc.path, got, tc.url)
	}
	for _, bad := range []string{"file:", "file://otherhost/x", "file:/x?y=1", "file:/x#f", "nbd://h/x", "file://u@localhost/x"} {
		_, err := node.FilePath(bad)
		require.ErrorIs(t, err, node.ErrBadURL, bad)
	}
}

func TestOpenFile(t *testing.T) {
	ctx := ctxFor(t, 10*time.Second)
	p := testkit.Image(t, "disk.img", 1<<20)
	for _, u := range []string{"file:" + p, "file://" + p} {
		n, err := node.Open(ctx, u, node.OpenOptions{})
		require.NoError(t, err, u)
		require.Equal(t, int64(1<<20), n.Size())
		require.IsType(t, &node.File{}, n)
		require.NoError(t, n.Close())
	}

	missing := filepath.Join(t.TempDir(), "missing.img")
	_, err := node.Open(ctx, "file:"+missing, node.OpenOptions{})
	require.ErrorIs(t, err, fs.ErrNotExist)
	require.ErrorContains(t, err, "file:"+missing)
	_, statErr := os.Stat(missing)
	require.ErrorIs(t, statErr, fs.ErrNotExist, "Open created nothing")

	n, err := node.Open(ctx, "file:"+missing, node.OpenOptions{CreateSize: 65536})
	require.NoError(t, err)
	require.Equal(t, int64(65536), n.Size())
	require.NoError(t, n.Close())

	ro, err := node.Open(ctx, "file:"+p, node.OpenOptions{ReadOnly: true})
	require.NoError(t, err)
	require.NotZero(t, ro.Flags()&nbd.FlagReadOnly)
	require.NoError(t, ro.Close())

	_, err = node.Open(ctx, "file:"+t.TempDir(), node.OpenOptions{})
	require.ErrorIs(t, err, node.ErrNotDevice)
}

func TestOpenBadURL(t *testing.T) {
	ctx := ctxFor(t, 10*time.Second)
	for _, u := range []string{"http://x/y", "", "/srv/x.img", "nbd://", "nbd+unix:///x", "file:"} {
		_, err := node.Open(ctx, u, node.OpenOptions{})
		require.ErrorIs(t, err, node.ErrBadURL, "%q", u)
	}
	_, err := node.Open(ctx, "nbds://127.0.0.1:1/x", node.OpenOptions{})
	require.ErrorIs(t, err, node.ErrBadURL, "nbds without TLS configuration")
	require.ErrorContains(t, err, "nbds://127.0.0.1:1/x")
}

func TestOpenRemote(t *testing.T) {
	const size = 3 << 20
	m, p := startMemory(t, size)
	ctx := ctxFor(t, 20*time.Second)
	n, err := node.Open(ctx, p.url(), node.OpenOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { n.Close() })
	require.Equal(t, int64(size), n.Size(), "the size is known when Open returns")
	require.Equal(t, p.url(), n.String())
	r, ok := n.(*node.Remote)
	require.True(t, ok, "an nbd URL opens a *node.Remote, got %T", n)
	require.Equal(t, node.StateConnected, r.State())
	require.NoError(t, n.WriteAt(ctx, pattern(0x42, 4096), 8192, 0))
	require.Equal(t, pattern(0x42, 4096), m.Bytes(8192, 4096))
	require.NoError(t, n.Close())
	require.Equal(t, node.StateStopped, r.State(), "Close stops the manager Open started")
}

func TestOpenRemoteUnix(t *testing.T) {
	const size = 1 << 20
	mem := node.NewMemory(size)
	srv, err := nbd.NewServer(nbd.ServerOptions{Exports: []*nbd.Export{{
		Name: "u", Size: size, Flags: node.MemoryFlags, Backend: mem}}})
	require.NoError(t, err)
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := net.Listen("unix", sock)
	require.NoError(t, err)
	sctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, ln) }()
	t.Cleanup(func() { cancel(); <-served })

	ctx := ctxFor(t, 20*time.Second)
	n, err := node.Open(ctx, "nbd+unix:///u?socket="+sock, node.OpenOptions{})
	require.NoError(t, err)
	require.Equal(t, int64(size), n.Size())
	require.NoError(t, n.Close())
}

func TestOpenRemoteUnreachable(t *testing.T) {
	// A port that was just free: nothing listens there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())

	var states []node.State
	u := "nbd://" + addr + "/x"
	start := time.Now()
	_, err = node.Open(ctxFor(t, 20*time.Second), u, node.OpenOptions{
		ConnectTimeout: 300 * time.Millisecond,
		Remote: node.RemoteOptions{
			BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond,
			OnState: func(s node.State, _ error) { states = append(states, s) },
		},
	})
	require.ErrorIs(t, err, node.ErrUnavailable)
	require.ErrorContains(t, err, u)
	require.ErrorContains(t, err, "refused", "the error says why: %v", err)
	require.Less(t, time.Since(start), 5*time.Second)
	require.NotEmpty(t, states, "the caller's OnState is still called")
	require.Equal(t, node.StateStopped, states[len(states)-1], "the node was stopped")

	// The caller's context ends the wait too.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = node.Open(ctx, u, node.OpenOptions{})
	require.Error(t, err)
	require.True(t, errors.Is(err, context.Canceled) || errors.Is(err, node.ErrUnavailable), "%v", err)
}

// With Background, a remote node that does not answer within the connect
// timeout is returned anyway, not reached yet (no handshake, size zero),
// and dials on: once a server listens at its address it connects and
// serves.
func TestOpenRemoteBackground(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())

	ctx := ctxFor(t, 20*time.Second)
	n, err := node.Open(ctx, "nbd://"+addr+"/x", node.OpenOptions{
		ConnectTimeout: 200 * time.Millisecond, Background: true,
		Remote: node.RemoteOptions{BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond},
	})
	require.NoError(t, err)
	t.Cleanup(func() { n.Close() })
	r := n.(*node.Remote)
	_, reached := r.Info()
	require.False(t, reached, "no handshake yet")
	require.Zero(t, n.Size())

	const size = 1 << 20
	mem := node.NewMemory(size)
	srv, err := nbd.NewServer(nbd.ServerOptions{Exports: []*nbd.Export{{
		Name: "x", Size: size, Flags: node.MemoryFlags, Backend: mem}}})
	require.NoError(t, err)
	ln, err = net.Listen("tcp", addr)
	require.NoError(t, err)
	sctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, ln) }()
	t.Cleanup(func() { cancel(); <-served })

	require.Eventually(t, func() bool { _, ok := r.Info(); return ok }, 10*time.Second, 5*time.Millisecond, "the node connects once its server listens")
	require.Equal(t, int64(size), n.Size())
	require.NoError(t, n.WriteAt(ctx, pattern(0x17, 4096), 4096, 0))
	require.Equal(t, pattern(0x17, 4096), mem.Bytes(4096, 4096))

	// A context that ends before the timeout still fails the open.
	cctx, stop := context.WithCancel(context.Background())
	stop()
	_, err = node.Open(cctx, "nbd://127.0.0.1:1/x", node.OpenOptions{Background: true})
	require.Error(t, err)
}
