// Proves the property suite is sharp: it runs the same gopter property against deliberately broken copies of the mapping (a page split one byte off at a member boundary, an off-by-one at a stripe chunk edge, a leaf that forgets its metadata area, a mirror write that skips a replica) and requires each to be caught by a property, not by a panic, logging the shrunk counterexample.
package layout

import (
	"strings"
	"testing"
)

// splitMutant moves every split between two members of a read by one byte:
// the piece before the boundary takes one byte too many (late) or too few
// (early), as a mapping that compares with <= instead of < would.
type splitMutant struct {
	Layout
	late bool
}

func (m splitMutant) Unwrap() Layout { return m.Layout }

func (m splitMutant) Map(dst []Extent, off, length, bufOff int64, p Picker) []Extent {
	start := len(dst)
	dst = m.Layout.Map(dst, off, length, bufOff, p)
	for i := start + 1; i < len(dst); i++ {
		a, b := &dst[i-1], &dst[i]
		if a.Member == b.Member || a.BufOffset+a.Length != b.BufOffset {
			continue
		}
		switch {
		case m.late && b.Length > 1:
			a.Length++
			b.Offset, b.Length, b.BufOffset = b.Offset+1, b.Length-1, b.BufOffset+1
		case !m.late && a.Length > 1:
			a.Length--
			b.Offset, b.Length, b.BufOffset = b.Offset-1, b.Length+1, b.BufOffset-1
		}
	}
	return dst
}

// stripeEdgeMutant is Stripe.Map with an off-by-one at the chunk edge: each
// piece runs one byte into the next chunk, on the same child (kept inside
// the child so that no range check fires).
type stripeEdgeMutant struct{ *Stripe }

func (m stripeEdgeMutant) Unwrap() Layout { return m.Stripe }

func (m stripeEdgeMutant) Map(dst []Extent, off, length, bufOff int64, p Picker) []Extent {
	s := m.Stripe
	n, chunk := int64(s.NumChildren()), s.Chunk()
	for length > 0 {
		k := off / chunk
		within := off - k*chunk
		childOff := k/n*chunk + within
		piece := min(length, chunk-within+1, s.PerChild()-childOff) // the bug: +1
		dst = s.Child(int(k%n)).Map(dst, childOff, piece, bufOff, p)
		off += piece
		bufOff += piece
		length -= piece
	}
	return dst
}

// metadataMutant is Leaf.Map without DataOffset: its extents land in the
// member's reserved metadata area.
type metadataMutant struct{ *Leaf }

func (m metadataMutant) Unwrap() Layout { return m.Leaf }

func (m metadataMutant) Map(dst []Extent, off, length, bufOff int64, _ Picker) []Extent {
	checkRange("leaf", m.DataSize(), off, length, bufOff)
	return append(dst, Extent{Member: m.Index(), Offset: off, Length: length, BufOffset: bufOff})
}

// replicaMutant is Mirror.Map that loses the last replica of a write.
type replicaMutant struct{ *Mirror }

func (m replicaMutant) Unwrap() Layout { return m.Mirror }

func (m replicaMutant) Map(dst []Extent, off, length, bufOff int64, p Picker) []Extent {
	set := p.Pick(m.Mirror, off, length)
	for i := range m.NumChildren() - 1 {
		if set.Has(i) {
			dst = m.Child(i).Map(dst, off, length, bufOff, p)
		}
	}
	if last := m.NumChildren() - 1; set == Replica(last) {
		dst = m.Child(last).Map(dst, off, length, bufOff, p)
	}
	return dst
}

func TestMutantsAreCaught(t *testing.T) {
	late, early := realBuilder, realBuilder
	late.root = func(l Layout) Layout { return splitMutant{l, true} }
	early.root = func(l Layout) Layout { return splitMutant{l, false} }
	edge := realBuilder
	edge.stripe = func(chunk int64, c ...Layout) (Layout, error) {
		s, err := NewStripe(chunk, c...)
		if err != nil {
			return nil, err
		}
		return stripeEdgeMutant{s}, nil
	}
	meta := realBuilder
	meta.leaf = func(i int, off, size int64) (Layout, error) {
		l, err := NewLeaf(i, off, size)
		if err != nil {
			return nil, err
		}
		return metadataMutant{l}, nil
	}
	replica := realBuilder
	replica.mirror = func(c ...Layout) (Layout, error) {
		m, err := NewMirror(c...)
		if err != nil {
			return nil, err
		}
		return replicaMutant{m}, nil
	}
	for _, c := range []struct {
		name string
		b    builder
	}{
		{"page split one byte late at a member boundary", late},
		{"page split one byte early at a member boundary", early},
		{"stripe piece one byte past the chunk edge", edge},
		{"extent in the metadata area", meta},
		{"mirror write skips the last replica", replica},
	} {
		t.Run(c.name, func(t *testing.T) {
			params := propParams(t)
			r := mappingProp(c.b, genSpec(0, maxLevels, -1)).Check(params)
			if r.Passed() {
				t.Fatalf("seed %d: the properties let the mutant through: %s", params.Seed(), describeResult(r))
			}
			if len(r.Labels) == 0 || strings.HasPrefix(r.Labels[0], "panic") {
				t.Fatalf("seed %d: the mutant was caught by a panic, not by a property: %s", params.Seed(), describeResult(r))
			}
			t.Logf("caught: %s", describeResult(r))
		})
	}
}
