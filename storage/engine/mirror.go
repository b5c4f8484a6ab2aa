package engine

import (
	"math"
	"sync"

	"dst/storage/layout"
	"dst/storage/meta"
)

// mirrorInfo is the engine's state of one mirror node.
type mirrorInfo struct {
	m        *layout.Mirror
	id       int     // index in Engine.mirrorList and the membership core
	children [][]int // leaves under each child
	// locks serialise a resync copy of a region with client writes to it:
	// writes hold the read side of every stripe their range touches, a
	// copy holds the write side of its region's stripe (ioRWLocks: both
	// wait across I/O).
	locks [lockStripes]ioRWLock

	regionSize int64
	mu         sync.Mutex
	// dirty[c] holds the regions child c missed; others[c] the union of
	// dirty[j] for j != c, which is what the members under child c persist
	// in their bitmaps (on restart it tells what the others need).
	dirty  []*meta.Bitmap
	others []*meta.Bitmap
	// pending[c] are the pages of others[c] changed since they were last
	// persisted; nil when the mirror does not persist (see persistable).
	pending []map[int]struct{}
	// persistMu serialises persisting, so a writer that set a bit either
	// sees its page written by the persist in progress or writes it itself;
	// it is held across the page writes (an ioLock).
	persistMu ioLock
	// persisting counts the persists whose pages are taken from pending
	// but not yet durable (under mu).
	persisting int
	// al is the mirror's activity log; nil when it keeps none.
	al *activity
}

const lockStripes = 64

func newMirrorInfo(m *layout.Mirror, regionSize int64) *mirrorInfo {
	mi := &mirrorInfo{m: m, regionSize: regionSize, persistMu: newIOLock()}
	for i := range mi.locks {
		mi.locks[i].init()
	}
	regions := int(max((m.Size()+regionSize-1)/regionSize, 1))
	for i := range m.NumChildren() {
		mi.children = append(mi.children, m.Child(i).Leaves(nil))
		mi.dirty = append(mi.dirty, meta.NewBitmap(regions))
		mi.others = append(mi.others, meta.NewBitmap(regions))
	}
	return mi
}

// stripesOf returns the lock stripes of the regions [off, off+length)
// touches.
func (mi *mirrorInfo) stripesOf(off, length int64) uint64 {
	first, last := off/mi.regionSize, (off+length-1)/mi.regionSize
	if last-first >= lockStripes {
		return ^uint64(0)
	}
	var mask uint64
	for r := first; r <= last; r++ {
		mask |= 1 << (r % lockStripes)
	}
	return mask
}

// mark records that child c missed [off, off+length) and reports whether
// bitmap pages are waiting to be persisted (new ones, or ones an earlier
// persist could not write), which must happen before the write is issued.
func (mi *mirrorInfo) mark(c int, off, length int64) bool {
	if length <= 0 {
		return false
	}
	first, last := int(off/mi.regionSize), int((off+length-1)/mi.regionSize)
	mi.mu.Lock()
	defer mi.mu.Unlock()
	for r := first; r <= last; r++ {
		mi.markLocked(c, r)
	}
	if invariantsOn {
		mi.checkUnions()
	}
	return mi.unpersisted()
}

// unpersisted reports (under mu) whether a write must persist bitmap
// pages before it is issued: pages are pending, or a persist is writing
// some. A writer whose bit another writer set just before finds it either
// pending or in that persist's pages, and must not issue its data before
// the page is durable: persistDirty waits for the persist in progress.
// (Without the second half, such a writer went ahead while the page was
// still on its way: TestActivityLogOrdering, 1 run in ~20 of make test.)
func (mi *mirrorInfo) unpersisted() bool {
	if mi.persisting > 0 {
		return true
	}
	for _, p := range mi.pending {
		if len(p) > 0 {
			return true
		}
	}
	return false
}

// markLocked records that child c missed region r (under mu).
func (mi *mirrorInfo) markLocked(c, r int) {
	if !mi.dirty[c].Set(r) {
		return
	}
	for o := range mi.others {
		if o != c && mi.others[o].Set(r) && mi.pending != nil {
			mi.pending[o][mi.others[o].PageOf(r)] = struct{}{}
		}
	}
}

// marshalPage encodes page i of what child c's members persist: the
// regions the other children missed, and the active regions (under mu).
func (mi *mirrorInfo) marshalPage(c, i int, dst []byte) error {
	if mi.al != nil {
		return mi.others[c].MarshalPageUnion(i, mi.al.bm, dst)
	}
	return mi.others[c].MarshalPage(i, dst)
}

// markAll records that child c must be copied whole.
func (mi *mirrorInfo) markAll(c int) {
	mi.mark(c, 0, mi.m.Size())
}

// clear records that child c has region r again.
func (mi *mirrorInfo) clear(c, r int) {
	mi.mu.Lock()
	defer mi.mu.Unlock()
	mi.dirty[c].Clear(r)
	for o := range mi.others {
		if o == c || !mi.others[o].Test(r) {
			continue
		}
		still := false
		for j := range mi.dirty {
			if j != o && mi.dirty[j].Test(r) {
				still = true
			}
		}
		if !still && mi.others[o].Clear(r) && mi.pending != nil {
			mi.pending[o][mi.others[o].PageOf(r)] = struct{}{}
		}
	}
	if invariantsOn {
		mi.checkUnions()
	}
}

// clearAll records that child c has every region again and returns how
// many were dirty.
func (mi *mirrorInfo) clearAll(c int) int {
	n := 0
	for r := mi.next(c, 0); r >= 0; r = mi.next(c, r+1) {
		mi.clear(c, r)
		n++
	}
	return n
}

// next returns child c's first dirty region at or after from, or -1.
func (mi *mirrorInfo) next(c, from int) int {
	mi.mu.Lock()
	defer mi.mu.Unlock()
	if from >= mi.dirty[c].Regions() {
		return -1
	}
	return mi.dirty[c].NextDirty(from)
}

func (mi *mirrorInfo) test(c, r int) bool {
	mi.mu.Lock()
	defer mi.mu.Unlock()
	return mi.dirty[c].Test(r)
}

func (mi *mirrorInfo) count(c int) int {
	mi.mu.Lock()
	defer mi.mu.Unlock()
	return mi.dirty[c].Count()
}

// span returns the logical range of region r.
func (mi *mirrorInfo) span(r int) (off, length int64) {
	off = int64(r) * mi.regionSize
	return off, min(mi.regionSize, mi.m.Size()-off)
}

// readPicker sends a mirror read to the ready child with the least load.
type readPicker struct {
	e         *Engine
	excluded  []bool // members not to read from (they failed this request)
	noReplica bool
}

func (p *readPicker) Pick(m *layout.Mirror, _, _ int64) layout.ReplicaSet {
	mi := p.e.mirrors[m]
	best, bestLoad := -1, math.MaxInt
	for i := range mi.children {
		if ok, load := p.e.childReady(mi, i, (*member).readable, p.excluded); ok && load < bestLoad {
			best, bestLoad = i, load
		}
	}
	if best < 0 {
		p.noReplica = true
		return layout.Replica(0)
	}
	return layout.Replica(best)
}

// writePicker sends a mirror write to every child that takes writes, and
// records the range as dirty when a child is skipped.
type writePicker struct {
	r         *request
	noReplica bool
}

func (p *writePicker) Pick(m *layout.Mirror, off, length int64) layout.ReplicaSet {
	e := p.r.e
	mi := e.mirrors[m]
	var set layout.ReplicaSet
	for i := range mi.children {
		if ok, _ := e.childReady(mi, i, (*member).writable, nil); ok {
			set |= layout.Replica(i)
		}
	}
	if set == 0 {
		p.noReplica = true
		return layout.Replica(0)
	}
	for i := range mi.children {
		if !set.Has(i) && mi.mark(i, off, length) {
			p.r.persist = append(p.r.persist, mi)
		}
	}
	if mi.al != nil {
		p.r.noteActive(mi, off, length)
	}
	p.r.lock(mi, mi.stripesOf(off, length))
	return set
}

// dirtyPicker walks a range after a member failed a write to it, marking
// the range dirty in every mirror above that member.
type dirtyPicker struct {
	e       *Engine
	member  *member
	persist []*mirrorInfo
}

func (p *dirtyPicker) Pick(m *layout.Mirror, off, length int64) layout.ReplicaSet {
	for _, a := range p.member.ancestors {
		if a.mi.m == m {
			if a.mi.mark(a.child, off, length) {
				p.persist = append(p.persist, a.mi)
			}
			return layout.Replica(a.child)
		}
	}
	return layout.Replica(0)
}

// onlyPicker sends a mirror range to one leaf's child only (resync writes).
type onlyPicker struct {
	member *member
}

func (p *onlyPicker) Pick(m *layout.Mirror, _, _ int64) layout.ReplicaSet {
	for _, a := range p.member.ancestors {
		if a.mi.m == m {
			return layout.Replica(a.child)
		}
	}
	return layout.Replica(0)
}
