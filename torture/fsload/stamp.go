package fsload

import (
	"encoding/binary"
	"fmt"
)

// Stamped file content.
//
// A file version's bytes are a pure function of (seed, file id, generation,
// file offset). The file is cut into 4 KiB blocks at file offsets that are
// multiples of BlockSize; each block starts with a HeaderSize-byte header
//
//	magic "DSTF" | generation u32 | file id u64 | seed u64 | block offset u64
//
// (little endian) and continues with a splitmix64 stream keyed by all four.
// Generation 0 is reserved for zeros (a hole from extending a file).
const (
	BlockSize  = 4096
	HeaderSize = 32
	stampMagic = 0x46545344 // "DSTF" little endian
)

// Stamp names the writer of a block: which file, which generation, which run.
type Stamp struct {
	Seed   uint64 `json:"seed"`
	ID     uint64 `json:"id"`
	Gen    uint32 `json:"gen"`
	Offset int64  `json:"offset"` // file offset of the block the header starts
}

func (s Stamp) String() string {
	return fmt.Sprintf("file %d gen %d seed %#x block at %d", s.ID, s.Gen, s.Seed, s.Offset)
}

// DecodeStamp decodes a block header from b (at least HeaderSize bytes).
func DecodeStamp(b []byte) (Stamp, bool) {
	if len(b) < HeaderSize || binary.LittleEndian.Uint32(b) != stampMagic {
		return Stamp{}, false
	}
	return Stamp{
		Gen:    binary.LittleEndian.Uint32(b[4:]),
		ID:     binary.LittleEndian.Uint64(b[8:]),
		Seed:   binary.LittleEndian.Uint64(b[16:]),
		Offset: int64(binary.LittleEndian.Uint64(b[24:])),
	}, true
}

// mix64 is the splitmix64 finaliser.
func mix64(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

const golden = 0x9e3779b97f4a7c15

// fillBlock writes the full BlockSize bytes of the block of (seed, id, gen)
// starting at file offset blockOff into b.
func fillBlock(b []byte, seed, id uint64, gen uint32, blockOff int64) {
	b = b[:BlockSize]
	if gen == 0 {
		clear(b)
		return
	}
	binary.LittleEndian.PutUint32(b[0:], stampMagic)
	binary.LittleEndian.PutUint32(b[4:], gen)
	binary.LittleEndian.PutUint64(b[8:], id)
	binary.LittleEndian.PutUint64(b[16:], seed)
	binary.LittleEndian.PutUint64(b[24:], uint64(blockOff))
	state := mix64(seed ^ mix64(id+golden) ^ mix64(uint64(gen)<<32^uint64(blockOff)/BlockSize))
	for i := HeaderSize; i < BlockSize; i += 8 {
		state += golden
		binary.LittleEndian.PutUint64(b[i:], mix64(state))
	}
}

// FillStamp writes into p the bytes of version (seed, id, gen) at file
// offsets [off, off+len(p)). Generation 0 yields zeros.
func FillStamp(p []byte, seed, id uint64, gen uint32, off int64) {
	if gen == 0 {
		clear(p)
		return
	}
	var blk [BlockSize]byte
	for len(p) > 0 {
		blockOff := off &^ (BlockSize - 1)
		in := int(off - blockOff)
		if in == 0 && len(p) >= BlockSize {
			fillBlock(p, seed, id, gen, blockOff)
			p, off = p[BlockSize:], off+BlockSize
			continue
		}
		fillBlock(blk[:], seed, id, gen, blockOff)
		n := copy(p, blk[in:])
		p, off = p[n:], off+int64(n)
	}
}

// describeFound explains bytes found on read at file offset off: which stamp
// the block's header names and whether the found bytes are that stamp's bytes
// at that offset (stale or misplaced data) or something else.
func describeFound(found []byte, blockStart []byte, off int64) string {
	st, ok := DecodeStamp(blockStart)
	if !ok {
		if isZero(found) {
			return "zeros, block has no stamp header"
		}
		return "unstamped bytes (no header at the block start)"
	}
	in := off - off&^(BlockSize-1)
	found = found[:min(int64(len(found)), BlockSize-in)]
	want := make([]byte, len(found))
	FillStamp(want, st.Seed, st.ID, st.Gen, st.Offset+in)
	if string(want) == string(found) {
		return "block header says " + st.String() + "; bytes match that stamp"
	}
	return "block header says " + st.String() + "; bytes do not match it (torn or foreign data)"
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
