// Test helpers for kernel tests: a loop device over a sparse file in
// t.TempDir(), skipped with the reason when root, loop devices or tools are
// missing, and always unmounted and detached in t.Cleanup.
package fsload

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// requireKernel skips the test unless it can make, mount and check f on a
// loop device.
func requireKernel(t *testing.T, f FS) {
	t.Helper()
	if testing.Short() {
		t.Skip("kernel filesystem test skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to attach loop devices and mount")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("needs loop devices: %v", err)
	}
	if err := lookTool(tool{"losetup", "util-linux"}); err != nil {
		t.Skipf("needs losetup: %v", err)
	}
	if err := CheckTools(f); err != nil {
		t.Skipf("needs the %v tools: %v", f, err)
	}
	fss, err := os.ReadFile("/proc/filesystems")
	if err != nil || !strings.Contains(string(fss), "\t"+f.String()+"\n") {
		t.Skipf("kernel has no %v support (not in /proc/filesystems)", f)
	}
}

// loopDevice attaches a loop device over a sparse file of size bytes and
// returns the device and the image path. Cleanup detaches it.
func loopDevice(t *testing.T, size int64) (dev, img string) {
	t.Helper()
	img = filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(img)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(size))
	require.NoError(t, f.Close())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "losetup", "--find", "--show", img).CombinedOutput()
	require.NoError(t, err, "losetup: %s", out)
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// A btrfs device stays registered in the kernel after umount; forget
		// it so a later filesystem on the same loop number is not confused.
		_ = exec.CommandContext(ctx, "btrfs", "device", "scan", "--forget", dev).Run()
		if out, err := exec.CommandContext(ctx, "losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	return dev, img
}

// mountPoint returns a directory that Cleanup unmounts if still mounted.
// Register it after loopDevice so it runs before the detach.
func mountPoint(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "mnt")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for range 3 {
			mounted, err := Mounted(dir)
			if err != nil || !mounted {
				return
			}
			if err := Umount(ctx, dir); err != nil {
				t.Errorf("cleanup: %v", err)
				_ = exec.CommandContext(ctx, "umount", "-l", dir).Run()
			}
		}
	})
	return dir
}

// sizeFor returns the test device size for f: small, but at least MinSize.
func sizeFor(f FS) int64 {
	switch f {
	case Ext4:
		return 64 << 20
	case Btrfs:
		return 160 << 20
	default:
		return MinSize(f)
	}
}
