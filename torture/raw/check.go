package raw

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
)

// Bad is a run of bytes that hold none of the writes they may hold, with
// everything needed to explain it.
type Bad struct {
	Off     int64 `json:"off"`     // device offset of the first wrong byte
	Len     int64 `json:"len"`     // span from the first to the last wrong byte
	Wrong   int64 `json:"wrong"`   // wrong bytes in the span
	Sector  int64 `json:"sector"`  // first sector involved
	Sectors int64 `json:"sectors"` // sectors involved
	// Expected are the writes the bytes may hold (ID 0: zeroes), newest
	// first.
	Expected []Write `json:"expected"`
	// Found is what the first sector holds.
	Found Decoded `json:"found"`
	// FoundInfo is the ledger's knowledge of the write Found names, when
	// it is a write of this run.
	FoundInfo *WriteInfo `json:"found_info,omitempty"`
	// Where is the caller's Locate answer for Off.
	Where string `json:"where,omitempty"`
	// Diagnosis says it all in one line.
	Diagnosis string `json:"diagnosis"`
}

func (b Bad) String() string { return b.Diagnosis }

// badRun is a byte range that matched none of cands.
type badRun struct {
	off, end int64
	cands    []Write
}

// matcher checks read data against expectations.
type matcher struct {
	seed uint64
	imgs [][SectorSize]byte
}

// match checks data, read at device offset off, against spans that cover
// exactly [off, off+len(data)). It appends what each byte was found to
// hold to settle and the bytes that hold nothing allowed to bad.
func (m *matcher) match(data []byte, off int64, spans []span, bad *[]badRun, settle *[]settleRun) {
	for _, s := range spans {
		sub := data[s.off-off : s.end-off]
		if len(s.cands) == 1 && s.cands[0].ID == 0 && allZero(sub) {
			addSettle(settle, s.off, s.end, 0)
			continue
		}
		if cap(m.imgs) < len(s.cands) {
			m.imgs = make([][SectorSize]byte, len(s.cands))
		}
		imgs := m.imgs[:len(s.cands)]
		for x := s.off; x < s.end; {
			base := x &^ (SectorSize - 1)
			pe := min(base+SectorSize, s.end)
			piece := data[x-off : pe-off]
			whole := -1
			for i, w := range s.cands {
				Image(&imgs[i], m.seed, w, base)
				if whole < 0 && bytes.Equal(piece, imgs[i][x-base:pe-base]) {
					whole = i
				}
			}
			if whole >= 0 {
				addSettle(settle, x, pe, s.cands[whole].ID)
				x = pe
				continue
			}
			prev := 0
			for q := x; q < pe; q++ {
				got := data[q-off]
				k := -1
				if imgs[prev][q-base] == got {
					k = prev
				} else {
					for i := range imgs {
						if imgs[i][q-base] == got {
							k = i
							break
						}
					}
				}
				if k < 0 {
					addBad(bad, q, s.cands)
					continue
				}
				prev = k
				addSettle(settle, q, q+1, s.cands[k].ID)
			}
			x = pe
		}
	}
}

func addSettle(runs *[]settleRun, off, end int64, id uint64) {
	if n := len(*runs); n > 0 && (*runs)[n-1].end == off && (*runs)[n-1].id == id {
		(*runs)[n-1].end = end
		return
	}
	*runs = append(*runs, settleRun{off: off, end: end, id: id})
}

func addBad(runs *[]badRun, q int64, cands []Write) {
	if n := len(*runs); n > 0 && (*runs)[n-1].end == q && sameIDs((*runs)[n-1].cands, cands) {
		(*runs)[n-1].end++
		return
	}
	*runs = append(*runs, badRun{off: q, end: q + 1, cands: cands})
}

func sameIDs(a, b []Write) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].ID != b[i].ID {
			return false
		}
	}
	return true
}

// explain turns bad runs found in data (read at device offset off) into
// Bads, one per sector, merging neighbouring sectors that tell the same
// story, and appends them to out up to maxBad; it returns how many it
// made.
func (l *Ledger) explain(out *[]Bad, maxBad int, runs []badRun, data []byte, off int64, locate func(int64) string) int {
	made := 0
	for i := 0; i < len(runs); {
		// Gather the runs of one sector.
		base := runs[i].off &^ (SectorSize - 1)
		if runs[i].end > base+SectorSize {
			head := runs[i]
			head.end = base + SectorSize
			runs[i].off = head.end
			runs = slices.Insert(runs, i, head)
		}
		first, end, n := runs[i].off, runs[i].end, runs[i].end-runs[i].off
		cands := runs[i].cands
		j := i + 1
		for ; j < len(runs) && runs[j].off < base+SectorSize; j++ {
			if runs[j].end > base+SectorSize {
				runs = slices.Insert(runs, j+1, badRun{off: base + SectorSize, end: runs[j].end, cands: runs[j].cands})
				runs[j].end = base + SectorSize
			}
			end, n = runs[j].end, n+runs[j].end-runs[j].off
		}
		i = j
		if l.addBad(out, maxBad, data, off, base, first, end, n, cands, locate) {
			made++
		}
	}
	return made
}

// addBad explains the n wrong bytes within [first, end) of the sector at
// base, extending the last Bad when it tells the same story; it reports
// whether it made a new Bad.
func (l *Ledger) addBad(out *[]Bad, maxBad int, data []byte, off, base, first, end, n int64, cands []Write, locate func(int64) string) bool {
	var sec [SectorSize]byte
	dend := off + int64(len(data))
	lo, hi := max(base, off), min(base+SectorSize, dend)
	copy(sec[lo-base:hi-base], data[lo-off:hi-off])
	// Stamps in the neighbouring sectors explain shifted bytes.
	nlo, nhi := max(base-SectorSize, off), min(base+2*SectorSize, dend)
	d := decode(sec[:], int(lo-base), int(hi-base), base, l.seed, cands, scanStamps(data[nlo-off:nhi-off], nlo))
	b := Bad{Off: first, Len: end - first, Wrong: n, Sector: base, Sectors: 1, Expected: cands, Found: d}
	if k := len(*out); k > 0 && sameStory(&(*out)[k-1], &b) {
		p := &(*out)[k-1]
		p.Sectors++
		p.Len = end - p.Off
		p.Wrong += n
		p.Diagnosis = l.diagnose(p)
		return false
	}
	if len(*out) >= maxBad {
		return true
	}
	if d.Write.ID != 0 && d.Seed == l.seed {
		if info, ok := l.Write(d.Write.ID); ok && info.Write == d.Write {
			b.FoundInfo = &info
		}
	}
	if locate != nil {
		b.Where = locate(first)
	}
	b.Diagnosis = l.diagnose(&b)
	*out = append(*out, b)
	return true
}

// sameStory: b is the sector after a's last and says the same.
func sameStory(a, b *Bad) bool {
	if a.Sector+a.Sectors*SectorSize != b.Sector || a.Found.Kind != b.Found.Kind ||
		a.Found.Write.ID != b.Found.Write.ID || !sameIDs(a.Expected, b.Expected) {
		return false
	}
	// Torn sectors and garbage are explained one sector at a time;
	// misdirected ones merge when displaced by the same distance.
	switch a.Found.Kind {
	case KindStamp, KindZero:
		return true
	case KindMisdirected:
		da, oka := a.Found.Displacement()
		db, okb := b.Found.Displacement()
		return oka && okb && da == db
	}
	return false
}

// diagnose writes the one-line diagnosis of b.
func (l *Ledger) diagnose(b *Bad) string {
	var sb strings.Builder
	if b.Sectors > 1 {
		fmt.Fprintf(&sb, "sectors %#x..%#x (%d)", b.Sector, b.Sector+(b.Sectors-1)*SectorSize, b.Sectors)
	} else {
		fmt.Fprintf(&sb, "sector %#x", b.Sector)
	}
	if b.Where != "" {
		fmt.Fprintf(&sb, " (%s)", b.Where)
	}
	fmt.Fprintf(&sb, ": bytes %#x+%d", b.Off, b.Len)
	if b.Wrong != b.Len {
		fmt.Fprintf(&sb, " (%d wrong)", b.Wrong)
	}
	fmt.Fprintf(&sb, ": %s", b.Found)
	d := b.Found
	switch {
	case d.Write.ID != 0 && d.Seed != l.seed && d.Seed != 0:
		fmt.Fprintf(&sb, " (from another run, seed %d)", d.Seed)
	case b.FoundInfo != nil && d.Kind == KindStamp:
		fmt.Fprintf(&sb, " (stale: %s", b.FoundInfo.State)
		if b.FoundInfo.Durable {
			sb.WriteString(", durable")
		}
		sb.WriteString(", since overwritten)")
	case d.Write.ID != 0 && b.FoundInfo == nil && d.Seed == l.seed && (d.Kind == KindStamp || d.Kind == KindMisdirected):
		sb.WriteString(" (a write this run never issued)")
	}
	sb.WriteString("; expected ")
	for i, w := range b.Expected {
		if i > 0 {
			sb.WriteString(" or ")
		}
		sb.WriteString(w.String())
	}
	return sb.String()
}
