// Fuzz targets feed arbitrary bytes to the superblock and bitmap decoders (optionally re-sealing checksums so the fuzzer reaches the field checks) and prove they never panic, always name an error class, and that whatever decodes re-encodes to the same bytes.
package meta

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math/bits"
	"testing"
)

var decodeClasses = []error{ErrTruncated, ErrBlank, ErrForeign, ErrVersion, ErrChecksum, ErrCorrupt}

func hasClass(err error) bool {
	for _, c := range decodeClasses {
		if errors.Is(err, c) {
			return true
		}
	}
	return false
}

func FuzzSuperblock(f *testing.F) {
	valid := encode(f, testSuper(f, 1, 3, 77, 0b101))
	corrupt := bytes.Clone(valid)
	corrupt[offLayout+2] ^= 0x20
	badIndex := bytes.Clone(valid)
	binary.BigEndian.PutUint32(badIndex[offMemberIndex:], 9)
	f.Add(valid, false)
	f.Add(make([]byte, SuperblockSize), false)
	f.Add(corrupt, false)
	f.Add(badIndex, true)
	f.Add(append([]byte("XFSB"), make([]byte, SuperblockSize)...), false)
	f.Add(valid[:100], false)
	f.Add(append(bytes.Clone(valid), valid...), false)
	f.Fuzz(func(t *testing.T, data []byte, reseal bool) {
		if reseal && len(data) >= SuperblockSize {
			data = bytes.Clone(data)
			seal(data)
		}
		s, err := UnmarshalSuperblock(data)
		if err != nil {
			if !hasClass(err) {
				t.Fatalf("error without a class: %v", err)
			}
		} else {
			out := make([]byte, SuperblockSize)
			if err := s.MarshalTo(out); err != nil {
				t.Fatalf("decoded superblock does not encode: %v\n%+v", err, s)
			}
			if !bytes.Equal(out, data[:SuperblockSize]) {
				t.Fatalf("re-encoding differs from input\n%+v", s)
			}
		}
		// Both slots from the same input: must not panic either.
		rest := data[min(len(data), SuperblockSize):]
		if _, _, err := Newest(data, rest); err != nil && !hasClass(err) {
			t.Fatalf("Newest: error without a class: %v", err)
		}
	})
}

func FuzzBitmap(f *testing.F) {
	b := NewBitmap(RegionsPerPage + 50)
	for _, r := range []int{0, 7, 64, RegionsPerPage - 1, RegionsPerPage + 49} {
		b.Set(r)
	}
	valid := make([]byte, b.Bytes())
	if err := b.MarshalTo(valid); err != nil {
		f.Fatal(err)
	}
	torn := bytes.Clone(valid)
	clear(torn[PageSize+512:])
	f.Add(uint32(RegionsPerPage+50), valid, false)
	f.Add(uint32(RegionsPerPage+50), torn, false)
	f.Add(uint32(RegionsPerPage+50), torn, true)
	f.Add(uint32(100), valid[:PageSize], false)
	f.Add(uint32(100), make([]byte, PageSize), true)
	f.Add(uint32(5), valid[:10], false)
	f.Fuzz(func(t *testing.T, n uint32, data []byte, reseal bool) {
		regions := 1 + int(n%(3*RegionsPerPage))
		bm := NewBitmap(regions)
		if reseal {
			data = bytes.Clone(data)
			for i := 0; (i+1)*PageSize <= len(data); i++ {
				p := data[i*PageSize : (i+1)*PageSize]
				binary.BigEndian.PutUint32(p[offPageIndex:], uint32(i))
				binary.BigEndian.PutUint32(p[offPageCRC:], crc32.Checksum(p[:offPageCRC], castagnoli))
			}
		}
		err := bm.Unmarshal(data)
		switch {
		case err == nil:
			out := make([]byte, bm.Bytes())
			if err := bm.MarshalTo(out); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, data[:bm.Bytes()]) {
				t.Fatal("re-encoding differs from input")
			}
		case !hasClass(err):
			t.Fatalf("error without a class: %v", err)
		}
		// Whatever was loaded keeps the invariants.
		count := 0
		for i, w := range bm.words {
			count += bits.OnesCount64(w)
			if w&^bm.validMask(i*64) != 0 {
				t.Fatalf("word %d has bits beyond %d regions", i, regions)
			}
		}
		if walked := len(dirty(t, bm)); count != bm.Count() || walked != count {
			t.Fatalf("Count %d, popcount %d, NextDirty walk %d", bm.Count(), count, walked)
		}
	})
}
