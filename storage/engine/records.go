// Superblock records: each write of the membership is a new generation of
// superblocks on every writable member (two slots, the newer generation
// wins at assembly), written durably before it counts.
package engine

import (
	"context"
	"fmt"

	"dst/storage/layout"
	"dst/storage/meta"
)

// persistable: every child is a single member whose data area holds the
// whole mirror, so mirror regions are member regions.
func (mi *mirrorInfo) persistable() bool {
	for i, leaves := range mi.children {
		leaf, ok := mi.m.Child(i).(*layout.Leaf)
		if len(leaves) != 1 || !ok || leaf.DataSize() < mi.m.Size() {
			return false
		}
	}
	return true
}

// writeSupers writes a new generation of superblocks, with the current
// in-sync set, to every writable member. clean records a clean shutdown
// (everything flushed, nothing in flight).
func (s *Storage) writeSupers(ctx context.Context, clean bool) error {
	_, err := s.writeSupersOnce(ctx, clean)
	return err
}

// writeSupersOnce is writeSupers that also returns the first member whose
// superblock could not be written (-1 if none).
func (s *Storage) writeSupersOnce(ctx context.Context, clean bool) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	var mask meta.Mask
	for i, m := range s.e.members {
		if m.State() == InSync {
			mask = mask.With(i)
		}
	}
	// The member table: every position's member id and raw size, on
	// every superblock, so a medium replaced at a position is never
	// trusted there again and a member missing at a start has a known
	// geometry (and identity to check when it answers).
	var table [meta.MaxMembers]meta.ID
	var raws [meta.MaxMembers]int64
	for i := range s.supers {
		table[i], raws[i] = s.supers[i].MemberID, s.supers[i].RawSize
	}
	buf := make([]byte, meta.SuperblockSize)
	var firstErr error
	bad := -1
	for i, m := range s.e.members {
		if !m.writable() {
			continue
		}
		sb := &s.supers[i]
		sb.Generation, sb.InSync, sb.Members, sb.RawSizes = s.gen, mask, table, raws
		sb.Flags &^= meta.FlagClean | meta.FlagActivityLog
		if clean {
			sb.Flags |= meta.FlagClean
		}
		if m.logged() {
			sb.Flags |= meta.FlagActivityLog
		}
		if err := sb.MarshalTo(buf); err != nil {
			panic(fmt.Sprintf("engine: superblock of member %d: %v", i, err))
		}
		if err := writeDurably(ctx, m, buf, meta.SlotOffset(s.gen)); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("engine: write superblock of member %d (%v): %w", i, m.node, err)
			bad = i
		}
	}
	return bad, firstErr
}
