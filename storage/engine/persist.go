package engine

import (
	"context"
	"fmt"

	"dst/storage/meta"
	"dst/storage/nbd"
)

// persistDirty writes the bitmap pages of mi that changed to the writable
// members that carry them, durably (FUA, or write and flush). A writer that
// set a bit calls it before issuing its data writes: either the persist in
// progress wrote its page (persistMu orders them) or this call does.
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
			if err := mi.others[c].MarshalPage(i, buf); err != nil {
				mi.mu.Unlock()
				panic(fmt.Sprintf("engine: marshal bitmap page %d: %v", i, err))
			}
			pages = append(pages, page{c, i, buf})
		}
		clear(set)
	}
	mi.mu.Unlock()
	for k, p := range pages {
		for _, l := range mi.children[p.child] {
			m := e.members[l]
			if m.area == nil || !m.writable() {
				continue
			}
			if err := writeDurably(ctx, m, p.buf, m.area.BitmapOffset+int64(p.index)*meta.PageSize); err != nil {
				// Whatever was not written stays pending for the next try.
				mi.mu.Lock()
				for _, q := range pages[k:] {
					mi.pending[q.child][q.index] = struct{}{}
				}
				mi.mu.Unlock()
				return fmt.Errorf("persist bitmap page %d on member %d (%v): %w", p.index, m.index, m.node, err)
			}
		}
	}
	return nil
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
