// Package attach attaches a dst storage — any node.Node: a local file, a
// remote NBD node such as a dst serve, memory — to this kernel as a block
// device, by one of two paths.
//
// The FUSE path works on every Linux with FUSE and loop devices, including
// containers and VMs without the nbd driver. The node is exposed as the one
// regular file of a FUSE file system (github.com/hanwen/go-fuse/v2) mounted
// at Options.Dir, opened with direct I/O so that the page cache keeps no
// second copy and every read and write reaches the node; fsync and
// fdatasync of the file become node.Flush (the loop driver turns a flush of
// the block device into an fsync of its backing file, so a file system's
// journal commit reaches the storage as NBD FLUSH); fallocate PUNCH_HOLE and
// ZERO_RANGE become WriteZeroes (a punched hole must read back as zeroes,
// which NBD TRIM does not promise); node errors become EIO and are logged
// once per run of failures. losetup then binds a loop device to the file.
// The file system is served by goroutines of the calling process, which may
// meanwhile run mkfs, mount and fsck as child processes: /dev/fuse is made
// close-on-exec under syscall.ForkLock so that no child keeps a dead
// attachment's FUSE connection alive. A process that dies leaves a FUSE
// mount that answers ENOTCONN and a loop device bound to it; CleanStale,
// which Attach runs first, detaches the loop devices and lazily unmounts it.
//
// The kernel path uses /dev/nbdX where the nbd driver is loaded. The node
// is served by an nbd.Server on one end of a Unix socket pair; this package
// runs the client handshake (nbd.Negotiate: NBD_OPT_GO, no structured
// replies, nothing read past the handshake) on the
// other end and hands it to the driver with the NBD ioctls (NBD_SET_SOCK,
// NBD_SET_BLKSIZE, NBD_SET_SIZE_BLOCKS, NBD_SET_TIMEOUT, NBD_SET_FLAGS with
// the export's flush, FUA, trim and read-only flags, NBD_DO_IT on its own
// goroutine; NBD_DISCONNECT and NBD_CLEAR_SOCK on Close). It was checked on
// machines without the driver, as far as that goes: the handshake runs
// against the real nbd.Server over a real socket pair, the flag
// translation and the driver detection are table-tested, the ioctl numbers
// are compared with the installed <linux/nbd.h>, and ModeAuto is shown to
// pick the FUSE path and ModeKernel to fail with ErrNoNBDDriver. The
// ioctl sequence itself has not run against a kernel driver in CI.
//
// Both paths need root (mount, losetup, the NBD ioctls).
package attach
