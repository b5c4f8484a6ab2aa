package node_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"dst/internal/testkit"
	"dst/storage/nbd"
	"dst/storage/node"
)

// A file's block status is its holes (hole+zero) and its data, from any
// offset, cut at the range's end and at the room in dst; a node that
// cannot tell is all data.
func TestFileBlockStatus(t *testing.T) {
	const k64 = 64 << 10
	p := filepath.Join(t.TempDir(), "sparse.img")
	f, err := os.Create(p)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(16*k64))
	for _, at := range []int64{2 * k64, 3 * k64, 9 * k64} {
		_, err := f.WriteAt(make([]byte, k64), at) // zero bytes, but written: data
		require.NoError(t, err)
	}
	require.NoError(t, f.Close())
	n, err := node.OpenFile(p, node.FileOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { n.Close() })
	ctx := context.Background()
	const hole = nbd.StateHole | nbd.StateZero

	got, err := n.BlockStatus(ctx, 0, 16*k64, make([]nbd.Extent, 0, 16))
	require.NoError(t, err)
	require.Equal(t, []nbd.Extent{ext(2*k64, hole), ext(2*k64, 0), ext(5*k64, hole), ext(k64, 0), ext(6*k64, hole)}, got)

	got, err = n.BlockStatus(ctx, 2*k64+100, k64, make([]nbd.Extent, 0, 16))
	require.NoError(t, err)
	require.Equal(t, []nbd.Extent{ext(k64, 0)}, got, "from inside data, cut at the range's end")

	got, err = n.BlockStatus(ctx, k64, 8*k64, make([]nbd.Extent, 0, 2))
	require.NoError(t, err)
	require.Equal(t, []nbd.Extent{ext(k64, hole), ext(2*k64, 0)}, got, "as many as dst has room for")

	blind := struct{ node.Node }{node.NewMemory(4096)} // no BlockStatus method
	got, err = node.BlockStatus(ctx, blind, 512, 1024, nil)
	require.NoError(t, err)
	require.Equal(t, []nbd.Extent{{Length: 1024}}, got, "a node that cannot tell reports data")

	// Memory reports zero runs by 4 KiB block; a volatile cache in front
	// reports data where it holds writes.
	mem := node.NewMemory(16 << 10)
	require.NoError(t, mem.WriteAt(ctx, []byte{1}, 5000, 0))
	got, err = mem.BlockStatus(ctx, 100, 16<<10-100, make([]nbd.Extent, 0, 8))
	require.NoError(t, err)
	require.Equal(t, []nbd.Extent{ext(4096-100, nbd.StateZero), ext(4096, 0), ext(8192, nbd.StateZero)}, got)
	vol, err := node.NewVolatile(mem, node.VolatileOptions{})
	require.NoError(t, err)
	require.NoError(t, vol.WriteAt(ctx, make([]byte, 10), 12<<10, 0)) // zeroes, but cached
	got, err = vol.BlockStatus(ctx, 0, 16<<10, make([]nbd.Extent, 0, 8))
	require.NoError(t, err)
	require.Equal(t, []nbd.Extent{ext(4096, nbd.StateZero), ext(4096, 0), ext(8192, 0)}, got,
		"a run holding a cached write is data, all of it (conservative)")
}

func ext(length int64, flags uint32) nbd.Extent { return nbd.Extent{Length: length, Flags: flags} }

// TestFileBlockStatusAllocatesNothing: the lseeks are pooled and their
// errors bare, so block status that ends in a hole (ENXIO) allocates
// nothing.
func TestFileBlockStatusAllocatesNothing(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sparse.img")
	require.NoError(t, os.WriteFile(p, []byte{1}, 0o644))
	require.NoError(t, os.Truncate(p, 1<<20))
	n, err := node.OpenFile(p, node.FileOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { n.Close() })
	buf := make([]nbd.Extent, 0, 16)
	testkit.NoAllocs(t, "file block status ending in a hole", 10, 100, func() error {
		_, err := n.BlockStatus(context.Background(), 0, 1<<20, buf[:0])
		return err
	})
}

// A volatile cache's block status is taken with its write-back excluded:
// a unit written back between the look below and the look at the cache
// must not read as zeroes (a resync would zero a replica's data).
func TestVolatileBlockStatusDuringWriteBack(t *testing.T) {
	ctx := context.Background()
	mem := node.NewMemory(1 << 20)
	v, err := node.NewVolatile(mem, node.VolatileOptions{})
	require.NoError(t, err)
	p := make([]byte, node.VolatileUnit)
	for i := range p {
		p[i] = 0xa5
	}
	exts := make([]nbd.Extent, 0, 4)
	units := int64(1<<20) / node.VolatileUnit
	for round := range 20 {
		for u := range units {
			require.NoError(t, v.WriteAt(ctx, p, u*node.VolatileUnit, 0))
		}
		done := make(chan error, 1)
		go func() { done <- v.Flush(ctx) }()
		for u := range units {
			got, err := v.BlockStatus(ctx, u*node.VolatileUnit, node.VolatileUnit, exts[:0])
			require.NoError(t, err)
			for _, x := range got {
				require.Zero(t, x.Flags&nbd.StateZero, "round %d unit %d reads as zeroes: %v", round, u, got)
			}
		}
		require.NoError(t, <-done)
		require.NoError(t, v.Trim(ctx, 0, 1<<20, 0))
		require.NoError(t, mem.WriteZeroes(ctx, 0, 1<<20, 0))
	}
}

// A file on tmpfs does not offer sparse reads (its SEEK_HOLE walks the
// pages to the next hole, so every large read paid a walk to the end of
// a file that is all data); a file on a disk file system does.
func TestSparseReadsNotOnTmpfs(t *testing.T) {
	disk, err := node.OpenFile(testkit.Image(t, "disk.img", 1<<20), node.FileOptions{})
	require.NoError(t, err)
	defer disk.Close()
	var fs unix.Statfs_t
	if unix.Statfs(os.TempDir(), &fs) == nil && fs.Type != unix.TMPFS_MAGIC {
		require.True(t, disk.SparseReads(), "a file on %s", os.TempDir())
	}
	if unix.Statfs("/dev/shm", &fs) != nil || fs.Type != unix.TMPFS_MAGIC {
		t.Skip("no tmpfs at /dev/shm")
	}
	dir, err := os.MkdirTemp("/dev/shm", "dst-sparse-")
	require.NoError(t, err)
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "mem.img")
	require.NoError(t, os.WriteFile(path, make([]byte, 1<<20), 0o644))
	mem, err := node.OpenFile(path, node.FileOptions{})
	require.NoError(t, err)
	defer mem.Close()
	require.False(t, mem.SparseReads())
	_, ok := mem.View(0, 4096)
	require.True(t, ok, "its reads are served from the mapping")
}
