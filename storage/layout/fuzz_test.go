// Proves with go test -fuzz that any small layout decoded from fuzzed bytes (any nesting, chunk and odd sizes down to one byte) either is rejected with ErrInvalid or maps every request exactly, by running checkMapping on it.
package layout

import (
	"errors"
	"testing"
)

// fuzzReader decodes a layout tree from bytes, depth first. A node starts
// with a kind byte (k%4: 0 leaf, 1 linear, 2 stripe, 3 mirror); a leaf is
// followed by two size bytes (1 to 16384 bytes) and a metadata byte (an
// index into dataOffsets); an inner node by a child count byte (1 to 4), a
// stripe then by two chunk bytes (1 to 4096 bytes), then by its children.
// Missing bytes read as zero, so every input decodes; depth and leaves are
// bounded.
type fuzzReader struct {
	b      []byte
	leaves int
}

func (r *fuzzReader) byte() int64 {
	if len(r.b) == 0 {
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return int64(c)
}

func (r *fuzzReader) node(depth int) (Layout, error) {
	kind := r.byte() % 4
	if kind == 0 || depth == 3 || r.leaves >= 12 {
		size := 1 + (r.byte()<<8|r.byte())&0x3fff
		meta := dataOffsets[r.byte()%int64(len(dataOffsets))]
		r.leaves++
		return NewLeaf(r.leaves-1, meta, size)
	}
	n := 1 + r.byte()%4
	var chunk int64
	if kind == 2 {
		chunk = 1 + (r.byte()<<8|r.byte())&0xfff
	}
	children := make([]Layout, n)
	for i := range children {
		c, err := r.node(depth + 1)
		if err != nil {
			return nil, err
		}
		children[i] = c
	}
	switch kind {
	case 1:
		return NewLinear(children...)
	case 2:
		return NewStripe(chunk, children...)
	default:
		return NewMirror(children...)
	}
}

func FuzzMap(f *testing.F) {
	// linear(#0 4097 bytes, #1 7 bytes, #2 10000 bytes), a request over all three.
	f.Add([]byte{1, 2, 0, 0x10, 0x00, 0, 0, 0x00, 0x06, 1, 0, 0x27, 0x0f, 3}, uint64(4000), uint64(4200))
	// stripe(512; #0, #1, #2) of 8193-byte members, across a chunk edge.
	f.Add([]byte{2, 2, 0x01, 0xff, 0, 0x20, 0x00, 0, 0, 0x20, 0x00, 1, 0, 0x20, 0x00, 2}, uint64(511), uint64(2))
	// mirror(stripe(1000B; #0, #1), linear(#2, #3)).
	f.Add([]byte{3, 1, 2, 1, 0x03, 0xe7, 0, 0x0f, 0xa0, 0, 0, 0x13, 0x88, 3,
		1, 1, 0, 0x07, 0xcf, 4, 0, 0x07, 0xd0, 0}, uint64(1999), uint64(4096))
	// stripe(3B; mirror(#0, #1), #2): a tiny odd chunk over a mirror.
	f.Add([]byte{2, 1, 0, 2, 3, 1, 0, 0, 9, 0, 0, 0, 10, 1, 0, 0, 11, 2}, uint64(5), uint64(7))
	f.Fuzz(func(t *testing.T, spec []byte, off, length uint64) {
		r := fuzzReader{b: spec}
		l, err := r.node(0)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("%v does not wrap ErrInvalid", err)
			}
			return
		}
		size := uint64(l.Size())
		o := off % size
		n := 1 + length%min(size-o, 1<<16)
		if msg := checkMapping(l, int64(o), int64(n)); msg != "" {
			t.Fatal(msg)
		}
	})
}
