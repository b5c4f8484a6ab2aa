// The File node reads and writes what it is given, punches holes for
// TRIM and WRITE_ZEROES, keeps blocks allocated for NO_HOLE, refuses writes
// when read-only, and settles the node size and file creation as
// documented, checked on temporary files (allocation through st_blocks)
// and, where losetup works, on a loop block device.
package node_test

import (
	"context"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/nbd"
	"dst/storage/node"
)

const mib = 1 << 20

// openTemp opens a new file of size bytes filled with 0xee read-write.
func openTemp(t *testing.T, size int64) (*node.File, string) {
	t.Helper()
	p := testkit.Image(t, "disk.img", size)
	require.NoError(t, os.WriteFile(p, pattern(0xee, int(size)), 0o644))
	f, err := node.OpenFile(p, node.FileOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f, p
}

// allocated returns the bytes allocated to the file at p.
func allocated(t *testing.T, p string) int64 {
	t.Helper()
	var st syscall.Stat_t
	require.NoError(t, syscall.Stat(p, &st))
	return st.Blocks * 512
}

// readBack reads [off, off+n) through the backend.
func readBack(t *testing.T, f *node.File, off int64, n int) []byte {
	t.Helper()
	p := make([]byte, n)
	require.NoError(t, f.ReadAt(context.Background(), p, off))
	return p
}

func TestFileReadWrite(t *testing.T) {
	ctx := testkit.Context(t, 30*time.Second)
	f, p := openTemp(t, 4*mib)
	require.Equal(t, int64(4*mib), f.Size())
	require.False(t, f.IsBlockDevice())

	require.NoError(t, f.WriteAt(ctx, pattern(0x5a, 3000), 4097, 0))
	require.NoError(t, f.WriteAt(ctx, pattern(0x11, mib), 2*mib, nbd.CmdFlagFUA))
	require.NoError(t, f.Flush(ctx))
	require.NoError(t, f.Cache(ctx, 0, 4*mib))

	require.Equal(t, pattern(0x5a, 3000), readBack(t, f, 4097, 3000))
	require.Equal(t, pattern(0xee, 1), readBack(t, f, 4096, 1), "byte before the write untouched")
	require.Equal(t, pattern(0xee, 1), readBack(t, f, 4097+3000, 1), "byte after the write untouched")
	require.Equal(t, pattern(0x11, mib), readBack(t, f, 2*mib, mib))

	disk, err := os.ReadFile(p)
	require.NoError(t, err)
	require.Equal(t, pattern(0x5a, 3000), disk[4097:4097+3000], "the data is in the file itself")
	require.Equal(t, pattern(0x11, mib), disk[2*mib:3*mib])
}

func TestFileFlags(t *testing.T) {
	f, _ := openTemp(t, mib)
	want := nbd.FlagSendFlush | nbd.FlagSendFUA | nbd.FlagSendTrim | nbd.FlagSendWriteZero |
		nbd.FlagSendCache | nbd.FlagCanMultiConn | nbd.FlagSendFastZero
	require.Equal(t, want, f.Flags(), "got %v", f.Flags())
	require.Equal(t, f.Path(), f.String(), "a file node is named by its path")
}

func TestFileTrimPunchesHoles(t *testing.T) {
	ctx := testkit.Context(t, 30*time.Second)
	f, p := openTemp(t, 4*mib)
	require.NoError(t, f.Flush(ctx))
	before := allocated(t, p)
	require.NoError(t, f.Trim(ctx, mib, 2*mib, 0))
	require.Equal(t, make([]byte, 2*mib), readBack(t, f, mib, 2*mib), "a punched range reads zeroes")
	require.Equal(t, pattern(0xee, mib), readBack(t, f, 3*mib, mib), "outside the range untouched")
	require.LessOrEqual(t, allocated(t, p), before-2*mib, "TRIM deallocated the range")
	fi, err := os.Stat(p)
	require.NoError(t, err)
	require.Equal(t, int64(4*mib), fi.Size(), "punching keeps the size")
}

func TestFileWriteZeroes(t *testing.T) {
	ctx := testkit.Context(t, 30*time.Second)
	t.Run("may punch", func(t *testing.T) {
		f, p := openTemp(t, 4*mib)
		require.NoError(t, f.Flush(ctx))
		before := allocated(t, p)
		require.NoError(t, f.WriteZeroes(ctx, 0, 2*mib, nbd.CmdFlagFUA))
		require.Equal(t, make([]byte, 2*mib), readBack(t, f, 0, 2*mib))
		require.LessOrEqual(t, allocated(t, p), before-2*mib, "without NO_HOLE the range is deallocated")
	})
	t.Run("NO_HOLE keeps blocks", func(t *testing.T) {
		f, p := openTemp(t, 4*mib)
		require.NoError(t, f.Flush(ctx))
		before := allocated(t, p)
		require.NoError(t, f.WriteZeroes(ctx, 100, 2*mib, nbd.CmdFlagNoHole))
		require.Equal(t, make([]byte, 2*mib), readBack(t, f, 100, 2*mib))
		require.Equal(t, pattern(0xee, 100), readBack(t, f, 0, 100), "unaligned head untouched")
		require.GreaterOrEqual(t, allocated(t, p), before, "NO_HOLE must not deallocate")
	})
	t.Run("NO_HOLE and FAST_ZERO", func(t *testing.T) {
		f, _ := openTemp(t, 4*mib)
		err := f.WriteZeroes(ctx, 0, mib, nbd.CmdFlagNoHole|nbd.CmdFlagFastZero)
		if err != nil {
			// The file system has no ZERO_RANGE: fail fast, touch nothing.
			require.ErrorIs(t, err, nbd.ENOTSUP)
			require.Equal(t, pattern(0xee, mib), readBack(t, f, 0, mib))
			return
		}
		require.Equal(t, make([]byte, mib), readBack(t, f, 0, mib))
	})
	t.Run("FAST_ZERO may punch", func(t *testing.T) {
		f, _ := openTemp(t, 4*mib)
		require.NoError(t, f.WriteZeroes(ctx, 0, mib, nbd.CmdFlagFastZero))
		require.Equal(t, make([]byte, mib), readBack(t, f, 0, mib))
	})
}

func TestFileReadOnly(t *testing.T) {
	ctx := testkit.Context(t, 30*time.Second)
	p := testkit.Image(t, "disk.img", mib)
	require.NoError(t, os.WriteFile(p, pattern(0x42, mib), 0o644))
	f, err := node.OpenFile(p, node.FileOptions{ReadOnly: true})
	require.NoError(t, err)
	defer f.Close()
	require.NotZero(t, f.Flags()&nbd.FlagReadOnly)
	require.Equal(t, pattern(0x42, 10), readBack(t, f, 0, 10))
	for name, err := range map[string]error{
		"write":        f.WriteAt(ctx, []byte{1}, 0, 0),
		"trim":         f.Trim(ctx, 0, 4096, 0),
		"write zeroes": f.WriteZeroes(ctx, 0, 4096, 0),
	} {
		require.ErrorIs(t, err, nbd.EPERM, name)
	}
	require.NoError(t, f.Flush(ctx), "flushing a read-only file is harmless")
}

func TestFileShrunkUnderneath(t *testing.T) {
	f, p := openTemp(t, mib)
	require.NoError(t, os.Truncate(p, 4096))
	err := f.ReadAt(context.Background(), make([]byte, 8192), 0)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF, "EOF inside the node size is an error")
	require.Contains(t, err.Error(), "offset 0 length 8192")
}

func TestOpenFileSize(t *testing.T) {
	existing := func(t *testing.T, size int64) string { return testkit.Image(t, "disk.img", size) }
	missing := func(t *testing.T, _ int64) string { return filepath.Join(t.TempDir(), "new.img") }
	for _, tc := range []struct {
		name     string
		path     func(*testing.T, int64) string
		have     int64
		opts     node.FileOptions
		want     int64 // node size; 0 means an error
		wantFile int64 // file size afterwards
		wantErr  error
	}{
		{"existing whole", existing, mib, node.FileOptions{}, mib, mib, nil},
		{"existing limited", existing, mib, node.FileOptions{Size: 512 << 10}, 512 << 10, mib, nil},
		{"existing grown", existing, mib, node.FileOptions{Size: 3 * mib}, 3 * mib, 3 * mib, nil},
		{"existing same size", existing, mib, node.FileOptions{Size: mib}, mib, mib, nil},
		{"read-only limited", existing, mib, node.FileOptions{Size: 4096, ReadOnly: true}, 4096, mib, nil},
		{"read-only cannot grow", existing, mib, node.FileOptions{Size: 2 * mib, ReadOnly: true}, 0, mib, node.ErrSize},
		{"empty file needs a size", existing, 0, node.FileOptions{}, 0, 0, node.ErrSize},
		{"empty file grown", existing, 0, node.FileOptions{Size: mib}, mib, mib, nil},
		{"negative size", existing, mib, node.FileOptions{Size: -1}, 0, mib, node.ErrSize},
		{"missing created", missing, 0, node.FileOptions{Size: 2 * mib}, 2 * mib, 2 * mib, nil},
		{"missing without size", missing, 0, node.FileOptions{}, 0, -1, fs.ErrNotExist},
		{"missing read-only", missing, 0, node.FileOptions{Size: mib, ReadOnly: true}, 0, -1, fs.ErrNotExist},
		{"missing directory", func(t *testing.T, _ int64) string { return filepath.Join(t.TempDir(), "no", "x.img") },
			0, node.FileOptions{Size: mib}, 0, -1, fs.ErrNotExist},
		{"directory", func(t *testing.T, _ int64) string { return t.TempDir() }, 0, node.FileOptions{}, 0, -2, node.ErrNotDevice},
		{"character device", func(*testing.T, int64) string { return "/dev/null" }, 0, node.FileOptions{ReadOnly: true}, 0, -2, node.ErrNotDevice},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.path(t, tc.have)
			f, err := node.OpenFile(p, tc.opts)
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				require.Contains(t, err.Error(), p, "the error names the path")
			} else {
				require.NoError(t, err)
				require.Equal(t, tc.want, f.Size())
				require.Equal(t, p, f.Path())
				require.NoError(t, f.Close())
			}
			switch fi, err := os.Stat(p); tc.wantFile {
			case -1:
				require.ErrorIs(t, err, fs.ErrNotExist, "nothing is left behind")
			case -2: // not a file of ours
			default:
				require.NoError(t, err)
				require.Equal(t, tc.wantFile, fi.Size())
			}
		})
	}
}

// loopDevice attaches a new loop device to a file of size bytes, or skips.
func loopDevice(t *testing.T, size int64) string {
	t.Helper()
	testkit.Need(t, "losetup")
	img := testkit.Image(t, "disk.img", size)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		t.Skipf("needs loop devices (root and /dev/loop-control): losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

func TestFileBlockDevice(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	dev := loopDevice(t, 8*mib)

	_, err := node.OpenFile(dev, node.FileOptions{Size: 16 * mib})
	require.ErrorIs(t, err, node.ErrSize, "larger than the device")
	require.Contains(t, err.Error(), dev)

	small, err := node.OpenFile(dev, node.FileOptions{Size: 4 * mib, ReadOnly: true})
	require.NoError(t, err)
	require.Equal(t, int64(4*mib), small.Size())
	require.NoError(t, small.Close())

	f, err := node.OpenFile(dev, node.FileOptions{})
	require.NoError(t, err)
	defer f.Close()
	require.True(t, f.IsBlockDevice())
	require.Equal(t, int64(8*mib), f.Size(), "size from BLKGETSIZE64")
	require.NotZero(t, f.Flags()&nbd.FlagSendFastZero)

	_, err = node.OpenFile(dev, node.FileOptions{})
	require.ErrorIs(t, err, node.ErrInUse, "a read-write node opens the device exclusively")

	require.NoError(t, f.WriteAt(ctx, pattern(0x77, 4*mib), 0, 0))
	require.NoError(t, f.WriteAt(ctx, pattern(0x78, 1000), 4*mib+3, nbd.CmdFlagFUA))
	require.NoError(t, f.Flush(ctx))
	require.Equal(t, pattern(0x78, 1000), readBack(t, f, 4*mib+3, 1000))

	require.NoError(t, f.Trim(ctx, 100, mib, 0), "unaligned trim is trimmed inwards")
	require.NoError(t, f.WriteZeroes(ctx, 0, mib, 0))
	require.Equal(t, make([]byte, mib), readBack(t, f, 0, mib))
	require.NoError(t, f.WriteZeroes(ctx, mib+1, 1000, nbd.CmdFlagNoHole), "partial sectors take the slow path")
	require.Equal(t, make([]byte, 1000), readBack(t, f, mib+1, 1000))
	require.Equal(t, pattern(0x77, 1), readBack(t, f, mib, 1))
	err = f.WriteZeroes(ctx, 2*mib+1, 1000, nbd.CmdFlagFastZero)
	require.ErrorIs(t, err, nbd.ENOTSUP, "partial sectors cannot be zeroed fast")
	require.Equal(t, pattern(0x77, 1000), readBack(t, f, 2*mib+1, 1000))
}
