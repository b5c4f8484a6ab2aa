package attach

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/node"
)

// childEnv makes the test binary a crashing attach process (see TestMain).
const childEnv = "DST_ATTACH_TEST_CHILD_DIR"

// TestMain runs the test binary as an attach child when childEnv is set:
// it attaches a memory node at that directory, prints the device and
// serves until killed (or until its standard input ends) — the crash that TestStaleAttachmentIsCleaned
// simulates with SIGKILL. Started by StartBackground (readyEnv set) it
// reports the device /dev/pidPID and sleeps until stopped (at most 30 s).
func TestMain(m *testing.M) {
	if os.Getenv(readyEnv) != "" {
		if err := NotifyReady(fmt.Sprintf("/dev/pid%d", os.Getpid())); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		time.Sleep(30 * time.Second)
		os.Exit(0)
	}
	if dir := os.Getenv(childEnv); dir != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		a, err := Attach(ctx, node.NewMemory(8<<20), Options{Dir: dir, Name: "crash", Mode: ModeFUSE})
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(a.Device())
		// Serve until standard input ends (the test died without killing
		// this process), then detach cleanly.
		_, _ = io.Copy(io.Discard, os.Stdin)
		ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := a.Close(ctx); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// attachMemory attaches a memory node of size bytes through FUSE and a
// loop device; the attachment is closed when the test ends.
func attachMemory(t *testing.T, size int, opts Options) (*node.Memory, *Attachment) {
	t.Helper()
	mem := node.NewMemory(size)
	if opts.Dir == "" {
		opts.Dir = filepath.Join(t.TempDir(), "mnt")
	}
	opts.Mode = ModeFUSE
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := Attach(ctx, mem, opts)
	require.NoError(t, err)
	t.Cleanup(func() { closeAttachment(t, a, opts.Dir) })
	return mem, a
}

// closeAttachment closes a and requires that nothing is left: no loop
// device bound to a file under dir, no mount at dir.
func closeAttachment(t *testing.T, a *Attachment, dir string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, a.Close(ctx))
	requireNothingLeft(t, dir)
}

func requireNothingLeft(t *testing.T, dir string) {
	t.Helper()
	dir, err := filepath.Abs(dir)
	require.NoError(t, err)
	loops, err := LoopsBackedBy(dir)
	require.NoError(t, err)
	require.Empty(t, loops, "loop devices still bound under %s", dir)
	mounted, err := isFUSEMount(dir)
	require.NoError(t, err)
	require.False(t, mounted, "%s still mounted", dir)
}

// run runs a tool within a minute and requires exit status 0.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s %s:\n%s", name, strings.Join(args, " "), out)
	return string(out)
}

// mountFS mounts dev at a new directory, unmounted (lazily if it must)
// when the test ends.
func mountFS(t *testing.T, dev string, opts ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "fs")
	require.NoError(t, os.Mkdir(dir, 0o755))
	run(t, "mount", append(opts, dev, dir)...)
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

// logger is a debug-level text logger writing to b.
func logger(b *testkit.Buffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
