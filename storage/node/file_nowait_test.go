// The File's in-place path (nbd.NowaitBackend): on tmpfs every read and
// write is served at once; elsewhere a read is served when the page cache
// holds it (preadv2 RWF_NOWAIT) and a write only where pwritev2 RWF_NOWAIT
// works, never with FUA; what is not served is left untouched for the
// ordinary path; and the tries allocate nothing.
package node_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/nbd"
	"dst/storage/node"
)

func TestFileTryOnTmpfs(t *testing.T) {
	p := shmPath(t, "m.img")
	require.NoError(t, os.WriteFile(p, pattern(0xee, 1<<20), 0o644))
	f, err := node.OpenFile(p, node.FileOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	require.True(t, node.IsMemory(f), "/dev/shm is tmpfs")

	done, err := f.TryWriteAt(pattern(0x11, 8192), 4096, 0)
	require.True(t, done)
	require.NoError(t, err)
	done, err = f.TryWriteAt(pattern(0x22, 4096), 65536, nbd.CmdFlagFUA)
	require.True(t, done, "FUA on tmpfs has no media to wait for")
	require.NoError(t, err)
	got := make([]byte, 8192)
	done, err = f.TryReadAt(got, 4096)
	require.True(t, done)
	require.NoError(t, err)
	require.Equal(t, pattern(0x11, 8192), got)
	require.Equal(t, pattern(0x22, 4096), readBack(t, f, 65536, 4096))

	if !testkit.RaceEnabled {
		buf := make([]byte, 4096)
		require.Zero(t, testing.AllocsPerRun(200, func() { _, _ = f.TryReadAt(buf, 0) }))
		require.Zero(t, testing.AllocsPerRun(200, func() { _, _ = f.TryWriteAt(buf, 0, 0) }))
	}

	ro, err := node.OpenFile(p, node.FileOptions{ReadOnly: true})
	require.NoError(t, err)
	defer ro.Close()
	done, err = ro.TryWriteAt(buf4k(), 0, 0)
	require.True(t, done)
	require.ErrorIs(t, err, nbd.EPERM, "a read-only file refuses in place as it does on a worker")
}

func buf4k() []byte { return make([]byte, 4096) }

func TestFileTryOnDiskFileSystem(t *testing.T) {
	f, _ := openTemp(t, 1<<20) // written just now: in the page cache
	require.False(t, node.IsMemory(f), "t.TempDir is expected on a disk file system")
	got := make([]byte, 4096)
	done, err := f.TryReadAt(got, 8192)
	if done { // the kernel and file system offer RWF_NOWAIT reads
		require.NoError(t, err)
		require.Equal(t, pattern(0xee, 4096), got)
		if !testkit.RaceEnabled {
			require.Zero(t, testing.AllocsPerRun(200, func() { _, _ = f.TryReadAt(got, 8192) }))
		}
	}
	// FUA always takes the ordinary path off tmpfs; so does a write where
	// RWF_NOWAIT buffered writes are unsupported. Either way, a write not
	// served left the file as it was.
	done, err = f.TryWriteAt(pattern(0x33, 4096), 0, nbd.CmdFlagFUA)
	require.False(t, done)
	require.NoError(t, err)
	require.Equal(t, pattern(0xee, 4096), readBack(t, f, 0, 4096))
	done, err = f.TryWriteAt(pattern(0x44, 4096), 0, 0)
	require.NoError(t, err)
	want := pattern(0xee, 4096)
	if done {
		want = pattern(0x44, 4096)
	}
	require.Equal(t, want, readBack(t, f, 0, 4096))
}

// shmPath returns a path for a file named name on tmpfs (/dev/shm), in a
// directory removed when the test ends.
func shmPath(t *testing.T, name string) string {
	dir, err := os.MkdirTemp("/dev/shm", "dst-node-test")
	if err != nil {
		t.Skipf("no /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, name)
}
