package raw

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// SectorSize is the unit a stamp describes. Writes may start and end at
// any byte; the bytes a write puts at device byte x are
// Image(seed, w, x &^ 511)[x & 511].
const SectorSize = 512

// Header layout of a stamped sector (little endian).
const (
	hdrMagic   = 0  // 8 bytes "DSTRAW01"
	hdrSector  = 8  // device offset of the sector the image was made for
	hdrWrite   = 16 // write id
	hdrSeed    = 24 // seed of the run
	hdrTarget  = 32 // the write's target offset
	hdrLength  = 40 // the write's target length
	hdrCRC     = 48 // crc32c of the sector without these 4 bytes
	headerSize = 52
)

var magic = [8]byte{'D', 'S', 'T', 'R', 'A', 'W', '0', '1'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Write names one write of a run: its id and the byte range it was aimed
// at. ID 0 is the device's initial content, zeroes.
type Write struct {
	ID  uint64 `json:"id"`
	Off int64  `json:"off"`
	Len int64  `json:"len"`
}

// String says "write 7 aimed at 0x1000+4096" or "zeroes (initial)".
func (w Write) String() string {
	if w.ID == 0 {
		return "zeroes (initial)"
	}
	return fmt.Sprintf("write %d aimed at %#x+%d", w.ID, w.Off, w.Len)
}

// Image fills dst with the image write w gives the sector at device offset
// sector (a multiple of SectorSize) in the run with the given seed: a
// header naming all of that and a checksum, then pseudo-random fill
// derived from (seed, w.ID, sector). The image of write 0 is zeroes.
func Image(dst *[SectorSize]byte, seed uint64, w Write, sector int64) {
	if w.ID == 0 {
		clear(dst[:])
		return
	}
	copy(dst[hdrMagic:], magic[:])
	binary.LittleEndian.PutUint64(dst[hdrSector:], uint64(sector))
	binary.LittleEndian.PutUint64(dst[hdrWrite:], w.ID)
	binary.LittleEndian.PutUint64(dst[hdrSeed:], seed)
	binary.LittleEndian.PutUint64(dst[hdrTarget:], uint64(w.Off))
	binary.LittleEndian.PutUint64(dst[hdrLength:], uint64(w.Len))
	s := mix(seed ^ mix(w.ID^0x9e3779b97f4a7c15) ^ mix(uint64(sector)+0x632be59bd9b4e019))
	i := headerSize
	for ; i+8 <= SectorSize; i += 8 {
		s += 0x9e3779b97f4a7c15
		binary.LittleEndian.PutUint64(dst[i:], mix(s))
	}
	s += 0x9e3779b97f4a7c15
	var tail [8]byte
	binary.LittleEndian.PutUint64(tail[:], mix(s))
	copy(dst[i:], tail[:])
	binary.LittleEndian.PutUint32(dst[hdrCRC:], sectorCRC(dst))
}

// sectorCRC is the checksum of a sector without its checksum field.
func sectorCRC(s *[SectorSize]byte) uint32 {
	c := crc32.Update(0, castagnoli, s[:hdrCRC])
	return crc32.Update(c, castagnoli, s[headerSize:])
}

// mix is the splitmix64 finaliser.
func mix(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// Fill writes into p the bytes write w puts at device offset off: p[i] =
// Image(seed, w, (off+i) &^ 511)[(off+i) & 511].
func Fill(p []byte, off int64, seed uint64, w Write) {
	var sec [SectorSize]byte
	for i := 0; i < len(p); {
		x := off + int64(i)
		base := x &^ (SectorSize - 1)
		in := int(x - base)
		n := min(SectorSize-in, len(p)-i)
		if in == 0 && n == SectorSize {
			Image((*[SectorSize]byte)(p[i:i+SectorSize]), seed, w, base)
		} else {
			Image(&sec, seed, w, base)
			copy(p[i:i+n], sec[in:in+n])
		}
		i += n
	}
}

// header is a decoded stamp header.
type header struct {
	sector int64
	write  Write
	seed   uint64
	crc    uint32
}

func parseHeader(b []byte) header {
	return header{
		sector: int64(binary.LittleEndian.Uint64(b[hdrSector:])),
		write: Write{
			ID:  binary.LittleEndian.Uint64(b[hdrWrite:]),
			Off: int64(binary.LittleEndian.Uint64(b[hdrTarget:])),
			Len: int64(binary.LittleEndian.Uint64(b[hdrLength:])),
		},
		seed: binary.LittleEndian.Uint64(b[hdrSeed:]),
		crc:  binary.LittleEndian.Uint32(b[hdrCRC:]),
	}
}
