package layout

import "fmt"

// Linear concatenates its children: child i holds the logical range
// [Start(i), Start(i)+Child(i).Size()).
type Linear struct {
	children []Layout
	// starts[i] is the logical offset of child i; starts[len(children)] is
	// the size.
	starts []int64
}

var _ Layout = (*Linear)(nil)

// NewLinear returns the concatenation of children, in order. The slice is
// copied.
//
// It returns an error wrapping [ErrInvalid] if there is no child, a child is
// nil, a leaf index appears twice, or the total size overflows int64.
func NewLinear(children ...Layout) (*Linear, error) {
	if err := checkChildren("linear", children); err != nil {
		return nil, err
	}
	starts := make([]int64, len(children)+1)
	for i, c := range children {
		end, ok := addSizes(starts[i], c.Size())
		if !ok {
			return nil, fmt.Errorf("layout: linear: size overflows int64 at child %d (%s): %w", i, c, ErrInvalid)
		}
		starts[i+1] = end
	}
	return &Linear{children: append([]Layout(nil), children...), starts: starts}, nil
}

// Size returns the sum of the children's sizes.
func (l *Linear) Size() int64 { return l.starts[len(l.children)] }

// NumChildren returns the number of children.
func (l *Linear) NumChildren() int { return len(l.children) }

// Child returns child i.
func (l *Linear) Child(i int) Layout { return l.children[i] }

// Start returns the logical offset where child i begins.
func (l *Linear) Start(i int) int64 { return l.starts[i] }

// Map appends the extents of [off, off+length); see [Layout.Map]. A request
// that crosses the end of a child is cut exactly there, at any byte.
func (l *Linear) Map(dst []Extent, off, length, bufOff int64, p Picker) []Extent {
	checkRange("linear", l.Size(), off, length, bufOff)
	if length == 0 {
		return dst
	}
	for i := l.childAt(off); length > 0; i++ {
		n := min(length, l.starts[i+1]-off)
		dst = l.children[i].Map(dst, off-l.starts[i], n, bufOff, p)
		off += n
		bufOff += n
		length -= n
	}
	return dst
}

// childAt returns the child holding logical offset off, 0 <= off < Size().
// It searches by hand: a closure for sort.Search could allocate.
func (l *Linear) childAt(off int64) int {
	lo, hi := 0, len(l.children)-1
	for lo < hi { // invariant: starts[lo] <= off < starts[hi+1]
		mid := int(uint(lo+hi+1) >> 1)
		if l.starts[mid] <= off {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// Logical returns the logical offset of offset childOff of child i, the
// inverse of Map. It panics unless 0 <= childOff < Child(i).Size().
func (l *Linear) Logical(child int, childOff int64) int64 {
	checkChild("linear", child, len(l.children), childOff, func(i int) int64 { return l.starts[i+1] - l.starts[i] })
	return l.starts[child] + childOff
}

// Leaves appends the leaves of every child, in order.
func (l *Linear) Leaves(dst []int) []int {
	for _, c := range l.children {
		dst = c.Leaves(dst)
	}
	return dst
}

// String returns "linear(child, child, ...)".
func (l *Linear) String() string { return describe("linear", "", l.children) }
