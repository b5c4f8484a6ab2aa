package layout

import (
	"fmt"
	"math"

	"dst/internal/size"
)

// Stripe deals chunks to its children in turn: chunk k, the logical range
// [k*Chunk(), (k+1)*Chunk()), lives on child k%N at child offset
// (k/N)*Chunk(), where N is the number of children.
//
// Every child contributes the same number of whole chunks, PerChild() bytes:
// the size of the smallest child rounded down to a multiple of the chunk.
// Whatever lies past that on a larger child is never used.
type Stripe struct {
	chunk    int64
	children []Layout
	perChild int64
}

var _ Layout = (*Stripe)(nil)

// NewStripe returns a stripe of children with the given chunk size in bytes.
// The chunk need not be a power of two nor a multiple of a sector. The slice
// of children is copied.
//
// It returns an error wrapping [ErrInvalid] if chunk is not positive, there
// is no child, a child is nil, a leaf index appears twice, the smallest child
// is smaller than one chunk, or the size overflows int64.
func NewStripe(chunk int64, children ...Layout) (*Stripe, error) {
	if chunk <= 0 {
		return nil, fmt.Errorf("layout: stripe: chunk size %d is not positive: %w", chunk, ErrInvalid)
	}
	if err := checkChildren("stripe", children); err != nil {
		return nil, err
	}
	smallest := 0
	for i, c := range children {
		if c.Size() < children[smallest].Size() {
			smallest = i
		}
	}
	perChild := children[smallest].Size() / chunk * chunk
	if perChild == 0 {
		return nil, fmt.Errorf("layout: stripe: child %d (%s) holds %d bytes, less than one chunk of %s: %w",
			smallest, children[smallest], children[smallest].Size(), size.Format(chunk), ErrInvalid)
	}
	if perChild > math.MaxInt64/int64(len(children)) {
		return nil, fmt.Errorf("layout: stripe: %d children of %d bytes overflow int64: %w",
			len(children), perChild, ErrInvalid)
	}
	return &Stripe{chunk: chunk, children: append([]Layout(nil), children...), perChild: perChild}, nil
}

// Size returns NumChildren()*PerChild().
func (s *Stripe) Size() int64 { return int64(len(s.children)) * s.perChild }

// Chunk returns the chunk size in bytes.
func (s *Stripe) Chunk() int64 { return s.chunk }

// PerChild returns the number of bytes used on each child: a multiple of the
// chunk size.
func (s *Stripe) PerChild() int64 { return s.perChild }

// NumChildren returns the number of children.
func (s *Stripe) NumChildren() int { return len(s.children) }

// Child returns child i.
func (s *Stripe) Child(i int) Layout { return s.children[i] }

// Map appends the extents of [off, off+length), one piece per chunk touched;
// see [Layout.Map].
func (s *Stripe) Map(dst []Extent, off, length, bufOff int64, p Picker) []Extent {
	checkRange("stripe", s.Size(), off, length, bufOff)
	n := int64(len(s.children))
	for length > 0 {
		k := off / s.chunk
		within := off - k*s.chunk
		piece := min(length, s.chunk-within)
		dst = s.children[k%n].Map(dst, k/n*s.chunk+within, piece, bufOff, p)
		off += piece
		bufOff += piece
		length -= piece
	}
	return dst
}

// Logical returns the logical offset of offset childOff of child i, the
// inverse of Map. It panics unless 0 <= childOff < PerChild().
func (s *Stripe) Logical(child int, childOff int64) int64 {
	checkChild("stripe", child, len(s.children), childOff, func(int) int64 { return s.perChild })
	row := childOff / s.chunk
	return (row*int64(len(s.children))+int64(child))*s.chunk + childOff - row*s.chunk
}

// Leaves appends the leaves of every child, in order.
func (s *Stripe) Leaves(dst []int) []int {
	for _, c := range s.children {
		dst = c.Leaves(dst)
	}
	return dst
}

// String returns "stripe(chunk; child, child, ...)", e.g.
// "stripe(64KiB; #0@4096+1048576, #1@4096+1048576)".
func (s *Stripe) String() string { return describe("stripe", size.Format(s.chunk), s.children) }
