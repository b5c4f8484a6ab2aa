package meta

import (
	"fmt"
	"math"
	"math/bits"
)

// Geometry of the reserved area at the start of every member.
const (
	// PageSize is the unit of alignment of the reserved area and the unit
	// in which the bitmap is read and written.
	PageSize = 4096
	// SuperblockSize is the size of one superblock slot.
	SuperblockSize = 4096
	// SuperblockSlots is the number of superblock copies, at member offsets
	// 0 and SuperblockSize; see SlotOffset.
	SuperblockSlots = 2
	// MinBitmapOffset is where Plan places the bitmap: right after the
	// superblock slots.
	MinBitmapOffset = SuperblockSlots * SuperblockSize
	// MinRawSize is the smallest member Plan accepts: two superblock
	// slots, one bitmap page and one byte of data.
	MinRawSize = MinBitmapOffset + PageSize + 1

	// DefaultRegionSize is the number of data bytes one bitmap bit covers
	// unless the storage is created with another size. A 1 TiB member then
	// needs 2^20 bits: a 132 KiB bitmap (33 pages).
	DefaultRegionSize = 1 << 20
	// MinRegionSize and MaxRegionSize bound the region size, which must
	// also be a power of two.
	MinRegionSize = PageSize
	MaxRegionSize = 1 << 30
	// MaxRegions bounds the number of bitmap bits (128 MiB of bitmap in
	// memory and on disk): enough for 1 PiB at 1 MiB regions. It bounds
	// what a decoder allocates because of a length read from disk.
	MaxRegions = 1 << 30
)

// Area is the layout of one member: superblock slots at 0 and
// SuperblockSize, the bitmap at BitmapOffset, the data area at DataOffset.
// All values are bytes from the start of the member device. The data area
// is what the layout (and so the client) sees; offsets in it are "data
// offsets", with 0 at DataOffset.
type Area struct {
	// RawSize is the size of the member device when the area was planned.
	RawSize int64
	// RegionSize is the number of data bytes covered by one bitmap bit, a
	// power of two in [MinRegionSize, MaxRegionSize].
	RegionSize int64
	// BitmapOffset and BitmapBytes locate the bitmap: whole pages, one bit
	// per region of the data area (see Bitmap for the page format).
	BitmapOffset int64
	BitmapBytes  int64
	// DataOffset is where the data area starts: a multiple of PageSize at
	// or after the end of the bitmap.
	DataOffset int64
	// DataSize is the length of the data area, any byte count >= 1 with
	// DataOffset+DataSize <= RawSize (Plan makes it exactly RawSize -
	// DataOffset; a decoder accepts less).
	DataSize int64
}

// Plan lays out a member of rawSize bytes with regions of regionSize bytes.
// The bitmap is sized conservatively for rawSize regions' worth of data (the
// data area is smaller, so the bitmap never runs short), then BitmapBytes is
// trimmed to what the data area needs; the pages in between stay unused.
// Errors: ErrInvalid for a bad region size or a member so large it would
// need more than MaxRegions regions, ErrTooSmall for a member below
// MinRawSize.
func Plan(rawSize, regionSize int64) (Area, error) {
	if err := checkRegionSize(regionSize, ErrInvalid); err != nil {
		return Area{}, err
	}
	if rawSize < MinRawSize {
		return Area{}, fmt.Errorf("%w: raw size %d bytes: metadata needs %d bytes plus at least 1 byte of data",
			ErrTooSmall, rawSize, MinRawSize-1)
	}
	maxRegions := (rawSize-1)/regionSize + 1
	if maxRegions > MaxRegions {
		return Area{}, fmt.Errorf("%w: raw size %d bytes needs %d regions of %d bytes, more than %d: use a larger region size",
			ErrInvalid, rawSize, maxRegions, regionSize, MaxRegions)
	}
	dataOffset := MinBitmapOffset + bitmapBytesFor(int(maxRegions))
	if dataOffset >= rawSize {
		// Unreachable while MinRawSize covers one bitmap page and a
		// region is at least a page, kept so the rule is stated here.
		return Area{}, fmt.Errorf("%w: raw size %d bytes: metadata needs %d bytes plus at least 1 byte of data",
			ErrTooSmall, rawSize, dataOffset)
	}
	a := Area{
		RawSize:      rawSize,
		RegionSize:   regionSize,
		BitmapOffset: MinBitmapOffset,
		DataOffset:   dataOffset,
		DataSize:     rawSize - dataOffset,
	}
	a.BitmapBytes = bitmapBytesFor(a.Regions())
	if err := a.check(ErrInvalid); err != nil {
		panic(fmt.Sprintf("meta: Plan(%d, %d) produced an invalid area: %v", rawSize, regionSize, err))
	}
	return a, nil
}

// Regions is the number of regions of the data area (the last one may be
// shorter than RegionSize).
func (a Area) Regions() int {
	if a.DataSize <= 0 || a.RegionSize <= 0 {
		return 0
	}
	return int((a.DataSize-1)/a.RegionSize + 1)
}

// RegionsOf maps the data-area byte range [off, off+length) to the regions
// it touches, first and last inclusive: every byte of the range lies in one
// of them and each of them holds at least one byte of the range. A zero
// length yields last == first-1 (an empty loop). A range outside the data
// area is a programmer error and panics.
func (a Area) RegionsOf(off, length int64) (first, last int) {
	if off < 0 || length < 0 || off > a.DataSize-length {
		panic(fmt.Sprintf("meta: RegionsOf(%d, %d) outside data area of %d bytes", off, length, a.DataSize))
	}
	first = int(off / a.RegionSize)
	if length == 0 {
		return first, first - 1
	}
	return first, int((off + length - 1) / a.RegionSize)
}

// RegionRange is the data-area byte range of region r: the inverse of
// RegionsOf, used by resync to copy one region. The last region may be
// short. r outside [0, Regions()) panics.
func (a Area) RegionRange(r int) (off, length int64) {
	if r < 0 || r >= a.Regions() {
		panic(fmt.Sprintf("meta: RegionRange(%d) outside %d regions", r, a.Regions()))
	}
	off = int64(r) * a.RegionSize
	return off, min(a.RegionSize, a.DataSize-off)
}

// check verifies every bound of a, wrapping class (ErrCorrupt when decoding,
// ErrInvalid when encoding) with the field and value at fault.
func (a Area) check(class error) error {
	if err := checkRegionSize(a.RegionSize, class); err != nil {
		return err
	}
	switch {
	case a.BitmapOffset < MinBitmapOffset || a.BitmapOffset%PageSize != 0:
		return fmt.Errorf("%w: bitmap offset %d: must be a multiple of %d and at least %d",
			class, a.BitmapOffset, PageSize, MinBitmapOffset)
	case a.DataOffset < MinBitmapOffset || a.DataOffset%PageSize != 0:
		return fmt.Errorf("%w: data offset %d: must be a multiple of %d and at least %d",
			class, a.DataOffset, PageSize, MinBitmapOffset)
	case a.DataSize < 1:
		return fmt.Errorf("%w: data size %d: must be at least 1", class, a.DataSize)
	case a.RawSize < a.DataSize || a.DataOffset > a.RawSize-a.DataSize:
		return fmt.Errorf("%w: data offset %d + data size %d: beyond raw size %d",
			class, a.DataOffset, a.DataSize, a.RawSize)
	}
	regions := (a.DataSize-1)/a.RegionSize + 1
	if regions > MaxRegions {
		return fmt.Errorf("%w: data size %d with region size %d: %d regions, more than %d",
			class, a.DataSize, a.RegionSize, regions, MaxRegions)
	}
	if want := bitmapBytesFor(int(regions)); a.BitmapBytes != want {
		return fmt.Errorf("%w: bitmap bytes %d: %d regions need %d", class, a.BitmapBytes, regions, want)
	}
	if a.BitmapOffset > a.DataOffset-a.BitmapBytes {
		return fmt.Errorf("%w: bitmap [%d, +%d) overlaps data offset %d",
			class, a.BitmapOffset, a.BitmapBytes, a.DataOffset)
	}
	return nil
}

func checkRegionSize(regionSize int64, class error) error {
	if regionSize < MinRegionSize || regionSize > MaxRegionSize || bits.OnesCount64(uint64(regionSize)) != 1 {
		return fmt.Errorf("%w: region size %d: must be a power of two in [%d, %d]",
			class, regionSize, MinRegionSize, MaxRegionSize)
	}
	return nil
}

// bitmapBytesFor is the on-disk size of a bitmap of the given regions:
// whole pages of RegionsPerPage bits.
func bitmapBytesFor(regions int) int64 {
	return int64(pagesFor(regions)) * PageSize
}

func pagesFor(regions int) int {
	return (regions + RegionsPerPage - 1) / RegionsPerPage
}

// sizeFromDisk converts an on-disk uint64 size, refusing values that do not
// fit an int64.
func sizeFromDisk(field string, v uint64) (int64, error) {
	if v > math.MaxInt64 {
		return 0, fmt.Errorf("%w: %s %d: beyond %d", ErrCorrupt, field, v, int64(math.MaxInt64))
	}
	return int64(v), nil
}
