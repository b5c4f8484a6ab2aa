package fsload

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ErrShutdownUnsupported is returned (wrapped) when the filesystem has no
// shutdown ioctl.
var ErrShutdownUnsupported = errors.New("fsload: filesystem cannot be shut down")

// fsIocShutdown is FS_IOC_SHUTDOWN (XFS_IOC_GOINGDOWN), _IOR('X', 125, __u32).
const fsIocShutdown = 0x8004587d

// shutdownNoLogFlush is FS_SHUTDOWN_FLAGS_NOLOGFLUSH: stop without writing
// the log, so everything not yet on the device is lost.
const shutdownNoLogFlush = 2

// Shutdown simulates a crash of the filesystem mounted at dir: the kernel
// stops all its I/O at once without flushing dirty data or the log, as if
// power was lost (the "godown" of fstests). The filesystem stays mounted but
// dead; Umount it, then Mount and Umount once to replay the journal before
// Fsck, then Mount and VerifyAfterCrash. ext4 and xfs support it; btrfs only
// on recent kernels (ErrShutdownUnsupported otherwise).
func Shutdown(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("fsload: shutdown %s: open: %w", dir, err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetPointerInt(fd, fsIocShutdown, shutdownNoLogFlush); err != nil {
		if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("%w: %s: %w", ErrShutdownUnsupported, dir, err)
		}
		return fmt.Errorf("fsload: shutdown %s: %w", dir, err)
	}
	return nil
}
