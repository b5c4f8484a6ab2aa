// Ledger tests: a gopter property runs random tapes of begin, end (ok or
// failed, FUA or not), flush, loss and settle against a per-byte reference
// model and requires identical expectations for every byte in both modes,
// with the interval map kept minimal; unit cases pin down the durability
// rules (flush covers only writes acknowledged before it began).
package raw

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/leanovate/gopter"
	"github.com/leanovate/gopter/gen"
	"github.com/leanovate/gopter/prop"
	"github.com/stretchr/testify/require"

	"dst/internal/proptest"
)

// model is the per-byte reference of the ledger's rules.
type model struct {
	cur, loss [][]uint64
	durBegin  []uint64
	begin     map[uint64]uint64
	end       map[uint64]uint64 // absent: in flight
	fua       map[uint64]bool
	flushable []uint64 // acknowledged, not FUA, not durable, not lost
	clock     uint64
	next      uint64
}

func newModel(size int) *model {
	m := &model{cur: make([][]uint64, size), loss: make([][]uint64, size), durBegin: make([]uint64, size),
		begin: map[uint64]uint64{0: 0}, end: map[uint64]uint64{0: 0}, fua: map[uint64]bool{}, next: 1}
	for i := range m.cur {
		m.cur[i], m.loss[i] = []uint64{0}, []uint64{0}
	}
	return m
}

func (m *model) older(x, than uint64) bool {
	e, ended := m.end[x]
	return ended && e < m.begin[than]
}

func (m *model) keep(set []uint64, id uint64) []uint64 {
	var out []uint64
	for _, x := range set {
		if x == id || !m.older(x, id) {
			out = append(out, x)
		}
	}
	return out
}

func addSorted(s []uint64, id uint64) []uint64 {
	if !slices.Contains(s, id) {
		s = append(slices.Clone(s), id)
		slices.Sort(s)
	}
	return s
}

func (m *model) durable(id uint64, w Write) {
	for b := w.Off; b < w.Off+w.Len; b++ {
		if m.begin[id] > m.durBegin[b] {
			m.durBegin[b] = m.begin[id]
			m.loss[b] = m.keep(m.loss[b], id)
		}
	}
}

func idsOf(ws []Write) []uint64 {
	out := make([]uint64, len(ws))
	for i, w := range ws {
		out[len(ws)-1-i] = w.ID
	}
	return out
}

// runTape drives a ledger and the model with one tape and compares them.
func runTape(tape []uint32) error {
	const size, bucket, maxLen = 3000, 512, 1200
	l := newLedger(7, size, bucket)
	m := newModel(size)
	writes := map[uint64]Write{}
	var inflight []uint64
	var flushes []FlushToken
	var flushClock []uint64
	for _, v := range tape {
		switch v % 8 {
		case 0, 1, 2:
			off := int64(v>>3) % size
			n := min(1+int64(v>>13)%maxLen, size-off)
			fua := (v>>24)&7 == 0
			id := l.Begin(off, n, fua)
			if id != m.next {
				return fmt.Errorf("id %d, want %d", id, m.next)
			}
			m.next++
			m.clock++
			m.begin[id], m.fua[id] = m.clock, fua
			writes[id] = Write{ID: id, Off: off, Len: n}
			for b := off; b < off+n; b++ {
				m.cur[b], m.loss[b] = addSorted(m.cur[b], id), addSorted(m.loss[b], id)
			}
			inflight = append(inflight, id)
		case 3, 4:
			if len(inflight) == 0 {
				continue
			}
			i := int(v>>3) % len(inflight)
			id := inflight[i]
			inflight = slices.Delete(inflight, i, i+1)
			var err error
			if (v>>8)&3 == 0 {
				err = errors.New("planted")
			}
			l.End(id, err)
			m.clock++
			m.end[id] = m.clock
			if err != nil {
				continue
			}
			w := writes[id]
			for b := w.Off; b < w.Off+w.Len; b++ {
				m.cur[b] = m.keep(m.cur[b], id)
			}
			if m.fua[id] {
				m.durable(id, w)
			} else {
				m.flushable = append(m.flushable, id)
			}
		case 5:
			flushes = append(flushes, l.FlushBegin())
			m.clock++
			flushClock = append(flushClock, m.clock)
		case 6:
			if len(flushes) == 0 {
				continue
			}
			i := int(v>>3) % len(flushes)
			tok, at := flushes[i], flushClock[i]
			flushes, flushClock = slices.Delete(flushes, i, i+1), slices.Delete(flushClock, i, i+1)
			ok := (v>>8)&3 != 0
			var err error
			if !ok {
				err = errors.New("planted")
			}
			l.FlushEnd(tok, err)
			m.clock++
			if !ok {
				continue
			}
			var keep []uint64
			for _, id := range m.flushable {
				if m.end[id] < at {
					m.durable(id, writes[id])
				} else {
					keep = append(keep, id)
				}
			}
			m.flushable = keep
		case 7:
			if (v>>3)&1 == 0 {
				l.Loss()
				for b := range m.cur {
					m.cur[b] = slices.Clone(m.loss[b])
				}
				m.flushable = nil
				continue
			}
			if len(inflight) > 0 {
				continue
			}
			off := int64(v>>4) % size
			n := min(1+int64(v>>14)%maxLen, size-off)
			id := m.cur[off][int(v>>28)%len(m.cur[off])]
			if err := l.settle([]settleRun{{off: off, end: off + n, id: id}}); err != nil {
				return err
			}
			for b := off; b < off+n; b++ {
				m.cur[b], m.loss[b] = []uint64{id}, addSorted(m.loss[b], id)
			}
		}
	}
	runs := 0
	for b := range size {
		if got := idsOf(l.Expect(int64(b), Strict)); !slices.Equal(got, m.cur[b]) {
			return fmt.Errorf("byte %d strict: ledger %v, model %v", b, got, m.cur[b])
		}
		if got := idsOf(l.Expect(int64(b), AfterLoss)); !slices.Equal(got, m.loss[b]) {
			return fmt.Errorf("byte %d after loss: ledger %v, model %v", b, got, m.loss[b])
		}
		if b%bucket == 0 || !slices.Equal(m.cur[b], m.cur[b-1]) || !slices.Equal(m.loss[b], m.loss[b-1]) || m.durBegin[b] != m.durBegin[b-1] {
			runs++
		}
	}
	if segs := l.Dump(0).Segments; segs != runs {
		return fmt.Errorf("ledger has %d segments, the model %d distinct runs", segs, runs)
	}
	return nil
}

func TestLedgerMatchesModel(t *testing.T) {
	props := gopter.NewProperties(proptest.Params(t, 100))
	props.Property("ledger == per-byte model", prop.ForAll(
		func(tape []uint32) string {
			if err := runTape(tape); err != nil {
				return err.Error()
			}
			return ""
		},
		gen.SliceOfN(120, gen.UInt32()),
	))
	props.TestingRun(t)
}

func TestFlushCoversOnlyEarlierAcks(t *testing.T) {
	l := newLedger(1, 4096, 1024)
	a := l.Begin(0, 1000, false)
	l.End(a, nil)
	tok := l.FlushBegin()
	b := l.Begin(500, 1000, false) // acknowledged after the flush began
	l.End(b, nil)
	l.FlushEnd(tok, nil)
	require.Equal(t, []Write{{ID: a, Off: 0, Len: 1000}}, l.Expect(0, AfterLoss))
	require.Equal(t, []Write{{ID: b, Off: 500, Len: 1000}, {ID: a, Off: 0, Len: 1000}}, l.Expect(600, AfterLoss),
		"b is not durable: after a loss byte 600 may be a or b")
	require.Equal(t, []Write{{ID: b, Off: 500, Len: 1000}}, l.Expect(600, Strict))
	require.Equal(t, []Write{{}}, l.Expect(3000, AfterLoss))

	// A failed flush changes nothing; a FUA write is durable at once.
	tok = l.FlushBegin()
	l.FlushEnd(tok, errors.New("EIO"))
	require.Len(t, l.Expect(600, AfterLoss), 2)
	c := l.Begin(600, 10, true)
	l.End(c, nil)
	require.Equal(t, []Write{{ID: c, Off: 600, Len: 10}}, l.Expect(605, AfterLoss))

	// A failed write stays possible until a later write is acknowledged.
	d := l.Begin(2000, 100, false)
	l.End(d, errors.New("EIO"))
	require.Equal(t, []uint64{0, d}, idsOf(l.Expect(2050, Strict)))
	e := l.Begin(2000, 10, false)
	l.End(e, nil)
	require.Equal(t, []uint64{e}, idsOf(l.Expect(2005, Strict)))
	require.Equal(t, []uint64{0, d}, idsOf(l.Expect(2050, Strict)))

	l.Begin(0, 1, false)
	require.ErrorIs(t, l.Settle(&Check{}), ErrInFlight)
}
