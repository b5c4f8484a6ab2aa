package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"dst/internal/memfault"
	"dst/storage/nbd"
)

// zeroChunkBytes is the largest write of the slow WRITE_ZEROES path.
const zeroChunkBytes = 1 << 20

// zeroes is the shared source of the slow WRITE_ZEROES path. It is only
// ever read.
var zeroes [zeroChunkBytes]byte

// createMode is the permission of files OpenFile creates.
const createMode = 0o644

// FileOptions configure OpenFile. The zero value opens an existing file or
// device read-write and uses all of it.
type FileOptions struct {
	// ReadOnly opens the file O_RDONLY; the node then has FlagReadOnly and
	// refuses writes with nbd.EPERM.
	ReadOnly bool
	// Size is the node size in bytes. Zero uses the whole file or device.
	// A missing file is created with this size (sparse); a regular file
	// smaller than Size is grown with ftruncate (unless ReadOnly, which is
	// an error); of a file or device larger than Size only the first Size
	// bytes are used. A block device smaller than Size is an error.
	Size int64
}

// File is a Node over a regular file or a block device (a local node),
// using positional I/O on one descriptor. Its methods are safe for
// concurrent use; the size is fixed at open.
//
// How each command maps to the kernel:
//
//   - READ, WRITE: pread, pwrite (os.File ReadAt/WriteAt). A file on a
//     memory file system (tmpfs, ramfs) is also mapped shared at open:
//     requests served in place (TryReadAt, TryWriteAt) copy through the
//     mapping with no system call, and the server sends large read
//     replies from it and receives large write payloads into it (View,
//     WritableView). A fault on the mapping (another process shrank the
//     file) fails the request or ends the connection, never the process.
//   - FLUSH: fdatasync, which covers writes made through any connection
//     (so the export advertises CAN_MULTI_CONN honestly).
//   - WRITE with FUA: pwritev2 with RWF_DSYNC, which makes that one write
//     durable like O_DSYNC and lets the block layer use a FUA write instead
//     of a cache flush of the whole device. sync_file_range was rejected:
//     it neither flushes the disk cache nor the metadata, so it is not
//     durable. Kernels without RWF_DSYNC get pwrite then fdatasync.
//   - TRIM: fallocate(PUNCH_HOLE|KEEP_SIZE) on regular files, BLKDISCARD
//     (aligned inwards to the logical sector) on block devices; where the
//     file system or device cannot, success without effect (trim is a hint).
//   - WRITE_ZEROES: without NO_HOLE, punch a hole (reads back zeroes);
//     with NO_HOLE, or where punching is not supported,
//     fallocate(ZERO_RANGE); else pwrite from a shared zero buffer in 1 MiB
//     chunks. With FAST_ZERO the slow path is refused with nbd.ENOTSUP; on
//     block devices ZERO_RANGE counts as slow too (the kernel may fall back
//     to writing zeroes), while punching uses the no-fallback zeroout, and
//     ranges that are not whole sectors take the slow path (the kernel
//     refuses to fallocate partial sectors). FUA adds an fdatasync.
//   - CACHE: posix_fadvise(WILLNEED); errors are ignored.
//
// I/O goes through the page cache (no O_DIRECT): durability comes from
// FLUSH and FUA, as the protocol intends.
type File struct {
	f           *os.File
	rc          syscall.RawConn
	path        string
	size        int64
	readOnly    bool
	block       bool
	sectorBytes int64 // logical sector size of a block device, else 1

	noPunch     atomic.Bool // fallocate PUNCH_HOLE reported unsupported
	noZeroRange atomic.Bool // fallocate ZERO_RANGE reported unsupported
	noDiscard   atomic.Bool // BLKDISCARD reported unsupported
	noDSync     atomic.Bool // pwritev2 RWF_DSYNC reported unsupported

	// memory: a regular file on tmpfs or ramfs, whose reads and writes
	// never wait for media, so TryReadAt and TryWriteAt always do them.
	memory bool
	// mapped is the file mapped shared (memory file systems only; writable
	// unless readOnly), for View and WritableView: read replies are sent
	// from it and large writes received into it.
	mapped        []byte
	noNowaitRead  atomic.Bool // preadv2 RWF_NOWAIT reported unsupported
	noNowaitWrite atomic.Bool // pwritev2 RWF_NOWAIT reported unsupported
}

var (
	_ Node                 = (*File)(nil)
	_ nbd.NowaitBackend    = (*File)(nil)
	_ nbd.WriteViewBackend = (*File)(nil)
)

// OpenFile opens path as described by opts. Errors name the path and wrap
// fs.ErrNotExist, ErrNotDevice, ErrSize, ErrInUse or the operating system
// error.
func OpenFile(path string, opts FileOptions) (*File, error) {
	if opts.Size < 0 {
		return nil, fmt.Errorf("%w: %d bytes for %s", ErrSize, opts.Size, path)
	}
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
	}
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return create(path, opts)
	case err != nil:
		return nil, fmt.Errorf("node: %w", err)
	case !st.Mode().IsRegular() && !isBlockDevice(st.Mode()):
		return nil, fmt.Errorf("%w: %s is a %v", ErrNotDevice, path, st.Mode().Type())
	case isBlockDevice(st.Mode()) && !opts.ReadOnly:
		// Exclusive open of a block device fails if it is mounted.
		flag |= unix.O_EXCL
	}
	f, err := os.OpenFile(path, flag, 0)
	if errors.Is(err, syscall.EBUSY) {
		return nil, fmt.Errorf("%w: %s (mounted?): %v", ErrInUse, path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	file, err := newFile(f, path, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	return file, nil
}

// create makes a missing file of opts.Size bytes.
func create(path string, opts FileOptions) (*File, error) {
	switch {
	case opts.Size == 0:
		return nil, fmt.Errorf("node: %s does not exist (give a size to create it): %w", path, fs.ErrNotExist)
	case opts.ReadOnly:
		return nil, fmt.Errorf("node: %s does not exist and a read-only node cannot create it: %w", path, fs.ErrNotExist)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, createMode)
	if err != nil {
		return nil, fmt.Errorf("node: create: %w", err)
	}
	if err := f.Truncate(opts.Size); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("node: size new file %s to %d bytes: %w", path, opts.Size, err)
	}
	file, err := newFile(f, path, opts)
	if err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	return file, nil
}

// newFile checks what f is, settles the node size and probes what the
// file system supports.
func newFile(f *os.File, path string, opts FileOptions) (*File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("node: %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	file := &File{f: f, rc: rc, path: path, readOnly: opts.ReadOnly, sectorBytes: 1}
	var have int64
	switch m := st.Mode(); {
	case m.IsRegular():
		have = st.Size()
	case isBlockDevice(m):
		file.block = true
		if err := file.control(func(fd int) (err error) {
			var n uint64
			if n, err = unix.IoctlGetUint64(fd, unix.BLKGETSIZE64); err == nil {
				have = int64(n)
				var ss int
				if ss, err = unix.IoctlGetInt(fd, unix.BLKSSZGET); err == nil && ss > 0 {
					file.sectorBytes = int64(ss)
				}
			}
			return err
		}); err != nil {
			return nil, fmt.Errorf("node: size of block device %s: %w", path, err)
		}
	default:
		return nil, fmt.Errorf("%w: %s is a %v", ErrNotDevice, path, m.Type())
	}
	switch {
	case opts.Size == 0 && have == 0:
		return nil, fmt.Errorf("%w: %s is empty (give a size to grow it)", ErrSize, path)
	case opts.Size == 0 || opts.Size == have:
		file.size = have
	case opts.Size < have:
		file.size = opts.Size
	case file.block:
		return nil, fmt.Errorf("%w: %d bytes asked of block device %s, which has %d", ErrSize, opts.Size, path, have)
	case opts.ReadOnly:
		return nil, fmt.Errorf("%w: %d bytes asked of %s, which has %d and is opened read-only", ErrSize, opts.Size, path, have)
	default:
		if err := f.Truncate(opts.Size); err != nil {
			return nil, fmt.Errorf("node: grow %s from %d to %d bytes: %w", path, have, opts.Size, err)
		}
		file.size = opts.Size
		have = opts.Size
	}
	if !file.block && !file.readOnly {
		file.probePunch(have)
	}
	if !file.block {
		var fs unix.Statfs_t
		if file.control(func(fd int) error { return unix.Fstatfs(fd, &fs) }) == nil {
			file.memory = fs.Type == unix.TMPFS_MAGIC || fs.Type == unix.RAMFS_MAGIC
		}
	}
	if file.memory && file.size > 0 {
		// Without a mapping View says no and reads take pread: no error.
		_ = file.control(func(fd int) error {
			prot := unix.PROT_READ
			if !file.readOnly {
				prot |= unix.PROT_WRITE
			}
			m, err := unix.Mmap(fd, 0, int(file.size), prot, unix.MAP_SHARED)
			file.mapped = m
			return err
		})
	}
	return file, nil
}

// View returns the node's bytes [off, off+n) from its mapping
// (nbd.ViewBackend): files on a memory file system are mapped at open, so
// a read reply is sent from the page cache directly. Other files, and
// ranges outside the node, get ok=false.
func (f *File) View(off int64, n int) ([]byte, bool) {
	if f.mapped == nil || off < 0 || n < 0 || off > int64(len(f.mapped))-int64(n) {
		return nil, false
	}
	return f.mapped[off : off+int64(n) : off+int64(n)], true
}

// copyMapped copies src to dst where one of them is the mapping: a fault
// (the file shrank under it) is an error, not a crash.
func (f *File) copyMapped(dst, src []byte, op string, off int64) error {
	if err := memfault.Do(func() { copy(dst, src) }); err != nil {
		return f.opErr(op, off, int64(len(dst)), fmt.Errorf("the mapped file shrank: %w: %w", io.ErrUnexpectedEOF, err))
	}
	return nil
}

// WritableView is View for writing (nbd.WriteViewBackend): the server
// receives a large write's payload into it. A read-only node has none.
func (f *File) WritableView(off int64, n int) ([]byte, bool) {
	if f.readOnly {
		return nil, false
	}
	return f.View(off, n)
}

// WroteView finishes a write made through WritableView: with
// nbd.CmdFlagFUA it is made durable (fdatasync covers the mapping's
// pages on a memory file system as well).
func (f *File) WroteView(off int64, n int, flags nbd.CmdFlags) error {
	return f.fua(flags, "write", off, int64(n))
}

func isBlockDevice(m fs.FileMode) bool {
	return m&fs.ModeDevice != 0 && m&fs.ModeCharDevice == 0
}

// probePunch finds out whether the file system can punch holes, without
// touching data: it punches a page past the end of the file, which every
// file system that supports punching accepts as a no-op (KEEP_SIZE keeps
// the size).
func (f *File) probePunch(fileBytes int64) {
	off := (fileBytes + 4095) &^ 4095
	err := f.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, 4096)
	if err != nil {
		f.noPunch.Store(true)
	}
}

// Size returns the device size in bytes, fixed at open.
func (f *File) Size() int64 { return f.size }

// Path returns the path the file was opened with.
func (f *File) Path() string { return f.path }

// String returns the path, which names the node in logs and errors.
func (f *File) String() string { return f.path }

// IsBlockDevice reports whether the file is a block device.
func (f *File) IsBlockDevice() bool { return f.block }

// Flags returns the transmission flags the file supports: flush, FUA,
// trim, write zeroes, cache and multi-conn always; fast zero where a fast
// way to zero exists (hole punching on regular files, the no-fallback
// zeroout on block devices); read-only for read-only files.
func (f *File) Flags() nbd.TransmissionFlags {
	fl := nbd.FlagSendFlush | nbd.FlagSendFUA | nbd.FlagSendTrim | nbd.FlagSendWriteZero |
		nbd.FlagSendCache | nbd.FlagCanMultiConn
	if f.block || !f.noPunch.Load() {
		fl |= nbd.FlagSendFastZero
	}
	if f.readOnly {
		fl |= nbd.FlagReadOnly
	}
	return fl
}

// Close closes the file. Pending writes are not flushed: clients FLUSH.
func (f *File) Close() error {
	if f.mapped != nil {
		_ = unix.Munmap(f.mapped)
		f.mapped = nil
	}
	if err := f.f.Close(); err != nil {
		return fmt.Errorf("node: close %s: %w", f.path, err)
	}
	return nil
}

// ReadAt fills p from off. A file that shrank under the node (another
// process truncated it) is an error wrapping io.ErrUnexpectedEOF.
func (f *File) ReadAt(_ context.Context, p []byte, off int64) error {
	n, err := f.f.ReadAt(p, off)
	if errors.Is(err, io.EOF) {
		err = fmt.Errorf("file ends after %d of %d bytes: %w", off+int64(n), off+int64(len(p)), io.ErrUnexpectedEOF)
	}
	if err != nil {
		return f.opErr("read", off, int64(len(p)), err)
	}
	return nil
}

// WriteAt writes p at off; with nbd.CmdFlagFUA the data is durable when
// it returns.
func (f *File) WriteAt(_ context.Context, p []byte, off int64, flags nbd.CmdFlags) error {
	if f.readOnly {
		return f.opErr("write", off, int64(len(p)), nbd.EPERM)
	}
	if flags&nbd.CmdFlagFUA != 0 && !f.noDSync.Load() {
		err := f.writeDSync(p, off)
		if err == nil {
			return nil
		}
		if !unsupported(err) {
			return f.opErr("write (FUA)", off, int64(len(p)), err)
		}
		f.noDSync.Store(true)
	}
	if _, err := f.f.WriteAt(p, off); err != nil {
		return f.opErr("write", off, int64(len(p)), err)
	}
	return f.fua(flags, "write", off, int64(len(p)))
}

// TryReadAt is ReadAt when it need not wait for media (nbd.NowaitBackend):
// always on a memory file system (a copy from the mapping), else when preadv2(RWF_NOWAIT) finds all
// of p in the page cache. Anything else (a page not cached, an error, a
// short read) is left to ReadAt.
func (f *File) TryReadAt(p []byte, off int64) (done bool, err error) {
	if m, ok := f.View(off, len(p)); ok {
		return true, f.copyMapped(p, m, "read", off)
	}
	if f.memory {
		return true, f.ReadAt(context.Background(), p, off)
	}
	if f.noNowaitRead.Load() {
		return false, nil
	}
	return f.nowait(&f.noNowaitRead, false, p, off), nil
}

// TryWriteAt is WriteAt when it need not wait (nbd.NowaitBackend): always
// on a memory file system (a copy into the mapping), else a write without FUA that
// pwritev2(RWF_NOWAIT) takes whole. Anything else is left to WriteAt (a
// prefix it may have written is written again).
func (f *File) TryWriteAt(p []byte, off int64, flags nbd.CmdFlags) (done bool, err error) {
	if m, ok := f.WritableView(off, len(p)); ok {
		if err := f.copyMapped(m, p, "write", off); err != nil {
			return true, err
		}
		return true, f.fua(flags, "write", off, int64(len(p)))
	}
	if f.memory {
		return true, f.WriteAt(context.Background(), p, off, flags)
	}
	if f.readOnly || flags&nbd.CmdFlagFUA != 0 || f.noNowaitWrite.Load() {
		return false, nil
	}
	return f.nowait(&f.noNowaitWrite, true, p, off), nil
}

// nowait runs one preadv2 or pwritev2 with RWF_NOWAIT and reports whether
// it moved all of p; an answer saying the file system cannot do it at all
// sets off for good.
func (f *File) nowait(off *atomic.Bool, write bool, p []byte, at int64) bool {
	op := nowaitOps.Get().(*nowaitOp)
	op.write, op.iov[0], op.off = write, p, at
	cerr := f.rc.Control(op.fn)
	n, err := op.n, op.err
	op.iov[0] = nil
	nowaitOps.Put(op)
	switch {
	case cerr != nil:
		return false
	case err == nil:
		return n == len(p)
	case unsupported(err) || errors.Is(err, unix.EINVAL):
		off.Store(true)
	}
	return false
}

// nowaitOp carries one RWF_NOWAIT call through RawConn.Control; they are
// pooled with their bound callback, so a try allocates nothing.
type nowaitOp struct {
	write bool
	iov   [1][]byte
	off   int64
	n     int
	err   error
	fn    func(fd uintptr)
}

var nowaitOps = sync.Pool{New: func() any {
	op := &nowaitOp{}
	op.fn = op.run
	return op
}}

func (op *nowaitOp) run(fd uintptr) {
	if op.write {
		op.n, op.err = unix.Pwritev2(int(fd), op.iov[:], op.off, unix.RWF_NOWAIT)
	} else {
		op.n, op.err = unix.Preadv2(int(fd), op.iov[:], op.off, unix.RWF_NOWAIT)
	}
}

// writeDSync writes all of p at off with pwritev2(RWF_DSYNC).
func (f *File) writeDSync(p []byte, off int64) error {
	return f.control(func(fd int) error {
		iov := [][]byte{p}
		for len(iov[0]) > 0 {
			n, err := unix.Pwritev2(fd, iov, off, unix.RWF_DSYNC)
			switch {
			case err == unix.EINTR:
				continue
			case err != nil:
				return err
			case n == 0:
				return io.ErrShortWrite
			}
			iov[0], off = iov[0][n:], off+int64(n)
		}
		return nil
	})
}

// Flush makes every completed write durable (fdatasync).
func (f *File) Flush(context.Context) error {
	if err := f.control(unix.Fdatasync); err != nil {
		return f.opErr("flush", 0, f.size, err)
	}
	return nil
}

// fua runs fdatasync if flags carry FUA.
func (f *File) fua(flags nbd.CmdFlags, op string, off, length int64) error {
	if flags&nbd.CmdFlagFUA == 0 {
		return nil
	}
	if err := f.control(unix.Fdatasync); err != nil {
		return f.opErr(op+" (FUA sync)", off, length, err)
	}
	return nil
}

// Trim deallocates [off, off+length) where the file system or device can;
// elsewhere it succeeds without effect.
func (f *File) Trim(_ context.Context, off, length int64, flags nbd.CmdFlags) error {
	if f.readOnly {
		return f.opErr("trim", off, length, nbd.EPERM)
	}
	var err error
	switch {
	case f.block && !f.noDiscard.Load():
		err = f.discard(off, length)
		if unsupported(err) {
			f.noDiscard.Store(true)
			err = nil
		}
	case !f.block && !f.noPunch.Load():
		err = f.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if unsupported(err) {
			f.noPunch.Store(true)
			err = nil
		}
	}
	if err != nil {
		return f.opErr("trim", off, length, err)
	}
	return f.fua(flags, "trim", off, length)
}

// discard issues BLKDISCARD for the sectors wholly inside [off, off+length).
func (f *File) discard(off, length int64) error {
	start := (off + f.sectorBytes - 1) / f.sectorBytes * f.sectorBytes
	end := (off + length) / f.sectorBytes * f.sectorBytes
	if end <= start {
		return nil
	}
	rng := [2]uint64{uint64(start), uint64(end - start)}
	return f.control(func(fd int) error {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKDISCARD, uintptr(unsafe.Pointer(&rng[0])))
		if e != 0 {
			return e
		}
		return nil
	})
}

// WriteZeroes makes [off, off+length) read back as zeroes, as described on
// File. With nbd.CmdFlagFastZero it fails with nbd.ENOTSUP instead of
// writing zeroes.
func (f *File) WriteZeroes(ctx context.Context, off, length int64, flags nbd.CmdFlags) error {
	if f.readOnly {
		return f.opErr("write zeroes", off, length, nbd.EPERM)
	}
	fast := flags&nbd.CmdFlagFastZero != 0
	// Block devices refuse fallocate of partial sectors with EINVAL.
	aligned := (off|length)%f.sectorBytes == 0
	if flags&nbd.CmdFlagNoHole == 0 && aligned && !f.noPunch.Load() {
		err := f.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if err == nil {
			return f.fua(flags, "write zeroes", off, length)
		}
		if !unsupported(err) {
			return f.opErr("write zeroes (punch)", off, length, err)
		}
		f.noPunch.Store(true)
	}
	if aligned && !f.noZeroRange.Load() && !(f.block && fast) {
		err := f.fallocate(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if err == nil {
			return f.fua(flags, "write zeroes", off, length)
		}
		if !unsupported(err) {
			return f.opErr("write zeroes (zero range)", off, length, err)
		}
		f.noZeroRange.Store(true)
	}
	if fast {
		return f.opErr("write zeroes (fast)", off, length, nbd.ENOTSUP)
	}
	for done := int64(0); done < length; {
		if err := ctx.Err(); err != nil {
			return f.opErr("write zeroes", off, length, err)
		}
		n := min(length-done, zeroChunkBytes)
		if _, err := f.f.WriteAt(zeroes[:n], off+done); err != nil {
			return f.opErr("write zeroes", off+done, n, err)
		}
		done += n
	}
	return f.fua(flags, "write zeroes", off, length)
}

// Cache asks the kernel to read [off, off+length) ahead. It never fails.
func (f *File) Cache(_ context.Context, off, length int64) error {
	_ = f.control(func(fd int) error { return unix.Fadvise(fd, off, length, unix.FADV_WILLNEED) })
	return nil
}

// fallocate runs fallocate(2), retrying on EINTR.
func (f *File) fallocate(mode uint32, off, length int64) error {
	return f.control(func(fd int) error {
		for {
			err := unix.Fallocate(fd, mode, off, length)
			if err != unix.EINTR {
				return err
			}
		}
	})
}

// control runs fn on the descriptor, which stays valid while fn runs.
func (f *File) control(fn func(fd int) error) error {
	var err error
	if cerr := f.rc.Control(func(fd uintptr) { err = fn(int(fd)) }); cerr != nil {
		return cerr
	}
	return err
}

// opErr wraps err with the operation, path, offset and length. The
// fs.PathError of os.File is unwrapped: the path is already in the text.
func (f *File) opErr(op string, off, length int64, err error) error {
	if pe, ok := err.(*fs.PathError); ok {
		err = pe.Err
	}
	return fmt.Errorf("node: %s %s offset %d length %d: %w", op, f.path, off, length, err)
}

// unsupported reports whether err says the kernel, file system or device
// does not implement the operation at all.
func unsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.ENOTTY)
}
