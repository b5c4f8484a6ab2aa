package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/time/rate"

	"dst/internal/bugs"
	"dst/storage/layout"
	"dst/storage/membership"
	"dst/storage/nbd"
	"dst/storage/node"
)

// ErrBusy is returned when a member is asked to rejoin while it is already
// in sync or resyncing.
var ErrBusy = membership.ErrBusy

// Suspend takes member i out of service for maintenance while I/O goes on;
// writes it misses are recorded. It fails if the member is the last
// readable replica of some range (it is not redundant).
func (e *Engine) Suspend(i int) error {
	m, err := e.member(i)
	if err != nil {
		return err
	}
	d, err := e.decide(func(c *membership.Core) (membership.Decision, error) { return c.Suspend(i, e.facts(m)) })
	if err != nil {
		return fmt.Errorf("engine: %w", err)
	}
	if !d.Changed() {
		return nil
	}
	m.log.Info("member suspended", "was", d.From)
	return e.recordChange(context.Background())
}

func (e *Engine) member(i int) (*member, error) {
	if i < 0 || i >= len(e.members) {
		return nil, fmt.Errorf("engine: no member %d (there are %d)", i, len(e.members))
	}
	return e.members[i], nil
}

// Rejoin brings a failed or suspended member back: it receives writes at
// once, the regions it missed are copied to it from in-sync replicas
// (everything, if full or if its unflushed writes may have been lost), and
// it serves reads again when the copy is complete. Rejoin blocks until
// then, and returns the error that interrupted the copy (the member is
// then failed again). limit bounds the copy rate (nil: unlimited).
func (e *Engine) Rejoin(ctx context.Context, i int, full bool, limit *rate.Limiter) error {
	m, err := e.member(i)
	if err != nil {
		return err
	}
	d, err := e.decide(func(c *membership.Core) (membership.Decision, error) { return c.Rejoin(i, full) })
	if err != nil {
		return err
	}
	// What its bitmap says from before it left is stale: it is rewritten
	// with the next bitmap write (stale marks only make a later crash
	// resync copy more).
	for _, a := range m.ancestors {
		a.mi.rewriteBitmap(a.child)
	}
	if d.CopyWhole {
		for _, a := range m.ancestors {
			a.mi.markAll(a.child)
		}
	} else if err := e.promote(ctx, m, d.Promote); err != nil {
		e.resyncDone(ctx, m, err)
		return fmt.Errorf("engine: member %d: %w", i, err)
	}
	m.log.Info("member rejoining; resync started", "was", d.From, "full", d.CopyWhole)
	start, zeroed := time.Now(), m.resyncZeroedBytes.Load()
	m.copyBase.Store(m.resyncedBytes.Load() + zeroed)
	m.copyStart.Store(start.UnixNano())
	copied, err := e.resync(ctx, m, limit)
	m.copyStart.Store(0)
	if err != nil {
		e.resyncDone(ctx, m, err)
		return fmt.Errorf("engine: resync of member %d stopped after %d bytes: %w", i, copied, err)
	}
	if d := e.resyncDone(ctx, m, nil); d.Left {
		// It left service during the copy (a failed write or flush): writes
		// since skipped it, and what it holds is not the storage's.
		return fmt.Errorf("engine: member %d left service (%v) during its resync after %d bytes", i, d.From, copied)
	}
	m.log.Info("member in sync", "copied_bytes", copied, "zeroed_bytes", m.resyncZeroedBytes.Load()-zeroed, "took", time.Since(start))
	if err := e.recordChange(ctx); err != nil {
		return fmt.Errorf("engine: record member %d in sync: %w", i, err)
	}
	return nil
}

// resyncDone tells the core m's copy ended with err (nil: complete); a
// failure takes m out of service.
func (e *Engine) resyncDone(ctx context.Context, m *member, err error) membership.Decision {
	d, _ := e.decide(func(c *membership.Core) (membership.Decision, error) {
		return c.ResyncDone(m.index, err == nil, e.facts(m)), nil
	})
	if err != nil && d.Changed() {
		e.failed(ctx, m, err)
	}
	return d
}

// promote makes m, whose media is intact, the source of each mirror the
// core names (membership rule 8: no replica there is in service and every
// other replica lost its media): m is then the newest copy there is, so
// the regions it missed are taken as they are on it instead of waiting
// forever for a source. Writes acknowledged by a replica whose media was
// lost since are lost with it; that is logged.
func (e *Engine) promote(ctx context.Context, m *member, mirrors []int) error {
	for _, id := range mirrors {
		mi := e.mirrorList[id]
		var child int
		for _, a := range m.ancestors {
			if a.mi == mi {
				child = a.child
			}
		}
		if mi.count(child) == 0 {
			continue
		}
		n := mi.clearAll(child)
		m.log.Warn("no replica in service and every other replica lost its media: this member is the source now; writes acknowledged only by a lost replica are gone",
			"regions_taken_as_they_are", n)
		if err := e.persist(ctx, mi); err != nil {
			return err
		}
	}
	return nil
}

// resyncFlushBytes is how much a resync copies to a member between two
// FLUSHes of it: a region's dirty mark is cleared only once its copy is
// durable on the member, so a member whose machine loses power during or
// after its resync still has the regions it lost copied again.
const resyncFlushBytes = 32 << 20

// resync copies every dirty region of every mirror above m to m until no
// region is dirty. Copies are written without FUA; every
// resyncFlushBytes, and at the end of each pass, m is flushed, and only
// then are the copied regions' marks cleared and the bitmap persisted.
func (e *Engine) resync(ctx context.Context, m *member, limit *rate.Limiter) (int64, error) {
	var copied int64
	for _, a := range m.ancestors {
		buf := make([]byte, a.mi.regionSize)
		var done []int // copied since m's last flush
		var unflushed int64
		// Writes that skipped m before it became Resyncing may still mark
		// regions behind the cursor; loop until none is left.
		for a.mi.count(a.child) > 0 {
			for r := a.mi.next(a.child, 0); r >= 0; r = a.mi.next(a.child, r+1) {
				if err := ctx.Err(); err != nil {
					return copied, err
				}
				n, zeroed, err := e.copyRegion(ctx, a.mi, a.child, m, r, buf)
				if err != nil {
					return copied, err
				}
				if n > 0 || zeroed > 0 {
					done = append(done, r)
					unflushed += n
				}
				copied += n
				m.resyncedBytes.Add(n)
				m.resyncZeroedBytes.Add(zeroed)
				if unflushed >= resyncFlushBytes {
					if err := e.commitCopies(ctx, a, m, done); err != nil {
						return copied, err
					}
					done, unflushed = done[:0], 0
				}
				if limit != nil {
					if err := limit.WaitN(ctx, int(min(n, int64(limit.Burst())))); err != nil {
						return copied, err
					}
				}
			}
			if err := e.commitCopies(ctx, a, m, done); err != nil {
				return copied, err
			}
			done, unflushed = done[:0], 0
		}
	}
	return copied, nil
}

// commitCopies flushes m, then clears the marks of the regions copied to
// it (under each region's lock, and only while m is still resyncing: a
// write that skipped m since marked its region again) and persists the
// bitmap.
func (e *Engine) commitCopies(ctx context.Context, a ancestor, m *member, regions []int) error {
	if len(regions) == 0 {
		return nil
	}
	if !bugs.On(bugs.ResyncUnflushed) {
		// The flush covers every write m completed before it, the copies
		// and clients' alike: m has nothing unflushed for a client FLUSH
		// to make durable unless a write completes after this point
		// (that one sets written again). Without this, a client FLUSH
		// flushed m anyway and, m cut meanwhile, failed for want of a
		// record of m leaving (model seed 1796648404889492896).
		m.settling.Add(1) // see Engine.flushBy
		m.written.Store(false)
		m.flushing.Add(1)
		err := m.node.Flush(ctx)
		m.flushing.Add(-1)
		if err != nil {
			m.written.Store(true)
		}
		m.settling.Add(-1)
		if err != nil {
			return fmt.Errorf("flush the copies: %w", err)
		}
	}
	for _, r := range regions {
		lk := &a.mi.locks[int64(r)%lockStripes]
		lk.Lock()
		if m.State() != Resyncing {
			lk.Unlock()
			return fmt.Errorf("member %d left service (%v) during its resync", m.index, m.State())
		}
		a.mi.clear(a.child, r)
		lk.Unlock()
	}
	return e.persist(ctx, a.mi)
}

// copyRegion copies region r of mirror mi from an in-sync child to child
// (which holds m), holding the region's lock stripe so no client write to
// the region runs meanwhile. A region the source's block status reports
// as reading zeroes everywhere is not read: it is written as WRITE_ZEROES
// on m (zeroed bytes), where m's nodes take them. The region stays
// marked: commitCopies clears it once the copy is durable.
func (e *Engine) copyRegion(ctx context.Context, mi *mirrorInfo, child int, m *member, r int, buf []byte) (copied, zeroed int64, err error) {
	off, length := mi.span(r)
	lk := &mi.locks[int64(r)%lockStripes]
	lk.Lock()
	defer lk.Unlock()
	if invariantsOn {
		mi.checkCopyLock(r)
	}
	if !mi.test(child, r) {
		return 0, 0, nil
	}
	rp := readPicker{e: e, excluded: make([]bool, len(e.members))}
	for _, l := range mi.children[child] {
		rp.excluded[l] = true
	}
	if e.zeroOnSource(ctx, mi, off, length, &rp) {
		if err := e.mapZero(ctx, mi.m, off, length, &onlyPicker{member: m}); err == nil {
			return 0, length, nil
		} else if !errors.Is(err, nbd.ENOTSUP) {
			return 0, 0, fmt.Errorf("zero region %d: %w", r, err)
		}
	}
	p := buf[:length]
	if err := e.mapRun(ctx, mi.m, nbd.CmdRead, p, off, &rp); err != nil {
		return 0, 0, fmt.Errorf("read region %d from a replica: %w", r, err)
	}
	if rp.noReplica {
		return 0, 0, fmt.Errorf("region %d: %w", r, ErrNoReplica)
	}
	if err := e.mapRun(ctx, mi.m, nbd.CmdWrite, p, off, &onlyPicker{member: m}); err != nil {
		return 0, 0, fmt.Errorf("write region %d: %w", r, err)
	}
	return length, 0, nil
}

// zeroOnSource reports whether [off, off+length) of mirror mi reads as
// zeroes on the replicas rp picks, by their block status (one request
// per piece, whose answer must cover it). Any doubt says no: the range is
// then copied.
func (e *Engine) zeroOnSource(ctx context.Context, mi *mirrorInfo, off, length int64, rp *readPicker) bool {
	exts := mi.m.Map(nil, off, length, 0, rp)
	if rp.noReplica {
		rp.noReplica = false
		return false
	}
	var descs [8]nbd.Extent
	for _, x := range exts {
		ds, err := node.BlockStatus(ctx, e.members[x.Member].node, x.Offset, x.Length, descs[:0])
		if err != nil {
			return false
		}
		var covered int64
		for _, d := range ds {
			if d.Flags&nbd.StateZero == 0 {
				return false
			}
			covered += d.Length
		}
		if covered < x.Length {
			return false
		}
	}
	return true
}

// mapZero maps [off, off+length) of node l with picker p and writes
// zeroes to each piece (ENOTSUP where a node does not take WRITE_ZEROES).
func (e *Engine) mapZero(ctx context.Context, l layout.Layout, off, length int64, pk layout.Picker) error {
	for _, x := range l.Map(nil, off, length, 0, pk) {
		m := e.members[x.Member]
		if m.node.Flags()&nbd.FlagSendWriteZero == 0 {
			return fmt.Errorf("member %d (%v): %w: no WRITE_ZEROES", x.Member, m.node, nbd.ENOTSUP)
		}
		if err := m.node.WriteZeroes(ctx, x.Offset, x.Length, 0); err != nil {
			return fmt.Errorf("member %d (%v): %w", x.Member, m.node, err)
		}
		m.written.Store(true)
	}
	return nil
}

// mapRun maps [off, off+len(p)) of node l with picker p and runs the pieces
// one after another (resync is a background copy; it needs no fan-out).
func (e *Engine) mapRun(ctx context.Context, l layout.Layout, cmd nbd.Command, p []byte, off int64, pk layout.Picker) error {
	exts := l.Map(nil, off, int64(len(p)), 0, pk)
	for _, x := range exts {
		n := e.members[x.Member].node
		var err error
		if cmd == nbd.CmdRead {
			err = n.ReadAt(ctx, p[x.BufOffset:x.BufOffset+x.Length], x.Offset)
		} else {
			err = n.WriteAt(ctx, p[x.BufOffset:x.BufOffset+x.Length], x.Offset, 0)
			if err == nil {
				e.members[x.Member].written.Store(true)
			}
		}
		if err != nil {
			return fmt.Errorf("member %d (%v): %w", x.Member, n, err)
		}
	}
	return nil
}
