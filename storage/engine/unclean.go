// Unclean restart: after a stop without a clean mark, each mirror keeps
// one child as the source (membership.Core.UncleanCopies) and copies to
// the others only what the activity logs marked (the union over the
// members), or the whole child where no readable log says what to copy.
package engine

import (
	"context"
	"fmt"

	"dst/storage/meta"
)

// crashLog is what the members of a mirror recorded in their activity
// logs before an unclean stop: union is the union of their bitmaps (nil
// if it cannot be trusted), unreadable the members whose bitmap could not
// be read.
type crashLog struct {
	union      *meta.Bitmap
	unreadable map[int]bool
}

// copyLogged marks the regions member m must get from its mirror's source
// after an unclean stop: the union of the bitmaps of every member served
// (each holds every region a write may have been in flight to, see the
// package doc). It reports false where that cannot be trusted (m is under
// nested mirrors or a mirror without a log, a member's superblock does
// not say its bitmap is an activity log, the source's bitmap or m's own
// cannot be read): m is then copied whole.
func (s *Storage) copyLogged(ctx context.Context, m *member, as meta.Assembly, probes []meta.Probe, sources []int, logs map[*mirrorInfo]*crashLog) bool {
	if len(m.ancestors) != 1 || !m.logged() {
		return false
	}
	a := m.ancestors[0]
	cl, ok := logs[a.mi]
	if !ok {
		cl = s.readCrashLog(ctx, a.mi, sources[a.mi.id], as, probes)
		logs[a.mi] = cl
	}
	if cl.union == nil || cl.unreadable[m.index] {
		return false
	}
	n := 0
	for r := cl.union.NextDirty(0); r >= 0; r = cl.union.NextDirty(r + 1) {
		off, length := a.mi.span(r)
		if length > 0 {
			a.mi.mark(a.child, off, length)
			n++
		}
	}
	m.crashRegions.Store(int64(n))
	s.log.Info("unclean stop: copying the regions the activity log marked", "member", m.index,
		"regions", n, "of", cl.union.Regions())
	return true
}

// readCrashLog reads the bitmaps of mi's served members and unites them;
// source is the child the others are copied from.
func (s *Storage) readCrashLog(ctx context.Context, mi *mirrorInfo, source int, as meta.Assembly, probes []meta.Probe) *crashLog {
	cl := &crashLog{unreadable: map[int]bool{}}
	union := meta.NewBitmap(mi.dirty[0].Regions())
	for c, leaves := range mi.children {
		for _, l := range leaves {
			if as.Members[l].Action != meta.ActionServe {
				continue
			}
			m := s.e.members[l]
			if probes[l].Super.Flags&meta.FlagActivityLog == 0 || m.area.RegionSize != mi.regionSize {
				s.log.Warn("unclean stop: a member's bitmap is not an activity log; its replicas are copied whole", "member", l)
				return cl
			}
			buf := make([]byte, m.area.BitmapBytes)
			if err := m.node.ReadAt(ctx, buf, m.area.BitmapOffset); err != nil {
				s.log.Warn("unclean stop: cannot read a member's activity log; it is copied whole", "member", l, "err", err)
				if c == source {
					return cl
				}
				cl.unreadable[l] = true
				continue
			}
			bm := meta.NewBitmap(m.area.Regions())
			if err := bm.Unmarshal(buf); err != nil {
				s.log.Warn("damaged bitmap pages read as all dirty", "member", l, "err", err)
			}
			if bm.Regions() != union.Regions() {
				return cl
			}
			union.Merge(bm)
		}
	}
	cl.union = union
	return cl
}

// loadDirty merges the source's persisted bitmap into what member m missed.
func (s *Storage) loadDirty(ctx context.Context, m *member, source int) error {
	src := s.e.members[source]
	if src.area == nil || len(m.ancestors) == 0 {
		return nil
	}
	buf := make([]byte, src.area.BitmapBytes)
	if err := src.node.ReadAt(ctx, buf, src.area.BitmapOffset); err != nil {
		return fmt.Errorf("engine: read bitmap of member %d: %w", source, err)
	}
	bm := meta.NewBitmap(src.area.Regions())
	if err := bm.Unmarshal(buf); err != nil {
		s.log.Warn("damaged bitmap pages read as all dirty", "member", source, "err", err)
	}
	a := m.ancestors[len(m.ancestors)-1]
	if a.mi.regionSize != src.area.RegionSize || !a.mi.persistable() {
		a.mi.markAll(a.child) // no usable record: copy everything
		return nil
	}
	for r := bm.NextDirty(0); r >= 0; r = bm.NextDirty(r + 1) {
		off, length := a.mi.span(r)
		if length > 0 {
			a.mi.mark(a.child, off, length)
		}
		if r+1 >= bm.Regions() {
			break
		}
	}
	return nil
}
