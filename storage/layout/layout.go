// Package layout maps byte ranges of an assembled storage onto its members.
//
// A layout is a tree. Its leaves are members (a remote NBD node, a local file
// or disk), each with a data area that follows the member's reserved metadata
// space. Its inner nodes combine their children:
//
//   - [Linear] concatenates its children;
//   - [Stripe] deals fixed-size chunks to its children in turn;
//   - [Mirror] keeps the same bytes on every child.
//
// Nodes compose freely: a mirror of two stripes, a linear of mirrors, a stripe
// of mirrors, and so on.
//
// Three kinds of offsets appear here, all in bytes and none of them assumed to
// be aligned to a sector or a page:
//
//   - a logical offset is a position in a node's own address space,
//     [0, Size()); the root's logical offsets are what the client sees;
//   - a member offset is a position on a member device; it includes the
//     member's reserved metadata area, so the data area of leaf l is
//     [l.DataOffset(), l.DataOffset()+l.DataSize());
//   - a buffer offset is a position in the client's request buffer.
//
// The package is pure: no I/O, no goroutines, no logging. Nodes are immutable
// once built, so one layout may be used by any number of goroutines at once.
// Map allocates nothing beyond growing the caller's slice, so an engine that
// keeps extents in a fixed array allocates nothing per request.
//
// Constructors validate their arguments and return errors wrapping
// [ErrInvalid]. Calling Map or Logical with a range outside the node is a
// programmer error and panics.
package layout

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strings"
)

// ErrInvalid is wrapped by every error a constructor returns.
var ErrInvalid = errors.New("invalid layout")

// MaxReplicas is the largest number of children a [Mirror] may have, so that
// a [ReplicaSet] fits in one machine word.
const MaxReplicas = 64

// Extent is one piece of a client request mapped onto one member.
type Extent struct {
	// Member is the index of the leaf that holds the piece ([Leaf.Index]).
	Member int
	// Offset is the member offset of the piece: it includes the member's
	// reserved metadata area, so it can be sent to the member as is.
	Offset int64
	// Length is the size of the piece in bytes; it is never zero.
	Length int64
	// BufOffset is the offset of the piece in the client's request buffer.
	BufOffset int64
}

// End returns the member offset just past the extent.
func (e Extent) End() int64 { return e.Offset + e.Length }

// String returns e as "#member@offset+length<-buf:bufOffset".
func (e Extent) String() string {
	return fmt.Sprintf("#%d@%d+%d<-buf:%d", e.Member, e.Offset, e.Length, e.BufOffset)
}

// Layout is a node of a layout tree.
type Layout interface {
	// Size returns the number of bytes the node exposes. It is fixed when the
	// node is built and always positive.
	Size() int64

	// Map appends to dst the extents that cover the logical range
	// [off, off+length) of the node and returns the extended slice, like
	// append. The piece of the range at logical offset off+i is at buffer
	// offset bufOff+i. Map retains neither dst nor p.
	//
	// The range must lie inside [0, Size()) and bufOff must not be negative;
	// Map panics otherwise. A zero length appends nothing.
	//
	// Extents are appended depth first, in ascending logical order within
	// each node, and never have a zero length. Map does not merge extents
	// that happen to be adjacent on the same member. When every mirror on
	// the way is asked for one child only (a read), the extents are in
	// ascending buffer order and contiguous: the first starts at bufOff,
	// each next one starts where the previous one ends, and their lengths
	// add up to length. When a mirror is asked for several children (a
	// write), it appends the extents of each chosen child in turn, in
	// ascending child order, so each byte of the range appears once per
	// chosen replica.
	//
	// p chooses the children of every mirror below the node; it is not
	// consulted when there is none and may then be nil.
	//
	// Map allocates nothing when dst has room for the extents.
	Map(dst []Extent, off, length, bufOff int64, p Picker) []Extent

	// Leaves appends to dst the indexes of the leaves under the node, depth
	// first, and returns the extended slice.
	Leaves(dst []int) []int

	// String returns a one-line description of the node and everything
	// under it, such as "mirror(stripe(64KiB; #0@4096+1048576,
	// #1@4096+1048576), #2@4096+2097152)": a leaf is written
	// #index@dataOffset+dataSize. It is meant for people (superblocks, logs,
	// failure reports); nothing parses it.
	String() string
}

// ReplicaSet is a set of children of a [Mirror]: bit i stands for child i.
type ReplicaSet uint64

// Replica returns the set holding child i alone. It panics unless
// 0 <= i < MaxReplicas.
func Replica(i int) ReplicaSet {
	if i < 0 || i >= MaxReplicas {
		panic(fmt.Sprintf("layout: replica %d outside [0, %d)", i, MaxReplicas))
	}
	return 1 << uint(i)
}

// Has reports whether child i is in s.
func (s ReplicaSet) Has(i int) bool {
	return i >= 0 && i < MaxReplicas && s&(1<<uint(i)) != 0
}

// Len returns the number of children in s.
func (s ReplicaSet) Len() int { return bits.OnesCount64(uint64(s)) }

// Picker decides which children of a mirror receive a piece of a request.
type Picker interface {
	// Pick returns the children of m that receive the logical range
	// [off, off+length) of m: every in-sync child for a write, one child
	// for a read. The set must not be empty and must name children of m
	// only; Map panics otherwise.
	//
	// Pick is called once for every piece of a request that reaches m, with
	// m's own logical offsets, and may be called from many goroutines at
	// once. It must not retain m beyond the call and should not allocate:
	// it runs on the request path.
	Pick(m *Mirror, off, length int64) ReplicaSet
}

// PickerFunc adapts a function to the [Picker] interface.
type PickerFunc func(m *Mirror, off, length int64) ReplicaSet

// Pick returns f(m, off, length).
func (f PickerFunc) Pick(m *Mirror, off, length int64) ReplicaSet { return f(m, off, length) }

// AllReplicas is the Picker for a write to a healthy mirror: it picks every
// child.
var AllReplicas Picker = allReplicas{}

// FirstReplica is the Picker that reads from child 0 of every mirror. It is
// mostly useful in tests.
var FirstReplica Picker = firstReplica{}

type allReplicas struct{}

func (allReplicas) Pick(m *Mirror, _, _ int64) ReplicaSet { return m.All() }

type firstReplica struct{}

func (firstReplica) Pick(*Mirror, int64, int64) ReplicaSet { return 1 }

// checkRange panics unless [off, off+length) lies inside [0, size) and bufOff
// is not negative. It is written so that no sum can overflow.
func checkRange(kind string, size, off, length, bufOff int64) {
	if off < 0 || length < 0 || off > size-length || bufOff < 0 {
		panic(fmt.Sprintf("layout: %s: range [%d, +%d) at buffer offset %d is outside [0, %d)",
			kind, off, length, bufOff, size))
	}
}

// checkChild panics unless 0 <= child < n and 0 <= childOff < size(child);
// it guards the inverse mappings.
func checkChild(kind string, child, n int, childOff int64, size func(int) int64) {
	if child < 0 || child >= n {
		panic(fmt.Sprintf("layout: %s: child %d outside [0, %d)", kind, child, n))
	}
	if s := size(child); childOff < 0 || childOff >= s {
		panic(fmt.Sprintf("layout: %s: offset %d outside [0, %d) of child %d", kind, childOff, s, child))
	}
}

// checkChildren validates the children of an inner node: there is at least
// one, none is nil, and no leaf index appears twice in the whole subtree.
func checkChildren(kind string, children []Layout) error {
	if len(children) == 0 {
		return fmt.Errorf("layout: %s has no children: %w", kind, ErrInvalid)
	}
	seen := make(map[int]int)
	var leaves []int
	for i, c := range children {
		if c == nil {
			return fmt.Errorf("layout: %s: child %d is nil: %w", kind, i, ErrInvalid)
		}
		if c.Size() <= 0 {
			return fmt.Errorf("layout: %s: child %d (%s) has size %d: %w", kind, i, c, c.Size(), ErrInvalid)
		}
		leaves = c.Leaves(leaves[:0])
		for _, leaf := range leaves {
			if j, dup := seen[leaf]; dup {
				return fmt.Errorf("layout: %s: leaf #%d appears under child %d and child %d: %w",
					kind, leaf, j, i, ErrInvalid)
			}
			seen[leaf] = i
		}
	}
	return nil
}

// describe writes "kind(prefix; child, child, ...)".
func describe(kind, prefix string, children []Layout) string {
	var b strings.Builder
	b.WriteString(kind)
	b.WriteByte('(')
	if prefix != "" {
		b.WriteString(prefix)
		b.WriteString("; ")
	}
	for i, c := range children {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(c.String())
	}
	b.WriteByte(')')
	return b.String()
}

// addSizes returns a+b, or false if the sum overflows int64. Both are
// positive.
func addSizes(a, b int64) (int64, bool) {
	if a > math.MaxInt64-b {
		return 0, false
	}
	return a + b, true
}
