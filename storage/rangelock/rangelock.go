// Package rangelock orders overlapping byte-range requests: a Table
// admits a request at once unless an earlier one overlapping it still
// holds a slot, so overlapping requests run one after another in the order
// they arrived, and disjoint ones run in parallel. A remote node keeps one
// per connection manager (so a resent write never overtakes a newer one),
// and the engine one per storage (so every replica of a mirror applies
// overlapping writes in the same order).
package rangelock

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// ErrStopped is returned by Acquire when its stop channel closes while it
// waits.
var ErrStopped = errors.New("rangelock: stopped")

// Table admits requests so at most one is in flight per overlapping byte range: a request
// whose range overlaps one admitted or queued before it waits until that
// one is released. Requests are ordered by arrival (a sequence number), so
// overlapping requests are sent in the order they called acquire and none
// starves; requests that overlap nothing proceed at once, in parallel.
//
// The table has a fixed number of slots, one per request that may be in
// flight on the node (the caller bounds them: Remote holds a waiter, of
// which there are MaxInFlight, before it calls acquire). It allocates
// nothing after newRangeTable. Its cost is a scan of the slots under a
// mutex per acquire, per wake-up and per release.
type Table struct {
	mu      sync.Mutex
	next    uint64 // sequence number of the last acquire
	entries []rangeEntry
}

type rangeEntry struct {
	off, end int64
	seq      uint64 // arrival order; 0 marks a free slot
	sleeping bool   // the owner waits on wake for an earlier overlap to go
	wake     chan struct{}
}

// New returns a table with slots slots: at most that many requests may
// hold or wait for one at a time.
func New(slots int) *Table {
	return &Table{entries: make([]rangeEntry, slots)}
}

// Acquire takes a slot for [off, end) and waits until no earlier
// request overlapping it holds a slot. wake is the caller's own channel of
// capacity 1, reused across calls; it is empty when acquire returns. If
// ctx ends or stop is closed while it waits, acquire gives the slot back
// and returns the error (ctx's, or ErrStopped).
func (t *Table) Acquire(ctx context.Context, stop <-chan struct{}, wake chan struct{}, off, end int64) (int, error) {
	t.mu.Lock()
	slot := -1
	for i := range t.entries {
		if t.entries[i].seq == 0 {
			slot = i
			break
		}
	}
	if slot < 0 {
		t.mu.Unlock()
		panic(fmt.Sprintf("rangelock: table full: more than %d requests in flight", len(t.entries)))
	}
	t.next++
	e := &t.entries[slot]
	e.off, e.end, e.seq, e.wake, e.sleeping = off, end, t.next, wake, false
	for t.blockedLocked(slot) {
		e.sleeping = true
		t.mu.Unlock()
		var err error
		select {
		case <-wake:
		case <-ctx.Done():
			err = ctx.Err()
		case <-stop:
			err = ErrStopped
		}
		t.mu.Lock()
		if err != nil {
			e.sleeping = false
			select { // a release may have woken us meanwhile
			case <-wake:
			default:
			}
			t.releaseLocked(slot)
			t.mu.Unlock()
			return -1, err
		}
	}
	t.mu.Unlock()
	return slot, nil
}

// blockedLocked reports whether an earlier request overlapping the one in
// slot still holds a slot.
func (t *Table) blockedLocked(slot int) bool {
	e := &t.entries[slot]
	for i := range t.entries {
		o := &t.entries[i]
		if i != slot && o.seq != 0 && o.seq < e.seq && o.off < e.end && e.off < o.end {
			return true
		}
	}
	return false
}

// Release frees slot and wakes the sleepers that overlapped it; they look
// again whether anything earlier still blocks them.
func (t *Table) Release(slot int) {
	t.mu.Lock()
	t.releaseLocked(slot)
	t.mu.Unlock()
}

func (t *Table) releaseLocked(slot int) {
	e := &t.entries[slot]
	if e.seq == 0 {
		panic(fmt.Sprintf("rangelock: slot %d released twice", slot))
	}
	off, end := e.off, e.end
	e.seq, e.wake, e.sleeping = 0, nil, false
	for i := range t.entries {
		o := &t.entries[i]
		if o.sleeping && o.off < end && off < o.end {
			o.sleeping = false
			select {
			case o.wake <- struct{}{}:
			default:
				panic("rangelock: woke a sleeper twice")
			}
		}
	}
}

// InFlight counts the slots held (admitted or waiting).
func (t *Table) InFlight() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for i := range t.entries {
		if t.entries[i].seq != 0 {
			n++
		}
	}
	return n
}
