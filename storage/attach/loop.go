package attach

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// loopToolTimeout bounds one losetup run when ctx has no earlier deadline.
const loopToolTimeout = 30 * time.Second

// LoopAttach binds a free loop device to file with 512-byte sectors
// (losetup --find --show), read-only if asked, and returns the device,
// e.g. /dev/loop3. It needs root and losetup (util-linux).
func LoopAttach(ctx context.Context, file string, readOnly bool) (string, error) {
	args := []string{"--find", "--show", "--sector-size", "512"}
	if readOnly {
		args = append(args, "--read-only")
	}
	out, err := losetup(ctx, append(args, file)...)
	if err != nil {
		return "", fmt.Errorf("loop device for %s: %w", file, err)
	}
	dev := strings.TrimSpace(out)
	if !strings.HasPrefix(dev, "/dev/loop") {
		return "", fmt.Errorf("loop device for %s: losetup printed %q", file, out)
	}
	return dev, nil
}

// LoopDetach unbinds the loop device dev (losetup --detach) and waits,
// within ctx, until the kernel released its backing file. A device that
// is not bound is no error. If dev is still open (a file system on it is
// mounted) the kernel only marks it for release on last close; then
// LoopDetach fails once ctx ends, saying so.
func LoopDetach(ctx context.Context, dev string) error {
	if _, err := loopBacking(dev); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if _, err := losetup(ctx, "--detach", dev); err != nil {
		if _, berr := loopBacking(dev); errors.Is(berr, os.ErrNotExist) {
			return nil // released meanwhile
		}
		return fmt.Errorf("detach %s: %w", dev, err)
	}
	for {
		backing, err := loopBacking(dev)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("detach %s: still bound to %s (is a file system on it still mounted?): %w", dev, backing, ctx.Err())
		case <-time.After(20 * time.Millisecond): // polling: the release has no event to wait on
		}
	}
}

// losetup runs losetup with args and returns its standard output.
func losetup(ctx context.Context, args ...string) (string, error) {
	bin, err := exec.LookPath("losetup")
	if err != nil {
		return "", fmt.Errorf("losetup not found (apt-get install util-linux): %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, loopToolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.WaitDelay = 2 * time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("losetup %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// loopBacking returns the backing file of loop device dev as the kernel
// reports it; an error wrapping os.ErrNotExist means dev is not bound.
func loopBacking(dev string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(string(b), "\n"), nil
}

// LoopsBackedBy lists the loop devices whose backing file is dir or lies
// under it, from /sys/block/loop*/loop/backing_file.
func LoopsBackedBy(dir string) ([]string, error) {
	dir = filepath.Clean(dir)
	paths, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		return nil, fmt.Errorf("list loop devices: %w", err)
	}
	var devs []string
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // released meanwhile
		}
		backing := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), " (deleted)")
		if backing == dir || strings.HasPrefix(backing, dir+"/") {
			devs = append(devs, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(p))))
		}
	}
	return devs, nil
}
