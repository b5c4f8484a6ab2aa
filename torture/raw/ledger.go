package raw

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
)

// Mode is how strict a check is.
type Mode uint8

const (
	// Strict: no data-loss event happened. Each byte must hold the newest
	// acknowledged write there, or a write that overlapped it in time, or
	// a write still in flight or failed over it.
	Strict Mode = iota
	// AfterLoss: a loss event happened (the engine was killed, say). Each
	// byte may hold its durable write or any write issued over it since,
	// never anything older, never anything never written there.
	AfterLoss
)

func (m Mode) String() string {
	if m == AfterLoss {
		return "after-loss"
	}
	return "strict"
}

// MarshalText makes modes readable in JSON.
func (m Mode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

type writeState uint8

const (
	stateInFlight writeState = iota
	stateAcked
	stateFailed
)

var stateNames = [...]string{"in flight", "acknowledged", "failed"}

func (s writeState) String() string { return stateNames[s] }

// record is the ledger's knowledge of one write.
type record struct {
	w          Write
	fua        bool
	state      writeState
	durable    bool
	begin, end uint64 // logical clock at Begin and End
	err        string
}

// zeroRecord stands for the initial zeroes: acknowledged and durable
// before anything began.
var zeroRecord = record{state: stateAcked, durable: true}

// seg is a byte range [off, end) whose bytes all have the same
// expectations.
type seg struct {
	off, end int64
	// cur: what the bytes may hold now if no loss event happened; loss:
	// what they may hold after a loss event. Both sorted ascending, cur ⊆
	// loss.
	cur, loss []uint64
	// durable is the newest write known durable here and durableBegin its
	// Begin time; loss holds nothing that ended before durableBegin.
	durable      uint64
	durableBegin uint64
}

func (s *seg) equal(o *seg) bool {
	return s.durable == o.durable && s.durableBegin == o.durableBegin &&
		slices.Equal(s.cur, o.cur) && slices.Equal(s.loss, o.loss)
}

// Ledger knows what every byte of the device may read back as. It is an
// interval map cut into fixed buckets (so an update touches a few short
// slices whatever the device size) whose ranges hold candidate write ids.
// Its methods are safe for concurrent use; the workload calls Begin/End
// around every write and FlushBegin/FlushEnd around every flush. A Ledger
// lives across several Run calls.
type Ledger struct {
	mu        sync.Mutex
	seed      uint64
	size      int64
	bucket    int64
	buckets   [][]seg
	recs      []record // recs[id-1]
	clock     uint64
	unflushed []uint64 // acknowledged, not FUA, not yet made durable
	inflight  int
	losses    int
}

// NewLedger starts the ledger of a run with the given seed over a device
// of size bytes that holds zeroes (or will be checked AfterLoss-free only
// after being written: unwritten bytes are expected to be zero).
func NewLedger(seed uint64, size int64) *Ledger {
	// Buckets of at least 64 KiB, at most 16384 of them.
	b := max(int64(64<<10), (size/16384+(64<<10)-1)/(64<<10)*(64<<10))
	return newLedger(seed, size, b)
}

func newLedger(seed uint64, size, bucket int64) *Ledger {
	if size <= 0 || bucket <= 0 {
		panic(fmt.Sprintf("raw: ledger of size %d, bucket %d", size, bucket))
	}
	n := (size + bucket - 1) / bucket
	l := &Ledger{seed: seed, size: size, bucket: bucket, buckets: make([][]seg, n)}
	for i := range l.buckets {
		off := int64(i) * bucket
		l.buckets[i] = []seg{{off: off, end: min(off+bucket, size), cur: []uint64{0}, loss: []uint64{0}}}
	}
	return l
}

// Seed is the run's seed, stamped into every sector.
func (l *Ledger) Seed() uint64 { return l.seed }

// Size is the device size in bytes.
func (l *Ledger) Size() int64 { return l.size }

func (l *Ledger) rec(id uint64) *record {
	if id == 0 {
		return &zeroRecord
	}
	return &l.recs[id-1]
}

// overwritten reports whether write id is certainly older than a write
// that began at clock begin: it ended (acknowledged or failed) before.
func (l *Ledger) overwritten(id, begin uint64) bool {
	r := l.rec(id)
	return r.state != stateInFlight && r.end < begin
}

// apply calls fn for every segment of [off, end), splitting segments at
// off and end, and merges equal neighbours afterwards.
func (l *Ledger) apply(off, end int64, fn func(*seg)) {
	for bi := off / l.bucket; bi*l.bucket < end; bi++ {
		b := l.buckets[bi]
		lo, hi := max(off, bi*l.bucket), min(end, (bi+1)*l.bucket, l.size)
		b = split(b, lo)
		b = split(b, hi)
		i := sort.Search(len(b), func(i int) bool { return b[i].off >= lo })
		j := i
		for ; j < len(b) && b[j].end <= hi; j++ {
			fn(&b[j])
		}
		l.buckets[bi] = coalesce(b, max(i-1, 0), min(j+1, len(b)))
	}
}

// split makes x a segment boundary.
func split(b []seg, x int64) []seg {
	i := sort.Search(len(b), func(i int) bool { return b[i].end > x })
	if i == len(b) || b[i].off >= x {
		return b
	}
	right := b[i]
	right.off = x
	right.cur, right.loss = slices.Clone(right.cur), slices.Clone(right.loss)
	b[i].end = x
	return slices.Insert(b, i+1, right)
}

// coalesce merges equal neighbours among b[i:j].
func coalesce(b []seg, i, j int) []seg {
	for k := i; k+1 < j && k+1 < len(b); {
		if b[k].end == b[k+1].off && b[k].equal(&b[k+1]) {
			b[k].end = b[k+1].end
			b = slices.Delete(b, k+1, k+2)
			j--
			continue
		}
		k++
	}
	return b
}

func insertID(s []uint64, id uint64) []uint64 {
	i, found := slices.BinarySearch(s, id)
	if found {
		return s
	}
	return slices.Insert(s, i, id)
}

// Begin records that a write of n bytes at off is issued and returns its
// id (ids are 1, 2, 3, … in Begin order). Until End the write may land at
// any time, in part.
func (l *Ledger) Begin(off, n int64, fua bool) uint64 {
	if off < 0 || n <= 0 || off+n > l.size {
		panic(fmt.Sprintf("raw: write %#x+%d outside device of %d bytes", off, n, l.size))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.clock++
	id := uint64(len(l.recs) + 1)
	l.recs = append(l.recs, record{w: Write{ID: id, Off: off, Len: n}, fua: fua, begin: l.clock})
	l.inflight++
	l.apply(off, off+n, func(s *seg) {
		s.cur = insertID(s.cur, id)
		s.loss = insertID(s.loss, id)
	})
	return id
}

// End records the outcome of write id. A failed write stays a candidate
// (it may have landed, in part) until a write issued after it is
// acknowledged over it. An acknowledged write replaces every candidate that
// ended before it began; a FUA write is durable at once.
func (l *Ledger) End(id uint64, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if id == 0 || id > uint64(len(l.recs)) || l.recs[id-1].state != stateInFlight {
		panic(fmt.Sprintf("raw: End of write %d that is not in flight", id))
	}
	r := &l.recs[id-1]
	l.clock++
	r.end = l.clock
	l.inflight--
	if err != nil {
		r.state, r.err = stateFailed, err.Error()
		return
	}
	r.state = stateAcked
	l.apply(r.w.Off, r.w.Off+r.w.Len, func(s *seg) {
		s.cur = slices.DeleteFunc(s.cur, func(x uint64) bool { return x != id && l.overwritten(x, r.begin) })
	})
	if r.fua {
		l.makeDurable(id)
	} else {
		l.unflushed = append(l.unflushed, id)
	}
}

// makeDurable records that write id reached stable storage.
func (l *Ledger) makeDurable(id uint64) {
	r := &l.recs[id-1]
	r.durable = true
	l.apply(r.w.Off, r.w.Off+r.w.Len, func(s *seg) {
		if r.begin <= s.durableBegin {
			return
		}
		s.durable, s.durableBegin = id, r.begin
		s.loss = slices.DeleteFunc(s.loss, func(x uint64) bool { return x != id && l.overwritten(x, r.begin) })
	})
}

// FlushToken is a flush in progress.
type FlushToken struct{ clock uint64 }

// FlushBegin records that a flush is issued.
func (l *Ledger) FlushBegin() FlushToken {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.clock++
	return FlushToken{clock: l.clock}
}

// FlushEnd records the outcome of a flush: on success every write
// acknowledged before its FlushBegin is durable.
func (l *Ledger) FlushEnd(t FlushToken, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.clock++
	if err != nil {
		return
	}
	keep := l.unflushed[:0]
	for _, id := range l.unflushed {
		if l.recs[id-1].end < t.clock {
			l.makeDurable(id)
		} else {
			keep = append(keep, id)
		}
	}
	l.unflushed = keep
}

// ErrInFlight is returned by Settle while writes are in flight.
var ErrInFlight = errors.New("raw: writes in flight")

// Loss records a data-loss event (the engine was killed, a node's
// volatile cache lost): from now on every byte may hold its durable write
// or anything issued over it since, and writes acknowledged but not yet
// durable can no longer be made durable by a later flush. Call it when the
// event happens — before any later flush completes; writes may be in
// flight (those acknowledged afterwards count as acknowledged by the
// surviving system).
func (l *Ledger) Loss() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, b := range l.buckets {
		for i := range b {
			b[i].cur = slices.Clone(b[i].loss)
		}
	}
	for bi := range l.buckets {
		l.buckets[bi] = coalesce(l.buckets[bi], 0, len(l.buckets[bi]))
	}
	l.unflushed = nil
	l.losses++
}

// settleRun says that [off, end) was read back as write id.
type settleRun struct {
	off, end int64
	id       uint64
}

// settle collapses the current expectations to what was read; the
// post-loss expectations keep what they had (what was read may not be
// durable yet).
func (l *Ledger) settle(runs []settleRun) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.inflight > 0 {
		return fmt.Errorf("settle: %d %w", l.inflight, ErrInFlight)
	}
	for _, r := range runs {
		l.apply(r.off, r.end, func(s *seg) {
			s.cur = []uint64{r.id}
			s.loss = insertID(s.loss, r.id)
		})
	}
	return nil
}

// span is a byte range and the writes its bytes may hold, newest first.
type span struct {
	off, end int64
	cands    []Write
}

// view lists the expectations of [off, end) under mode. Caller holds mu.
func (l *Ledger) view(off, end int64, mode Mode) []span {
	var out []span
	for bi := off / l.bucket; bi*l.bucket < end; bi++ {
		for _, s := range l.buckets[bi] {
			if s.end <= off || s.off >= end {
				continue
			}
			ids := s.cur
			if mode == AfterLoss {
				ids = s.loss
			}
			c := make([]Write, len(ids))
			for i, id := range ids {
				c[len(ids)-1-i] = l.rec(id).w
			}
			out = append(out, span{off: max(s.off, off), end: min(s.end, end), cands: c})
		}
	}
	return out
}

// Expect returns the writes the byte at off may hold under mode, newest
// first (ID 0: zeroes).
func (l *Ledger) Expect(off int64, mode Mode) []Write {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.view(off, off+1, mode)[0].cands
}

// Write returns what the ledger knows of write id: its target, whether it
// was acknowledged, failed, is durable.
func (l *Ledger) Write(id uint64) (WriteInfo, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if id == 0 || id > uint64(len(l.recs)) {
		return WriteInfo{}, false
	}
	return l.recs[id-1].info(), true
}

// WriteInfo describes one write for reports.
type WriteInfo struct {
	Write
	FUA     bool   `json:"fua,omitempty"`
	State   string `json:"state"`
	Durable bool   `json:"durable,omitempty"`
	Err     string `json:"err,omitempty"`
}

func (r *record) info() WriteInfo {
	return WriteInfo{Write: r.w, FUA: r.fua, State: r.state.String(), Durable: r.durable, Err: r.err}
}

// readToken is a read in progress.
type readToken struct {
	off, end int64
	next     uint64 // first write id issued after the read began
	view     []span
}

// readBegin snapshots what [off, end) may hold as a read of it begins.
func (l *Ledger) readBegin(off, end int64, mode Mode) readToken {
	l.mu.Lock()
	defer l.mu.Unlock()
	return readToken{off: off, end: end, next: uint64(len(l.recs) + 1), view: l.view(off, end, mode)}
}

// readEnd returns what the read may have seen: anything expected when it
// began or when it ended, or written by a write issued meanwhile.
func (l *Ledger) readEnd(t readToken, mode Mode) []span {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.view(t.off, t.end, mode)
	var extra []Write
	for id := t.next; id <= uint64(len(l.recs)); id++ {
		w := l.recs[id-1].w
		if w.Off < t.end && w.Off+w.Len > t.off {
			extra = append(extra, w)
		}
	}
	return mergeSpans(t.off, t.end, t.view, now, extra)
}

// mergeSpans unions two views of [off, end) and extra writes over it.
func mergeSpans(off, end int64, a, b []span, extra []Write) []span {
	pts := []int64{off, end}
	for _, s := range a {
		pts = append(pts, s.off, s.end)
	}
	for _, s := range b {
		pts = append(pts, s.off, s.end)
	}
	for _, w := range extra {
		pts = append(pts, max(w.Off, off), min(w.Off+w.Len, end))
	}
	slices.Sort(pts)
	pts = slices.Compact(pts)
	out := make([]span, 0, len(pts)-1)
	ia, ib := 0, 0
	for k := 0; k+1 < len(pts); k++ {
		lo, hi := pts[k], pts[k+1]
		var c []Write
		addW := func(w Write) {
			for _, o := range c {
				if o.ID == w.ID {
					return
				}
			}
			c = append(c, w)
		}
		for _, w := range extra {
			if w.Off <= lo && w.Off+w.Len >= hi {
				addW(w)
			}
		}
		for ia < len(a) && a[ia].end <= lo {
			ia++
		}
		if ia < len(a) && a[ia].off <= lo {
			for _, w := range a[ia].cands {
				addW(w)
			}
		}
		for ib < len(b) && b[ib].end <= lo {
			ib++
		}
		if ib < len(b) && b[ib].off <= lo {
			for _, w := range b[ib].cands {
				addW(w)
			}
		}
		slices.SortFunc(c, func(x, y Write) int {
			if x.ID > y.ID {
				return -1
			}
			return 1
		})
		out = append(out, span{off: lo, end: hi, cands: c})
	}
	return out
}
