package node_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

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

	mem := node.NewMemory(4096)
	got, err = node.BlockStatus(ctx, mem, 512, 1024, nil)
	require.NoError(t, err)
	require.Equal(t, []nbd.Extent{{Length: 1024}}, got, "a node that cannot tell reports data")
}

func ext(length int64, flags uint32) nbd.Extent { return nbd.Extent{Length: length, Flags: flags} }
