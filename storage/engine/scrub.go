package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"dst/storage/layout"
	"dst/storage/nbd"
)

// Scrub (DRBD's verify, md's check): every region of every mirror is read
// from each of its in-sync children and the copies are compared; with
// repair, the ranges that differ are rewritten from the first in-sync
// child (on every in-sync replica of a mirror nested in the child
// repaired, so they stay alike). A region is compared holding its lock stripe, so no client write
// to it runs meanwhile and a write never shows as a false mismatch.
// Where every in-sync child is one member behind a dst export, the region
// is first compared by the digests the members' nodes compute, and read
// only if they differ (scrubdigest.go).
//
// Durability: a repair is a plain write to the differing child, durable at
// that member's next FLUSH (Scrub flushes the repaired members before it
// returns). Trimmed ranges of a node whose discard does not zero may
// differ between replicas: the NBD protocol lets a trimmed range read as
// anything.

// ScrubOptions configure a scrub.
type ScrubOptions struct {
	// Repair rewrites differing ranges from the first in-sync child.
	Repair bool
	// Rate bounds the bytes read per second over all replicas; zero or
	// negative is unlimited.
	Rate int64
}

// ScrubMismatch is a range where a child of a mirror differs from the
// first in-sync child, in 4 KiB blocks.
type ScrubMismatch struct {
	// Mirror is the mirror's index in walk order (outermost first), Child
	// the child that differs, Source the child compared with, Members the
	// leaves of Child.
	Mirror  int   `json:"mirror"`
	Child   int   `json:"child"`
	Source  int   `json:"source"`
	Members []int `json:"members"`
	// Offset and Length are in the mirror's own range (the storage's, for
	// a mirror at the top).
	Offset   int64 `json:"offset"`
	Length   int64 `json:"length"`
	Repaired bool  `json:"repaired"`
}

// ScrubResult is what a scrub found.
type ScrubResult struct {
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Repair   bool      `json:"repair"`
	// Regions compared, and skipped (fewer than two in-sync children).
	Regions int `json:"regions"`
	Skipped int `json:"skipped"`
	// BytesRead over all replicas: read into the engine, or hashed by
	// their nodes (DigestedBytes of them, whose digests agreed: only
	// DigestBytes of digests crossed the network for those).
	BytesRead     int64 `json:"bytes_read"`
	DigestedBytes int64 `json:"digested_bytes"`
	DigestBytes   int64 `json:"digest_bytes"`
	// Mismatches lists the differing ranges (at most maxScrubListed);
	// MismatchCount counts all of them.
	Mismatches    []ScrubMismatch `json:"mismatches"`
	MismatchCount int             `json:"mismatch_count"`
	Error         string          `json:"error,omitempty"`
}

// ScrubStatus is the scrub in progress, if any, and the last one's result.
type ScrubStatus struct {
	Running bool `json:"running"`
	// Done and Total regions of the scrub in progress.
	Done  int          `json:"done"`
	Total int          `json:"total"`
	Last  *ScrubResult `json:"last,omitempty"`
	// Next is when the next scheduled scrub starts (MonitorOptions.Scrub),
	// if one is scheduled.
	Next *time.Time `json:"next,omitempty"`
	// Mismatches counts the differing ranges every scrub found so far,
	// Scrubs the scrubs that ran (to the end or not).
	Mismatches uint64 `json:"mismatches_total"`
	Scrubs     uint64 `json:"scrubs_total"`
}

const (
	scrubBlock     = 4096
	maxScrubListed = 1000
)

// ErrScrubRunning is returned by Scrub while another scrub runs.
var ErrScrubRunning = errors.New("engine: a scrub is running already")

// scrubState is the engine's scrub bookkeeping.
type scrubState struct {
	running     atomic.Bool
	done, total atomic.Int64
	mismatches  atomic.Uint64
	scrubs      atomic.Uint64
	next        atomic.Int64 // unix ns of the next scheduled scrub, 0: none
	mu          sync.Mutex
	last        *ScrubResult
}

// ScrubSchedule runs a scrub at an interval beside Run (MonitorOptions.Scrub),
// like md's periodic check: the first one interval after Run starts.
type ScrubSchedule struct {
	// Interval between the start of a scrub and the next one's; zero or
	// negative schedules none.
	Interval time.Duration
	// Repair and Rate are the scrubs' ScrubOptions.
	Repair bool
	Rate   int64
}

// scheduleScrubs runs a scrub every s.Interval until ctx ends. A scrub
// started by hand at the time is left alone (this one is skipped), and an
// error ends only that scrub; both are logged, the result is the status's
// Last as for any scrub.
func (e *Engine) scheduleScrubs(ctx context.Context, s ScrubSchedule) {
	defer e.scrub.next.Store(0)
	t := time.NewTimer(s.Interval)
	defer t.Stop()
	for {
		e.scrub.next.Store(time.Now().Add(s.Interval).UnixNano())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		t.Reset(s.Interval) // the interval counts from the start
		_, err := e.Scrub(ctx, ScrubOptions{Repair: s.Repair, Rate: s.Rate})
		switch {
		case errors.Is(err, ErrScrubRunning):
			e.log.Info("scheduled scrub skipped: a scrub is running")
		case err != nil && ctx.Err() == nil:
			e.log.Warn("scheduled scrub ended early", "err", err)
		}
	}
}

// Scrub compares the replicas of every mirror (see the comment above
// ScrubOptions) and returns what it found; an error ends it early (the
// result then says how far it got).
func (e *Engine) Scrub(ctx context.Context, opts ScrubOptions) (*ScrubResult, error) {
	sc := &e.scrub
	if !sc.running.CompareAndSwap(false, true) {
		return nil, ErrScrubRunning
	}
	defer sc.running.Store(false)
	res := &ScrubResult{Started: time.Now(), Repair: opts.Repair, Mismatches: []ScrubMismatch{}}
	total := 0
	for _, mi := range e.mirrorList {
		total += mi.regions()
	}
	sc.done.Store(0)
	sc.total.Store(int64(total))
	repaired := map[int]bool{}
	var err error
	start := time.Now()
	for mIdx, mi := range e.mirrorList {
		var bufs [][]byte
		for r := 0; r < mi.regions() && err == nil; r++ {
			if err = ctx.Err(); err != nil {
				break
			}
			var n int64
			n, bufs, err = e.scrubRegion(ctx, mIdx, mi, r, bufs, opts, res, repaired)
			res.BytesRead += n
			sc.done.Add(1)
			if opts.Rate > 0 && err == nil {
				// Hold the pace: the bytes read so far at opts.Rate take
				// this long.
				due := start.Add(time.Duration(float64(res.BytesRead) / float64(opts.Rate) * float64(time.Second)))
				if wait := time.Until(due); wait > 0 {
					select {
					case <-ctx.Done():
						err = ctx.Err()
					case <-time.After(wait):
					}
				}
			}
		}
		if err != nil {
			break
		}
	}
	for i := range repaired {
		m := e.members[i]
		if ferr := m.node.Flush(ctx); ferr != nil && err == nil {
			err = fmt.Errorf("engine: scrub: flush the repairs on member %d (%v): %w", i, m.node, ferr)
		}
	}
	res.Finished = time.Now()
	if err != nil {
		res.Error = err.Error()
	}
	sc.mismatches.Add(uint64(res.MismatchCount))
	sc.scrubs.Add(1)
	sc.mu.Lock()
	sc.last = res
	sc.mu.Unlock()
	e.log.Info("scrub done", "regions", res.Regions, "skipped", res.Skipped, "bytes_read", res.BytesRead,
		"mismatches", res.MismatchCount, "repair", opts.Repair, "took", res.Finished.Sub(res.Started), "err", err)
	return res, err
}

// ScrubStatus returns the scrub in progress and the last result.
func (e *Engine) ScrubStatus() ScrubStatus {
	sc := &e.scrub
	st := ScrubStatus{Running: sc.running.Load(), Mismatches: sc.mismatches.Load(), Scrubs: sc.scrubs.Load()}
	if st.Running {
		st.Done, st.Total = int(sc.done.Load()), int(sc.total.Load())
	}
	sc.mu.Lock()
	st.Last = sc.last
	sc.mu.Unlock()
	if n := sc.next.Load(); n != 0 {
		next := time.Unix(0, n)
		st.Next = &next
	}
	return st
}

// regions is the number of regions of the mirror.
func (mi *mirrorInfo) regions() int {
	return int((mi.m.Size() + mi.regionSize - 1) / mi.regionSize)
}

// scrubRegion compares region r of mirror mi across its in-sync children
// under the region's lock stripe, records and (with repair) rewrites what
// differs. It returns the bytes read and the buffers for the next region.
func (e *Engine) scrubRegion(ctx context.Context, mIdx int, mi *mirrorInfo, r int, bufs [][]byte, opts ScrubOptions,
	res *ScrubResult, repaired map[int]bool) (int64, [][]byte, error) {
	off, length := mi.span(r)
	lk := &mi.locks[int64(r)%lockStripes]
	lk.Lock()
	defer lk.Unlock()
	inSync := func(m *member) bool { return m.State() == InSync }
	var children []int
	for c := range mi.children {
		if ok, _ := e.childReady(mi, c, inSync, nil); ok {
			children = append(children, c)
		}
	}
	if len(children) < 2 {
		res.Skipped++
		return 0, bufs, nil
	}
	for len(bufs) < len(children) {
		bufs = append(bufs, make([]byte, mi.regionSize))
	}
	var read int64
	ok, same, dn := e.digestsAgree(ctx, mi, children, off, length, bufs)
	res.DigestBytes += dn
	if ok && same {
		res.Regions++
		res.DigestedBytes += length * int64(len(children))
		return length * int64(len(children)), bufs, nil
	}
	for k, c := range children {
		cp := childPicker{readPicker: readPicker{e: e, excluded: make([]bool, len(e.members))}, mi: mi, child: c}
		if err := e.mapRun(ctx, mi.m, nbd.CmdRead, bufs[k][:length], off, &cp); err != nil {
			return read, bufs, fmt.Errorf("engine: scrub: read region %d of mirror %d from child %d: %w", r, mIdx, c, err)
		}
		read += length
	}
	res.Regions++
	src := bufs[0][:length]
	for k, c := range children[1:] {
		got := bufs[k+1][:length]
		for at := int64(0); at < length; {
			n := min(scrubBlock, length-at)
			if bytes.Equal(src[at:at+n], got[at:at+n]) {
				at += n
				continue
			}
			// A run of differing blocks.
			end := at + n
			for end < length {
				n := min(scrubBlock, length-end)
				if bytes.Equal(src[end:end+n], got[end:end+n]) {
					break
				}
				end += n
			}
			mm := ScrubMismatch{Mirror: mIdx, Child: c, Source: children[0], Members: append([]int(nil), mi.children[c]...),
				Offset: off + at, Length: end - at}
			if opts.Repair {
				cp := childPicker{readPicker: readPicker{e: e, excluded: make([]bool, len(e.members))}, mi: mi, child: c, repair: true}
				if err := e.mapRun(ctx, mi.m, nbd.CmdWrite, src[at:end], off+at, &cp); err != nil {
					return read, bufs, fmt.Errorf("engine: scrub: repair %d+%d of mirror %d on child %d: %w", off+at, end-at, mIdx, c, err)
				}
				if cp.noReplica {
					return read, bufs, fmt.Errorf("engine: scrub: repair %d+%d of mirror %d on child %d: a mirror nested in it has no replica in sync: %w",
						off+at, end-at, mIdx, c, ErrNoReplica)
				}
				mm.Repaired = true
				for _, l := range mi.children[c] {
					repaired[l] = true
				}
			}
			e.log.Warn("scrub: replicas differ", "mirror", mIdx, "child", c, "source", children[0], "members", mm.Members,
				"offset", mm.Offset, "length", mm.Length, "repaired", mm.Repaired)
			res.MismatchCount++
			if len(res.Mismatches) < maxScrubListed {
				res.Mismatches = append(res.Mismatches, mm)
			}
			at = end
		}
	}
	return read, bufs, nil
}

// childPicker sends mirror mi's range to its child only; mirrors nested
// in the child are read as a read would be (readPicker), and a repair
// writes to every in-sync child of each of them, so the nested replicas
// stay alike. (A nested child out of sync is left alone: its resync
// copies from the in-sync ones, or the next scrub of that mirror finds
// the range.)
type childPicker struct {
	readPicker
	mi     *mirrorInfo
	child  int
	repair bool
}

func (p *childPicker) Pick(m *layout.Mirror, off, length int64) layout.ReplicaSet {
	if m == p.mi.m {
		return layout.Replica(p.child)
	}
	if !p.repair {
		return p.readPicker.Pick(m, off, length)
	}
	e := p.e
	nested := e.mirrors[m]
	var set layout.ReplicaSet
	for i := range nested.children {
		if ok, _ := e.childReady(nested, i, func(m *member) bool { return m.State() == InSync }, nil); ok {
			set |= layout.Replica(i)
		}
	}
	if set == 0 {
		p.noReplica = true
		return layout.Replica(0)
	}
	return set
}
