// Helpers of the tests that run processes, proven by their use there: a
// child process (internal/proc) with its output in a log file, awaited for
// its ready lines, stopped by a signal, and killed by PID when the test
// ends.
package main

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/proc"
)

// childTimeout bounds a child's start (its ready lines) and its exit on a
// signal.
const childTimeout = 30 * time.Second

// child is a process a test started; it is killed when the test ends if
// it still runs.
type child struct {
	*proc.Process
	addrs []string // what followed each awaited prefix
}

// startChild runs argv with its output appended to log and waits until
// its standard output printed a line starting with each prefix, in order,
// within childTimeout; it fails the test otherwise.
func startChild(t *testing.T, log string, prefixes []string, argv ...string) *child {
	t.Helper()
	p, err := proc.Start(proc.Options{Argv: argv, Log: log, KillWithParent: true})
	require.NoError(t, err)
	t.Cleanup(func() {
		if err := p.Kill(); err != nil {
			t.Error(err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), childTimeout)
	defer cancel()
	addrs, err := p.WaitLines(ctx, prefixes...)
	require.NoError(t, err)
	return &child{Process: p, addrs: addrs}
}

// startProc runs name with args, its output in a new log file in the
// test's directory, as startChild does.
func startProc(t *testing.T, prefixes []string, name string, args ...string) *child {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), filepath.Base(name)+"-*.log")
	require.NoError(t, err)
	require.NoError(t, f.Close())
	return startChild(t, f.Name(), prefixes, append([]string{name}, args...)...)
}

// stop sends sig and returns the exit status (-1 if a signal ended the
// process); it fails the test if the process does not exit within
// childTimeout.
func (c *child) stop(t *testing.T, sig syscall.Signal) int {
	t.Helper()
	require.NoError(t, c.Signal(sig))
	select {
	case <-c.Done():
		return c.ExitCode()
	case <-time.After(childTimeout):
		t.Fatalf("%s (pid %d) did not exit within %v of %v; log %s", c.Name(), c.Pid(), childTimeout, sig, c.Log())
		return -1
	}
}

// stopOK stops the process with SIGTERM and requires exit status 0.
func (c *child) stopOK(t *testing.T) {
	t.Helper()
	require.Equal(t, exitOK, c.stop(t, syscall.SIGTERM), "%s exit status; log %s:\n%s", c.Name(), c.Log(), c.output())
}

// output is what the process printed (the end of a long log).
func (c *child) output() string { return c.Tail(1 << 20) }
