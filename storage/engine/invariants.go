// Expensive self-checks, run where `invariantsOn` (go test -tags
// invariants; make test runs the engine and simulator packages so). Each
// panics with what broke: a broken invariant is a bug in the engine, not
// an error to return.
package engine

import (
	"fmt"
	"slices"

	"dst/storage/layout"
	"dst/storage/nbd"
)

// checkUnions checks that what child c's members persist is the union of
// what the other children missed: others[c] = ∪ dirty[j], j != c (mi.mu
// held).
func (mi *mirrorInfo) checkUnions() {
	for c := range mi.others {
		for r := range mi.others[c].Regions() {
			want := false
			for j := range mi.dirty {
				want = want || (j != c && mi.dirty[j].Test(r))
			}
			if got := mi.others[c].Test(r); got != want {
				panic(fmt.Sprintf("engine invariant: mirror %d: region %d in the bitmap child %d persists is %v, the other children's dirty maps say %v",
					mi.id, r, c, got, want))
			}
		}
	}
}

// checkExtents checks that the extents of a request of n bytes cover its
// buffer: a read reads every byte exactly once, a write-like request
// writes every byte at least once and no byte twice to one member.
func checkExtents(cmd nbd.Command, exts []layout.Extent, n int64) {
	count := make([]int, n)
	perMember := map[int][]bool{}
	for _, x := range exts {
		if x.Length <= 0 || x.BufOffset < 0 || x.BufOffset+x.Length > n {
			panic(fmt.Sprintf("engine invariant: %v of %d bytes: extent %+v lies outside the request", cmd, n, x))
		}
		seen := perMember[x.Member]
		if seen == nil {
			seen = make([]bool, n)
			perMember[x.Member] = seen
		}
		for b := x.BufOffset; b < x.BufOffset+x.Length; b++ {
			if seen[b] {
				panic(fmt.Sprintf("engine invariant: %v of %d bytes: byte %d goes to member %d twice (%v)", cmd, n, b, x.Member, exts))
			}
			seen[b] = true
			count[b]++
		}
	}
	for b, c := range count {
		if c == 0 || (cmd == nbd.CmdRead && c != 1) {
			panic(fmt.Sprintf("engine invariant: %v of %d bytes: byte %d is covered %d times (%v)", cmd, n, b, c, exts))
		}
	}
}

// checkWriteLocks checks that a write-like request of [off, off+n) about
// to be sent holds the read side of every lock stripe its range touches
// in the root mirror (when the root is one), and that every stripe it
// counts as held is held by some reader.
func (r *request) checkWriteLocks(off, n int64) {
	if root, ok := r.e.root.(*layout.Mirror); ok {
		mi := r.e.mirrors[root]
		want := mi.stripesOf(off, n)
		i := slices.IndexFunc(r.held, func(h heldLocks) bool { return h.mi == mi })
		if i < 0 || r.held[i].mask&want != want {
			panic(fmt.Sprintf("engine invariant: write of %d bytes at %d goes out without the lock stripes %#x of its regions (held %v)", n, off, want, r.held))
		}
	}
	for _, h := range r.held {
		for s := range lockStripes {
			if h.mask&(1<<s) == 0 {
				continue
			}
			lk := &h.mi.locks[s]
			lk.mu.Lock()
			readers, writer := lk.readers, lk.writer
			lk.mu.Unlock()
			if readers <= 0 || writer {
				panic(fmt.Sprintf("engine invariant: mirror %d stripe %d counted as held for reading, but it has %d readers and writer=%v", h.mi.id, s, readers, writer))
			}
		}
	}
}

// checkCopyLock checks that a resync copy of region r holds the write
// side of its stripe.
func (mi *mirrorInfo) checkCopyLock(r int) {
	lk := &mi.locks[int64(r)%lockStripes]
	lk.mu.Lock()
	writer, readers := lk.writer, lk.readers
	lk.mu.Unlock()
	if !writer || readers != 0 {
		panic(fmt.Sprintf("engine invariant: mirror %d: copy of region %d without the write side of its stripe (writer=%v, %d readers)", mi.id, r, writer, readers))
	}
}
