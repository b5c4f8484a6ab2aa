package raw

import (
	"bytes"
	"fmt"
	"strings"
)

// Kind says what a sector read back as.
type Kind uint8

const (
	// KindZero: every byte is zero.
	KindZero Kind = iota
	// KindStamp: a whole, valid stamp made for this very sector.
	KindStamp
	// KindMisdirected: bytes of a stamp made for another place: a valid
	// stamp whose recorded offset differs from where it was found, or
	// stamp bytes shifted from where they belong.
	KindMisdirected
	// KindMixed: torn or mixed — bytes of several writes, or of a write and
	// unknown bytes, with the checksum wrong; Parts say which is which.
	KindMixed
	// KindGarbage: nothing that any stamp or zeroes explain.
	KindGarbage
)

var kindNames = [...]string{"zeroes", "stamp", "misdirected", "torn/mixed", "garbage"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// MarshalText makes kinds readable in JSON.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// Part is a byte range of a sector and what it matches.
type Part struct {
	From int `json:"from"` // first byte, relative to the sector
	To   int `json:"to"`   // end (exclusive)
	// Write whose image the bytes match (ID 0 with Unknown false: zeroes).
	Write Write `json:"write"`
	// Image is the device offset whose bytes of Write these are: equal to
	// sector+From when the bytes are where they belong.
	Image   int64 `json:"image"`
	Unknown bool  `json:"unknown,omitempty"`
}

// Misplaced reports whether the part holds a write's bytes meant for
// another place than the sector at offset sector.
func (p Part) Misplaced(sector int64) bool {
	return !p.Unknown && p.Write.ID != 0 && p.Image != sector+int64(p.From)
}

// Decoded is what a sector holds.
type Decoded struct {
	Kind   Kind  `json:"kind"`
	Sector int64 `json:"sector"` // device offset where the sector was found
	// Write, Seed and Recorded come from the first stamp header found in
	// the sector (for KindStamp and KindMisdirected: the stamp); Recorded
	// is the sector offset the stamp was made for.
	Write    Write  `json:"write"`
	Seed     uint64 `json:"seed,omitempty"`
	Recorded int64  `json:"recorded,omitempty"`
	// Intact: the whole sector is one stamp with a correct checksum.
	Intact bool   `json:"intact,omitempty"`
	Parts  []Part `json:"parts,omitempty"`
}

// Decode says what a 512-byte sector found at device offset off holds.
// Bytes are explained by zeroes, by every stamp header found in the
// sector (at any byte position: shifted stamps are found too), and by the
// images of the known writes of the run with the given seed.
func Decode(sector []byte, off int64, seed uint64, known ...Write) Decoded {
	if len(sector) != SectorSize {
		panic(fmt.Sprintf("raw: Decode of %d bytes", len(sector)))
	}
	return decode(sector, 0, SectorSize, off, seed, known, nil)
}

// stampAt is a stamp header found at device position pos.
type stampAt struct {
	pos int64
	h   header
}

// scanStamps finds up to maxHeaders stamp headers wholly inside b, which
// holds the device bytes from bOff.
func scanStamps(b []byte, bOff int64) []stampAt {
	var out []stampAt
	for p := 0; p+headerSize <= len(b) && len(out) < maxHeaders; p++ {
		i := bytes.Index(b[p:], magic[:])
		if i < 0 || p+i+headerSize > len(b) {
			break
		}
		p += i
		out = append(out, stampAt{pos: bOff + int64(p), h: parseHeader(b[p:])})
	}
	return out
}

// source explains sector bytes: byte q holds write w's byte for device
// position base+q.
type source struct {
	w    Write
	seed uint64
	base int64
}

const maxHeaders = 4

// decode explains b[lo:hi] of the sector at device offset off; b holds the
// sector (len 512), bytes outside [lo, hi) are unknown. Stamps found near
// the sector explain its bytes too.
func decode(b []byte, lo, hi int, off int64, seed uint64, known []Write, near []stampAt) Decoded {
	d := Decoded{Sector: off}
	if allZero(b[lo:hi]) {
		d.Kind = KindZero
		d.Parts = []Part{{From: lo, To: hi, Image: off + int64(lo)}}
		return d
	}
	var srcs []source
	add := func(s source) {
		for _, o := range srcs {
			if o == s {
				return
			}
		}
		srcs = append(srcs, s)
	}
	for _, w := range known {
		if w.ID != 0 {
			add(source{w: w, seed: seed, base: off})
		}
	}
	var first *header
	own := scanStamps(b[lo:hi], off+int64(lo))
	if len(own) > 0 {
		first = &own[0].h
	}
	for _, st := range append(own, near...) {
		// Sector byte q is at device position off+q, which holds the
		// stamp's image position st.h.sector + (off+q - st.pos).
		if base := st.h.sector + off - st.pos; base+int64(lo) >= 0 && st.h.write.ID != 0 {
			add(source{w: st.h.write, seed: st.h.seed, base: base})
		}
	}
	if first != nil {
		d.Write, d.Seed, d.Recorded = first.write, first.seed, first.sector
	}
	d.Parts = partition(b, lo, hi, srcs)

	whole := lo == 0 && hi == SectorSize
	if whole && first != nil && bytes.Equal(b[:8], magic[:]) && first.crc == sectorCRC((*[SectorSize]byte)(b)) {
		d.Kind, d.Intact = KindStamp, true
		if first.sector != off {
			d.Kind = KindMisdirected
		}
		return d
	}
	d.Kind = KindGarbage
	for _, p := range d.Parts {
		if p.Misplaced(off) {
			d.Kind = KindMisdirected
			d.Write = p.Write
			return d
		}
		if !p.Unknown && p.Write.ID != 0 {
			d.Kind = KindMixed
		}
	}
	return d
}

// partition splits b[lo:hi] greedily into the longest runs matching one
// source. A write explains only bytes inside its target range; runs
// shorter than minRun count only if they touch an edge of that range, so
// stray coincidences stay unknown.
func partition(b []byte, lo, hi int, srcs []source) []Part {
	const minRun = 8
	runs := make([][SectorSize + 1]int16, len(srcs)+1) // last: zeroes
	var exp [SectorSize]byte
	for i, s := range srcs {
		clear(exp[:])
		Fill(exp[lo:hi], s.base+int64(lo), s.seed, s.w)
		for q := hi - 1; q >= lo; q-- {
			if b[q] == exp[q] {
				runs[i][q] = runs[i][q+1] + 1
			}
		}
	}
	z := len(srcs)
	for q := hi - 1; q >= lo; q-- {
		if b[q] == 0 {
			runs[z][q] = runs[z][q+1] + 1
		}
	}
	usable := func(i, q int) int {
		r := int(runs[i][q])
		if i == z {
			if r < minRun {
				return 0
			}
			return r
		}
		w, pos := srcs[i].w, srcs[i].base+int64(q)
		end := w.Off + w.Len
		if pos < w.Off || pos >= end {
			return 0
		}
		r = int(min(int64(r), end-pos))
		if r < minRun && pos != w.Off && pos+int64(r) != end {
			return 0
		}
		return r
	}
	var parts []Part
	for q := lo; q < hi; {
		best, bestRun := -1, 0
		for i := range runs {
			if r := usable(i, q); r > bestRun {
				best, bestRun = i, r
			}
		}
		if best < 0 {
			if n := len(parts); n > 0 && parts[n-1].Unknown && parts[n-1].To == q {
				parts[n-1].To++
			} else {
				parts = append(parts, Part{From: q, To: q + 1, Unknown: true})
			}
			q++
			continue
		}
		p := Part{From: q, To: q + bestRun}
		if best < z {
			p.Write = srcs[best].w
			p.Image = srcs[best].base + int64(q)
		} else {
			p.Image = -1
		}
		parts = append(parts, p)
		q += bestRun
	}
	return parts
}

func allZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroes))
		if !bytes.Equal(b[:n], zeroes[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

var zeroes [64 << 10]byte

// Displacement reports, for a sector wholly explained by one write's bytes
// (checksum aside), how far from where they belong they are: image
// position minus device position (0: in place; a misdirected intact stamp
// gives Recorded - Sector).
func (d Decoded) Displacement() (int64, bool) {
	if len(d.Parts) != 1 || d.Parts[0].Unknown || d.Parts[0].Write.ID == 0 {
		return 0, false
	}
	p := d.Parts[0]
	return p.Image - (d.Sector + int64(p.From)), true
}

// String describes what the sector holds in one line.
func (d Decoded) String() string {
	switch d.Kind {
	case KindZero:
		return "holds zeroes"
	case KindStamp:
		return "holds " + d.Write.String()
	case KindMisdirected:
		if d.Intact {
			return fmt.Sprintf("holds %v, stamped for sector %#x (misdirected)", d.Write, d.Recorded)
		}
		if by, ok := d.Displacement(); ok {
			return fmt.Sprintf("holds bytes of %v meant for %#x (misdirected by %+#x)", d.Write, d.Parts[0].Image, -by)
		}
		return fmt.Sprintf("holds bytes of %v meant for another place (misdirected): %s", d.Write, d.partsString())
	case KindMixed:
		return "torn/mixed: " + d.partsString()
	default:
		return "garbage: " + d.partsString()
	}
}

// partsString lists the first few parts: "+0x0..+0xbc write 5 aimed at
// 0x1000+4096; +0xbc..+0xbd unknown; …".
func (d Decoded) partsString() string {
	const maxParts = 6
	var sb strings.Builder
	for i, p := range d.Parts {
		if i == maxParts {
			fmt.Fprintf(&sb, "; … %d more parts", len(d.Parts)-maxParts)
			break
		}
		if i > 0 {
			sb.WriteString("; ")
		}
		fmt.Fprintf(&sb, "+%#x..+%#x ", p.From, p.To)
		switch {
		case p.Unknown:
			sb.WriteString("unknown bytes")
		case p.Write.ID == 0:
			sb.WriteString("zeroes")
		case p.Misplaced(d.Sector):
			fmt.Fprintf(&sb, "%v (its bytes for %#x)", p.Write, p.Image)
		default:
			sb.WriteString(p.Write.String())
		}
	}
	return sb.String()
}
