package layout

import "fmt"

// Mirror keeps the same bytes on every child: logical offset x of the mirror
// is logical offset x of each child. Its size is that of its smallest child;
// whatever lies past that on a larger child is never used.
//
// Which children a piece of a request goes to is not the mirror's decision:
// Map asks the [Picker] it is given, so that the engine can write to every
// in-sync replica and read from one.
type Mirror struct {
	children []Layout
	size     int64
}

var _ Layout = (*Mirror)(nil)

// NewMirror returns a mirror of children, child 0 first. The slice is
// copied. A mirror of one child is allowed (a mirror created degraded).
//
// It returns an error wrapping [ErrInvalid] if there is no child or more than
// [MaxReplicas], a child is nil, or a leaf index appears twice.
func NewMirror(children ...Layout) (*Mirror, error) {
	if len(children) > MaxReplicas {
		return nil, fmt.Errorf("layout: mirror has %d children, more than %d: %w",
			len(children), MaxReplicas, ErrInvalid)
	}
	if err := checkChildren("mirror", children); err != nil {
		return nil, err
	}
	size := children[0].Size()
	for _, c := range children[1:] {
		size = min(size, c.Size())
	}
	return &Mirror{children: append([]Layout(nil), children...), size: size}, nil
}

// Size returns the size of the smallest child.
func (m *Mirror) Size() int64 { return m.size }

// NumChildren returns the number of children (replicas).
func (m *Mirror) NumChildren() int { return len(m.children) }

// Child returns child i.
func (m *Mirror) Child(i int) Layout { return m.children[i] }

// All returns the set of every child.
func (m *Mirror) All() ReplicaSet {
	if len(m.children) == MaxReplicas {
		return ^ReplicaSet(0)
	}
	return 1<<uint(len(m.children)) - 1
}

// Map appends, for each child that p picks for [off, off+length), in
// ascending child order, the extents of the same range on that child; see
// [Layout.Map]. It panics if p is nil, or picks no child or a child that
// does not exist.
func (m *Mirror) Map(dst []Extent, off, length, bufOff int64, p Picker) []Extent {
	checkRange("mirror", m.size, off, length, bufOff)
	if length == 0 {
		return dst
	}
	if p == nil {
		panic(fmt.Sprintf("layout: %v: Map needs a Picker", m))
	}
	set := p.Pick(m, off, length)
	if set == 0 || set&^m.All() != 0 {
		panic(fmt.Sprintf("layout: picker chose replicas %#x of %d for [%d, +%d) of %s",
			uint64(set), len(m.children), off, length, m))
	}
	for i, c := range m.children {
		if set.Has(i) {
			dst = c.Map(dst, off, length, bufOff, p)
		}
	}
	return dst
}

// Leaves appends the leaves of every child, in order.
func (m *Mirror) Leaves(dst []int) []int {
	for _, c := range m.children {
		dst = c.Leaves(dst)
	}
	return dst
}

// String returns "mirror(child, child, ...)".
func (m *Mirror) String() string { return describe("mirror", "", m.children) }
