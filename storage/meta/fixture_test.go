// Shared fixtures, not tests: a valid superblock built from Plan and its encoding, so every test starts from a consistent geometry.
package meta

import (
	"testing"

	"github.com/stretchr/testify/require"
)

var (
	testStorage = ID{0x5d, 0x57, 1, 2, 3, 4, 0x40, 6, 0x80, 8, 9, 10, 11, 12, 13, 14}
	testOther   = ID{0x0f, 0x0e, 1, 2, 3, 4, 0x40, 6, 0x80, 8, 9, 10, 11, 12, 13, 15}
)

const testLayout = "mirror(stripe(64KiB; #0,#1), #2)"

// testSuper is a valid superblock of member index of count, at generation
// gen, in sync set inSync.
func testSuper(t testing.TB, index, count int, gen uint64, inSync Mask) Superblock {
	t.Helper()
	a, err := Plan(1<<30+12345, DefaultRegionSize)
	require.NoError(t, err)
	return Superblock{
		StorageID:       testStorage,
		MemberID:        ID{0xaa, byte(index), 0, 0, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 1},
		MemberIndex:     index,
		MemberCount:     count,
		Generation:      gen,
		InSync:          inSync,
		Area:            a,
		Layout:          testLayout,
		CreatedUnixNano: 1_700_000_000_123_456_789,
	}
}

// encode marshals s into a fresh SuperblockSize buffer.
func encode(t testing.TB, s Superblock) []byte {
	t.Helper()
	b := make([]byte, SuperblockSize)
	require.NoError(t, s.MarshalTo(b))
	return b
}

// dirty walks b with NextDirty, failing (rather than looping) if it does not
// move strictly forward.
func dirty(t testing.TB, b *Bitmap) []int {
	t.Helper()
	var out []int
	for r := b.NextDirty(0); r >= 0; r = b.NextDirty(r + 1) {
		if len(out) > 0 && r <= out[len(out)-1] {
			t.Fatalf("NextDirty(%d) = %d: not forward", out[len(out)-1]+1, r)
		}
		out = append(out, r)
	}
	return out
}
