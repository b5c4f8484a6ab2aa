package engine

import (
	"bytes"
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

// TestMeasureWholeCopy measures a whole copy of a replaced member of a
// 4 GiB mirror holding 256 MiB of data (DST_MEASURE=1; it writes 256 MiB
// to the temporary directory's file system).
func TestMeasureWholeCopy(t *testing.T) {
	if os.Getenv("DST_MEASURE") == "" {
		t.Skip("DST_MEASURE=1 runs it")
	}
	const size, data = 4 << 30, 256 << 20
	e, _, _ := fileMirror(t, size, DefaultRegionSize)
	ctx := testkit.Context(t, 10*time.Minute)
	p := bytes.Repeat([]byte{0x5a}, 4<<20)
	for off := int64(0); off < data; off += int64(len(p)) {
		// Spread over the device: 4 MiB every 64 MiB.
		require.NoError(t, e.WriteAt(ctx, p, off*16, 0))
	}
	require.NoError(t, e.Flush(ctx))
	require.NoError(t, e.Suspend(1))
	start := time.Now()
	require.NoError(t, e.Rejoin(ctx, 1, true, nil))
	st := e.Status()[1]
	t.Logf("whole copy of a %d GiB mirror member holding %d MiB: %v, %d MiB copied, %d MiB zeroed",
		size>>30, data>>20, time.Since(start).Round(time.Millisecond), st.ResyncedBytes>>20, st.ResyncZeroedBytes>>20)
}
