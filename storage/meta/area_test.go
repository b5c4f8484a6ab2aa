// Plan, Regions, RegionsOf and RegionRange are checked against hand-computed tables, including each rejected size and every bound Area.check enforces.
package meta

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPlan(t *testing.T) {
	const (
		KiB = int64(1) << 10
		MiB = int64(1) << 20
		GiB = int64(1) << 30
		TiB = int64(1) << 40
	)
	tests := []struct {
		name        string
		raw, region int64
		bitmapBytes int64
		dataOffset  int64
		regions     int
		err         error
	}{
		{name: "smallest member", raw: MinRawSize, region: DefaultRegionSize,
			bitmapBytes: PageSize, dataOffset: 12 * KiB, regions: 1},
		{name: "one byte short", raw: MinRawSize - 1, region: DefaultRegionSize, err: ErrTooSmall},
		{name: "zero", raw: 0, region: DefaultRegionSize, err: ErrTooSmall},
		{name: "negative", raw: -1, region: DefaultRegionSize, err: ErrTooSmall},
		{name: "1 GiB", raw: GiB, region: DefaultRegionSize,
			bitmapBytes: PageSize, dataOffset: 12 * KiB, regions: 1024},
		{name: "odd size, data not rounded", raw: GiB + 12345, region: DefaultRegionSize,
			bitmapBytes: PageSize, dataOffset: 12 * KiB, regions: 1025},
		// 2^20 regions need 33 pages of 32704 bits: 132 KiB of bitmap.
		{name: "1 TiB at 1 MiB", raw: TiB, region: DefaultRegionSize,
			bitmapBytes: 33 * PageSize, dataOffset: 8*KiB + 33*PageSize, regions: 1 << 20},
		// 2^28 raw regions reserve 8209 pages; the data area, 2+8209
		// pages shorter, needs only 8208: one reserved page stays unused.
		{name: "1 TiB at 4 KiB regions", raw: TiB, region: 4 * KiB,
			bitmapBytes: 8208 * PageSize, dataOffset: 8*KiB + 8209*PageSize, regions: 1<<28 - 2 - 8209},
		// The reserve is sized for exactly one page of raw regions; the
		// data area needs the same.
		{name: "page boundary", raw: RegionsPerPage * 4 * KiB, region: 4 * KiB,
			bitmapBytes: PageSize, dataOffset: 12 * KiB, regions: RegionsPerPage - 3},
		{name: "reserve one page more than the bitmap", raw: (RegionsPerPage + 1) * 4 * KiB, region: 4 * KiB,
			bitmapBytes: PageSize, dataOffset: 16 * KiB, regions: RegionsPerPage - 3},
		{name: "largest member at 1 GiB regions", raw: math.MaxInt64, region: MaxRegionSize, err: ErrInvalid},
		{name: "MaxRegions exactly", raw: MaxRegions * MiB, region: MiB,
			bitmapBytes: 32833 * PageSize, dataOffset: 8*KiB + 32833*PageSize, regions: MaxRegions - 128},
		{name: "too many regions", raw: MaxRegions*MiB + 1, region: MiB, err: ErrInvalid},
		{name: "region not power of two", raw: GiB, region: 3 * MiB, err: ErrInvalid},
		{name: "region too small", raw: GiB, region: 2 * KiB, err: ErrInvalid},
		{name: "region too large", raw: 4 * TiB, region: 2 * GiB, err: ErrInvalid},
		{name: "region zero", raw: GiB, region: 0, err: ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := Plan(tt.raw, tt.region)
			if tt.err != nil {
				require.ErrorIs(t, err, tt.err)
				t.Log(err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.raw, a.RawSize)
			assert.Equal(t, tt.region, a.RegionSize)
			assert.Equal(t, int64(MinBitmapOffset), a.BitmapOffset)
			assert.Equal(t, tt.bitmapBytes, a.BitmapBytes)
			assert.Equal(t, tt.dataOffset, a.DataOffset)
			assert.Equal(t, tt.raw-tt.dataOffset, a.DataSize)
			assert.Equal(t, tt.regions, a.Regions())
			assert.NoError(t, a.check(ErrInvalid))
		})
	}
}

func TestAreaCheck(t *testing.T) {
	good, err := Plan(1<<30, DefaultRegionSize)
	require.NoError(t, err)
	tests := []struct {
		name   string
		mutate func(*Area)
	}{
		{"region size", func(a *Area) { a.RegionSize = 5000 }},
		{"bitmap offset inside superblocks", func(a *Area) { a.BitmapOffset = SuperblockSize }},
		{"bitmap offset unaligned", func(a *Area) { a.BitmapOffset += 512 }},
		{"data offset unaligned", func(a *Area) { a.DataOffset += 1 }},
		{"data offset negative", func(a *Area) { a.DataOffset = math.MinInt64 }},
		{"data size zero", func(a *Area) { a.DataSize = 0 }},
		{"data beyond raw size", func(a *Area) { a.DataSize++ }},
		{"data offset beyond raw size", func(a *Area) { a.DataOffset = a.RawSize + PageSize; a.DataSize = 1 }},
		{"bitmap overlaps data", func(a *Area) { a.DataOffset = a.BitmapOffset }},
		{"bitmap bytes short", func(a *Area) { a.BitmapBytes = 0 }},
		{"bitmap bytes long", func(a *Area) { a.BitmapBytes += PageSize }},
		{"too many regions", func(a *Area) {
			a.RegionSize = MinRegionSize
			a.RawSize = math.MaxInt64
			a.DataSize = math.MaxInt64 - a.DataOffset
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := good
			tt.mutate(&a)
			err := a.check(ErrCorrupt)
			require.ErrorIs(t, err, ErrCorrupt)
			t.Log(err)
		})
	}
}

func TestRegionsOf(t *testing.T) {
	a := Area{RegionSize: 4096, DataSize: 3*4096 + 100}
	tests := []struct {
		off, length int64
		first, last int
	}{
		{0, 1, 0, 0},
		{0, 4096, 0, 0},
		{0, 4097, 0, 1},
		{4095, 2, 0, 1},
		{4096, 4096, 1, 1},
		{1, 3*4096 + 99, 0, 3},
		{3 * 4096, 100, 3, 3},
		{3*4096 + 99, 1, 3, 3},
		{4096, 0, 1, 0},
		{3*4096 + 100, 0, 3, 2},
	}
	for _, tt := range tests {
		first, last := a.RegionsOf(tt.off, tt.length)
		assert.Equal(t, [2]int{tt.first, tt.last}, [2]int{first, last}, "RegionsOf(%d, %d)", tt.off, tt.length)
	}
	for _, bad := range [][2]int64{{-1, 1}, {0, -1}, {0, 3*4096 + 101}, {3*4096 + 100, 1}, {math.MaxInt64, math.MaxInt64}} {
		assert.Panics(t, func() { a.RegionsOf(bad[0], bad[1]) }, "RegionsOf(%d, %d)", bad[0], bad[1])
	}

	require.Equal(t, 4, a.Regions())
	for r, want := range [][2]int64{{0, 4096}, {4096, 4096}, {8192, 4096}, {12288, 100}} {
		off, length := a.RegionRange(r)
		assert.Equal(t, want, [2]int64{off, length}, "RegionRange(%d)", r)
	}
	assert.Panics(t, func() { a.RegionRange(4) })
	assert.Panics(t, func() { a.RegionRange(-1) })
}
