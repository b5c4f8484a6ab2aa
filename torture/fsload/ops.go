package fsload

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrTooSmall is returned (wrapped) when a device is smaller than MinSize.
var ErrTooSmall = errors.New("fsload: device too small")

// ErrNotClean is returned (wrapped, with the tool's output) when a read-only
// filesystem check finds problems.
var ErrNotClean = errors.New("fsload: filesystem check not clean")

// DeviceSize returns the size in bytes of a block device or regular file.
func DeviceSize(dev string) (int64, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, fmt.Errorf("fsload: size of %s: %w", dev, err)
	}
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("fsload: size of %s: %w", dev, err)
	}
	return n, nil
}

// CheckSize returns an ErrTooSmall error when dev is smaller than MinSize(f).
func CheckSize(f FS, dev string) error {
	n, err := DeviceSize(dev)
	if err != nil {
		return err
	}
	if n < MinSize(f) {
		return fmt.Errorf("%w: %s is %d MiB, %v needs at least %d MiB", ErrTooSmall, dev, n>>20, f, MinSize(f)>>20)
	}
	return nil
}

// Label returns the filesystem label Mkfs gives for seed (12 characters, the
// xfs maximum).
func Label(seed uint64) string { return fmt.Sprintf("dst-%08x", uint32(mix64(seed^0x1abe1))) }

// UUID returns the filesystem UUID Mkfs gives for seed (a version 4 layout
// with bits drawn from the seed), so a run replays to the same superblock.
func UUID(seed uint64) string {
	hi, lo := mix64(seed^0x0f5a1d), mix64(seed^0x0f5a1d^0x9e3779b97f4a7c15)
	hi = hi&^0xf000 | 0x4000               // version 4
	lo = lo&^(0xc000<<48) | (0x8000 << 48) // RFC 4122 variant
	return fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", hi>>32, (hi>>16)&0xffff, hi&0xffff, lo>>48, lo&0xffffffffffff)
}

// Mkfs makes a new filesystem f on dev, quietly and forcibly, without
// discarding the device, with the label and UUID derived from seed. It checks
// the device size against MinSize first. The returned string is the tool's
// output (usually empty with -q).
func Mkfs(ctx context.Context, f FS, dev string, seed uint64) (string, error) {
	if err := CheckTools(f); err != nil {
		return "", err
	}
	if err := CheckSize(f, dev); err != nil {
		return "", err
	}
	label, uuid := Label(seed), UUID(seed)
	var out string
	var err error
	switch f {
	case Ext4:
		out, err = runTool(ctx, toolMkfsExt4, "-F", "-q", "-b", "4096", "-L", label, "-U", uuid,
			"-E", "nodiscard,hash_seed="+UUID(seed+1), dev)
	case XFS:
		out, err = runTool(ctx, toolMkfsXFS, "-f", "-q", "-K", "-L", label, "-m", "uuid="+uuid, dev)
	case Btrfs:
		// The UUID is fixed by the seed: a stale registration of an earlier
		// btrfs with it (another device, since unmounted) would make
		// mkfs.btrfs refuse it as non-unique. Forget unmounted ones first.
		_, _ = runTool(ctx, toolBtrfs, "device", "scan", "--forget")
		out, err = runTool(ctx, toolMkfsBtr, "-f", "-q", "-K", "-L", label, "-U", uuid, dev)
	default:
		panic(fmt.Sprintf("fsload: Mkfs of invalid %v", f))
	}
	if err != nil {
		return out, fmt.Errorf("fsload: mkfs %v on %s: %w", f, dev, err)
	}
	return out, nil
}

// MountOptions are the options Mount passes: no atime updates (fewer writes
// that are not the workload's) and no discard (the harness checks that data
// stays, and a discard would punch holes through the whole stack).
const MountOptions = "noatime,nodiscard"

// Mount mounts dev (holding filesystem f) on dir, creating dir if needed.
func Mount(ctx context.Context, f FS, dev, dir string) error {
	if !f.Valid() {
		panic(fmt.Sprintf("fsload: Mount of invalid %v", f))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("fsload: mount %v %s: %w", f, dev, err)
	}
	if _, err := runTool(ctx, toolMount, "-t", f.String(), "-o", MountOptions, dev, dir); err != nil {
		return fmt.Errorf("fsload: mount %v %s on %s: %w", f, dev, dir, err)
	}
	return nil
}

// Umount unmounts dir. When the kernel says the target is busy, the error
// lists the processes holding files or directories under dir.
func Umount(ctx context.Context, dir string) error {
	out, err := runTool(ctx, toolUmount, dir)
	if err == nil {
		return nil
	}
	if strings.Contains(strings.ToLower(out), "busy") {
		holders := Holders(dir, 16)
		if len(holders) == 0 {
			holders = []string{"no process found holding it (a bind mount or a kernel user?)"}
		}
		return fmt.Errorf("fsload: umount %s: busy, held by: %s: %w", dir, strings.Join(holders, "; "), err)
	}
	return fmt.Errorf("fsload: umount %s: %w", dir, err)
}

// Mounted reports whether dir is a mount point, from /proc/self/mountinfo.
func Mounted(dir string) (bool, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return false, fmt.Errorf("fsload: mounted %s: %w", dir, err)
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, fmt.Errorf("fsload: mounted %s: %w", dir, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescapeMount(fields[4]) == abs {
			return true, nil
		}
	}
	if err := sc.Err(); err != nil {
		return false, fmt.Errorf("fsload: mounted %s: %w", dir, err)
	}
	return false, nil
}

// unescapeMount undoes the octal escapes (\040 for space) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Holders lists up to limit processes whose working directory, root,
// executable or open files lie under dir, as "pid 123 (comm): fd 4 -> path".
func Holders(dir string, limit int) []string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil
	}
	under := func(p string) bool { return p == abs || strings.HasPrefix(p, abs+"/") }
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []string
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		base := "/proc/" + p.Name()
		comm, _ := os.ReadFile(base + "/comm")
		name := strings.TrimSpace(string(comm))
		var why []string
		for _, link := range []string{"cwd", "root", "exe"} {
			if t, err := os.Readlink(base + "/" + link); err == nil && under(t) && !(link == "root" && t == "/") {
				why = append(why, link+" "+t)
			}
		}
		if fds, err := os.ReadDir(base + "/fd"); err == nil {
			for _, fd := range fds {
				if t, err := os.Readlink(base + "/fd/" + fd.Name()); err == nil && under(t) {
					why = append(why, "fd "+fd.Name()+" -> "+t)
					if len(why) >= 4 {
						break
					}
				}
			}
		}
		if len(why) > 0 {
			out = append(out, fmt.Sprintf("pid %d (%s): %s", pid, name, strings.Join(why, ", ")))
			if len(out) >= limit {
				break
			}
		}
	}
	return out
}

// Fsck runs the read-only check of f on dev (e2fsck -fn, xfs_repair -n,
// btrfs check --readonly) and returns its output. The filesystem must not be
// mounted. Anything but a clean result is an ErrNotClean error carrying the
// first 4 KiB of the tool's output.
//
// After a crash, the journal or log may still need replaying, which the
// read-only checkers refuse or report as damage: mount and unmount the
// filesystem first (the kernel replays it), then Fsck.
func Fsck(ctx context.Context, f FS, dev string) (string, error) {
	if err := CheckTools(f); err != nil {
		return "", err
	}
	var out string
	var err error
	switch f {
	case Ext4:
		out, err = runTool(ctx, toolE2fsck, "-f", "-n", dev)
	case XFS:
		out, err = runTool(ctx, toolXFSRepr, "-n", dev)
	case Btrfs:
		out, err = runTool(ctx, toolBtrfs, "check", "--readonly", dev)
	default:
		panic(fmt.Sprintf("fsload: Fsck of invalid %v", f))
	}
	if err == nil {
		return out, nil
	}
	var ce *CommandError
	if ctx.Err() == nil && errors.As(err, &ce) && ce.ExitCode > 0 {
		return out, fmt.Errorf("%w: %v on %s: %w", ErrNotClean, f, dev, err)
	}
	return out, fmt.Errorf("fsload: fsck %v on %s: %w", f, dev, err)
}
