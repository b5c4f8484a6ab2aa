package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"dst/storage/meta"
	"dst/storage/nbd"
)

// persistError is a bitmap page write that failed on one member.
// standIn says whether another member of the mirror in service took its
// pages (or had none to take): only then does the failing member leave.
type persistError struct {
	m       *member
	err     error
	standIn bool
}

func (e *persistError) Error() string { return e.err.Error() }
func (e *persistError) Unwrap() error { return e.err }

// persist writes mi's changed bitmap pages (persistDirty). A member whose
// page write fails leaves service if a replica stands in for it and
// another member took its pages, and the pages are written to the
// others; otherwise the error is returned. (When every member failed its
// page write, as when all are unreachable, nobody leaves: the request
// fails, and no member missed anything acknowledged.)
func (e *Engine) persist(ctx context.Context, mi *mirrorInfo) error {
	for range len(e.members) + 1 {
		err := e.persistDirty(ctx, mi)
		var pe *persistError
		if err == nil || !errors.As(err, &pe) || !pe.standIn || ctx.Err() != nil || !e.failRedundant(ctx, pe.m, err) {
			return err
		}
	}
	return e.persistDirty(ctx, mi)
}

// persistDirty writes the bitmap pages of mi that changed to the writable
// members that carry them, durably (FUA, or write and flush), each
// member's pages in parallel with the others'. A writer that set a bit,
// or found one set whose page is not durable yet (unpersisted), calls it
// before issuing its data writes: either the persist in progress wrote
// its page (persistMu orders them) or this call does.
func (e *Engine) persistDirty(ctx context.Context, mi *mirrorInfo) error {
	if mi.pending == nil {
		return nil
	}
	mi.persistMu.Lock()
	defer mi.persistMu.Unlock()
	type page struct {
		child, index int
		buf          []byte
	}
	var pages []page
	mi.mu.Lock()
	for c, set := range mi.pending {
		for i := range set {
			buf := make([]byte, meta.PageSize)
			if err := mi.marshalPage(c, i, buf); err != nil {
				mi.mu.Unlock()
				panic(fmt.Sprintf("engine: marshal bitmap page %d: %v", i, err))
			}
			pages = append(pages, page{c, i, buf})
		}
		clear(set)
	}
	if len(pages) > 0 {
		mi.persisting++
	}
	mi.mu.Unlock()
	if len(pages) == 0 {
		return nil
	}
	var wg sync.WaitGroup
	errs := make([]error, len(e.members))
	tried := 0
	for c, leaves := range mi.children {
		for _, l := range leaves {
			m := e.members[l]
			if m.area == nil || !m.writable() {
				continue
			}
			tried++
			wg.Go(func() {
				for _, p := range pages {
					if p.child != c {
						continue
					}
					// Counted as a pending piece, so the watchdog sees a
					// member that hangs on a page write (a writer waits on
					// it before its data goes out).
					m.pending.Add(1)
					err := writeDurably(ctx, m, p.buf, m.area.BitmapOffset+int64(p.index)*meta.PageSize)
					m.pending.Add(-1)
					m.completed.Add(1)
					if err != nil {
						errs[l] = &persistError{m: m, err: fmt.Errorf("persist bitmap page %d on member %d (%v): %w", p.index, m.index, m.node, err)}
						return
					}
					if mi.al != nil {
						mi.al.metaWrites.Add(1)
					}
				}
			})
		}
	}
	wg.Wait()
	var first error
	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
			if first == nil {
				first = err
			}
		}
	}
	if first != nil {
		// Another member took its pages (or had none to take): counted
		// over the members this round wrote to, whatever their state now.
		first.(*persistError).standIn = tried > failed
	}
	mi.mu.Lock()
	if first != nil {
		// Every page stays pending for the next try (rewriting one that
		// went through is harmless).
		for _, q := range pages {
			mi.pending[q.child][q.index] = struct{}{}
		}
	}
	mi.persisting--
	mi.mu.Unlock()
	return first
}

// writeDurably writes p at off on m's node and makes it durable.
func writeDurably(ctx context.Context, m *member, p []byte, off int64) error {
	if m.node.Flags()&nbd.FlagSendFUA != 0 {
		return m.node.WriteAt(ctx, p, off, nbd.CmdFlagFUA)
	}
	if err := m.node.WriteAt(ctx, p, off, 0); err != nil {
		return err
	}
	return m.node.Flush(ctx)
}
