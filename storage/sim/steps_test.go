package sim_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"dst/storage/engine"
	"dst/storage/nbd"
)

// model is what the device must hold: data, and for bytes a failed or
// crashed write (or a trim) left undecided, one other value it may read
// (alt, where unc is 1) or any value (unc 2) until a read decides them.
// flushed is data as of the last FLUSH and since counts (up to 2) the
// writes to each byte after it.
type model struct {
	data, alt, unc []byte
	flushed, since []byte
	// flushedUnc is unc as of the last FLUSH: a byte undecided then is
	// durable as one of its values, which flushed does not name.
	flushedUnc []byte
}

func newModel(size int64) model {
	return model{data: make([]byte, size), alt: make([]byte, size), unc: make([]byte, size),
		flushed: make([]byte, size), since: make([]byte, size), flushedUnc: make([]byte, size)}
}

func (m *model) touch(off, n int64) {
	for i := off; i < off+n; i++ {
		m.since[i] = min(m.since[i]+1, 2)
	}
}

// wrote records an acknowledged write.
func (m *model) wrote(off int64, p []byte) {
	copy(m.data[off:], p)
	clear(m.unc[off : off+int64(len(p))])
	m.touch(off, int64(len(p)))
}

// failedWrite records a write that may or may not have happened, per byte.
func (m *model) failedWrite(off int64, p []byte) {
	m.touch(off, int64(len(p)))
	for k, b := range p {
		i := off + int64(k)
		switch {
		case m.unc[i] == 0 && b != m.data[i]:
			m.alt[i], m.unc[i] = b, 1
		case m.unc[i] == 1 && b != m.data[i] && b != m.alt[i]:
			m.unc[i] = 2
		}
	}
}

// flushedAll records an acknowledged FLUSH.
func (m *model) flushedAll() {
	copy(m.flushed, m.data)
	copy(m.flushedUnc, m.unc)
	clear(m.since)
}

// lostUnflushed records that what was written since the last FLUSH may
// be lost: each byte written once since reads its flushed or its new
// value, one written more often anything written meanwhile.
func (m *model) lostUnflushed() {
	for i, n := range m.since {
		switch {
		case n == 0:
		case m.flushedUnc[i] != 0:
			m.unc[i] = 2 // its flushed value was undecided
		case n == 1 && m.unc[i] == 0 && m.flushed[i] != m.data[i]:
			m.alt[i], m.unc[i] = m.flushed[i], 1
		case n > 1 || m.unc[i] != 0:
			m.unc[i] = 2
		}
	}
}

// adopt takes what a read returned as decided.
func (m *model) adopt(off int64, p []byte) {
	copy(m.data[off:], p)
	clear(m.unc[off : off+int64(len(p))])
}

// check returns an error if a read of p at off is not what the model
// allows.
func (m *model) check(what string, off int64, p []byte) error {
	// Fast path: a chunk with no undecided byte must equal data exactly.
	const chunk = 4096
	for k := 0; k < len(p); k += chunk {
		e := min(k+chunk, len(p))
		i, j := off+int64(k), off+int64(e)
		if allZero(m.unc[i:j]) && bytes.Equal(p[k:e], m.data[i:j]) {
			continue
		}
		for k, b := range p[k:e] {
			i := i + int64(k)
			switch m.unc[i] {
			case 0:
				if b != m.data[i] {
					return fmt.Errorf("%s: device offset %d reads %#x, acknowledged %#x", what, i, b, m.data[i])
				}
			case 1:
				if b != m.data[i] && b != m.alt[i] {
					return fmt.Errorf("%s: device offset %d reads %#x, neither the old %#x nor the new %#x", what, i, b, m.data[i], m.alt[i])
				}
			}
		}
	}
	return nil
}

var zeroChunk [4096]byte

// allZero reports whether b (at most 4096 bytes) is all zeros.
func allZero(b []byte) bool { return bytes.Equal(b, zeroChunk[:len(b)]) }

// step runs one seeded action and checks what it must.
func (s *sim) step(ctx context.Context, i int) error {
	e := s.st.Engine()
	size := e.Size()
	span := func() (int64, int64) {
		n := 1 + s.rng.Int64N(128<<10)
		return s.rng.Int64N(size - n), n
	}
	r := s.rng.IntN(106)
	if !*faults {
		r %= 70
	}
	switch {
	case r < 33:
		off, n := span()
		if err := s.write(ctx, off, s.payload(n)); err != nil {
			return err
		}
	case r < 53:
		off, n := span()
		if err := s.read(ctx, fmt.Sprintf("step %d: read %d+%d", i, off, n), off, n); err != nil {
			return err
		}
	case r < 62:
		if err := s.flush(ctx); err != nil {
			return err
		}
	case r < 66:
		off, n := span()
		if err := s.write(ctx, off, make([]byte, n)); err != nil {
			return err
		}
	case r < 70:
		off, n := span()
		if err := s.trim(ctx, off, n); err != nil {
			return err
		}
	default:
		if err := s.fault(ctx, r-70); err != nil {
			return err
		}
	}
	// Any nanosecond up to 200 ms: the engine's timers run in whole
	// milliseconds, and a step at the very instant a timer fires would
	// race it (both wake together), which makes replays differ.
	time.Sleep(time.Duration(s.rng.Int64N(int64(200 * time.Millisecond))))
	return nil
}

// ioFailed decides about a request that failed: strictly (the random
// schedule keeps a replica servable, so no request may fail) or, for
// scripts, only if some member was servable when it was sent.
func (s *sim) ioFailed(servable bool, what string, err error) error {
	if s.strict || servable {
		return s.fail("%s: %v", what, err)
	}
	s.logf("%s: %v (no replica was in sync and reachable)", what, err)
	return nil
}

// write writes p at off (zeroes when p is all zero) and records it.
func (s *sim) write(ctx context.Context, off int64, p []byte) error {
	servable, e := s.othersServable(-1), s.st.Engine()
	what, zero := fmt.Sprintf("write %d+%d", off, len(p)), !slices.ContainsFunc(p, func(b byte) bool { return b != 0 })
	var err error
	if zero {
		what = fmt.Sprintf("zeroes %d+%d", off, len(p))
		err = e.WriteZeroes(ctx, off, int64(len(p)), 0)
	} else {
		err = e.WriteAt(ctx, p, off, 0)
	}
	if err != nil {
		s.model.failedWrite(off, p)
		return s.ioFailed(servable, what, err)
	}
	s.model.wrote(off, p)
	s.logf("%s", what)
	return nil
}

// trim trims [off, off+n): each byte reads old or zero after it.
func (s *sim) trim(ctx context.Context, off, n int64) error {
	servable := s.othersServable(-1)
	err := s.st.Engine().Trim(ctx, off, n, 0)
	s.model.failedWrite(off, make([]byte, n))
	if err != nil {
		return s.ioFailed(servable, fmt.Sprintf("trim %d+%d", off, n), err)
	}
	s.logf("trim %d+%d", off, n)
	return nil
}

// read reads [off, off+n) and checks it against the model.
func (s *sim) read(ctx context.Context, what string, off, n int64) error {
	servable := s.othersServable(-1)
	got := make([]byte, n)
	if err := s.st.Engine().ReadAt(ctx, got, off); err != nil {
		return s.ioFailed(servable, what, err)
	}
	if err := s.model.check(what, off, got); err != nil {
		return s.fail("%v", err)
	}
	s.model.adopt(off, got)
	s.logf("read %d+%d ok", off, n)
	return nil
}

// flush flushes and records it.
func (s *sim) flush(ctx context.Context) error {
	servable := s.othersServable(-1)
	if err := s.st.Engine().Flush(ctx); err != nil {
		return s.ioFailed(servable, "flush", err)
	}
	s.flushed()
	s.logf("flush")
	return nil
}

// payload returns n seeded bytes, none zero (so a lost write shows).
func (s *sim) payload(n int64) []byte {
	p := make([]byte, (n+7)&^7)
	for j := 0; j < len(p); j += 8 {
		binary.LittleEndian.PutUint64(p[j:], s.rng.Uint64()|0x0101010101010101) // never zero
	}
	return p[:n]
}

// fault runs the fault numbered r (0..35). A fault that takes a member
// away runs only while another replica is in sync and reachable: losing
// the last one fails I/O by design.
func (s *sim) fault(ctx context.Context, r int) error {
	j := s.rng.IntN(len(s.nodes))
	away := func(what string) bool {
		if s.othersServable(j) {
			return true
		}
		s.logf("no %s of %d: no other replica is in sync and reachable", what, j)
		return false
	}
	switch {
	case r < 4:
		if s.links[j].isUp() && away("cut") {
			s.links[j].setCut()
			s.logf("cut %d", j)
		}
	case r < 7:
		if s.links[j].isUp() && away("hang") {
			s.links[j].setHung()
			s.logf("hang %d", j)
		}
	case r < 11:
		if !s.links[j].isUp() {
			s.links[j].heal()
			s.logf("heal %d", j)
		}
	case r < 13:
		if s.nodes[j].up && away("kill") {
			s.logf("kill %d", j)
			return s.stopNode(j, false)
		}
	case r < 16:
		if s.nodes[j].up && away("power cut") {
			return s.stopNode(j, true)
		}
	case r < 17:
		if away("media replacement") {
			s.logf("replace the media of %d", j)
			return s.replaceMedia(j)
		}
	case r < 21:
		if !s.nodes[j].up {
			s.logf("restart %d", j)
			return s.startNode(j)
		}
	case r < 23:
		if away("suspension") {
			err := s.st.Engine().Suspend(j)
			s.logf("suspend %d: %v", j, err)
		}
	case r < 25:
		if s.st.Engine().Status()[j].State == engine.Suspended.String() {
			err := s.st.Engine().Resume(ctx, j)
			s.logf("resume %d: %v", j, err)
		}
	case r < 26:
		return s.crash(ctx, -1, nil, 0)
	case r < 28:
		n := 1 + s.rng.Int64N(256<<10)
		off := s.rng.Int64N(s.st.Engine().Size() - n)
		return s.crash(ctx, s.rng.IntN(6), s.payload(n), off)
	case r < 29:
		// The proxy swallows the reply to the next write or FLUSH: the
		// node times it out and fences its connection, and the member
		// may leave service.
		if s.links[j].isUp() && away("lost reply") {
			s.links[j].loseReply()
			s.logf("lose the reply to the next write or flush on %d", j)
		}
	case r < 30:
		// The proxy holds the next write back until a later release:
		// the fence of the reconnect must keep it from landing.
		if s.links[j].isUp() && away("held write") {
			s.links[j].hold()
			s.logf("hold back the next write on %d", j)
		}
	case r < 31:
		var once atomic.Bool
		s.links[j].px.Duplicate(func(req nbd.Request) bool { return req.Cmd.IsWrite() && once.CompareAndSwap(false, true) })
		s.logf("duplicate the next write-like request on %d", j)
	case r < 32:
		if s.links[j].isUp() && away("slow link") {
			d := time.Duration(1+s.rng.IntN(40)) * time.Millisecond
			s.links[j].setSlow(d)
			s.logf("slow %d: %v per frame", j, d)
		}
	case r < 33:
		return s.releaseHeld(ctx, j)
	case r < 34:
		if away("online replacement") {
			return s.replaceOnline(ctx, j)
		}
	case r < 35:
		if away("degraded start") {
			return s.crashDegraded(ctx, j)
		}
	default:
		return s.settle(ctx)
	}
	return nil
}
