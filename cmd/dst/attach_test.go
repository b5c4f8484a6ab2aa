// dst attach turns a real dst export into a loop device served by a
// background process: data written through the device with dd reaches the
// export's file, a second attach of the name is refused, a SIGKILLed
// attach process is cleaned up by the next attach, and dst detach stops
// it leaving no mount, loop device or state behind; bad input and an
// unreachable URL fail clearly with nothing left mounted — checked by
// running the binary built in TestMain as root with FUSE and losetup.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/proc"
	"dst/internal/testkit"
	"dst/storage/attach"
)

// runBinary runs the dst binary within 60 s and returns its exit status,
// standard output and standard error.
func runBinary(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, dstBinary, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stdout.String(), stderr.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), stdout.String(), stderr.String()
	}
	t.Fatalf("dst %v: %v", args, err)
	return -1, "", ""
}

// attachState reads the state file of name.
func attachState(t *testing.T, stateDir, name string) attach.State {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(stateDir, name+".json"))
	require.NoError(t, err)
	var s attach.State
	require.NoError(t, json.Unmarshal(b, &s))
	return s
}

// requireDetached requires that nothing of name is left: no state file,
// no mount, no loop device bound under its mountpoint.
func requireDetached(t *testing.T, stateDir, name string) {
	t.Helper()
	_, err := os.Stat(filepath.Join(stateDir, name+".json"))
	require.ErrorIs(t, err, os.ErrNotExist, "state file")
	mp := filepath.Join(stateDir, name)
	loops, err := attach.LoopsBackedBy(mp)
	require.NoError(t, err)
	require.Empty(t, loops, "loop devices bound under %s", mp)
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	require.NotContains(t, string(mounts), " "+mp+" ", "%s is still mounted", mp)
}

// cleanupAttach detaches name when the test ends, whatever happened.
func cleanupAttach(t *testing.T, stateDir, name string) {
	t.Cleanup(func() {
		code, _, stderr := runBinary(t, "detach", "--name", name, "--state-dir", stateDir, "--timeout", "10s")
		if code != 0 && !strings.Contains(stderr, "not attached") {
			t.Errorf("final detach: %s", stderr)
		}
	})
}

// processGone waits up to d for pid to disappear.
func processGone(pid int, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return proc.Gone(ctx, pid)
}

func TestAttachExportThroughLoopDevice(t *testing.T) {
	testkit.NeedAttach(t, "dd")
	const size = 16 << 20
	img := testkit.Image(t, "disk.img", size)
	exp := startExport(t, "127.0.0.1:0", img)
	url := "nbd://" + exp.addrs[0]
	stateDir := t.TempDir()
	cleanupAttach(t, stateDir, "t0")

	code, stdout, stderr := runBinary(t, "attach", "--url", url, "--name", "t0", "--state-dir", stateDir, "--timeout", "10s")
	require.Equal(t, exitOK, code, stderr)
	dev := strings.TrimSpace(stdout)
	require.True(t, strings.HasPrefix(dev, "/dev/loop"), "stdout %q", stdout)
	st := attachState(t, stateDir, "t0")
	require.Equal(t, dev, st.Device)
	require.Equal(t, url, st.URL)
	require.Equal(t, "fuse", st.Mode, "auto without the nbd driver")
	require.NoError(t, syscall.Kill(st.PID, 0), "the attach process serves")

	// A second attach of the live name is refused and changes nothing.
	code, _, stderr = runBinary(t, "attach", "--url", url, "--name", "t0", "--state-dir", stateDir)
	require.Equal(t, exitRuntime, code)
	require.Contains(t, stderr, "t0 is already attached (pid "+strconv.Itoa(st.PID))

	// Write through the loop device with direct I/O and fsync.
	seed := uint64(time.Now().UnixNano())
	t.Logf("data seed %d", seed)
	data := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(seed, seed))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	src := filepath.Join(t.TempDir(), "data")
	require.NoError(t, os.WriteFile(src, data, 0o644))
	out, err := exec.Command("dd", "if="+src, "of="+dev, "bs=64k", "seek=16", "oflag=direct", "conv=fsync,notrunc").CombinedOutput()
	require.NoError(t, err, "%s", out)

	// A crash of the attach process: the next attach cleans up and works.
	require.NoError(t, syscall.Kill(st.PID, syscall.SIGKILL))
	require.True(t, processGone(st.PID, 10*time.Second), "pid %d did not die", st.PID)
	code, stdout, stderr = runBinary(t, "attach", "--url", url, "--name", "t0", "--state-dir", stateDir, "--timeout", "10s")
	require.Equal(t, exitOK, code, stderr)
	require.Contains(t, stderr, "cleaning a stale attachment")
	dev = strings.TrimSpace(stdout)
	st2 := attachState(t, stateDir, "t0")
	require.NotEqual(t, st.PID, st2.PID)
	loops, err := attach.LoopsBackedBy(filepath.Join(stateDir, "t0"))
	require.NoError(t, err)
	require.Equal(t, []string{dev}, loops, "only the new loop device is bound")
	got := make([]byte, len(data))
	d, err := os.Open(dev)
	require.NoError(t, err)
	_, err = d.ReadAt(got, 16*64<<10)
	require.NoError(t, errors.Join(err, d.Close()))
	require.True(t, bytes.Equal(data, got), "data read back through the new attachment")

	code, stdout, stderr = runBinary(t, "detach", "--device", dev, "--state-dir", stateDir)
	require.Equal(t, exitOK, code, stderr)
	require.Equal(t, "detached "+dev+" (t0)\n", stdout)
	require.True(t, processGone(st2.PID, 10*time.Second), "the attach process stopped")
	requireDetached(t, stateDir, "t0")
	logText, err := os.ReadFile(filepath.Join(stateDir, "t0.log"))
	require.NoError(t, err)
	require.Contains(t, string(logText), "msg=detached")

	require.Equal(t, exitOK, exp.stop(t, syscall.SIGTERM), exp.output())
	file, err := os.ReadFile(img)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, file[16*64<<10:16*64<<10+len(data)]), "the data reached the export's file")
}

func TestAttachFailsCleanly(t *testing.T) {
	stateDir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"attach"}, "--url is required"},
		{[]string{"attach", "--url", "file:/x", "--name", "a/b"}, `--name "a/b": want a plain name`},
		{[]string{"attach", "--url", "file:/x", "--mode", "nbd"}, `--mode "nbd": want auto, fuse or kernel`},
		{[]string{"attach", "--url", "file:/x", "--timeout", "0s"}, "--timeout 0s: must be positive"},
		{[]string{"attach", "--url", "file:/x", "extra"}, `unexpected argument "extra"`},
		{[]string{"detach", "--name", "a", "--device", "/dev/loop0"}, "give --name or --device, not both"},
	} {
		code, _, stderr := runDst(t, tc.args...)
		require.Equal(t, exitUsage, code, "%v: %s", tc.args, stderr)
		require.Contains(t, stderr, tc.want, "%v", tc.args)
	}
	code, _, stderr := runDst(t, "detach", "--name", "nothing", "--state-dir", stateDir)
	require.Equal(t, exitRuntime, code)
	require.Contains(t, stderr, "nothing: not attached")
	code, _, stderr = runDst(t, "detach", "--device", "/dev/loop99", "--state-dir", stateDir)
	require.Equal(t, exitRuntime, code)
	require.Contains(t, stderr, "/dev/loop99: not attached")

	testkit.NeedAttach(t, "dd")
	for _, tc := range []struct {
		url, want string
	}{
		{"nbd://127.0.0.1:1", "nbd://127.0.0.1:1"},
		{"file:" + filepath.Join(stateDir, "missing.img"), "does not exist"},
	} {
		code, stdout, stderr := runBinary(t, "attach", "--url", tc.url, "--name", "bad", "--state-dir", stateDir, "--timeout", "2s")
		require.Equal(t, exitRuntime, code, "%s: %s", tc.url, stdout)
		require.Contains(t, stderr, "the attach process failed", tc.url)
		require.Contains(t, stderr, tc.want, tc.url)
		requireDetached(t, stateDir, "bad")
	}
}
