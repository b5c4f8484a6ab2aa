// gopter properties over generated values prove the codecs and the range mapping: superblock encode/decode is the identity, a bitmap driven by random Set/Clear agrees with a []bool model and survives encode/decode, and RegionsOf covers exactly the bytes asked for; the seed (PROP_SEED) and iterations (PROP_ITER) are logged so a failure replays.
package meta

import (
	"bytes"
	"math"
	"math/rand"
	"testing"

	"github.com/leanovate/gopter"
	"github.com/leanovate/gopter/prop"

	"dst/internal/proptest"
)

// propParams returns the gopter parameters of one property (see
// proptest: PROP_SEED replays, PROP_ITER multiplies the 300 iterations).
func propParams(t *testing.T) *gopter.TestParameters {
	t.Helper()
	return proptest.Params(t, 300)
}

// genFrom wraps a function of the generator's random source into a gopter.Gen.
// Values are not shrunk; the logged seed replays them.
func genFrom[T any](f func(r *rand.Rand) T) gopter.Gen {
	return func(gp *gopter.GenParameters) *gopter.GenResult {
		return gopter.NewGenResult(f(gp.Rng), gopter.NoShrinker)
	}
}

var layoutRunes = []rune("abcdefghijklmnopqrstuvwxyz0123456789(),;#: KiBMG_-é→µ中")

func randID(r *rand.Rand) ID {
	var id ID
	for i := range id {
		id[i] = byte(r.Intn(256))
	}
	id[6] = id[6]&0x0f | 0x40
	id[8] = id[8]&0x3f | 0x80
	return id
}

func randSuperblock(r *rand.Rand) Superblock {
	regionSize := int64(MinRegionSize) << r.Intn(19)
	maxRaw := min(int64(math.MaxInt64), MaxRegions*regionSize)
	raw := MinRawSize + r.Int63n(1<<(14+r.Intn(48)))
	raw = min(raw, maxRaw)
	a, err := Plan(raw, regionSize)
	if err != nil {
		panic(err)
	}
	if r.Intn(4) == 0 { // a data area shorter than the member
		a.DataSize = 1 + r.Int63n(a.DataSize)
		a.BitmapBytes = bitmapBytesFor(a.Regions())
	}
	count := 1 + r.Intn(MaxMembers)
	mask := Mask(r.Uint64())
	if count < MaxMembers {
		mask &= 1<<uint(count) - 1
	}
	var layout []byte
	for n := 1 + r.Intn(60); n > 0; n-- {
		c := layoutRunes[r.Intn(len(layoutRunes))]
		if len(layout)+len(string(c)) > MaxLayoutBytes {
			break
		}
		layout = append(layout, string(c)...)
	}
	if r.Intn(10) == 0 { // as long as it gets
		for len(layout) < MaxLayoutBytes {
			layout = append(layout, 'x')
		}
	}
	return Superblock{
		Flags:           Flags(r.Intn(2)),
		StorageID:       randID(r),
		MemberID:        randID(r),
		MemberIndex:     r.Intn(count),
		MemberCount:     count,
		Generation:      r.Uint64(),
		InSync:          mask,
		Area:            a,
		Layout:          string(layout),
		CreatedUnixNano: r.Int63() - r.Int63(),
	}
}

func TestPropSuperblockRoundTrip(t *testing.T) {
	props := gopter.NewProperties(propParams(t))
	props.Property("decode(encode(s)) == s and re-encodes to the same bytes", prop.ForAll(
		func(s Superblock) bool {
			b := make([]byte, SuperblockSize)
			if err := s.MarshalTo(b); err != nil {
				t.Logf("MarshalTo: %v", err)
				return false
			}
			got, err := UnmarshalSuperblock(b)
			if err != nil {
				t.Logf("UnmarshalSuperblock: %v", err)
				return false
			}
			again := make([]byte, SuperblockSize)
			return got == s && got.MarshalTo(again) == nil && bytes.Equal(b, again)
		},
		genFrom(randSuperblock)))
	props.Property("Newest picks the higher generation of two slots", prop.ForAll(
		func(s Superblock) bool {
			older, newer := s, s
			if s.Generation == math.MaxUint64 {
				older.Generation--
			} else {
				newer.Generation++
			}
			slots := [2][]byte{make([]byte, SuperblockSize), make([]byte, SuperblockSize)}
			if older.MarshalTo(slots[SlotOffset(older.Generation)/SuperblockSize]) != nil ||
				newer.MarshalTo(slots[SlotOffset(newer.Generation)/SuperblockSize]) != nil {
				return false
			}
			got, slot, err := Newest(slots[0], slots[1])
			return err == nil && got == newer && int64(slot)*SuperblockSize == SlotOffset(newer.Generation)
		},
		genFrom(randSuperblock)))
	props.TestingRun(t)
}

// bitmapCase is a bitmap size and a sequence of Set (r >= 0) and Clear
// (^r) operations, biased towards word and page boundaries.
type bitmapCase struct {
	Regions int
	Ops     []int
}

func randBitmapCase(r *rand.Rand) bitmapCase {
	var c bitmapCase
	switch r.Intn(3) {
	case 0:
		c.Regions = 1 + r.Intn(200)
	case 1:
		c.Regions = RegionsPerPage - 2 + r.Intn(5)
	default:
		c.Regions = 1 + r.Intn(3*RegionsPerPage+100)
	}
	for n := r.Intn(400); n > 0; n-- {
		var reg int
		if r.Intn(2) == 0 {
			edges := []int{0, 63, 64, RegionsPerPage - 1, RegionsPerPage, 2*RegionsPerPage - 1, 2 * RegionsPerPage, c.Regions - 1}
			reg = min(edges[r.Intn(len(edges))], c.Regions-1)
		} else {
			reg = r.Intn(c.Regions)
		}
		if r.Intn(3) == 0 {
			reg = ^reg
		}
		c.Ops = append(c.Ops, reg)
	}
	return c
}

func TestPropBitmap(t *testing.T) {
	props := gopter.NewProperties(propParams(t))
	props.Property("Set/Clear/Test/Count/NextDirty agree with a model; decode(encode(b)) == b", prop.ForAll(
		func(c bitmapCase) bool {
			b := NewBitmap(c.Regions)
			model := make([]bool, c.Regions)
			count := 0
			for _, op := range c.Ops {
				if op >= 0 {
					if b.Set(op) != !model[op] {
						return false
					}
					if !model[op] {
						count++
					}
					model[op] = true
				} else {
					reg := ^op
					if b.Clear(reg) != model[reg] {
						return false
					}
					if model[reg] {
						count--
					}
					model[reg] = false
				}
			}
			if b.Count() != count {
				return false
			}
			next := b.NextDirty(0)
			for reg, dirty := range model {
				if b.Test(reg) != dirty {
					return false
				}
				if dirty {
					if next != reg {
						return false
					}
					next = b.NextDirty(reg + 1)
				}
			}
			if next != -1 {
				return false
			}
			enc := make([]byte, b.Bytes())
			if b.MarshalTo(enc) != nil {
				return false
			}
			d := NewBitmap(c.Regions)
			d.Set(c.Regions - 1) // Unmarshal must replace, not merge
			if err := d.Unmarshal(enc); err != nil {
				t.Logf("Unmarshal: %v", err)
				return false
			}
			again := make([]byte, d.Bytes())
			return d.Count() == b.Count() && d.MarshalTo(again) == nil && bytes.Equal(enc, again)
		},
		genFrom(randBitmapCase)))
	props.TestingRun(t)
}

// rangeCase is a data area and a byte range in it.
type rangeCase struct {
	Area        Area
	Off, Length int64
}

func randRangeCase(r *rand.Rand) rangeCase {
	a := Area{RegionSize: int64(MinRegionSize) << r.Intn(19)}
	a.DataSize = 1 + r.Int63n(a.RegionSize*int64(1+r.Intn(1000)))
	pick := func(hi int64) int64 { // in [0, hi], often at or next to a region boundary
		v := r.Int63n(hi + 1)
		if r.Intn(2) == 0 {
			v = v/a.RegionSize*a.RegionSize + int64(r.Intn(3)) - 1
		}
		return max(0, min(hi, v))
	}
	off := pick(a.DataSize)
	return rangeCase{Area: a, Off: off, Length: pick(a.DataSize - off)}
}

func TestPropRegionsOf(t *testing.T) {
	props := gopter.NewProperties(propParams(t))
	props.Property("RegionsOf covers exactly [off, off+length)", prop.ForAll(
		func(c rangeCase) bool {
			a := c.Area
			first, last := a.RegionsOf(c.Off, c.Length)
			if c.Length == 0 {
				return first == int(c.Off/a.RegionSize) && last == first-1
			}
			if first < 0 || first > last || last >= a.Regions() {
				return false
			}
			fOff, fLen := a.RegionRange(first)
			lOff, lLen := a.RegionRange(last)
			end := c.Off + c.Length
			// The first region holds the first byte, the last one the
			// last byte; regions in between are contiguous.
			return fOff <= c.Off && c.Off < fOff+fLen &&
				lOff <= end-1 && end-1 < lOff+lLen &&
				lOff-fOff == int64(last-first)*a.RegionSize
		},
		genFrom(randRangeCase)))
	props.Property("RegionRange tiles the data area", prop.ForAll(
		func(c rangeCase) bool {
			a := c.Area
			n := a.Regions()
			r := int(c.Off / a.RegionSize)
			if r >= n {
				r = n - 1
			}
			off, length := a.RegionRange(r)
			if length < 1 || length > a.RegionSize || off != int64(r)*a.RegionSize {
				return false
			}
			if r == n-1 {
				return off+length == a.DataSize
			}
			return length == a.RegionSize
		},
		genFrom(randRangeCase)))
	props.TestingRun(t)
}
