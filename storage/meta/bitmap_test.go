// Bitmap operations, page encoding and damaged-page loading are pinned by table tests; tearing every sector pattern of a page shows a torn page write never makes a dirty region look clean.
package meta

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBitmapSize(t *testing.T) {
	for _, tt := range []struct {
		regions, pages int
	}{
		{1, 1}, {64, 1}, {RegionsPerPage, 1}, {RegionsPerPage + 1, 2}, {3 * RegionsPerPage, 3},
	} {
		b := NewBitmap(tt.regions)
		assert.Equal(t, tt.regions, b.Regions())
		assert.Equal(t, tt.pages, b.Pages(), "regions %d", tt.regions)
		assert.Equal(t, int64(tt.pages)*PageSize, b.Bytes())
		assert.Equal(t, bitmapBytesFor(tt.regions), b.Bytes())
	}
	// The largest bitmap, computed rather than allocated (128 MiB).
	assert.Equal(t, int64(32833)*PageSize, bitmapBytesFor(MaxRegions))
	assert.Panics(t, func() { NewBitmap(0) })
	assert.Panics(t, func() { NewBitmap(MaxRegions + 1) })
}

func TestBitmapOps(t *testing.T) {
	const regions = 2*RegionsPerPage + 100
	b := NewBitmap(regions)
	type op struct {
		do     string // set, clear, test
		region int
		want   bool
		count  int
	}
	ops := []op{
		{"test", 0, false, 0},
		{"set", 0, true, 1},
		{"set", 0, false, 1},
		{"test", 0, true, 1},
		{"test", 1, false, 1},
		{"set", 63, true, 2},
		{"set", 64, true, 3},
		{"set", RegionsPerPage - 1, true, 4},
		{"set", RegionsPerPage, true, 5},
		{"set", regions - 1, true, 6},
		{"clear", 1, false, 6},
		{"clear", 0, true, 5},
		{"clear", 0, false, 5},
		{"test", 0, false, 5},
		{"test", regions - 1, true, 5},
	}
	for i, o := range ops {
		var got bool
		switch o.do {
		case "set":
			got = b.Set(o.region)
		case "clear":
			got = b.Clear(o.region)
		case "test":
			got = b.Test(o.region)
		}
		require.Equal(t, o.want, got, "op %d: %s(%d)", i, o.do, o.region)
		require.Equal(t, o.count, b.Count(), "op %d: count after %s(%d)", i, o.do, o.region)
	}

	for _, tt := range []struct{ from, want int }{
		{0, 63}, {63, 63}, {64, 64}, {65, RegionsPerPage - 1}, {RegionsPerPage, RegionsPerPage},
		{RegionsPerPage + 1, regions - 1}, {regions - 1, regions - 1}, {regions, -1}, {regions + 5, -1},
	} {
		assert.Equal(t, tt.want, b.NextDirty(tt.from), "NextDirty(%d)", tt.from)
	}
	assert.Equal(t, []int{63, 64, RegionsPerPage - 1, RegionsPerPage, regions - 1}, dirty(t, b))
	assert.Equal(t, -1, NewBitmap(10).NextDirty(0))

	for _, tt := range []struct{ region, page int }{
		{0, 0}, {RegionsPerPage - 1, 0}, {RegionsPerPage, 1}, {regions - 1, 2},
	} {
		assert.Equal(t, tt.page, b.PageOf(tt.region), "PageOf(%d)", tt.region)
	}

	for name, f := range map[string]func(){
		"Set(-1)":         func() { b.Set(-1) },
		"Set(regions)":    func() { b.Set(regions) },
		"Clear(regions)":  func() { b.Clear(regions) },
		"Test(-1)":        func() { b.Test(-1) },
		"NextDirty(-1)":   func() { b.NextDirty(-1) },
		"PageOf(regions)": func() { b.PageOf(regions) },
		"MarshalPage(3)":  func() { _ = b.MarshalPage(3, make([]byte, PageSize)) },
		"Merge(other)":    func() { b.Merge(NewBitmap(regions - 1)) },
	} {
		assert.Panics(t, f, name)
	}
}

func TestBitmapMerge(t *testing.T) {
	a, b := NewBitmap(200), NewBitmap(200)
	a.Set(1)
	a.Set(150)
	b.Set(150)
	b.Set(199)
	a.Merge(b)
	assert.Equal(t, 3, a.Count())
	for _, r := range []int{1, 150, 199} {
		assert.True(t, a.Test(r))
	}
	assert.Equal(t, 2, b.Count(), "Merge changed its argument")
}

func TestBitmapMarshalPageUnion(t *testing.T) {
	a, b := NewBitmap(RegionsPerPage+10), NewBitmap(RegionsPerPage+10)
	a.Set(3)
	b.Set(70)
	b.Set(RegionsPerPage + 1)
	page := make([]byte, PageSize)
	require.NoError(t, a.MarshalPageUnion(0, b, page))
	u := NewBitmap(RegionsPerPage + 10)
	want := make([]byte, 2*PageSize)
	u.Set(3)
	u.Set(70)
	require.NoError(t, u.MarshalPage(0, want))
	assert.Equal(t, want[:PageSize], page, "page 0 of the union, checksum included")
	require.NoError(t, a.MarshalPageUnion(1, b, page))
	require.NoError(t, u.Unmarshal(append(want[:PageSize:PageSize], page...)), "the union page verifies")
	assert.True(t, u.Test(RegionsPerPage+1))
	assert.Equal(t, 1, a.Count(), "the union changes neither bitmap")
	assert.Equal(t, 2, b.Count())
	assert.Panics(t, func() { _ = a.MarshalPageUnion(0, NewBitmap(5), page) })
}

func TestBitmapPageFormat(t *testing.T) {
	b := NewBitmap(RegionsPerPage + 10)
	b.Set(0)
	b.Set(9)
	b.Set(RegionsPerPage - 1)
	b.Set(RegionsPerPage + 9)
	page := make([]byte, PageSize)
	require.NoError(t, b.MarshalPage(0, page))
	assert.Equal(t, byte(0b1), page[0])
	assert.Equal(t, byte(0b10), page[1])
	assert.Equal(t, byte(0b1000_0000), page[PagePayloadBytes-1])
	assert.Equal(t, 3, countBits(page[:PagePayloadBytes]))
	assert.Equal(t, uint32(0), binary.BigEndian.Uint32(page[offPageIndex:]))
	assert.Equal(t, crc32.Checksum(page[:offPageCRC], castagnoli), binary.BigEndian.Uint32(page[offPageCRC:]))

	require.NoError(t, b.MarshalPage(1, page))
	assert.Equal(t, byte(0b10), page[1])
	assert.Equal(t, 1, countBits(page[:PagePayloadBytes]))
	assert.Equal(t, uint32(1), binary.BigEndian.Uint32(page[offPageIndex:]))

	require.ErrorIs(t, b.MarshalPage(0, page[:PageSize-1]), ErrTruncated)
	require.ErrorIs(t, b.MarshalTo(make([]byte, PageSize)), ErrTruncated)
}

func TestBitmapUnmarshal(t *testing.T) {
	const regions = 2*RegionsPerPage + 100
	src := NewBitmap(regions)
	for _, r := range []int{5, RegionsPerPage + 7, 2*RegionsPerPage + 99} {
		src.Set(r)
	}
	good := make([]byte, src.Bytes())
	require.NoError(t, src.MarshalTo(good))

	pageWords := func(b *Bitmap, i int) []uint64 { return b.words[i*wordsPerPage : (i+1)*wordsPerPage] }
	tests := []struct {
		name     string
		mutate   func(d []byte) []byte
		err      error
		allDirty []int // pages loaded as all dirty
		count    int
	}{
		{name: "intact", mutate: func(d []byte) []byte { return d }, count: 3},
		{name: "longer buffer ignored", mutate: func(d []byte) []byte { return append(d, 1, 2, 3) }, count: 3},
		{name: "torn page 1", mutate: func(d []byte) []byte { clear(d[PageSize : PageSize+512]); return d },
			err: ErrChecksum, allDirty: []int{1}, count: 1 + RegionsPerPage + 1},
		{name: "never written", mutate: func(d []byte) []byte { return make([]byte, len(d)) },
			err: ErrChecksum, allDirty: []int{0, 1, 2}, count: regions},
		{name: "page 0 written at page 1", mutate: func(d []byte) []byte { copy(d[PageSize:], d[:PageSize]); return d },
			err: ErrCorrupt, allDirty: []int{1}, count: 1 + RegionsPerPage + 1},
		{name: "bit beyond regions", mutate: func(d []byte) []byte {
			p := d[2*PageSize : 3*PageSize]
			p[100/8+1] |= 1 << 7 // region 2*RegionsPerPage+111
			binary.BigEndian.PutUint32(p[offPageCRC:], crc32.Checksum(p[:offPageCRC], castagnoli))
			return d
		}, err: ErrCorrupt, allDirty: []int{2}, count: 1 + 1 + 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBitmap(regions)
			err := b.Unmarshal(tt.mutate(bytes.Clone(good)))
			if tt.err == nil {
				require.NoError(t, err)
				assert.Equal(t, src.words, b.words)
			} else {
				require.ErrorIs(t, err, tt.err)
				t.Log(err)
			}
			assert.Equal(t, tt.count, b.Count())
			for _, i := range tt.allDirty {
				for r := i * RegionsPerPage; r < min(regions, (i+1)*RegionsPerPage); r++ {
					require.True(t, b.Test(r), "page %d region %d clean", i, r)
				}
			}
			for i := range b.Pages() {
				if !assert.ObjectsAreEqual(pageWords(b, i), pageWords(src, i)) {
					assert.Contains(t, tt.allDirty, i, "page %d changed", i)
				}
			}
		})
	}

	b := NewBitmap(regions)
	b.Set(3)
	require.ErrorIs(t, b.Unmarshal(good[:len(good)-1]), ErrTruncated)
	assert.True(t, b.Test(3), "a truncated Unmarshal changed the bitmap")
	assert.Equal(t, 1, b.Count())
}

// TestTornPageNeverCleans writes a page over an old version, keeps each of
// its eight 512-byte sectors old, new or zeroed (every one of the 3^8
// patterns), and checks what loading it yields: the old or the new bitmap
// when the page is wholly one of them (a write that did not happen or
// completed), else an error and every region of either version dirty. A
// region dirty before and after the write is thus never lost, and a newly
// set bit is only missing if the write did not complete, before which no
// data write to its region was issued.
func TestTornPageNeverCleans(t *testing.T) {
	const regions = RegionsPerPage
	old, cur := NewBitmap(regions), NewBitmap(regions)
	for _, r := range []int{1, 600, 4000, 9000, 20000, 32000} { // one or more per sector
		old.Set(r)
		cur.Set(r)
	}
	cur.Clear(600) // cleared lazily
	cur.Set(4100)  // newly set, sector 1
	cur.Set(30000) // newly set, sector 7
	oldPage, newPage := make([]byte, PageSize), make([]byte, PageSize)
	require.NoError(t, old.MarshalPage(0, oldPage))
	require.NoError(t, cur.MarshalPage(0, newPage))

	const sectors = PageSize / 512
	torn := make([]byte, PageSize)
	b := NewBitmap(regions)
	patterns := 1
	for range sectors {
		patterns *= 3
	}
	for p := range patterns {
		q := p
		for s := range sectors {
			dst := torn[s*512 : (s+1)*512]
			switch q % 3 {
			case 0:
				copy(dst, oldPage[s*512:])
			case 1:
				copy(dst, newPage[s*512:])
			case 2:
				clear(dst)
			}
			q /= 3
		}
		err := b.Unmarshal(torn)
		switch {
		case bytes.Equal(torn, oldPage):
			require.NoError(t, err)
			require.Equal(t, old.words, b.words, "pattern %d", p)
		case bytes.Equal(torn, newPage):
			require.NoError(t, err)
			require.Equal(t, cur.words, b.words, "pattern %d", p)
		default:
			require.Error(t, err, "pattern %d (base 3, sector 0 first): a mixed page loaded without error", p)
			for _, src := range []*Bitmap{old, cur} {
				for _, r := range dirty(t, src) {
					require.True(t, b.Test(r), "pattern %d: region %d dirty before, clean after load (%v)", p, r, err)
				}
			}
		}
	}
}

func countBits(b []byte) int {
	n := 0
	for _, c := range b {
		for ; c != 0; c &= c - 1 {
			n++
		}
	}
	return n
}
