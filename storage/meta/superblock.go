package meta

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/bits"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Superblock format constants.
const (
	// Magic opens every superblock.
	Magic = "DSTSUPER"
	// Version is the format version this code writes and reads. Later
	// versions keep Magic and the version field at their offsets.
	Version = 1
	// MaxMembers bounds the members of one storage (the InSync mask has
	// one bit per member).
	MaxMembers = 64
	// MaxLayoutBytes bounds the layout description.
	MaxLayoutBytes = 2048
)

// Byte offsets of the superblock fields (see the table in doc.go).
const (
	offMagic        = 0
	offVersion      = 8
	offFlags        = 12
	offStorageID    = 16
	offMemberID     = 32
	offMemberIndex  = 48
	offMemberCount  = 52
	offGeneration   = 56
	offInSync       = 64
	offRegionSize   = 72
	offRawSize      = 80
	offDataOffset   = 88
	offDataSize     = 96
	offBitmapOffset = 104
	offBitmapBytes  = 112
	offCreated      = 120
	offLayoutLen    = 128
	offLayout       = 132
	offMembers      = offLayout + MaxLayoutBytes // 2180
	offRawSizes     = offMembers + MaxMembers*16 // 3204
	offReserved     = offRawSizes + MaxMembers*8 // 3716
	offChecksum     = SuperblockSize - 4         // 4092
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var zeroPage [PageSize]byte

// Flags are the superblock flag bits.
type Flags uint32

const (
	// FlagClean: the engine shut down cleanly; every write it acknowledged
	// reached every member of InSync and no region is dirty because of an
	// interrupted write.
	FlagClean Flags = 1 << iota
	// FlagActivityLog: the member's bitmap is also the mirror's activity
	// log. Besides the regions other replicas missed, it holds every
	// region a write may have been in flight to when the engine stopped:
	// such a region is marked, durably, on every member in service before
	// any data write to it is sent, and cleared only after its writes are
	// stable on every replica. After an unclean stop the union of the
	// members' bitmaps bounds where replicas may differ. Without the flag
	// (a member written by an engine that kept no log) an unclean stop
	// copies a replica whole.
	FlagActivityLog

	flagsKnown = FlagClean | FlagActivityLog
)

// String lists the set flags, e.g. "clean", "0" for none.
func (f Flags) String() string {
	if f == 0 {
		return "0"
	}
	var parts []string
	if f&FlagClean != 0 {
		parts = append(parts, "clean")
	}
	if f&FlagActivityLog != 0 {
		parts = append(parts, "activity-log")
	}
	if rest := f &^ flagsKnown; rest != 0 {
		parts = append(parts, "0x"+strconv.FormatUint(uint64(rest), 16))
	}
	return strings.Join(parts, "|")
}

// Mask is a set of member indexes, bit i for member i.
type Mask uint64

// Has reports whether member i is in m.
func (m Mask) Has(i int) bool { return i >= 0 && i < MaxMembers && m&(1<<uint(i)) != 0 }

// With returns m plus member i.
func (m Mask) With(i int) Mask { return m | 1<<uint(i) }

// Without returns m minus member i.
func (m Mask) Without(i int) Mask { return m &^ (1 << uint(i)) }

// Count is the number of members in m.
func (m Mask) Count() int { return bits.OnesCount64(uint64(m)) }

// String formats m as "{0,2}".
func (m Mask) String() string {
	var b strings.Builder
	b.WriteByte('{')
	for i := 0; i < MaxMembers; i++ {
		if m.Has(i) {
			if b.Len() > 1 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.Itoa(i))
		}
	}
	b.WriteByte('}')
	return b.String()
}

// Superblock is the identity and geometry of one member. It is encoded into
// SuperblockSize bytes; see doc.go for the byte layout and the two-slot
// rule.
type Superblock struct {
	Flags Flags
	// StorageID is shared by all members of one storage; MemberID names
	// this medium (a replaced disk gets a new one). Neither may be zero.
	StorageID ID
	MemberID  ID
	// MemberIndex is this member's position in the layout, in
	// [0, MemberCount); MemberCount is in [1, MaxMembers].
	MemberIndex int
	MemberCount int
	// Generation ('age') increases with every superblock write of the
	// storage; see Classify for how it is compared.
	Generation uint64
	// InSync is the set of members that held all acknowledged data as of
	// Generation, in the writer's view. A member missing from its own
	// InSync was being rebuilt and needs a full resync.
	InSync Mask
	// Area is the member's geometry (validated as in Plan).
	Area
	// Layout is the one-line layout description (from the layout
	// package), non-empty, at most MaxLayoutBytes of UTF-8 without control
	// characters.
	Layout string
	// CreatedUnixNano is when the storage was created.
	CreatedUnixNano int64
	// Members is the member table: the MemberID of the medium at each
	// position, as the writer knew them (zero: unknown, as in superblocks
	// written before the table existed). A medium whose id differs from
	// the newest table's at its position was replaced there: it is never
	// trusted as in sync again (see Classify). Entries at MemberCount and
	// beyond are zero; the own entry is zero or MemberID.
	Members [MaxMembers]ID
	// RawSizes is each position's raw size as the writer knew it (zero:
	// unknown), the size its Area was planned from: with the region size
	// it gives the geometry of a member that is missing at a start
	// (Plan(RawSizes[i], RegionSize)). The same rules as for Members: zero
	// at MemberCount and beyond, the own entry zero or RawSize, and a
	// known entry at least MinRawSize.
	RawSizes [MaxMembers]int64
}

// Clean reports whether FlagClean is set.
func (s *Superblock) Clean() bool { return s.Flags&FlagClean != 0 }

// Complete reports whether the member is in its own InSync set, i.e. it is
// not in the middle of a full resync.
func (s *Superblock) Complete() bool { return s.InSync.Has(s.MemberIndex) }

// MarshalTo encodes s into b[:SuperblockSize] (the rest of b is untouched).
// It allocates nothing unless it fails: ErrTruncated if b is short,
// ErrInvalid (naming the field) if s would not decode.
func (s *Superblock) MarshalTo(b []byte) error {
	if len(b) < SuperblockSize {
		return fmt.Errorf("%w: superblock needs %d bytes, buffer has %d", ErrTruncated, SuperblockSize, len(b))
	}
	if err := s.check(ErrInvalid); err != nil {
		return err
	}
	b = b[:SuperblockSize]
	be := binary.BigEndian
	copy(b[offMagic:], Magic)
	be.PutUint32(b[offVersion:], Version)
	be.PutUint32(b[offFlags:], uint32(s.Flags))
	copy(b[offStorageID:], s.StorageID[:])
	copy(b[offMemberID:], s.MemberID[:])
	be.PutUint32(b[offMemberIndex:], uint32(s.MemberIndex))
	be.PutUint32(b[offMemberCount:], uint32(s.MemberCount))
	be.PutUint64(b[offGeneration:], s.Generation)
	be.PutUint64(b[offInSync:], uint64(s.InSync))
	be.PutUint64(b[offRegionSize:], uint64(s.RegionSize))
	be.PutUint64(b[offRawSize:], uint64(s.RawSize))
	be.PutUint64(b[offDataOffset:], uint64(s.DataOffset))
	be.PutUint64(b[offDataSize:], uint64(s.DataSize))
	be.PutUint64(b[offBitmapOffset:], uint64(s.BitmapOffset))
	be.PutUint64(b[offBitmapBytes:], uint64(s.BitmapBytes))
	be.PutUint64(b[offCreated:], uint64(s.CreatedUnixNano))
	be.PutUint16(b[offLayoutLen:], uint16(len(s.Layout)))
	b[offLayoutLen+2], b[offLayoutLen+3] = 0, 0
	n := copy(b[offLayout:offMembers], s.Layout)
	copy(b[offLayout+n:offMembers], zeroPage[:])
	for i := range s.Members {
		copy(b[offMembers+16*i:], s.Members[i][:])
		be.PutUint64(b[offRawSizes+8*i:], uint64(s.RawSizes[i]))
	}
	copy(b[offReserved:offChecksum], zeroPage[:])
	be.PutUint32(b[offChecksum:], crc32.Checksum(b[:offChecksum], castagnoli))
	return nil
}

// UnmarshalSuperblock decodes the first SuperblockSize bytes of b. The
// checks run in this order, so the error names the first thing wrong:
// ErrTruncated (b too short), ErrBlank (all zeros), ErrForeign (no Magic),
// ErrVersion, ErrChecksum, ErrCorrupt (a field out of bounds, a non-zero
// reserved byte). A Superblock returned without error re-encodes to the
// same bytes.
func UnmarshalSuperblock(b []byte) (Superblock, error) {
	if len(b) < SuperblockSize {
		return Superblock{}, fmt.Errorf("%w: superblock needs %d bytes, got %d", ErrTruncated, SuperblockSize, len(b))
	}
	b = b[:SuperblockSize]
	if string(b[offMagic:offMagic+len(Magic)]) != Magic {
		if bytes.Equal(b, zeroPage[:SuperblockSize]) {
			return Superblock{}, fmt.Errorf("%w: all %d bytes are zero", ErrBlank, SuperblockSize)
		}
		return Superblock{}, fmt.Errorf("%w: magic %q, want %q", ErrForeign, b[offMagic:offMagic+len(Magic)], Magic)
	}
	be := binary.BigEndian
	if v := be.Uint32(b[offVersion:]); v != Version {
		return Superblock{}, fmt.Errorf("%w: version %d, this code reads %d", ErrVersion, v, Version)
	}
	if stored, sum := be.Uint32(b[offChecksum:]), crc32.Checksum(b[:offChecksum], castagnoli); stored != sum {
		return Superblock{}, fmt.Errorf("%w: superblock crc32c stored %#08x, computed %#08x", ErrChecksum, stored, sum)
	}
	var s Superblock
	s.Flags = Flags(be.Uint32(b[offFlags:]))
	copy(s.StorageID[:], b[offStorageID:])
	copy(s.MemberID[:], b[offMemberID:])
	index, count := be.Uint32(b[offMemberIndex:]), be.Uint32(b[offMemberCount:])
	if count > MaxMembers || index >= count {
		return Superblock{}, fmt.Errorf("%w: member index %d of count %d: need index < count <= %d",
			ErrCorrupt, index, count, MaxMembers)
	}
	s.MemberIndex, s.MemberCount = int(index), int(count)
	s.Generation = be.Uint64(b[offGeneration:])
	s.InSync = Mask(be.Uint64(b[offInSync:]))
	sizes := [...]struct {
		name string
		off  int
		dst  *int64
	}{
		{"region size", offRegionSize, &s.RegionSize},
		{"raw size", offRawSize, &s.RawSize},
		{"data offset", offDataOffset, &s.DataOffset},
		{"data size", offDataSize, &s.DataSize},
		{"bitmap offset", offBitmapOffset, &s.BitmapOffset},
		{"bitmap bytes", offBitmapBytes, &s.BitmapBytes},
	}
	for _, f := range sizes {
		v, err := sizeFromDisk(f.name, be.Uint64(b[f.off:]))
		if err != nil {
			return Superblock{}, err
		}
		*f.dst = v
	}
	s.CreatedUnixNano = int64(be.Uint64(b[offCreated:]))
	n := int(be.Uint16(b[offLayoutLen:]))
	if n > MaxLayoutBytes {
		return Superblock{}, fmt.Errorf("%w: layout length %d: more than %d", ErrCorrupt, n, MaxLayoutBytes)
	}
	if i := nonZero(b[offLayoutLen+2 : offLayout]); i >= 0 {
		return Superblock{}, fmt.Errorf("%w: reserved byte at offset %d is %#02x", ErrCorrupt, offLayoutLen+2+i, b[offLayoutLen+2+i])
	}
	if i := nonZero(b[offLayout+n : offMembers]); i >= 0 {
		return Superblock{}, fmt.Errorf("%w: padding byte at offset %d is %#02x", ErrCorrupt, offLayout+n+i, b[offLayout+n+i])
	}
	if i := nonZero(b[offReserved:offChecksum]); i >= 0 {
		return Superblock{}, fmt.Errorf("%w: padding byte at offset %d is %#02x", ErrCorrupt, offReserved+i, b[offReserved+i])
	}
	s.Layout = string(b[offLayout : offLayout+n])
	for i := range s.Members {
		copy(s.Members[i][:], b[offMembers+16*i:])
		s.RawSizes[i] = int64(be.Uint64(b[offRawSizes+8*i:]))
	}
	if err := s.check(ErrCorrupt); err != nil {
		return Superblock{}, err
	}
	return s, nil
}

// check verifies every field bound, wrapping class with the field at fault.
func (s *Superblock) check(class error) error {
	switch {
	case s.Flags&^flagsKnown != 0:
		return fmt.Errorf("%w: flags %#x: unknown bits %#x", class, uint32(s.Flags), uint32(s.Flags&^flagsKnown))
	case s.StorageID.IsZero():
		return fmt.Errorf("%w: storage id is zero", class)
	case s.MemberID.IsZero():
		return fmt.Errorf("%w: member id is zero", class)
	case s.MemberCount < 1 || s.MemberCount > MaxMembers:
		return fmt.Errorf("%w: member count %d: must be in [1, %d]", class, s.MemberCount, MaxMembers)
	case s.MemberIndex < 0 || s.MemberIndex >= s.MemberCount:
		return fmt.Errorf("%w: member index %d: must be in [0, %d)", class, s.MemberIndex, s.MemberCount)
	case s.MemberCount < MaxMembers && s.InSync>>uint(s.MemberCount) != 0:
		return fmt.Errorf("%w: in-sync mask %s: members beyond count %d", class, s.InSync, s.MemberCount)
	}
	for i := s.MemberCount; i < MaxMembers; i++ {
		if !s.Members[i].IsZero() || s.RawSizes[i] != 0 {
			return fmt.Errorf("%w: member table names member %d of %d", class, i, s.MemberCount)
		}
	}
	for i, raw := range s.RawSizes[:s.MemberCount] {
		if raw != 0 && raw < MinRawSize {
			return fmt.Errorf("%w: member table gives member %d a raw size of %d bytes, below the minimum %d", class, i, raw, MinRawSize)
		}
	}
	if own := s.RawSizes[s.MemberIndex]; own != 0 && own != s.RawSize {
		return fmt.Errorf("%w: member table gives the own position %d a raw size of %d, the member's is %d", class, s.MemberIndex, own, s.RawSize)
	}
	if own := s.Members[s.MemberIndex]; !own.IsZero() && own != s.MemberID {
		return fmt.Errorf("%w: member table names %s at the own position %d, the member is %s", class, own, s.MemberIndex, s.MemberID)
	}
	if err := s.Area.check(class); err != nil {
		return err
	}
	if len(s.Layout) == 0 || len(s.Layout) > MaxLayoutBytes {
		return fmt.Errorf("%w: layout length %d: must be in [1, %d]", class, len(s.Layout), MaxLayoutBytes)
	}
	if !utf8.ValidString(s.Layout) {
		return fmt.Errorf("%w: layout %q: not UTF-8", class, s.Layout)
	}
	for _, r := range s.Layout {
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: layout %q: control character %U", class, s.Layout, r)
		}
	}
	return nil
}

// nonZero is the index of the first non-zero byte of b, or -1.
func nonZero(b []byte) int {
	for i, c := range b {
		if c != 0 {
			return i
		}
	}
	return -1
}
