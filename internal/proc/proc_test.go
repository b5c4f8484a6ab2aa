// Process starts, watches and stops real processes as documented: ready
// lines are matched in order and a 1 MiB line is dropped rather than held
// or passed on in pieces, an early exit, a wrong line and a timeout are
// reported with the log's end, a stopped process is still killed and
// reaped, a process that ignores SIGTERM is killed after the grace, and a
// Daemon runs in its own session and reports on its ready pipe — checked
// by running small /bin/sh scripts, every one bounded and killed by PID
// when its test ends.
package proc

import (
	"context"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"dst/internal/testkit"
)

// start starts sh -c script with its log in the test's directory; the
// process is killed and must be reaped when the test ends.
func start(t *testing.T, o Options, script string) *Process {
	t.Helper()
	o.Argv = []string{"/bin/sh", "-c", script}
	if o.Log == "" {
		o.Log = t.TempDir() + "/sh.log"
	}
	p, err := Start(o)
	require.NoError(t, err)
	t.Cleanup(func() {
		if err := p.Kill(); err != nil {
			t.Error(err)
		}
	})
	return p
}

func TestWaitLinesReturnsWhatFollowsEachPrefix(t *testing.T) {
	ctx := testkit.Context(t, 10*time.Second)
	var out testkit.Buffer
	p := start(t, Options{Name: "greeter", Output: &out},
		`echo "listening on 127.0.0.1:1 "; echo to stderr >&2; echo admin on x; exec sleep 30`)
	got, err := p.WaitLines(ctx, "listening on ", "admin on ")
	require.NoError(t, err)
	require.Equal(t, []string{"127.0.0.1:1", "x"}, got)
	require.True(t, p.Alive())
	require.Equal(t, "greeter", p.Name())
	require.NoError(t, p.Kill())
	require.False(t, p.Alive())
	require.Equal(t, "signal: killed", p.Exit())
	require.Equal(t, -1, p.ExitCode())

	log, err := os.ReadFile(p.Log())
	require.NoError(t, err)
	assert.Contains(t, string(log), " start: /bin/sh -c ")
	assert.Contains(t, string(log), "to stderr\n")
	assert.Contains(t, string(log), " exit: signal: killed\n")
	assert.Contains(t, out.String(), "to stderr\n", "Output gets standard error")
	assert.Contains(t, out.String(), "admin on x\n", "and standard output")
}

func TestWaitLinesFailures(t *testing.T) {
	t.Run("exit before the line", func(t *testing.T) {
		ctx := testkit.Context(t, 10*time.Second)
		p := start(t, Options{}, `echo the reason >&2; exit 3`)
		_, err := p.WaitLines(ctx, "ready")
		require.ErrorIs(t, err, ErrExited)
		require.ErrorContains(t, err, "exit status 3")
		require.ErrorContains(t, err, "the reason", "the log's end is quoted")
		require.Equal(t, 3, p.ExitCode())
	})
	t.Run("lines printed before the exit count", func(t *testing.T) {
		ctx := testkit.Context(t, 10*time.Second)
		p := start(t, Options{}, `echo ready now`)
		<-p.Done()
		got, err := p.WaitLines(ctx, "ready")
		require.NoError(t, err)
		require.Equal(t, []string{"now"}, got)
		require.Equal(t, 0, p.ExitCode())
	})
	t.Run("wrong line", func(t *testing.T) {
		ctx := testkit.Context(t, 10*time.Second)
		p := start(t, Options{}, `echo hello; exec sleep 30`)
		_, err := p.WaitLines(ctx, "ready")
		require.ErrorContains(t, err, `want a line "ready", got "hello"`)
		require.True(t, p.Alive(), "WaitLines does not stop the process")
	})
	t.Run("timeout", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		p := start(t, Options{}, `exec sleep 30`)
		_, err := p.WaitLines(ctx, "ready")
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.ErrorContains(t, err, strconv.Itoa(p.Pid()))
	})
}

func TestLongLineIsDroppedWhole(t *testing.T) {
	t.Run("then a ready line", func(t *testing.T) {
		ctx := testkit.Context(t, 20*time.Second)
		p := start(t, Options{}, `head -c 1048576 /dev/zero | tr '\0' x; echo; echo ready; exec sleep 30`)
		got, err := p.WaitLines(ctx, "")
		require.NoError(t, err)
		require.Equal(t, []string{"ready"}, got, "no piece of the long line is handed out")
		fi, err := os.Stat(p.Log())
		require.NoError(t, err)
		require.Greater(t, fi.Size(), int64(1<<20), "the log keeps it all")
	})
	t.Run("without a newline", func(t *testing.T) {
		ctx := testkit.Context(t, 20*time.Second)
		p := start(t, Options{}, `head -c 1048576 /dev/zero | tr '\0' x`)
		_, err := p.WaitLines(ctx, "")
		require.ErrorIs(t, err, ErrExited)
	})
}

// TestLineSplitter feeds lines in pieces and checks what is handed out and
// that the partial line never passes LineMax.
func TestLineSplitter(t *testing.T) {
	long := strings.Repeat("y", LineMax+1)
	for _, tc := range []struct {
		name   string
		writes []string
		want   []string
	}{
		{"one write", []string{"a\nb\n"}, []string{"a", "b"}},
		{"split lines", []string{"ab", "c\nd", "", "e\n"}, []string{"abc", "de"}},
		{"partial kept", []string{"a\nb"}, []string{"a"}},
		{"empty lines", []string{"\n\n"}, []string{"", ""}},
		{"LineMax bytes pass", []string{long[:LineMax], "\nz\n"}, []string{long[:LineMax], "z"}},
		{"longer is dropped", []string{long, "\nz\n"}, []string{"z"}},
		{"dropped across writes", []string{long[:LineMax], "y", "yyy", "\nz\n"}, []string{"z"}},
		{"dropped in one write", []string{"q\n" + long + "\nz\n"}, []string{"q", "z"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lines := make(chan string, 16)
			s := &lineSplitter{lines: lines}
			for _, w := range tc.writes {
				n, err := s.Write([]byte(w))
				require.NoError(t, err)
				require.Equal(t, len(w), n)
				require.LessOrEqual(t, len(s.partial), LineMax)
			}
			close(lines)
			var got []string
			for l := range lines {
				got = append(got, l)
			}
			require.Equal(t, tc.want, got)
		})
	}
}

func TestStoppedProcessIsKilledAndReaped(t *testing.T) {
	ctx := testkit.Context(t, 10*time.Second)
	p := start(t, Options{}, `echo ready; exec sleep 30`)
	_, err := p.WaitLines(ctx, "ready")
	require.NoError(t, err)
	require.NoError(t, p.Signal(syscall.SIGSTOP))
	require.True(t, p.Stopped())
	require.NoError(t, p.Signal(syscall.SIGCONT))
	require.False(t, p.Stopped())
	require.NoError(t, p.Signal(syscall.SIGSTOP))
	require.NoError(t, p.Kill())
	require.False(t, p.Alive())
	require.False(t, p.Stopped())
	require.Equal(t, "signal: killed", p.Exit())
	require.True(t, Gone(ctx, p.Pid()), "reaped: no zombie is left")
	require.ErrorContains(t, p.Signal(syscall.SIGCONT), "is not running (signal: killed)")
}

func TestTerminate(t *testing.T) {
	t.Run("a stopped process that exits cleanly", func(t *testing.T) {
		ctx := testkit.Context(t, 10*time.Second)
		p := start(t, Options{}, `trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done`)
		_, err := p.WaitLines(ctx, "ready")
		require.NoError(t, err)
		require.NoError(t, p.Signal(syscall.SIGSTOP))
		require.NoError(t, p.Terminate(ctx), "SIGCONT follows SIGTERM")
		require.Equal(t, 0, p.ExitCode())
	})
	t.Run("a failure status is an error", func(t *testing.T) {
		ctx := testkit.Context(t, 10*time.Second)
		p := start(t, Options{}, `echo ready; exec sleep 30`)
		_, err := p.WaitLines(ctx, "ready")
		require.NoError(t, err)
		require.ErrorContains(t, p.Terminate(ctx), "exited with signal: terminated after SIGTERM")
	})
	t.Run("SIGTERM ignored", func(t *testing.T) {
		ctx := testkit.Context(t, 10*time.Second)
		p := start(t, Options{}, `trap '' TERM; echo ready; exec sleep 30`)
		_, err := p.WaitLines(ctx, "ready")
		require.NoError(t, err)
		grace, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		begin := time.Now()
		err = p.Terminate(grace)
		require.ErrorContains(t, err, "did not exit after SIGTERM")
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Less(t, time.Since(begin), 5*time.Second)
		require.Equal(t, "signal: killed", p.Exit())
	})
	t.Run("ExitOn", func(t *testing.T) {
		ctx := testkit.Context(t, 10*time.Second)
		p := start(t, Options{}, `echo ready; exec sleep 30`)
		_, err := p.WaitLines(ctx, "ready")
		require.NoError(t, err)
		require.NoError(t, p.Signal(syscall.SIGSTOP))
		require.NoError(t, p.ExitOn(syscall.SIGUSR1))
		require.Equal(t, "signal: user defined signal 1", p.Exit())
	})
}

// TestTailSinceStart: a log appended to by an earlier run quotes only this
// run's end.
func TestTailSinceStart(t *testing.T) {
	log := t.TempDir() + "/twice.log"
	require.NoError(t, os.WriteFile(log, []byte("earlier run\n"), 0o644))
	p := start(t, Options{Log: log}, `echo this run`)
	<-p.Done()
	require.NotContains(t, p.Tail(1<<10), "earlier run")
	require.Contains(t, p.Tail(1<<10), "this run\n")
	require.Equal(t, "0\n", p.Tail(2), "the end of the exit marker")
	require.Contains(t, Tail(log, 1<<10), "earlier run\n")
	require.Empty(t, Tail(log+".missing", 10))
}

func TestDaemon(t *testing.T) {
	const env = "PROC_TEST_READY_FD"
	t.Run("ready", func(t *testing.T) {
		ctx := testkit.Context(t, 10*time.Second)
		p := start(t, Options{Daemon: true, ReadyEnv: env},
			`echo logged; echo "/dev/x$`+env+`" >&3; exec 3>&-; exec sleep 30`)
		got, err := p.WaitLines(ctx, "")
		require.NoError(t, err)
		require.Equal(t, []string{"/dev/x3"}, got, "descriptor 3, named in the environment")
		sid, err := unix.Getsid(p.Pid())
		require.NoError(t, err)
		require.Equal(t, p.Pid(), sid, "in its own session")
		p.Release()
		require.True(t, p.Alive())
		log, err := os.ReadFile(p.Log())
		require.NoError(t, err)
		require.Equal(t, "logged\n", string(log), "straight to the log, no markers")
		require.NoError(t, p.Kill(), "still reaped after Release")
	})
	t.Run("exit before ready", func(t *testing.T) {
		ctx := testkit.Context(t, 10*time.Second)
		p := start(t, Options{Daemon: true, ReadyEnv: env}, `echo cannot attach; exit 1`)
		_, err := p.WaitLines(ctx, "")
		require.ErrorIs(t, err, ErrExited)
		require.Contains(t, p.Tail(100), "cannot attach")
	})
	t.Run("Ready", func(t *testing.T) {
		r, w, err := os.Pipe()
		require.NoError(t, err)
		defer r.Close()
		fd, err := syscall.Dup(int(w.Fd()))
		require.NoError(t, err)
		w.Close()
		t.Setenv(env, strconv.Itoa(fd))
		require.NoError(t, Ready(env, "/dev/nbd0"))
		b := make([]byte, 64)
		n, _ := r.Read(b)
		require.Equal(t, "/dev/nbd0\n", string(b[:n]))
		n, err = r.Read(b)
		require.Zero(t, n)
		require.Error(t, err, "Ready closed its descriptor")

		t.Setenv(env, "")
		require.NoError(t, Ready(env, "x"), "not a daemon: nobody to tell")
		t.Setenv(env, "1")
		require.ErrorContains(t, Ready(env, "x"), "not a descriptor")
	})
}

func TestStopPID(t *testing.T) {
	ctx := testkit.Context(t, 20*time.Second)
	p := start(t, Options{}, `echo ready; exec sleep 30`)
	_, err := p.WaitLines(ctx, "ready")
	require.NoError(t, err)
	require.NoError(t, StopPID(ctx, p.Pid()))
	// StopPID returns once the PID is gone; our reaper records the exit
	// right after, on its own goroutine.
	<-p.Done()
	require.False(t, p.Alive())

	q := start(t, Options{}, `trap '' TERM; echo ready; exec sleep 30`)
	_, err = q.WaitLines(ctx, "ready")
	require.NoError(t, err)
	grace, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	err = StopPID(grace, q.Pid())
	require.ErrorContains(t, err, "killed")
	<-q.Done()
	require.Equal(t, "signal: killed", q.Exit())
	require.ErrorContains(t, StopPID(ctx, 1), "not a process to stop")
}
