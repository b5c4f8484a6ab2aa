package testkit

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// debianPackage names the Debian package that ships each tool the tests
// run, for the skip message (make deps installs them all).
var debianPackage = map[string]string{
	"nbdinfo": "libnbd-bin", "nbdcopy": "libnbd-bin", "nbdsh": "libnbd-bin", "nbdfuse": "nbdfuse",
	"qemu-io": "qemu-utils", "qemu-img": "qemu-utils", "qemu-nbd": "qemu-utils",
	"nbdkit": "nbdkit", "nbd-server": "nbd-server", "fio": "fio", "losetup": "mount",
	"mkfs.ext4": "e2fsprogs", "e2fsck": "e2fsprogs", "mkfs.xfs": "xfsprogs", "xfs_repair": "xfsprogs",
	"mkfs.btrfs": "btrfs-progs", "btrfs": "btrfs-progs", "dd": "coreutils", "cmp": "diffutils",
}

// Need skips the test, saying what to install, unless every tool is on
// PATH; with -short (make test-short: no external tools) it skips too. CI
// installs every tool (make deps), so there the test runs.
func Need(t testing.TB, tools ...string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("-short: skipping a test that runs %s", strings.Join(tools, ", "))
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			pkg := debianPackage[tool]
			if pkg == "" {
				pkg = "the package that has it"
			}
			t.Skipf("needs %s (make deps, or apt-get install %s)", tool, pkg)
		}
	}
}

// NeedAttach skips the test unless this process may mount FUSE and bind
// loop devices (root, /dev/fuse, /dev/loop-control, losetup) and the
// tools are installed; with -short it skips.
func NeedAttach(t testing.TB, tools ...string) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: skipping a test that mounts FUSE and binds loop devices")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (FUSE mount, losetup, mount)")
	}
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			t.Skipf("needs %s", dev)
		}
	}
	Need(t, append([]string{"losetup"}, tools...)...)
}
