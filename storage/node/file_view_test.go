// The File's view (nbd.ViewBackend): a file on a memory file system is
// mapped, and View shows its current bytes, writes and trims included;
// ranges outside the node and files on other file systems get ok=false.
package node_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"dst/storage/node"
)

func TestFileViewOnTmpfs(t *testing.T) {
	p := shmPath(t, "v.img")
	require.NoError(t, os.WriteFile(p, pattern(0x5a, 1<<20), 0o644))
	f, err := node.OpenFile(p, node.FileOptions{Size: 1<<20 - 512}) // a node shorter than its file
	require.NoError(t, err)
	defer f.Close()

	v, ok := f.View(4096, 8192)
	require.True(t, ok)
	require.Equal(t, pattern(0x5a, 1<<20)[4096:4096+8192], v)
	ctx := context.Background()
	require.NoError(t, f.WriteAt(ctx, pattern(0x11, 4096), 8192, 0))
	require.Equal(t, pattern(0x11, 4096), v[4096:], "the view shows later writes")
	require.NoError(t, f.Trim(ctx, 0, 1<<20-512, 0))
	z, ok := f.View(0, 4096)
	require.True(t, ok)
	require.Equal(t, make([]byte, 4096), z, "trimmed bytes read as zeroes")

	for _, r := range [][2]int64{{1<<20 - 512 - 4096, 4097}, {-1, 1}, {0, -1}, {1 << 20, 0}} {
		_, ok := f.View(r[0], int(r[1]))
		require.False(t, ok, "range %v is outside the node", r)
	}
	w, ok := f.View(1<<20-512-4096, 4096)
	require.True(t, ok)
	require.Equal(t, 4096, cap(w), "a view cannot be grown past its range")
}

func TestFileViewOnlyOnMemory(t *testing.T) {
	p := filepath.Join(t.TempDir(), "d.img")
	f, err := node.OpenFile(p, node.FileOptions{Size: 1 << 20})
	require.NoError(t, err)
	defer f.Close()
	if node.IsMemory(f) {
		t.Skip("the test directory is on a memory file system")
	}
	_, ok := f.View(0, 4096)
	require.False(t, ok, "a disk file is not mapped: a page not cached would block the reply's write")
}

// In-place reads and writes on a memory file go through the mapping; a
// file another process shrank makes them fail, and the process lives.
func TestFileTryOnShrunkMappedFile(t *testing.T) {
	p := shmPath(t, "s.img")
	f, err := node.OpenFile(p, node.FileOptions{Size: 1 << 20})
	require.NoError(t, err)
	defer f.Close()
	done, err := f.TryWriteAt(pattern(0x33, 4096), 8192, 0)
	require.True(t, done)
	require.NoError(t, err)
	v, _ := f.View(8192, 4096)
	require.Equal(t, pattern(0x33, 4096), v, "written through the mapping")

	require.NoError(t, os.Truncate(p, 0))
	done, err = f.TryWriteAt(pattern(0x44, 4096), 512<<10, 0)
	require.True(t, done)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	done, err = f.TryReadAt(make([]byte, 4096), 512<<10)
	require.True(t, done)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
}
