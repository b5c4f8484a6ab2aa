// A crashed attach process — the test binary attaching a memory node,
// killed with SIGKILL — leaves a FUSE mount answering ENOTCONN and a loop
// device bound to it; attaching at the same directory cleans both and
// works, and after its Close no loop device and no mount is left; the
// FUSE descriptors of a serving process are close-on-exec, so children it
// runs cannot keep a dead attachment alive.
package attach

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"dst/internal/testkit"
	"dst/storage/node"
)

func TestStaleAttachmentIsCleaned(t *testing.T) {
	testkit.NeedAttach(t)
	dir := filepath.Join(t.TempDir(), "mnt")
	exe, err := os.Executable()
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+dir)
	var stderr testkit.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		// Whatever happened, leave nothing behind.
		stdin.Close()
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer ccancel()
		if err := CleanStale(cctx, dir, nil); err != nil {
			t.Errorf("final clean: %v", err)
		}
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var oldDev string
	select {
	case line, ok := <-lines:
		require.True(t, ok, "the child exited without attaching: %s", stderr.String())
		oldDev = strings.TrimSpace(line)
	case <-time.After(30 * time.Second):
		t.Fatalf("the child did not attach within 30 s: %s", stderr.String())
	}
	require.True(t, strings.HasPrefix(oldDev, "/dev/loop"), oldDev)

	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	var st unix.Statfs_t
	require.ErrorIs(t, unix.Statfs(dir, &st), unix.ENOTCONN, "the dead mount")
	loops, err := LoopsBackedBy(dir)
	require.NoError(t, err)
	require.Equal(t, []string{oldDev}, loops, "the loop device stays bound to the dead file")

	var logs testkit.Buffer
	mem := node.NewMemory(4 << 20)
	actx, acancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer acancel()
	a, err := Attach(actx, mem, Options{Dir: dir, Mode: ModeFUSE, Logger: logger(&logs)})
	require.NoError(t, err)
	require.Contains(t, logs.String(), "cleaning a stale attachment")
	if a.Device() != oldDev {
		_, err := loopBacking(oldDev)
		require.ErrorIs(t, err, os.ErrNotExist, "%s was detached", oldDev)
	}
	loops, err = LoopsBackedBy(dir)
	require.NoError(t, err)
	require.Equal(t, []string{a.Device()}, loops)

	d, err := os.OpenFile(a.Device(), os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = d.WriteAt([]byte("alive"), 0)
	require.NoError(t, err)
	require.NoError(t, d.Sync())
	require.NoError(t, d.Close())
	require.Equal(t, []byte("alive"), mem.Bytes(0, 5))
	closeAttachment(t, a, dir)
}

func TestFUSEDescriptorsAreCloseOnExec(t *testing.T) {
	testkit.NeedAttach(t)
	_, _ = attachMemory(t, 1<<20, Options{})
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	found := 0
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil || target != "/dev/fuse" {
			continue
		}
		found++
		f, err := os.Open(filepath.Join("/proc/self/fdinfo", e.Name()))
		require.NoError(t, err)
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "flags:"); ok {
				flags, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
				require.NoError(t, err)
				require.NotZero(t, flags&unix.O_CLOEXEC, "fd %s of /dev/fuse is inherited by children", e.Name())
			}
		}
		f.Close()
	}
	require.Positive(t, found, "no /dev/fuse descriptor while attached")
}
