package layout

import (
	"fmt"
	"math"
)

// Leaf is a member: the data area of one device. Its logical offset x is the
// member offset DataOffset()+x.
type Leaf struct {
	index      int
	dataOffset int64
	dataSize   int64
}

var _ Layout = (*Leaf)(nil)

// NewLeaf returns the member with the given index whose data area is
// [dataOffset, dataOffset+dataSize) on the device; the bytes before
// dataOffset are the member's reserved metadata space and never appear in an
// extent. dataSize may be any positive byte count: it need not be a multiple
// of a sector or a page.
//
// It returns an error wrapping [ErrInvalid] if index or dataOffset is
// negative, dataSize is not positive, or the data area ends past the largest
// int64.
func NewLeaf(index int, dataOffset, dataSize int64) (*Leaf, error) {
	switch {
	case index < 0:
		return nil, fmt.Errorf("layout: leaf index %d is negative: %w", index, ErrInvalid)
	case dataOffset < 0:
		return nil, fmt.Errorf("layout: leaf #%d: data offset %d is negative: %w", index, dataOffset, ErrInvalid)
	case dataSize <= 0:
		return nil, fmt.Errorf("layout: leaf #%d: data size %d is not positive: %w", index, dataSize, ErrInvalid)
	case dataOffset > math.MaxInt64-dataSize:
		return nil, fmt.Errorf("layout: leaf #%d: data area %d+%d overflows int64: %w",
			index, dataOffset, dataSize, ErrInvalid)
	}
	return &Leaf{index: index, dataOffset: dataOffset, dataSize: dataSize}, nil
}

// Index returns the member index that extents carry in [Extent.Member].
func (l *Leaf) Index() int { return l.index }

// DataOffset returns the member offset where the data area starts, just past
// the reserved metadata space.
func (l *Leaf) DataOffset() int64 { return l.dataOffset }

// DataSize returns the size of the data area.
func (l *Leaf) DataSize() int64 { return l.dataSize }

// Size returns DataSize().
func (l *Leaf) Size() int64 { return l.dataSize }

// Map appends the one extent of [off, off+length) on this member; see
// [Layout.Map].
func (l *Leaf) Map(dst []Extent, off, length, bufOff int64, _ Picker) []Extent {
	checkRange("leaf", l.dataSize, off, length, bufOff)
	if length == 0 {
		return dst
	}
	return append(dst, Extent{Member: l.index, Offset: l.dataOffset + off, Length: length, BufOffset: bufOff})
}

// Logical returns the logical offset of member offset memberOff, the inverse
// of Map. It panics unless memberOff lies in the data area.
func (l *Leaf) Logical(memberOff int64) int64 {
	if memberOff < l.dataOffset || memberOff-l.dataOffset >= l.dataSize {
		panic(fmt.Sprintf("layout: leaf #%d: member offset %d outside the data area [%d, %d)",
			l.index, memberOff, l.dataOffset, l.dataOffset+l.dataSize))
	}
	return memberOff - l.dataOffset
}

// Leaves appends Index().
func (l *Leaf) Leaves(dst []int) []int { return append(dst, l.index) }

// String returns "#index@dataOffset+dataSize", e.g. "#2@4096+1000003".
func (l *Leaf) String() string {
	return fmt.Sprintf("#%d@%d+%d", l.index, l.dataOffset, l.dataSize)
}
