// A memory node attached through the FUSE file and a loop device behaves
// as a disk: ext4 made, mounted, written, synced, fsck-clean and read back
// after a remount by child processes of the process that serves the FUSE
// file; fsync of the file and of the loop device reaches node.Flush; reads
// at the end are short, writes past it fail, fallocate zeroes, node
// errors map as NBD replies do (ENOSPC stays ENOSPC) logged once, and a read-only attachment refuses
// writes — each checked with real mounts, losetup, mkfs.ext4 and e2fsck.
package attach

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"dst/internal/testkit"
	"dst/storage/nbd"
	"dst/storage/node"
)

// TestExt4RoundTripThroughLoopDevice runs a file system life cycle on a
// memory node attached directly, and on the same behind a remote node (an
// NBD connection to an in-process nbd.Server), as the torture harness
// does.
func TestExt4RoundTripThroughLoopDevice(t *testing.T) {
	testkit.NeedAttach(t, "mkfs.ext4", "e2fsck", "mount", "umount", "sync")
	for _, remote := range []bool{false, true} {
		t.Run(map[bool]string{false: "memory", true: "remote"}[remote], func(t *testing.T) {
			mem := node.NewMemory(64 << 20)
			var dev node.Node = mem
			if remote {
				dev = serveRemote(t, mem)
			}
			dir := filepath.Join(t.TempDir(), "mnt")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			a, err := Attach(ctx, dev, Options{Dir: dir, Name: "disk0", Mode: ModeFUSE})
			require.NoError(t, err)
			t.Cleanup(func() { closeAttachment(t, a, dir) })
			ext4RoundTrip(t, mem, a)
		})
	}
}

func ext4RoundTrip(t *testing.T, mem *node.Memory, a *Attachment) {
	require.Equal(t, ModeFUSE, a.Mode())
	require.True(t, strings.HasPrefix(a.Device(), "/dev/loop"), a.Device())
	require.Equal(t, "disk0", filepath.Base(a.File()))
	backing, err := loopBacking(a.Device())
	require.NoError(t, err)
	require.Equal(t, a.File(), backing)

	run(t, "mkfs.ext4", "-q", "-F", a.Device())
	dir := mountFS(t, a.Device())
	want := bytes.Repeat([]byte("dst attach round trip\n"), 100_000) // 2.2 MB
	require.NoError(t, os.WriteFile(filepath.Join(dir, "file"), want, 0o644))
	flushes := mem.Flushes()
	run(t, "sync", "-f", filepath.Join(dir, "file"))
	require.Greater(t, mem.Flushes(), flushes, "sync of the file system reaches node.Flush")
	run(t, "umount", dir)

	run(t, "e2fsck", "-fn", a.Device())
	dir = mountFS(t, a.Device(), "-o", "ro")
	got, err := os.ReadFile(filepath.Join(dir, "file"))
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got), "the file read back after a remount differs")
	run(t, "umount", dir)
}

// serveRemote serves mem over NBD on loopback and returns a remote node
// connected to it; both end with the test.
func serveRemote(t *testing.T, mem *node.Memory) node.Node {
	t.Helper()
	srv, err := nbd.NewServer(nbd.ServerOptions{Exports: []*nbd.Export{{Name: "m", Size: mem.Size(), Flags: mem.Flags(), Backend: mem}}})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	octx, ocancel := context.WithTimeout(ctx, 10*time.Second)
	defer ocancel()
	dev, err := node.Open(octx, "nbd://"+ln.Addr().String()+"/m", node.OpenOptions{})
	require.NoError(t, err)
	t.Cleanup(func() {
		dev.Close()
		cancel()
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		_ = srv.Shutdown(sctx)
		<-served
	})
	return dev
}

func TestFsyncReachesFlush(t *testing.T) {
	testkit.NeedAttach(t)
	mem, a := attachMemory(t, 4<<20, Options{})

	f, err := os.OpenFile(a.File(), os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	_, err = f.WriteAt([]byte("hello"), 4096)
	require.NoError(t, err)
	require.Equal(t, []byte("hello"), mem.Bytes(4096, 5), "direct I/O: the write reached the node before fsync")
	before := mem.Flushes()
	require.NoError(t, f.Sync())
	require.Equal(t, before+1, mem.Flushes(), "fsync of the file")
	require.NoError(t, unix.Fdatasync(int(f.Fd())))
	require.Equal(t, before+2, mem.Flushes(), "fdatasync of the file")

	d, err := os.OpenFile(a.Device(), os.O_RDWR, 0)
	require.NoError(t, err)
	defer d.Close()
	_, err = d.WriteAt(bytes.Repeat([]byte{7}, 4096), 8192)
	require.NoError(t, err)
	before = mem.Flushes()
	require.NoError(t, d.Sync())
	require.Greater(t, mem.Flushes(), before, "fsync of the loop device")
	require.Equal(t, bytes.Repeat([]byte{7}, 4096), mem.Bytes(8192, 4096), "the device's write reached the node")
}

func TestFileEdgesAndErrors(t *testing.T) {
	testkit.NeedAttach(t)
	var logs testkit.Buffer
	const size = 1 << 20
	mem, a := attachMemory(t, size, Options{Logger: logger(&logs)})
	f, err := os.OpenFile(a.File(), os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	st, err := f.Stat()
	require.NoError(t, err)
	require.Equal(t, int64(size), st.Size())

	// Reads at or across the end are short.
	buf := make([]byte, 8192)
	n, err := f.ReadAt(buf, size-4096)
	require.Equal(t, 4096, n)
	require.ErrorIs(t, err, io.EOF)
	n, _ = f.ReadAt(buf, size)
	require.Zero(t, n)

	// Writes past the end fail; across it they are short.
	_, err = f.WriteAt([]byte("x"), size)
	require.ErrorIs(t, err, syscall.ENOSPC)
	_, err = f.WriteAt(make([]byte, 8192), size-4096)
	require.ErrorIs(t, err, syscall.ENOSPC, "the part past the end")
	require.ErrorIs(t, f.Truncate(size/2), syscall.EPERM, "the size is the node's")

	// fallocate: punching a hole and zeroing a range read back as zeroes.
	_, err = f.WriteAt(bytes.Repeat([]byte{0xff}, 3*4096), 0)
	require.NoError(t, err)
	require.NoError(t, unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096))
	require.NoError(t, unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_ZERO_RANGE, 2*4096, 4096))
	require.Equal(t, make([]byte, 4096), mem.Bytes(0, 4096), "punched hole")
	require.Equal(t, bytes.Repeat([]byte{0xff}, 4096), mem.Bytes(4096, 4096), "between the two")
	require.Equal(t, make([]byte, 4096), mem.Bytes(2*4096, 4096), "zeroed range")
	require.Error(t, unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_COLLAPSE_RANGE, 0, 4096))

	// Node errors are EIO, logged once for a run of failures.
	mem.SetFail(errors.New("injected node failure"))
	for range 3 {
		_, err = f.ReadAt(buf[:4096], 0)
		require.ErrorIs(t, err, syscall.EIO)
	}
	_, err = f.WriteAt(buf[:4096], 0)
	require.ErrorIs(t, err, syscall.EIO)
	require.ErrorIs(t, f.Sync(), syscall.EIO)
	mem.SetFail(nil)
	_, err = f.ReadAt(buf[:4096], 0)
	require.NoError(t, err)
	out := logs.String()
	require.Equal(t, 1, strings.Count(out, "node request failed"), out)
	require.Contains(t, out, "op=read offset=0 length=4096")
	require.Contains(t, out, "failed_requests_not_logged=4", out)

	// Errors map as every NBD reply does (nbd.ErrnoOf): a full disk, a
	// read-only or refusing node and an error a remote peer sent keep
	// their meaning; everything else is EIO.
	for _, c := range []struct {
		err  error
		want syscall.Errno
	}{
		{&os.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC}, syscall.ENOSPC},
		{fmt.Errorf("engine: %w", syscall.EROFS), syscall.EPERM},
		{fmt.Errorf("remote: %w", nbd.ENOSPC), syscall.ENOSPC},
		{nbd.ENOTSUP, syscall.EOPNOTSUPP},
		{errors.New("disk on fire"), syscall.EIO},
	} {
		mem.SetFail(c.err)
		_, err = f.WriteAt(buf[:4096], 0)
		require.ErrorIs(t, err, c.want, "write failing with %v", c.err)
		_, err = f.ReadAt(buf[:4096], 0)
		require.ErrorIs(t, err, c.want, "read failing with %v", c.err)
		require.ErrorIs(t, f.Sync(), c.want, "fsync failing with %v", c.err)
	}
	mem.SetFail(nil)
}

func TestReadOnlyRefusesWrites(t *testing.T) {
	testkit.NeedAttach(t)
	mem, a := attachMemory(t, 1<<20, Options{ReadOnly: true})
	_, err := os.OpenFile(a.File(), os.O_RDWR, 0)
	require.ErrorIs(t, err, syscall.EROFS)
	f, err := os.Open(a.File())
	require.NoError(t, err)
	defer f.Close()
	st, err := f.Stat()
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o444), st.Mode().Perm())
	_, err = f.ReadAt(make([]byte, 512), 0)
	require.NoError(t, err)

	d, err := os.OpenFile(a.Device(), os.O_RDWR, 0)
	if err == nil {
		_, err = d.WriteAt(make([]byte, 512), 0)
		if err == nil {
			err = d.Sync()
		}
		d.Close()
	}
	require.Error(t, err, "the loop device is read-only")
	ro := run(t, "blockdev", "--getro", a.Device())
	require.Equal(t, "1", strings.TrimSpace(ro))
	require.Equal(t, make([]byte, 512), mem.Bytes(0, 512))
}

func TestAttachRefusesALiveMountpoint(t *testing.T) {
	testkit.NeedAttach(t)
	dir := filepath.Join(t.TempDir(), "mnt")
	_, _ = attachMemory(t, 1<<20, Options{Dir: dir})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Attach(ctx, node.NewMemory(1<<20), Options{Dir: dir, Mode: ModeFUSE})
	require.ErrorIs(t, err, ErrInUse)
	require.ErrorIs(t, CleanStale(ctx, dir, nil), ErrInUse)
}

func TestCloseAfterTheNodeDied(t *testing.T) {
	testkit.NeedAttach(t)
	dir := filepath.Join(t.TempDir(), "mnt")
	mem := node.NewMemory(1 << 20)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := Attach(ctx, mem, Options{Dir: dir, Mode: ModeFUSE})
	require.NoError(t, err)
	d, err := os.OpenFile(a.Device(), os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = d.WriteAt(make([]byte, 4096), 0) // dirty in the loop device's page cache
	require.NoError(t, err)
	require.NoError(t, d.Close())
	require.NoError(t, mem.Close())
	closeAttachment(t, a, dir)
	require.NoError(t, a.Close(ctx), "a second Close")
}
