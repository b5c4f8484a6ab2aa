package attach

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"dst/storage/nbd"
	"dst/storage/node"
)

// fuseMaxWrite is the largest read or write the kernel sends to the FUSE
// file in one request (the kernel's own limit is 1 MiB).
const fuseMaxWrite = 1 << 20

// zeroChunkBytes bounds the buffer used to zero a range on a node that
// cannot WRITE_ZEROES.
const zeroChunkBytes = 1 << 20

// fileNode is the one regular file of the mount: every read, write,
// fsync and fallocate goes to the node.
type fileNode struct {
	fs.Inode
	dev      node.Node
	size     int64
	readOnly bool
	errs     *errorLog
}

var (
	_ fs.NodeOpener    = (*fileNode)(nil)
	_ fs.NodeReader    = (*fileNode)(nil)
	_ fs.NodeWriter    = (*fileNode)(nil)
	_ fs.NodeFsyncer   = (*fileNode)(nil)
	_ fs.NodeFlusher   = (*fileNode)(nil)
	_ fs.NodeAllocater = (*fileNode)(nil)
	_ fs.NodeGetattrer = (*fileNode)(nil)
	_ fs.NodeSetattrer = (*fileNode)(nil)
)

// Open refuses writers of a read-only file and asks for direct I/O, so
// the page cache keeps no second copy and every request reaches the node.
func (f *fileNode) Open(_ context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if f.readOnly && flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EROFS
	}
	if flags&syscall.O_TRUNC != 0 && f.size > 0 {
		return nil, 0, syscall.EPERM
	}
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

// Read reads from the node; a read at or after the end is short.
func (f *fileNode) Read(ctx context.Context, _ fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off < 0 {
		return nil, syscall.EINVAL
	}
	if off >= f.size {
		return fuse.ReadResultData(nil), 0
	}
	n := int(min(int64(len(dest)), f.size-off))
	if err := f.dev.ReadAt(ctx, dest[:n], off); err != nil {
		return nil, f.errs.fail("read", off, int64(n), err)
	}
	f.errs.ok()
	return fuse.ReadResultData(dest[:n]), 0
}

// Write writes to the node. A write starting at or after the end fails
// with ENOSPC; one crossing the end is short.
func (f *fileNode) Write(ctx context.Context, _ fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	switch {
	case f.readOnly:
		return 0, syscall.EROFS
	case off < 0:
		return 0, syscall.EINVAL
	case off >= f.size && len(data) > 0:
		return 0, syscall.ENOSPC
	}
	n := int(min(int64(len(data)), f.size-off))
	if err := f.dev.WriteAt(ctx, data[:n], off, 0); err != nil {
		return 0, f.errs.fail("write", off, int64(n), err)
	}
	f.errs.ok()
	return uint32(n), 0
}

// Fsync (and fdatasync) flushes the node: this is how a loop device's
// flush reaches the storage as NBD FLUSH.
func (f *fileNode) Fsync(ctx context.Context, _ fs.FileHandle, _ uint32) syscall.Errno {
	if err := f.dev.Flush(ctx); err != nil {
		return f.errs.fail("flush", 0, 0, err)
	}
	f.errs.ok()
	return 0
}

// Flush is close(2) of a descriptor; it has nothing to write back (all
// I/O is direct), and closing is no durability point.
func (f *fileNode) Flush(context.Context, fs.FileHandle) syscall.Errno { return 0 }

// Allocate implements fallocate(2): PUNCH_HOLE (with KEEP_SIZE) and
// ZERO_RANGE make the range read back as zeroes; plain allocation within
// the size is a no-op (the device is all allocated); anything else is
// not supported.
func (f *fileNode) Allocate(ctx context.Context, _ fs.FileHandle, off, length uint64, mode uint32) syscall.Errno {
	const keep = unix.FALLOC_FL_KEEP_SIZE
	if off > uint64(f.size) || length > uint64(f.size)-off {
		if mode&keep != 0 && off < uint64(f.size) {
			length = uint64(f.size) - off
		} else {
			return syscall.EFBIG
		}
	}
	switch mode &^ keep {
	case 0:
		return 0
	case unix.FALLOC_FL_PUNCH_HOLE:
		if mode&keep == 0 {
			return syscall.EINVAL // punching a hole requires KEEP_SIZE
		}
		return f.zero(ctx, "punch hole", int64(off), int64(length), 0)
	case unix.FALLOC_FL_ZERO_RANGE:
		return f.zero(ctx, "zero range", int64(off), int64(length), nbd.CmdFlagNoHole)
	}
	return syscall.EOPNOTSUPP
}

// zero makes [off, off+length) read back as zeroes: with WRITE_ZEROES
// where the node supports it, else by writing zeroes in bounded chunks.
//
// A punched hole must read back as zeroes (the loop driver turns both
// discard and write-zeroes requests into PUNCH_HOLE), and NBD TRIM does
// not promise that, so PUNCH_HOLE becomes WRITE_ZEROES without NO_HOLE
// (the node may deallocate) rather than TRIM.
func (f *fileNode) zero(ctx context.Context, op string, off, length int64, flags nbd.CmdFlags) syscall.Errno {
	if f.readOnly {
		return syscall.EROFS
	}
	if length == 0 {
		return 0
	}
	if f.dev.Flags()&nbd.FlagSendWriteZero != 0 {
		if err := f.dev.WriteZeroes(ctx, off, length, flags); err != nil {
			return f.errs.fail(op, off, length, err)
		}
		f.errs.ok()
		return 0
	}
	buf := make([]byte, min(length, zeroChunkBytes))
	for done := int64(0); done < length; {
		n := min(int64(len(buf)), length-done)
		if err := f.dev.WriteAt(ctx, buf[:n], off+done, 0); err != nil {
			return f.errs.fail(op, off+done, n, err)
		}
		done += n
	}
	f.errs.ok()
	return 0
}

// Getattr reports a regular file of the node's size.
func (f *fileNode) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.attr(&out.Attr)
	return 0
}

func (f *fileNode) attr(a *fuse.Attr) {
	a.Mode = syscall.S_IFREG | 0o644
	if f.readOnly {
		a.Mode = syscall.S_IFREG | 0o444
	}
	a.Size = uint64(f.size)
	a.Blocks = (uint64(f.size) + 511) / 512
	a.Blksize = 4096
	a.Nlink = 1
}

// Setattr refuses a change of size (the device has the node's size) and
// ignores the rest (times, mode): the file is a window on the node.
func (f *fileNode) Setattr(_ context.Context, _ fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok && int64(sz) != f.size {
		return syscall.EPERM
	}
	f.attr(&out.Attr)
	return 0
}

// errorLog logs a node's failures once per run of failures, not once per
// request: the first error with its op, offset and length, then how many
// more failed when the node answers again.
type errorLog struct {
	log        *slog.Logger
	mu         sync.Mutex
	failing    bool
	suppressed int
}

// fail records a failed request and returns its errno, mapped as every
// NBD reply is (nbd.ErrnoOf): ENOSPC stays ENOSPC, the unknown is EIO.
func (e *errorLog) fail(op string, off, length int64, err error) syscall.Errno {
	errno := nbd.SyscallErrno(err)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.failing {
		e.suppressed++
		return errno
	}
	e.failing = true
	e.log.Error("node request failed", "op", op, "offset", off, "length", length, "errno", errno.Error(), "err", err)
	return errno
}

// ok records a successful request.
func (e *errorLog) ok() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.failing {
		return
	}
	e.log.Info("node answers again", "failed_requests_not_logged", e.suppressed)
	e.failing, e.suppressed = false, 0
}

// fuseMount is a mounted FUSE file system holding one file.
type fuseMount struct {
	dir    string
	file   string
	conn   uint32 // the FUSE connection id: minor of the mount's st_dev
	server *fuse.Server
	log    *slog.Logger
	// created: Attach created dir, and unmount removes it.
	created bool
}

// forkMu is held by mountFile from opening /dev/fuse until the descriptor
// is close-on-exec: go-fuse's direct mount opens /dev/fuse without
// O_CLOEXEC, and a child started meanwhile (mkfs, mount) would otherwise
// keep the FUSE connection alive after this process dies.
var forkMu = &syscall.ForkLock

// mountFile mounts at dir a FUSE file system whose one file, name, is dev.
func mountFile(dev node.Node, dir, name string, readOnly bool, log *slog.Logger) (*fuseMount, error) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil, fmt.Errorf("FUSE is not available: %w", err)
	}
	file := &fileNode{dev: dev, size: dev.Size(), readOnly: readOnly, errs: &errorLog{log: log}}
	root := &fs.Inode{}
	long := time.Hour // the file never changes shape
	opts := &fs.Options{
		MountOptions: fuse.MountOptions{
			FsName:            "dst:" + dev.String(),
			Name:              "dst",
			AllowOther:        true,
			MaxWrite:          fuseMaxWrite,
			DisableXAttrs:     true,
			DirectMountStrict: true,
			MaxBackground:     64,
			// Replies are plain data: splicing buys nothing, and at 1 MiB
			// it fails on the pipe's size and logs.
			DisableSplice: true,
			Logger:        slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		EntryTimeout: &long,
		AttrTimeout:  &long,
		OnAdd: func(ctx context.Context) {
			child := root.NewPersistentInode(ctx, file, fs.StableAttr{Mode: syscall.S_IFREG, Ino: 2})
			root.AddChild(name, child, false)
		},
	}
	forkMu.Lock()
	server, err := fs.Mount(dir, root, opts)
	if err == nil {
		err = cloexecFUSE()
	}
	forkMu.Unlock()
	if err != nil {
		if server != nil {
			_ = server.Unmount()
		}
		return nil, fmt.Errorf("mount FUSE at %s: %w", dir, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		_ = server.Unmount()
		return nil, fmt.Errorf("mount FUSE at %s: %w", dir, err)
	}
	m := &fuseMount{dir: dir, file: filepath.Join(dir, name), conn: unix.Minor(st.Dev), server: server, log: log}
	log.Debug("FUSE mounted", "dir", dir, "connection", m.conn)
	return m, nil
}

// cloexecFUSE marks every /dev/fuse descriptor of this process
// close-on-exec.
func cloexecFUSE() error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("list descriptors: %w", err)
	}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil || target != "/dev/fuse" {
			continue
		}
		var fd int
		if _, err := fmt.Sscan(e.Name(), &fd); err == nil {
			syscall.CloseOnExec(fd)
		}
	}
	return nil
}

// unmount ends the file system within ctx: a plain unmount, else (the
// file is still open, e.g. by a loop device being released) a lazy
// unmount and an abort of the FUSE connection, so that the serving
// goroutines end in any case.
func (m *fuseMount) unmount(ctx context.Context) error {
	var errs []error
	deadline := time.Now().Add(5 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	var err error
	for {
		if err = unix.Unmount(m.dir, 0); err == nil || !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling: the kernel tells no one when the last opener left
	}
	if err != nil && !errors.Is(err, unix.EINVAL) { // EINVAL: not mounted any more
		m.log.Warn("unmount failed; detaching lazily and aborting the FUSE connection", "dir", m.dir, "err", err)
		if lerr := unix.Unmount(m.dir, unix.MNT_DETACH); lerr != nil && !errors.Is(lerr, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("lazy unmount %s: %w", m.dir, lerr))
		}
		if aerr := abortConn(m.conn); aerr != nil {
			errs = append(errs, aerr)
		}
	}
	done := make(chan struct{})
	go func() {
		m.server.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		_ = abortConn(m.conn)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			errs = append(errs, fmt.Errorf("FUSE server of %s did not stop", m.dir))
		}
	}
	if len(errs) == 0 && m.created {
		_ = os.Remove(m.dir) // only if empty: nothing else is lost
	}
	return errors.Join(errs...)
}

// abortConn aborts FUSE connection id: every request fails with
// ENOTCONN and the server's loops end.
func abortConn(id uint32) error {
	p := fmt.Sprintf("/sys/fs/fuse/connections/%d/abort", id)
	if err := os.WriteFile(p, []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("abort FUSE connection %d: %w", id, err)
	}
	return nil
}

// isFUSEMount reports whether dir is the mountpoint of a FUSE file
// system, from /proc/self/mountinfo.
func isFUSEMount(dir string) (bool, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, fmt.Errorf("read mountinfo: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 10 || unescapeMount(fields[4]) != dir {
			continue
		}
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) && strings.HasPrefix(fields[i+1], "fuse") {
				return true, nil
			}
		}
	}
	return false, nil
}

// unescapeMount undoes the octal escapes (\040 for a space) of
// /proc/self/mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
