// testing.AllocsPerRun proves the steady-state operations allocate nothing: Bitmap Set, Test, Clear, NextDirty, PageOf, MarshalPage and Superblock MarshalTo into a caller buffer.
package meta

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestZeroAllocs(t *testing.T) {
	b := NewBitmap(3*RegionsPerPage + 17)
	page := make([]byte, PageSize)
	r := 0
	next := func() int { r = (r + 7919) % b.Regions(); return r }
	sink := 0

	for name, f := range map[string]func(){
		"Set":         func() { b.Set(next()) },
		"Test":        func() { _ = b.Test(next()) },
		"Clear":       func() { b.Clear(next()) },
		"NextDirty":   func() { sink += b.NextDirty(next()) },
		"PageOf":      func() { sink += b.PageOf(next()) },
		"MarshalPage": func() { _ = b.MarshalPage(b.PageOf(next()), page) },
	} {
		require.Zero(t, testing.AllocsPerRun(1000, f), "Bitmap.%s allocates", name)
	}

	s := testSuper(t, 2, 3, 5, 0b111)
	buf := make([]byte, SuperblockSize)
	require.Zero(t, testing.AllocsPerRun(1000, func() {
		s.Generation++
		if err := s.MarshalTo(buf); err != nil {
			panic(err)
		}
	}), "Superblock.MarshalTo allocates")
	_ = sink
}
