// Superblock encoding is pinned by table tests: a round trip, each error class of UnmarshalSuperblock and MarshalTo on hand-damaged buffers (CRC re-sealed where the damage must reach the field checks), the slot choice of Newest, and the small value types.
package meta

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"io"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// seal recomputes the superblock CRC so a mutation reaches the field checks.
func seal(b []byte) {
	binary.BigEndian.PutUint32(b[offChecksum:], crc32.Checksum(b[:offChecksum], castagnoli))
}

func TestSuperblockRoundTrip(t *testing.T) {
	s := testSuper(t, 1, 3, 42, 0b111)
	s.Flags = FlagClean
	buf := bytes.Repeat([]byte{0xee}, SuperblockSize+10)
	require.NoError(t, s.MarshalTo(buf))
	assert.Equal(t, bytes.Repeat([]byte{0xee}, 10), buf[SuperblockSize:], "MarshalTo wrote past SuperblockSize")
	assert.Equal(t, Magic, string(buf[:8]))
	assert.Equal(t, uint64(42), binary.BigEndian.Uint64(buf[offGeneration:]))
	assert.Equal(t, testLayout, string(buf[offLayout:offLayout+len(testLayout)]))

	got, err := UnmarshalSuperblock(buf)
	require.NoError(t, err)
	assert.Equal(t, s, got)
	assert.True(t, got.Clean())
	assert.True(t, got.Complete())

	// The member table round-trips, the own entry included.
	s.Members[0], s.Members[1], s.Members[2] = ID{1, 2, 3}, s.MemberID, ID{7}
	s.RawSizes[0], s.RawSizes[1], s.RawSizes[2] = MinRawSize, s.RawSize, 1<<40
	got, err = UnmarshalSuperblock(encode(t, s))
	require.NoError(t, err)
	assert.Equal(t, s, got)

	// The longest layout fits exactly.
	s.Layout = strings.Repeat("é", MaxLayoutBytes/2)
	got, err = UnmarshalSuperblock(encode(t, s))
	require.NoError(t, err)
	assert.Equal(t, s, got)
}

func TestUnmarshalSuperblockErrors(t *testing.T) {
	valid := encode(t, testSuper(t, 0, 2, 7, 0b11))
	tests := []struct {
		name   string
		mutate func(b []byte) []byte // returns the buffer to decode
		err    error
		says   string // a fragment the message must carry
	}{
		{"truncated", func(b []byte) []byte { return b[:SuperblockSize-1] }, ErrTruncated, "4095"},
		{"empty", func(b []byte) []byte { return nil }, ErrTruncated, "got 0"},
		{"blank", func(b []byte) []byte { return make([]byte, SuperblockSize) }, ErrBlank, ""},
		{"blank magic, data behind", func(b []byte) []byte { copy(b, make([]byte, 8)); return b }, ErrForeign, "magic"},
		{"other magic", func(b []byte) []byte { copy(b, "XFSB\x00\x00\x10\x00"); return b }, ErrForeign, "XFSB"},
		{"version 2", func(b []byte) []byte { binary.BigEndian.PutUint32(b[offVersion:], 2); seal(b); return b }, ErrVersion, "version 2"},
		{"version 0, torn too", func(b []byte) []byte { binary.BigEndian.PutUint32(b[offVersion:], 0); return b }, ErrVersion, "version 0"},
		{"bit flip in layout", func(b []byte) []byte { b[offLayout+3] ^= 1; return b }, ErrChecksum, "crc32c"},
		{"bit flip in checksum", func(b []byte) []byte { b[offChecksum] ^= 0x80; return b }, ErrChecksum, "crc32c"},
		{"torn: second half zero", func(b []byte) []byte { clear(b[2048:]); return b }, ErrChecksum, "crc32c"},
		{"unknown flag", func(b []byte) []byte { binary.BigEndian.PutUint32(b[offFlags:], 12); seal(b); return b }, ErrCorrupt, "flags 0xc"},
		{"zero storage id", func(b []byte) []byte { clear(b[offStorageID : offStorageID+16]); seal(b); return b }, ErrCorrupt, "storage id"},
		{"zero member id", func(b []byte) []byte { clear(b[offMemberID : offMemberID+16]); seal(b); return b }, ErrCorrupt, "member id"},
		{"index >= count", func(b []byte) []byte { binary.BigEndian.PutUint32(b[offMemberIndex:], 2); seal(b); return b }, ErrCorrupt, "member index 2"},
		{"count 0", func(b []byte) []byte { binary.BigEndian.PutUint32(b[offMemberCount:], 0); seal(b); return b }, ErrCorrupt, "count 0"},
		{"count 65", func(b []byte) []byte { binary.BigEndian.PutUint32(b[offMemberCount:], 65); seal(b); return b }, ErrCorrupt, "count 65"},
		{"member table beyond count", func(b []byte) []byte { b[offMembers+16*2] = 1; seal(b); return b }, ErrCorrupt, "member table names member 2 of 2"},
		{"member table disowns the member", func(b []byte) []byte { b[offMembers] = 1; seal(b); return b }, ErrCorrupt, "own position 0"},
		{"reserved after the member table", func(b []byte) []byte { b[offReserved] = 1; seal(b); return b }, ErrCorrupt, "offset 3716"},
		{"raw size table beyond count", func(b []byte) []byte { b[offRawSizes+8*2+7] = 1; seal(b); return b }, ErrCorrupt, "member table names member 2 of 2"},
		{"raw size table below the minimum", func(b []byte) []byte { b[offRawSizes+8*1+7] = 1; seal(b); return b }, ErrCorrupt, "member 1 a raw size of 1 bytes"},
		{"raw size table disowns the member", func(b []byte) []byte {
			binary.BigEndian.PutUint64(b[offRawSizes:], uint64(MinRawSize))
			seal(b)
			return b
		}, ErrCorrupt, "own position 0 a raw size"},
		{"in-sync beyond count", func(b []byte) []byte { binary.BigEndian.PutUint64(b[offInSync:], 0b101); seal(b); return b }, ErrCorrupt, "{0,2}"},
		{"region size 3 MiB", func(b []byte) []byte { binary.BigEndian.PutUint64(b[offRegionSize:], 3<<20); seal(b); return b }, ErrCorrupt, "region size 3145728"},
		{"raw size beyond int64", func(b []byte) []byte { binary.BigEndian.PutUint64(b[offRawSize:], math.MaxUint64); seal(b); return b }, ErrCorrupt, "raw size 18446744073709551615"},
		{"data offset beyond raw size", func(b []byte) []byte {
			binary.BigEndian.PutUint64(b[offDataOffset:], 2<<30)
			seal(b)
			return b
		}, ErrCorrupt, "data offset 2147483648"},
		{"data size zero", func(b []byte) []byte { binary.BigEndian.PutUint64(b[offDataSize:], 0); seal(b); return b }, ErrCorrupt, "data size 0"},
		{"bitmap overlaps data", func(b []byte) []byte {
			binary.BigEndian.PutUint64(b[offDataOffset:], MinBitmapOffset)
			seal(b)
			return b
		}, ErrCorrupt, "overlaps"},
		{"bitmap bytes wrong", func(b []byte) []byte { binary.BigEndian.PutUint64(b[offBitmapBytes:], 2*PageSize); seal(b); return b }, ErrCorrupt, "bitmap bytes 8192"},
		{"overlong description", func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[offLayoutLen:], MaxLayoutBytes+1)
			seal(b)
			return b
		}, ErrCorrupt, "layout length 2049"},
		{"empty description", func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[offLayoutLen:], 0)
			clear(b[offLayout:offReserved])
			seal(b)
			return b
		}, ErrCorrupt, "layout length 0"},
		{"description not UTF-8", func(b []byte) []byte { b[offLayout] = 0xff; seal(b); return b }, ErrCorrupt, "UTF-8"},
		{"description with newline", func(b []byte) []byte { b[offLayout+1] = '\n'; seal(b); return b }, ErrCorrupt, "control character U+000A"},
		{"garbage after description", func(b []byte) []byte { b[offLayout+len(testLayout)] = 'x'; seal(b); return b }, ErrCorrupt, "padding byte at offset 164"},
		{"reserved after length", func(b []byte) []byte { b[offLayoutLen+3] = 1; seal(b); return b }, ErrCorrupt, "reserved byte at offset 131"},
		{"reserved tail", func(b []byte) []byte { b[offChecksum-1] = 1; seal(b); return b }, ErrCorrupt, "offset 4091"},
	}
	classes := []error{ErrTruncated, ErrBlank, ErrForeign, ErrVersion, ErrChecksum, ErrCorrupt, ErrInvalid}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.mutate(bytes.Clone(valid))
			_, err := UnmarshalSuperblock(b)
			require.ErrorIs(t, err, tt.err)
			for _, c := range classes {
				if c != tt.err {
					assert.NotErrorIs(t, err, c, "wraps a second class")
				}
			}
			assert.Contains(t, err.Error(), tt.says)
			t.Log(err)
		})
	}
}

func TestMarshalToErrors(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(s *Superblock)
		says   string
	}{
		{"overlong description", func(s *Superblock) { s.Layout = strings.Repeat("x", MaxLayoutBytes+1) }, "layout length 2049"},
		{"empty description", func(s *Superblock) { s.Layout = "" }, "layout length 0"},
		{"description with tab", func(s *Superblock) { s.Layout = "a\tb" }, "control character"},
		{"description not UTF-8", func(s *Superblock) { s.Layout = "\xc3" }, "UTF-8"},
		{"zero storage id", func(s *Superblock) { s.StorageID = ID{} }, "storage id is zero"},
		{"index >= count", func(s *Superblock) { s.MemberIndex = 3 }, "member index 3"},
		{"negative index", func(s *Superblock) { s.MemberIndex = -1 }, "member index -1"},
		{"count too large", func(s *Superblock) { s.MemberCount = MaxMembers + 1 }, "member count 65"},
		{"in-sync beyond count", func(s *Superblock) { s.InSync = 1 << 3 }, "in-sync mask {3}"},
		{"unknown flag", func(s *Superblock) { s.Flags = 1 << 7 }, "unknown bits 0x80"},
		{"area", func(s *Superblock) { s.DataSize = s.RawSize }, "beyond raw size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := testSuper(t, 2, 3, 1, 0b111)
			tt.mutate(&s)
			buf := make([]byte, SuperblockSize)
			err := s.MarshalTo(buf)
			require.ErrorIs(t, err, ErrInvalid)
			assert.Contains(t, err.Error(), tt.says)
			assert.Equal(t, make([]byte, SuperblockSize), buf, "failed MarshalTo wrote")
		})
	}
	s := testSuper(t, 0, 1, 1, 1)
	require.ErrorIs(t, s.MarshalTo(make([]byte, SuperblockSize-1)), ErrTruncated)

	// All 64 members fit the mask.
	s = testSuper(t, 63, MaxMembers, 1, math.MaxUint64)
	got, err := UnmarshalSuperblock(encode(t, s))
	require.NoError(t, err)
	assert.Equal(t, s, got)
}

func TestNewest(t *testing.T) {
	at := func(gen uint64) []byte { return encode(t, testSuper(t, 0, 2, gen, 0b11)) }
	blank := make([]byte, SuperblockSize)
	foreign := append([]byte("XFSB"), make([]byte, SuperblockSize-4)...)
	torn := func(b []byte) []byte { b = bytes.Clone(b); clear(b[1024:]); return b }
	version := func(b []byte) []byte {
		b = bytes.Clone(b)
		binary.BigEndian.PutUint32(b[offVersion:], 9)
		return b
	}
	cleanAt := func(gen uint64) []byte {
		s := testSuper(t, 0, 2, gen, 0b11)
		s.Flags = FlagClean
		return encode(t, s)
	}
	other := testSuper(t, 0, 2, 9, 0b11)
	other.StorageID = testOther
	otherMember := testSuper(t, 0, 2, 9, 0b11)
	otherMember.MemberID[15] = 0x77
	renumbered := testSuper(t, 0, 2, 9, 0b11)
	renumbered.MemberIndex, renumbered.MemberCount = 2, 3

	tests := []struct {
		name       string
		a, b       []byte
		slot       int
		gen        uint64
		clean      bool
		err        []error
		notErr     []error
		errMessage string
	}{
		{name: "slot 1 newer", a: at(4), b: at(5), slot: 1, gen: 5},
		{name: "slot 0 newer", a: at(6), b: at(5), slot: 0, gen: 6},
		{name: "slot 1 blank", a: at(6), b: blank, slot: 0, gen: 6},
		{name: "slot 0 blank", a: blank, b: at(1), slot: 1, gen: 1},
		{name: "newest torn falls back", a: torn(at(6)), b: at(5), slot: 1, gen: 5},
		{name: "created: equal even generation", a: at(4), b: at(4), slot: 0, gen: 4},
		{name: "equal odd generation takes slot 1", a: at(3), b: cleanAt(3), slot: 1, gen: 3, clean: true},
		{name: "equal even generation takes slot 0", a: cleanAt(2), b: at(2), slot: 0, gen: 2, clean: true},
		{name: "both blank", a: blank, b: blank, err: []error{ErrBlank}, notErr: []error{ErrForeign}},
		{name: "blank and foreign", a: blank, b: foreign, err: []error{ErrForeign}, notErr: []error{ErrBlank}},
		{name: "both foreign", a: foreign, b: foreign, err: []error{ErrForeign}},
		{name: "torn and blank", a: torn(at(1)), b: blank, err: []error{ErrChecksum}, notErr: []error{ErrBlank}},
		{name: "foreign and torn", a: foreign, b: torn(at(1)), err: []error{ErrChecksum}, notErr: []error{ErrForeign}},
		{name: "torn and newer version", a: torn(at(1)), b: version(at(2)), err: []error{ErrChecksum, ErrVersion}},
		{name: "short buffers", a: nil, b: blank[:10], err: []error{ErrTruncated}},
		{name: "slots of two storages", a: at(8), b: encode(t, other), err: []error{ErrCorrupt}, errMessage: "slots disagree"},
		{name: "slots of two media", a: at(8), b: encode(t, otherMember), err: []error{ErrCorrupt}, errMessage: "slots disagree"},
		{name: "a change of membership renumbered the member", a: at(8), b: encode(t, renumbered), slot: 1, gen: 9},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, slot, err := Newest(tt.a, tt.b)
			if tt.err != nil {
				for _, e := range tt.err {
					require.ErrorIs(t, err, e)
				}
				for _, e := range tt.notErr {
					require.NotErrorIs(t, err, e)
				}
				assert.Contains(t, err.Error(), tt.errMessage)
				assert.Equal(t, -1, slot)
				t.Log(err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.slot, slot)
			assert.Equal(t, tt.gen, s.Generation)
			assert.Equal(t, tt.clean, s.Clean())
		})
	}
}

func TestSlotOffset(t *testing.T) {
	assert.Equal(t, int64(0), SlotOffset(0))
	assert.Equal(t, int64(SuperblockSize), SlotOffset(1))
	assert.Equal(t, int64(0), SlotOffset(2))
	assert.Equal(t, int64(SuperblockSize), SlotOffset(math.MaxUint64))
}

func TestID(t *testing.T) {
	id, err := NewID(bytes.NewReader(bytes.Repeat([]byte{0xff}, 16)))
	require.NoError(t, err)
	assert.Equal(t, "ffffffff-ffff-4fff-bfff-ffffffffffff", id.String())
	id, err = NewID(bytes.NewReader(make([]byte, 16)))
	require.NoError(t, err)
	assert.False(t, id.IsZero(), "version bits keep an all-zero draw non-zero")
	assert.Equal(t, "00000000-0000-4000-8000-000000000000", id.String())
	_, err = NewID(bytes.NewReader(make([]byte, 15)))
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	assert.True(t, ID{}.IsZero())
}

func TestValueStrings(t *testing.T) {
	assert.Equal(t, "0", Flags(0).String())
	assert.Equal(t, "clean", FlagClean.String())
	assert.Equal(t, "clean|activity-log", (FlagClean | FlagActivityLog).String())
	assert.Equal(t, "clean|0xc", (FlagClean | 12).String())
	m := Mask(0).With(0).With(2).With(63)
	assert.Equal(t, "{0,2,63}", m.String())
	assert.Equal(t, 3, m.Count())
	assert.True(t, m.Has(63))
	assert.False(t, m.Has(64))
	assert.False(t, m.Has(-1))
	assert.Equal(t, "{0,63}", m.Without(2).String())
	assert.Equal(t, "{}", Mask(0).String())
	assert.Equal(t, "stale", StateStale.String())
	assert.Equal(t, "State(99)", State(99).String())
	assert.Equal(t, "resync-dirty", ActionResyncDirty.String())
	assert.Equal(t, "Action(99)", Action(99).String())
}
