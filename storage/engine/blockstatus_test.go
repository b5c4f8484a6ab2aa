package engine

import (
	"bytes"
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/layout"
	"dst/storage/nbd"
	"dst/storage/node"
)

// fileMirror builds a mirror of two sparse files of size bytes (no
// metadata: data areas from offset 0) with the given region size.
func fileMirror(t testing.TB, size, region int64) (*Engine, []*node.File, []string) {
	var ls []layout.Layout
	var nodes []node.Node
	var files []*node.File
	var paths []string
	for i := range 2 {
		p := testkit.Image(t, "m"+strconv.Itoa(i)+".img", size)
		f, err := node.OpenFile(p, node.FileOptions{})
		require.NoError(t, err)
		t.Cleanup(func() { f.Close() })
		l, err := layout.NewLeaf(i, 0, size)
		require.NoError(t, err)
		ls, nodes, files, paths = append(ls, l), append(nodes, f), append(files, f), append(paths, p)
	}
	m, err := layout.NewMirror(ls...)
	require.NoError(t, err)
	e, err := New(m, nodes, Options{RegionSize: region})
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	return e, files, paths
}

// A whole copy skips the source's holes: regions that read zeroes there
// are written as WRITE_ZEROES (counted as zeroed, not resynced), the
// rest is copied, and the replicas end identical, also where the target
// held other bytes before.
func TestWholeCopySkipsHoles(t *testing.T) {
	const size, region = 8 << 20, 64 << 10
	e, files, paths := fileMirror(t, size, region)
	ctx := testkit.Context(t, 60*time.Second)
	data := bytes.Repeat([]byte("dst block status "), 3*region/16)[:3*region]
	require.NoError(t, e.WriteAt(ctx, data, 2<<20, 0))
	require.NoError(t, e.Flush(ctx))

	// Member 1 leaves, and its media holds garbage where the source has
	// holes (a replaced disk that was not blank).
	require.NoError(t, e.Suspend(1))
	require.NoError(t, files[1].WriteAt(ctx, bytes.Repeat([]byte{0xee}, region), 5<<20, 0))
	require.NoError(t, e.Rejoin(ctx, 1, true, nil))

	st := e.Status()[1]
	require.Equal(t, int64(3*region), st.ResyncedBytes, "only the data is copied")
	require.Equal(t, int64(size-3*region), st.ResyncZeroedBytes, "the holes are zeroed")
	a, err := os.ReadFile(paths[0])
	require.NoError(t, err)
	b, err := os.ReadFile(paths[1])
	require.NoError(t, err)
	require.True(t, bytes.Equal(a, b), "replicas identical after the copy")

	got, err := e.BlockStatus(ctx, 0, size, make([]nbd.Extent, 0, 16))
	require.NoError(t, err)
	require.Equal(t, []nbd.Extent{{Length: 2 << 20, Flags: nbd.StateHole | nbd.StateZero}, {Length: 3 * region},
		{Length: size - 2<<20 - 3*region, Flags: nbd.StateHole | nbd.StateZero}}, got)
}

// BenchmarkWholeCopy measures a whole copy of a replaced member of a
// 4 GiB mirror holding 256 MiB of data (4 MiB every 64 MiB; it writes
// 256 MiB to the temporary directory's file system), with the bytes
// copied and zeroed per copy.
func BenchmarkWholeCopy(b *testing.B) {
	const size, data = 4 << 30, 256 << 20
	e, _, _ := fileMirror(b, size, DefaultRegionSize)
	ctx := context.Background()
	p := bytes.Repeat([]byte{0x5a}, 4<<20)
	for off := int64(0); off < data; off += int64(len(p)) {
		require.NoError(b, e.WriteAt(ctx, p, off*16, 0))
	}
	require.NoError(b, e.Flush(ctx))
	before := e.Status()[1]
	b.ResetTimer()
	for b.Loop() {
		require.NoError(b, e.Suspend(1))
		require.NoError(b, e.Rejoin(ctx, 1, true, nil))
	}
	st := e.Status()[1]
	n := float64(b.N)
	b.ReportMetric(float64(st.ResyncedBytes-before.ResyncedBytes)/n/(1<<20), "MiB-copied/op")
	b.ReportMetric(float64(st.ResyncZeroedBytes-before.ResyncZeroedBytes)/n/(1<<20), "MiB-zeroed/op")
}
