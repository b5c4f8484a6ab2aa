// StartBackground returns the device its attach process reports on the
// ready pipe and leaves that process running in its own session, reports
// a process that died first with the last lines it logged, and stops and
// cleans up after one that is not ready in time — checked with this test
// binary (TestMain) and /bin/sh scripts as the attach process, each
// stopped by PID when its test ends.
package attach

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"dst/internal/proc"
	"dst/internal/testkit"
)

func TestStartBackgroundReady(t *testing.T) {
	ctx := testkit.Context(t, 30*time.Second)
	reg := Registry{Dir: t.TempDir()}
	dev, err := reg.StartBackground(ctx, "bg", os.Args[0], []string{"-test.run=^$"}, 20*time.Second)
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimPrefix(dev, "/dev/pid"))
	require.NoError(t, err, "device %q", dev)
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		require.NoError(t, proc.StopPID(cctx, pid))
	})
	sid, err := unix.Getsid(pid)
	require.NoError(t, err)
	require.Equal(t, pid, sid, "the attach process has its own session")
}

func TestStartBackgroundFailures(t *testing.T) {
	t.Run("died first", func(t *testing.T) {
		ctx := testkit.Context(t, 30*time.Second)
		reg := Registry{Dir: t.TempDir()}
		require.NoError(t, os.WriteFile(reg.LogPath("bg"), []byte("dst attach: an earlier run's error\n"), 0o644))
		_, err := reg.StartBackground(ctx, "bg", "/bin/sh",
			[]string{"-c", `echo starting; echo "dst attach: cannot reach nbd://x" >&2; exit 1`}, 20*time.Second)
		require.EqualError(t, err, "the attach process failed (exit status 1): starting\ncannot reach nbd://x (log "+reg.LogPath("bg")+")")
	})
	t.Run("not ready in time", func(t *testing.T) {
		ctx := testkit.Context(t, 30*time.Second)
		reg := Registry{Dir: t.TempDir()}
		pidFile := t.TempDir() + "/pid"
		_, err := reg.StartBackground(ctx, "bg", "/bin/sh", []string{"-c", `echo $$ >` + pidFile + `; exec sleep 30`}, 500*time.Millisecond)
		require.ErrorContains(t, err, "was not ready within 500ms")
		b, err := os.ReadFile(pidFile)
		require.NoError(t, err)
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		require.NoError(t, err)
		gctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		require.True(t, proc.Gone(gctx, pid), "it was stopped and reaped")
	})
	t.Run("caller gives up", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		reg := Registry{Dir: t.TempDir()}
		_, err := reg.StartBackground(ctx, "bg", "/bin/sh", []string{"-c", `exec sleep 30`}, 20*time.Second)
		require.ErrorIs(t, err, context.DeadlineExceeded)
	})
}
