// Package testkit is what dst's tests share: a context bounded by the
// test, writers that hand log lines to the test log or keep them for
// assertions, and a buffer safe for concurrent writers. Production code
// does not import it (cmd/dst's TestBinaryLinksNoTestPackages checks that
// for the binary).
package testkit

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Context returns a context that ends after d, or when the cleanups
// registered before this call run, whichever comes first: every wait of a
// test is bounded by it, and cleanups registered later (servers shut down
// under it) still have it. (t.Context ends before any cleanup runs.)
func Context(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// LogWriter hands each line written to it to t.Log, until the test ends
// (later writes, from goroutines that outlive the test, are dropped rather
// than panic). It is safe for concurrent writers.
func LogWriter(t testing.TB) *TestLog {
	w := &TestLog{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return w
}

// TestLog is the writer LogWriter returns.
type TestLog struct {
	mu     sync.Mutex
	t      testing.TB
	done   bool
	prefix string
}

// Prefix sets a prefix for every line (a process or node name).
func (w *TestLog) Prefix(p string) *TestLog {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.prefix = p
	return w
}

func (w *TestLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		for line := range strings.SplitSeq(strings.TrimRight(string(p), "\n"), "\n") {
			w.t.Log(w.prefix + line)
		}
	}
	return len(p), nil
}

// Logger is a text slog.Logger at debug level writing to LogWriter(t).
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(LogWriter(t), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Buffer is a bytes.Buffer safe for concurrent writers and readers: the
// target of a logger a test later reads.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Image creates a sparse file of size bytes named name in a new temporary
// directory of the test and returns its path.
func Image(t testing.TB, name string, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	f, err := os.Create(p)
	if err == nil {
		err = f.Truncate(size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		t.Fatalf("image %s: %v", p, err)
	}
	return p
}
