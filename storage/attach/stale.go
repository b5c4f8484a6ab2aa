package attach

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// ErrInUse means a mountpoint is served by a live attachment.
var ErrInUse = errors.New("in use by a live attachment")

// staleDetachTimeout bounds the release of one stale loop device.
const staleDetachTimeout = 10 * time.Second

// CleanStale cleans what a crashed attachment left at the mountpoint dir:
// a FUSE mount whose process died (statfs fails with ENOTCONN, "transport
// endpoint is not connected") is unmounted lazily after the loop devices
// bound to files under it are detached; loop devices bound to files under
// dir while dir is no mount any more are detached too. The mount is
// probed with statfs(2), which the kernel never answers from a cache. A dir that is a
// live FUSE mount is left alone and reported as ErrInUse; a dir with
// nothing stale is no error. The error names everything that could not
// be cleaned. log may be nil.
func CleanStale(ctx context.Context, dir string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("clean %s: %w", dir, err)
	}
	mounted, err := isFUSEMount(dir)
	if err != nil {
		return fmt.Errorf("clean %s: %w", dir, err)
	}
	dead := false
	if mounted {
		// statfs always asks the FUSE server (stat may be answered from
		// the kernel's attribute cache), so a dead server shows at once.
		var st unix.Statfs_t
		err := unix.Statfs(dir, &st)
		switch {
		case err == nil:
			return fmt.Errorf("mountpoint %s: %w", dir, ErrInUse)
		case errors.Is(err, unix.ENOTCONN), errors.Is(err, unix.ECONNABORTED):
			dead = true
		default:
			return fmt.Errorf("clean %s: stat of the FUSE mount: %w", dir, err)
		}
	}
	loops, err := LoopsBackedBy(dir)
	if err != nil {
		return fmt.Errorf("clean %s: %w", dir, err)
	}
	if !dead && len(loops) == 0 {
		return nil
	}
	log.Warn("cleaning a stale attachment", "dir", dir, "dead_mount", dead, "loop_devices", loops)
	var errs []error
	for _, dev := range loops {
		dctx, cancel := context.WithTimeout(ctx, staleDetachTimeout)
		if err := LoopDetach(dctx, dev); err != nil {
			errs = append(errs, fmt.Errorf("loop device %s bound to a file under %s: %w", dev, dir, err))
		}
		cancel()
	}
	if dead {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("lazy unmount of the dead FUSE mount %s: %w", dir, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("clean stale attachment at %s: %w", dir, errors.Join(errs...))
	}
	return nil
}
