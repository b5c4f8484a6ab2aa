// Test helpers shared by the tests of this package: temporary images, an
// in-process export server on a random loopback port, and bounded runs of
// the Debian NBD tools.
package export_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/storage/export"
	"dst/storage/nbd"
)

// toolTimeout bounds one run of a third-party tool.
const toolTimeout = 60 * time.Second

const mib = 1 << 20

// runTool runs a tool with a timeout and returns its combined output and
// error. env entries are added to the environment.
func runTool(t *testing.T, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s timed out after %v: %w", name, toolTimeout, ctx.Err())
	}
	return out.String(), err
}

// mustRunTool runs a tool and fails the test, showing the command and its
// output, unless it exits 0.
func mustRunTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := runTool(t, nil, name, args...)
	require.NoError(t, err, "%s %s\n%s", name, strings.Join(args, " "), out)
	return out
}

// randomFile writes size random bytes to a new file and returns its path.
func randomFile(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "random.img")
	f, err := os.Create(p)
	require.NoError(t, err)
	_, err = io.CopyN(f, rand.Reader, size)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	return p
}

// logSink collects the server's log lines and echoes warnings to the test
// log; it stops writing to t when the test ends.
type logSink struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
	buf  bytes.Buffer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Write(p)
	if !s.done && (bytes.Contains(p, []byte("level=WARN")) || bytes.Contains(p, []byte("level=ERROR"))) {
		s.t.Logf("server: %s", bytes.TrimSpace(p))
	}
	return len(p), nil
}

// String returns everything logged so far.
func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// testServer is an export server started by startServer.
type testServer struct {
	*export.Server
	Addr string
	Port string
	Log  *logSink
}

// startServer starts an export server for cfg on 127.0.0.1 and a random
// port (unless cfg.Listen is set) and stops it when the test ends: Serve
// must return within 15 s of its context ending.
func startServer(t *testing.T, cfg export.Config) *testServer {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	sink := &logSink{t: t}
	cfg.Logger = slog.New(slog.NewTextHandler(sink, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 5 * time.Second
	}
	srv, err := export.New(cfg)
	require.NoError(t, err)
	ln, err := srv.Listen(context.Background())
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-served:
			if err != nil && !errors.Is(err, export.ErrServerClosed) {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("Serve did not return 15 s after its context ended")
		}
		require.NoError(t, srv.Close())
		sink.mu.Lock()
		sink.done = true
		sink.mu.Unlock()
	})
	_, port, err := net.SplitHostPort(ln.Addr().String())
	require.NoError(t, err)
	return &testServer{Server: srv, Addr: ln.Addr().String(), Port: port, Log: sink}
}

// dial connects the dst client to addr; the connection is closed when the
// test ends.
func dial(t *testing.T, addr string, opts nbd.ClientOptions) *nbd.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := nbd.Dial(ctx, "tcp", addr, opts)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// dialFrom connects the dst client to addr from the local address src
// (any address of 127.0.0.0/8 works on Linux loopback).
func dialFrom(ctx context.Context, src, addr string, opts nbd.ClientOptions) (*nbd.Client, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c, err := nbd.NewClient(ctx, conn, opts)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// pattern returns n bytes of b.
func pattern(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }
