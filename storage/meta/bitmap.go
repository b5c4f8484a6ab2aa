package meta

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/bits"
)

// Bitmap page format: PagePayloadBytes of bits, then the page index and a
// CRC32C, so a torn or misdirected page write is detected (see doc.go).
const (
	// PagePayloadBytes is the bit-carrying part of a bitmap page.
	PagePayloadBytes = PageSize - 8
	// RegionsPerPage is the number of regions one bitmap page covers
	// (32704: 511 64-bit words).
	RegionsPerPage = PagePayloadBytes * 8

	wordsPerPage = PagePayloadBytes / 8
	offPageIndex = PagePayloadBytes
	offPageCRC   = PageSize - 4
)

// Bitmap is the in-memory write-intent bitmap: one bit per region of the
// data area, set while writes to the region may be incomplete on some
// member. It is encoded as Pages() pages of PageSize bytes.
//
// A Bitmap is not safe for concurrent use: the caller serialises every call
// (one writer, readers under the same lock). After NewBitmap no method
// allocates except when it returns an error.
type Bitmap struct {
	regions int
	count   int
	words   []uint64 // wordsPerPage per page; bits >= regions stay zero
}

// NewBitmap returns a clean bitmap of the given number of regions
// (Area.Regions()). regions outside [1, MaxRegions] is a programmer error
// and panics.
func NewBitmap(regions int) *Bitmap {
	if regions < 1 || regions > MaxRegions {
		panic(fmt.Sprintf("meta: NewBitmap(%d): regions must be in [1, %d]", regions, MaxRegions))
	}
	return &Bitmap{regions: regions, words: make([]uint64, pagesFor(regions)*wordsPerPage)}
}

// Regions is the number of regions.
func (b *Bitmap) Regions() int { return b.regions }

// Pages is the number of on-disk pages.
func (b *Bitmap) Pages() int { return len(b.words) / wordsPerPage }

// Bytes is the on-disk size, Pages()*PageSize (equal to Area.BitmapBytes).
func (b *Bitmap) Bytes() int64 { return int64(b.Pages()) * PageSize }

// Count is the number of dirty regions.
func (b *Bitmap) Count() int { return b.count }

// Set marks region r dirty and reports whether it was clean, i.e. whether
// page PageOf(r) must be persisted before writes to r are issued.
func (b *Bitmap) Set(r int) bool {
	w, m := b.locate(r)
	if b.words[w]&m != 0 {
		return false
	}
	b.words[w] |= m
	b.count++
	return true
}

// Clear marks region r clean and reports whether it was dirty.
func (b *Bitmap) Clear(r int) bool {
	w, m := b.locate(r)
	if b.words[w]&m == 0 {
		return false
	}
	b.words[w] &^= m
	b.count--
	return true
}

// Test reports whether region r is dirty.
func (b *Bitmap) Test(r int) bool {
	w, m := b.locate(r)
	return b.words[w]&m != 0
}

// NextDirty returns the first dirty region >= from, or -1 if there is none.
// from may be Regions() (then -1); a negative from panics.
//
//	for r := bm.NextDirty(0); r >= 0; r = bm.NextDirty(r + 1) { ... }
func (b *Bitmap) NextDirty(from int) int {
	if from < 0 {
		panic(fmt.Sprintf("meta: NextDirty(%d): negative", from))
	}
	if from >= b.regions {
		return -1
	}
	w := from >> 6
	word := b.words[w] &^ (1<<uint(from&63) - 1)
	for {
		if word != 0 {
			return w<<6 + bits.TrailingZeros64(word)
		}
		w++
		if w == len(b.words) {
			return -1
		}
		word = b.words[w]
	}
}

// Merge sets every region that is dirty in o: the union, used to combine
// the bitmaps of several in-sync members before a resync. Bitmaps of a
// different size are a programmer error and panic.
func (b *Bitmap) Merge(o *Bitmap) {
	if o.regions != b.regions {
		panic(fmt.Sprintf("meta: Merge of %d regions into %d", o.regions, b.regions))
	}
	b.count = 0
	for i, w := range o.words {
		b.words[i] |= w
		b.count += bits.OnesCount64(b.words[i])
	}
}

// PageOf is the index of the page holding region r's bit; that page lives
// at member offset Area.BitmapOffset + PageOf(r)*PageSize.
func (b *Bitmap) PageOf(r int) int {
	b.locate(r)
	return r / RegionsPerPage
}

// MarshalPage encodes page i into dst[:PageSize], the bytes the engine
// writes after Set reported a change. The bitmap is copied, so dst may be
// written asynchronously while the bitmap changes. Errors: ErrTruncated if
// dst is short. i outside [0, Pages()) panics.
func (b *Bitmap) MarshalPage(i int, dst []byte) error {
	if i < 0 || i >= b.Pages() {
		panic(fmt.Sprintf("meta: MarshalPage(%d) of %d pages", i, b.Pages()))
	}
	if len(dst) < PageSize {
		return fmt.Errorf("%w: bitmap page needs %d bytes, buffer has %d", ErrTruncated, PageSize, len(dst))
	}
	p := dst[:PageSize]
	for j, w := range b.words[i*wordsPerPage : (i+1)*wordsPerPage] {
		binary.LittleEndian.PutUint64(p[j*8:], w)
	}
	binary.BigEndian.PutUint32(p[offPageIndex:], uint32(i))
	binary.BigEndian.PutUint32(p[offPageCRC:], crc32.Checksum(p[:offPageCRC], castagnoli))
	return nil
}

// MarshalPageUnion encodes page i of the union of b and o (same number of
// regions) into dst[:PageSize]: what a member persists when its bitmap
// holds two sets of regions (missed by others, and active). Errors and
// panics as MarshalPage; bitmaps of a different size panic.
func (b *Bitmap) MarshalPageUnion(i int, o *Bitmap, dst []byte) error {
	if o.regions != b.regions {
		panic(fmt.Sprintf("meta: MarshalPageUnion of %d regions with %d", o.regions, b.regions))
	}
	if err := b.MarshalPage(i, dst); err != nil {
		return err
	}
	p := dst[:PageSize]
	for j, w := range o.words[i*wordsPerPage : (i+1)*wordsPerPage] {
		binary.LittleEndian.PutUint64(p[j*8:], binary.LittleEndian.Uint64(p[j*8:])|w)
	}
	binary.BigEndian.PutUint32(p[offPageCRC:], crc32.Checksum(p[:offPageCRC], castagnoli))
	return nil
}

// MarshalTo encodes all pages into dst[:Bytes()]. Errors: ErrTruncated.
func (b *Bitmap) MarshalTo(dst []byte) error {
	if int64(len(dst)) < b.Bytes() {
		return fmt.Errorf("%w: bitmap needs %d bytes, buffer has %d", ErrTruncated, b.Bytes(), len(dst))
	}
	for i := range b.Pages() {
		if err := b.MarshalPage(i, dst[i*PageSize:]); err != nil {
			return err
		}
	}
	return nil
}

// Unmarshal replaces the bitmap with the first Bytes() bytes of src. A page
// that fails verification (ErrChecksum: torn or never written; ErrCorrupt:
// written at another page's offset, or bits set beyond Regions()) is
// loaded as all dirty, so a damaged page never makes a dirty region look
// clean; the bitmap is then usable and the error, wrapping the class of the
// first bad page, says how many pages were bad. ErrTruncated (src short)
// leaves the bitmap unchanged. Without error the bitmap re-encodes to the
// same bytes.
func (b *Bitmap) Unmarshal(src []byte) error {
	if int64(len(src)) < b.Bytes() {
		return fmt.Errorf("%w: bitmap needs %d bytes, got %d", ErrTruncated, b.Bytes(), len(src))
	}
	var first error
	bad := 0
	for i := range b.Pages() {
		if err := b.unmarshalPage(i, src[i*PageSize:(i+1)*PageSize]); err != nil {
			if first == nil {
				first = err
			}
			bad++
			b.setPage(i)
		}
	}
	b.count = 0
	for _, w := range b.words {
		b.count += bits.OnesCount64(w)
	}
	if first != nil {
		return fmt.Errorf("%w (%d of %d bitmap pages bad, loaded as all dirty)", first, bad, b.Pages())
	}
	return nil
}

// unmarshalPage verifies page i and loads its words.
func (b *Bitmap) unmarshalPage(i int, p []byte) error {
	if stored, sum := binary.BigEndian.Uint32(p[offPageCRC:]), crc32.Checksum(p[:offPageCRC], castagnoli); stored != sum {
		return fmt.Errorf("%w: bitmap page %d crc32c stored %#08x, computed %#08x", ErrChecksum, i, stored, sum)
	}
	if idx := binary.BigEndian.Uint32(p[offPageIndex:]); idx != uint32(i) {
		return fmt.Errorf("%w: bitmap page %d carries index %d", ErrCorrupt, i, idx)
	}
	words := b.words[i*wordsPerPage : (i+1)*wordsPerPage]
	base := i * RegionsPerPage
	for j := range words {
		w := binary.LittleEndian.Uint64(p[j*8:])
		if w&^b.validMask(base+j*64) != 0 {
			return fmt.Errorf("%w: bitmap page %d word %d: bits set beyond %d regions", ErrCorrupt, i, j, b.regions)
		}
		words[j] = w
	}
	return nil
}

// setPage marks every region of page i dirty.
func (b *Bitmap) setPage(i int) {
	base := i * RegionsPerPage
	for j := range wordsPerPage {
		b.words[i*wordsPerPage+j] = b.validMask(base + j*64)
	}
}

// validMask is the mask of the bits of the word starting at region r0 that
// are regions of the bitmap.
func (b *Bitmap) validMask(r0 int) uint64 {
	switch n := b.regions - r0; {
	case n <= 0:
		return 0
	case n >= 64:
		return ^uint64(0)
	default:
		return 1<<uint(n) - 1
	}
}

// locate is the word index and bit mask of region r; r outside
// [0, Regions()) is a programmer error and panics.
func (b *Bitmap) locate(r int) (int, uint64) {
	if r < 0 || r >= b.regions {
		panic(fmt.Sprintf("meta: region %d outside bitmap of %d regions", r, b.regions))
	}
	return r >> 6, 1 << uint(r&63)
}
