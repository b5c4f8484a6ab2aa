package engine

import (
	"testing"

	"github.com/stretchr/testify/require"

	"dst/storage/layout"
	"dst/storage/nbd"
)

// The invariant checks must catch what they look for (they run under
// -tags invariants; here they are called directly).
func TestInvariantChecksCatchBreakage(t *testing.T) {
	a, err := layout.NewLeaf(0, 0, 1<<20)
	require.NoError(t, err)
	b, err := layout.NewLeaf(1, 0, 1<<20)
	require.NoError(t, err)
	m, err := layout.NewMirror(a, b)
	require.NoError(t, err)
	mi := newMirrorInfo(m, 64<<10)
	mi.mark(1, 0, 100)
	require.NotPanics(t, mi.checkUnions)
	mi.others[1].Set(3) // child 1 persists a region nobody missed
	require.PanicsWithValue(t, "engine invariant: mirror 0: region 3 in the bitmap child 1 persists is true, the other children's dirty maps say false", mi.checkUnions)

	whole := []layout.Extent{{Member: 0, BufOffset: 0, Length: 10}, {Member: 0, BufOffset: 10, Length: 6}}
	require.NotPanics(t, func() { checkExtents(nbd.CmdRead, whole, 16) })
	mirrored := append(whole, layout.Extent{Member: 1, BufOffset: 0, Length: 16})
	require.NotPanics(t, func() { checkExtents(nbd.CmdWrite, mirrored, 16) })
	require.Panics(t, func() { checkExtents(nbd.CmdRead, mirrored, 16) }, "a read covers bytes twice")
	require.Panics(t, func() { checkExtents(nbd.CmdWrite, whole[:1], 16) }, "a gap")
	overlap := append(whole, layout.Extent{Member: 0, BufOffset: 8, Length: 4})
	require.Panics(t, func() { checkExtents(nbd.CmdWrite, overlap, 16) }, "a byte to one member twice")

	mi.locks[0].RLock()
	require.Panics(t, func() { mi.checkCopyLock(0) }, "a copy under a read lock")
	mi.locks[0].RUnlock()
	mi.locks[0].Lock()
	require.NotPanics(t, func() { mi.checkCopyLock(0) })
	mi.locks[0].Unlock()
}
