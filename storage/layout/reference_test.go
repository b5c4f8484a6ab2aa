// This file holds no test: it is the independent model of every layout (sizes recomputed from the leaves, a byte-at-a-time reference mapping, the list of boundaries, the inverse) and checkMapping, the invariant checker that the table, property, mutant and fuzz tests all run.
package layout

import (
	"fmt"
	"slices"
	"strings"
)

// unwrapper is implemented by test-only wrappers (the mutants) so that the
// model sees the node whose semantics they claim to have.
type unwrapper interface{ Unwrap() Layout }

// model returns the node whose semantics l claims.
func model(l Layout) Layout {
	for {
		u, ok := l.(unwrapper)
		if !ok {
			return l
		}
		l = u.Unwrap()
	}
}

// replicas says which children of every mirror the reference mapping uses.
type replicas int

const (
	firstOnly replicas = iota // child 0, as FirstReplica
	lastOnly                  // the last child, as lastReplica
	everyOne                  // every child, as AllReplicas
)

// lastReplica reads from the last child of every mirror.
var lastReplica = PickerFunc(func(m *Mirror, _, _ int64) ReplicaSet { return Replica(m.NumChildren() - 1) })

// loc is the place of one byte on a member.
type loc struct {
	member int
	off    int64 // member offset
}

// children returns the children of an inner node of the model.
func children(l Layout) []Layout {
	var n interface {
		NumChildren() int
		Child(int) Layout
	}
	switch x := model(l).(type) {
	case *Linear:
		n = x
	case *Stripe:
		n = x
	case *Mirror:
		n = x
	default:
		return nil
	}
	out := make([]Layout, n.NumChildren())
	for i := range out {
		out[i] = n.Child(i)
	}
	return out
}

// refSize recomputes the size of l from the data sizes of its leaves.
func refSize(l Layout) int64 {
	switch x := model(l).(type) {
	case *Leaf:
		return x.DataSize()
	case *Linear:
		var sum int64
		for _, c := range children(x) {
			sum += refSize(c)
		}
		return sum
	case *Stripe:
		used := refSize(x.Child(0))
		for _, c := range children(x) {
			used = min(used, refSize(c))
		}
		used -= used % x.Chunk()
		return used * int64(x.NumChildren())
	case *Mirror:
		size := refSize(x.Child(0))
		for _, c := range children(x) {
			size = min(size, refSize(c))
		}
		return size
	}
	panic(fmt.Sprintf("model: unknown node %T", l))
}

// refMap appends to dst the places of the byte at logical offset x of l. A
// linear is walked child by child; a stripe is cut in rows of one chunk per
// child (not in chunks as Stripe.Map does).
func refMap(l Layout, x int64, r replicas, dst []loc) []loc {
	switch n := model(l).(type) {
	case *Leaf:
		return append(dst, loc{n.Index(), n.DataOffset() + x})
	case *Linear:
		for _, c := range children(n) {
			if x < refSize(c) {
				return refMap(c, x, r, dst)
			}
			x -= refSize(c)
		}
	case *Stripe:
		width := int64(n.NumChildren()) * n.Chunk()
		row, inRow := x/width, x%width
		child := inRow / n.Chunk()
		return refMap(n.Child(int(child)), row*n.Chunk()+inRow-child*n.Chunk(), r, dst)
	case *Mirror:
		switch r {
		case firstOnly:
			return refMap(n.Child(0), x, r, dst)
		case lastOnly:
			return refMap(n.Child(n.NumChildren()-1), x, r, dst)
		}
		for _, c := range children(n) {
			dst = refMap(c, x, r, dst)
		}
		return dst
	}
	panic(fmt.Sprintf("model: byte %d outside %v", x, l))
}

// refBounds appends every logical offset b with lo < b < hi at which the
// mapping of l may jump, for any replica: the starts of the children of a
// linear, the chunk edges of a stripe, and the boundaries inside every
// child, brought up to l's offsets. Between two consecutive boundaries the
// mapping of every replica is contiguous on one member.
func refBounds(l Layout, lo, hi int64, dst []int64) []int64 {
	hi = min(hi, refSize(l))
	if lo+1 >= hi {
		return dst
	}
	switch n := model(l).(type) {
	case *Linear:
		start := int64(0)
		for _, c := range children(n) {
			if start > lo && start < hi {
				dst = append(dst, start)
			}
			for _, b := range refBounds(c, lo-start, hi-start, nil) {
				dst = append(dst, start+b)
			}
			start += refSize(c)
		}
	case *Stripe:
		chunk, width := n.Chunk(), int64(n.NumChildren())*n.Chunk()
		for b := (lo/chunk + 1) * chunk; b < hi; b += chunk {
			dst = append(dst, b)
		}
		rowLo, rowHi := lo/width, hi/width // rows touched by (lo, hi)
		for i, c := range children(n) {
			for _, b := range refBounds(c, rowLo*chunk, (rowHi+1)*chunk, nil) {
				if x := b/chunk*width + int64(i)*chunk + b%chunk; x > lo && x < hi {
					dst = append(dst, x)
				}
			}
		}
	case *Mirror:
		for _, c := range children(n) {
			dst = refBounds(c, lo, hi, dst)
		}
	}
	return dst
}

// sortedBounds returns refBounds(l, lo, hi) sorted, without duplicates.
func sortedBounds(l Layout, lo, hi int64) []int64 {
	b := refBounds(l, lo, hi, nil)
	slices.Sort(b)
	return slices.Compact(b)
}

// leafOf returns the leaves of l by index.
func leafOf(l Layout) map[int]*Leaf {
	out := make(map[int]*Leaf)
	var walk func(Layout)
	walk = func(l Layout) {
		if leaf, ok := model(l).(*Leaf); ok {
			out[leaf.Index()] = leaf
		}
		for _, c := range children(l) {
			walk(c)
		}
	}
	walk(l)
	return out
}

// logicalOf maps member offset off of leaf member back to a logical offset
// of l with the inverse methods under test (Leaf, Linear and Stripe
// Logical; a mirror is the identity). ok is false if the leaf is not in l.
func logicalOf(l Layout, member int, off int64) (x int64, ok bool) {
	switch n := model(l).(type) {
	case *Leaf:
		if n.Index() != member {
			return 0, false
		}
		return n.Logical(off), true
	case *Linear, *Stripe, *Mirror:
		for i, c := range children(n) {
			if x, ok := logicalOf(c, member, off); ok {
				switch n := n.(type) {
				case *Linear:
					return n.Logical(i, x), true
				case *Stripe:
					return n.Logical(i, x), true
				}
				return x, true
			}
		}
	}
	return 0, false
}

// pass is one way of mapping a request.
type pass struct {
	name   string
	picker Picker
	r      replicas
	bufOff int64
}

var passes = []pass{
	{"read first replica", FirstReplica, firstOnly, 0},
	{"read last replica", lastReplica, lastOnly, 4096 + 7},
	{"write all replicas", AllReplicas, everyOne, 3},
}

// checkMapping maps the request [off, off+length) of l once per pass and
// returns a description of the first broken invariant, or "" if there is
// none. A panic counts as a broken invariant.
func checkMapping(l Layout, off, length int64) (msg string) {
	defer func() {
		if r := recover(); r != nil {
			msg = fmt.Sprintf("panic mapping [%d, +%d) of %v: %v", off, length, l, r)
		}
	}()
	if got, want := l.Size(), refSize(l); got != want {
		return fmt.Sprintf("Size() = %d, want %d, for %v", got, want, l)
	}
	leaves := leafOf(l)
	bounds := sortedBounds(l, off, off+length)
	for _, p := range passes {
		if msg := checkPass(l, leaves, bounds, off, length, p); msg != "" {
			return fmt.Sprintf("%s of [%d, +%d) (end %d) from %v: %s", p.name, off, length, off+length, l, msg)
		}
	}
	return ""
}

// placed is an extent with the logical offset of its first byte.
type placed struct {
	Extent
	x int64
}

func checkPass(l Layout, leaves map[int]*Leaf, bounds []int64, off, length int64, p pass) string {
	sentinel := Extent{Member: -1, Offset: -2, Length: -3, BufOffset: -4}
	out := l.Map([]Extent{sentinel}, off, length, p.bufOff, p.picker)
	if out[0] != sentinel {
		return fmt.Sprintf("Map overwrote dst[0] with %v", out[0])
	}
	exts := out[1:]
	show := func() string { return showExtents(exts) }
	if p.r != everyOne { // a read: contiguous, ascending, exactly the request
		next := p.bufOff
		for _, e := range exts {
			if e.BufOffset != next {
				return fmt.Sprintf("extent %v starts at buffer offset %d, want %d: %s", e, e.BufOffset, next, show())
			}
			next += e.Length
		}
		if next != p.bufOff+length {
			return fmt.Sprintf("extents end at buffer offset %d, want %d: %s", next, p.bufOff+length, show())
		}
	}
	byMember := make(map[int][]placed)
	var total int64
	for _, e := range exts {
		leaf := leaves[e.Member]
		switch {
		case e.Length <= 0:
			return fmt.Sprintf("extent %v is empty: %s", e, show())
		case leaf == nil:
			return fmt.Sprintf("extent %v is on no leaf of the layout: %s", e, show())
		case e.Offset < leaf.DataOffset() || e.End() > leaf.DataOffset()+leaf.DataSize():
			return fmt.Sprintf("extent %v leaves the data area [%d, %d) of %v: %s",
				e, leaf.DataOffset(), leaf.DataOffset()+leaf.DataSize(), leaf, show())
		case e.BufOffset < p.bufOff || e.BufOffset+e.Length > p.bufOff+length:
			return fmt.Sprintf("extent %v leaves the buffer [%d, %d): %s", e, p.bufOff, p.bufOff+length, show())
		}
		x := off + e.BufOffset - p.bufOff
		// First and last byte against the reference mapping and the inverse.
		for _, b := range [2]int64{0, e.Length - 1} {
			want := refMap(l, x+b, p.r, nil)
			if got := (loc{e.Member, e.Offset + b}); !slices.Contains(want, got) {
				return fmt.Sprintf("byte %d (buffer %d) of extent %v goes to #%d@%d, the reference puts it at %v: %s",
					x+b, e.BufOffset+b, e, got.member, got.off, want, show())
			}
			if back, ok := logicalOf(l, e.Member, e.Offset+b); !ok || back != x+b {
				return fmt.Sprintf("round trip of byte %d: #%d@%d maps back to %d (found %v)",
					x+b, e.Member, e.Offset+b, back, ok)
			}
		}
		byMember[e.Member] = append(byMember[e.Member], placed{e, x})
		total += e.Length
	}
	// Exactly once per replica: between two boundaries every place the
	// reference gives must be covered by one extent, whole; and nothing else.
	for m, ps := range byMember {
		slices.SortFunc(ps, func(a, b placed) int { return int(a.x - b.x) })
		for i := 1; i < len(ps); i++ {
			if ps[i-1].x+ps[i-1].Length > ps[i].x {
				return fmt.Sprintf("extents %v and %v both carry byte %d to member #%d: %s",
					ps[i-1].Extent, ps[i].Extent, ps[i].x, m, show())
			}
		}
	}
	var want int64
	start := off
	for i := 0; i <= len(bounds); i++ {
		end := off + length
		if i < len(bounds) {
			end = bounds[i]
		}
		places := refMap(l, start, p.r, nil)
		want += (end - start) * int64(len(places))
		for _, pl := range places {
			ps := byMember[pl.member]
			j, _ := slices.BinarySearchFunc(ps, start, func(e placed, x int64) int { return int(e.x - x) })
			if j == len(ps) || ps[j].x != start {
				j-- // the extent starting at or before start, if any
			}
			if j < 0 || ps[j].x+ps[j].Length <= start {
				return fmt.Sprintf("bytes [%d, %d) reach no extent on #%d@%d: %s", start, end, pl.member, pl.off, show())
			}
			e := ps[j]
			if e.x+e.Length < end {
				return fmt.Sprintf("bytes [%d, %d) go to #%d@%d but extent %v stops at %d, inside them: %s",
					start, end, pl.member, pl.off, e.Extent, e.x+e.Length, show())
			}
			if got := e.Offset + start - e.x; got != pl.off {
				return fmt.Sprintf("byte %d goes to #%d@%d via extent %v, the reference puts it at @%d: %s",
					start, pl.member, got, e.Extent, pl.off, show())
			}
		}
		start = end
	}
	if total != want {
		return fmt.Sprintf("extents carry %d bytes, want %d (each byte once per replica): %s", total, want, show())
	}
	return ""
}

// showExtents formats at most a dozen extents.
func showExtents(exts []Extent) string {
	const most = 12
	var b strings.Builder
	fmt.Fprintf(&b, "%d extents [", len(exts))
	for i, e := range exts {
		if i == most {
			b.WriteString(" ...")
			break
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(e.String())
	}
	b.WriteByte(']')
	return b.String()
}
