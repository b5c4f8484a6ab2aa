// Table tests that pin every layout to extents computed by hand (odd member sizes, requests crossing two and three members, both sides of every stripe chunk edge), and check constructor errors, descriptions and panics.
package layout

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func leaf(t testing.TB, index int, dataOffset, dataSize int64) *Leaf {
	t.Helper()
	l, err := NewLeaf(index, dataOffset, dataSize)
	require.NoError(t, err)
	return l
}

func must[L Layout](t testing.TB) func(L, error) L {
	return func(l L, err error) L {
		t.Helper()
		require.NoError(t, err)
		return l
	}
}

type mapCase struct {
	name        string
	off, length int64
	picker      Picker
	want        []Extent
}

// runMapCases checks each case against its hand-computed extents and then
// against the model.
func runMapCases(t *testing.T, l Layout, cases []mapCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := c.picker
			if p == nil {
				p = FirstReplica
			}
			assert.Equal(t, c.want, l.Map(nil, c.off, c.length, 0, p), "layout %v", l)
			assert.Empty(t, checkMapping(l, c.off, c.length))
		})
	}
}

func TestLinearThreeOddMembers(t *testing.T) {
	l := must[*Linear](t)(NewLinear(
		leaf(t, 0, 4096, 1000003),
		leaf(t, 1, 8192, 4097),
		leaf(t, 2, 512, 70001),
	))
	require.Equal(t, int64(1000003+4097+70001), l.Size())
	require.Equal(t, "linear(#0@4096+1000003, #1@8192+4097, #2@512+70001)", l.String())
	b1, b2 := int64(1000003), int64(1000003+4097) // the two member boundaries
	runMapCases(t, l, []mapCase{
		{"first byte", 0, 1, nil, []Extent{{0, 4096, 1, 0}}},
		{"last byte of #0", b1 - 1, 1, nil, []Extent{{0, 4096 + 1000002, 1, 0}}},
		{"first byte of #1", b1, 1, nil, []Extent{{1, 8192, 1, 0}}},
		{"two bytes across b1", b1 - 1, 2, nil, []Extent{{0, 4096 + 1000002, 1, 0}, {1, 8192, 1, 1}}},
		{"page straddling b1", b1 - 3, 4096, nil, []Extent{{0, 4096 + 1000000, 3, 0}, {1, 8192, 4093, 3}}},
		{"all of #1 exactly", b1, 4097, nil, []Extent{{1, 8192, 4097, 0}}},
		{"page straddling b2", b2 - 4095, 4096, nil, []Extent{{1, 8192 + 2, 4095, 0}, {2, 512, 1, 4095}}},
		{"spanning all three", b1 - 100, 100 + 4097 + 50, nil, []Extent{
			{0, 4096 + 999903, 100, 0},
			{1, 8192, 4097, 100},
			{2, 512, 50, 4197},
		}},
		{"whole device", 0, l.Size(), nil, []Extent{
			{0, 4096, 1000003, 0},
			{1, 8192, 4097, 1000003},
			{2, 512, 70001, 1004100},
		}},
		{"last byte", l.Size() - 1, 1, nil, []Extent{{2, 512 + 70000, 1, 0}}},
	})
	assert.Equal(t, []int{0, 1, 2}, l.Leaves(nil))
	assert.Equal(t, b1+5, l.Logical(1, 5))
	assert.Equal(t, b2, l.Logical(2, 0))
}

func TestStripeChunkEdges(t *testing.T) {
	// Three members of 10000, 9000 and 12000 bytes: each holds two chunks of
	// 4096 (8192 bytes), so the stripe holds 6 chunks.
	s := must[*Stripe](t)(NewStripe(4096,
		leaf(t, 0, 4096, 10000),
		leaf(t, 1, 512, 9000),
		leaf(t, 2, 1, 12000),
	))
	require.Equal(t, int64(8192), s.PerChild())
	require.Equal(t, int64(6*4096), s.Size())
	require.Equal(t, "stripe(4KiB; #0@4096+10000, #1@512+9000, #2@1+12000)", s.String())
	runMapCases(t, s, []mapCase{
		{"last byte of chunk 0", 4095, 1, nil, []Extent{{0, 4096 + 4095, 1, 0}}},
		{"first byte of chunk 1", 4096, 1, nil, []Extent{{1, 512, 1, 0}}},
		{"two bytes across the edge", 4095, 2, nil, []Extent{{0, 4096 + 4095, 1, 0}, {1, 512, 1, 1}}},
		{"chunk 1 exactly", 4096, 4096, nil, []Extent{{1, 512, 4096, 0}}},
		{"chunk 1 and one byte", 4096, 4097, nil, []Extent{{1, 512, 4096, 0}, {2, 1, 1, 4096}}},
		{"wrap to the next row", 3*4096 - 1, 2, nil, []Extent{{2, 1 + 4095, 1, 0}, {0, 4096 + 4096, 1, 1}}},
		{"three members in one request", 4000, 96 + 4096 + 104, nil, []Extent{
			{0, 4096 + 4000, 96, 0},
			{1, 512, 4096, 96},
			{2, 1, 104, 4192},
		}},
		{"whole device", 0, s.Size(), nil, []Extent{
			{0, 4096, 4096, 0}, {1, 512, 4096, 4096}, {2, 1, 4096, 8192},
			{0, 4096 + 4096, 4096, 12288}, {1, 512 + 4096, 4096, 16384}, {2, 1 + 4096, 4096, 20480},
		}},
		{"last byte", s.Size() - 1, 1, nil, []Extent{{2, 1 + 8191, 1, 0}}},
	})
	assert.Equal(t, int64(4095), s.Logical(0, 4095))
	assert.Equal(t, int64(4096), s.Logical(1, 0))
	assert.Equal(t, int64(3*4096), s.Logical(0, 4096))
	assert.Equal(t, s.Size()-1, s.Logical(2, 8191))
}

func TestStripeOddChunk(t *testing.T) {
	// A chunk of 1000 bytes puts chunk edges inside pages: 4096 is in
	// chunk 4, on member #0 at row 2.
	s := must[*Stripe](t)(NewStripe(1000, leaf(t, 0, 0, 3500), leaf(t, 1, 0, 3001)))
	require.Equal(t, int64(3000), s.PerChild())
	require.Equal(t, "stripe(1000B; #0@0+3500, #1@0+3001)", s.String())
	runMapCases(t, s, []mapCase{
		{"page across two edges", 1500, 1100, nil, []Extent{{1, 500, 500, 0}, {0, 1000, 600, 500}}},
		{"page 1", 4096, 1904, nil, []Extent{{0, 2096, 904, 0}, {1, 2000, 1000, 904}}},
	})
}

func TestMirror(t *testing.T) {
	m := must[*Mirror](t)(NewMirror(leaf(t, 0, 4096, 5000), leaf(t, 1, 0, 6000)))
	require.Equal(t, int64(5000), m.Size())
	require.Equal(t, ReplicaSet(3), m.All())
	second := PickerFunc(func(*Mirror, int64, int64) ReplicaSet { return Replica(1) })
	runMapCases(t, m, []mapCase{
		{"read", 4990, 10, nil, []Extent{{0, 4096 + 4990, 10, 0}}},
		{"read second", 4990, 10, second, []Extent{{1, 4990, 10, 0}}},
		{"write", 4990, 10, AllReplicas, []Extent{{0, 4096 + 4990, 10, 0}, {1, 4990, 10, 0}}},
	})
}

func TestMirrorOfStripes(t *testing.T) {
	a := must[*Stripe](t)(NewStripe(64<<10, leaf(t, 0, 4096, 1<<20), leaf(t, 1, 4096, 1<<20)))
	b := leaf(t, 2, 4096, 2<<20)
	m := must[*Mirror](t)(NewMirror(a, b))
	require.Equal(t, "mirror(stripe(64KiB; #0@4096+1048576, #1@4096+1048576), #2@4096+2097152)", m.String())
	edge := int64(64 << 10)
	runMapCases(t, m, []mapCase{
		{"read across a chunk edge", edge - 512, 1024, nil, []Extent{
			{0, 4096 + edge - 512, 512, 0}, {1, 4096, 512, 512},
		}},
		{"write across a chunk edge", edge - 512, 1024, AllReplicas, []Extent{
			{0, 4096 + edge - 512, 512, 0}, {1, 4096, 512, 512},
			{2, 4096 + edge - 512, 1024, 0},
		}},
	})
}

func TestStripeOfMirrors(t *testing.T) {
	m0 := must[*Mirror](t)(NewMirror(leaf(t, 0, 0, 8192), leaf(t, 1, 0, 9000)))
	m1 := must[*Mirror](t)(NewMirror(leaf(t, 2, 0, 8192), leaf(t, 3, 0, 8192)))
	s := must[*Stripe](t)(NewStripe(4096, m0, m1))
	require.Equal(t, int64(16384), s.Size())
	runMapCases(t, s, []mapCase{
		{"write across the edge", 4095, 2, AllReplicas, []Extent{
			{0, 4095, 1, 0}, {1, 4095, 1, 0}, {2, 0, 1, 1}, {3, 0, 1, 1},
		}},
	})
}

func TestLinearOfMirrorsAndStripes(t *testing.T) {
	m := must[*Mirror](t)(NewMirror(leaf(t, 0, 100, 5000), leaf(t, 1, 200, 5001)))
	s := must[*Stripe](t)(NewStripe(512, leaf(t, 2, 0, 1500), leaf(t, 3, 0, 1024)))
	l := must[*Linear](t)(NewLinear(m, s, leaf(t, 4, 4096, 7)))
	require.Equal(t, int64(5000+2048+7), l.Size())
	runMapCases(t, l, []mapCase{
		{"write from the mirror through the stripe to the leaf", 4999, 2050, AllReplicas, []Extent{
			{0, 100 + 4999, 1, 0}, {1, 200 + 4999, 1, 0},
			{2, 0, 512, 1}, {3, 0, 512, 513}, {2, 512, 512, 1025}, {3, 512, 512, 1537},
			{4, 4096, 1, 2049},
		}},
	})
}

func TestConstructorErrors(t *testing.T) {
	a, b := leaf(t, 0, 0, 4096), leaf(t, 1, 0, 4096)
	big := leaf(t, 2, 0, 1<<62)
	pair := must[*Linear](t)(NewLinear(a, b))
	many := make([]Layout, MaxReplicas+1)
	for i := range many {
		many[i] = leaf(t, i, 0, 1)
	}
	for _, c := range []struct {
		name string
		new  func() (Layout, error)
		msg  string
	}{
		{"negative index", func() (Layout, error) { return NewLeaf(-1, 0, 1) }, "index -1 is negative"},
		{"negative data offset", func() (Layout, error) { return NewLeaf(3, -1, 1) }, "data offset -1"},
		{"empty leaf", func() (Layout, error) { return NewLeaf(3, 0, 0) }, "data size 0"},
		{"leaf past int64", func() (Layout, error) { return NewLeaf(3, 1<<62, 1<<62) }, "overflows"},
		{"linear without children", func() (Layout, error) { return NewLinear() }, "linear has no children"},
		{"stripe without children", func() (Layout, error) { return NewStripe(512) }, "stripe has no children"},
		{"mirror without children", func() (Layout, error) { return NewMirror() }, "mirror has no children"},
		{"nil child", func() (Layout, error) { return NewLinear(a, nil) }, "child 1 is nil"},
		{"zero chunk", func() (Layout, error) { return NewStripe(0, a, b) }, "chunk size 0"},
		{"negative chunk", func() (Layout, error) { return NewStripe(-4096, a, b) }, "chunk size -4096"},
		{"chunk larger than a child", func() (Layout, error) { return NewStripe(8192, a, b) }, "less than one chunk of 8KiB"},
		{"duplicate leaf", func() (Layout, error) { return NewMirror(a, a) }, "leaf #0 appears under child 0 and child 1"},
		{"duplicate nested leaf", func() (Layout, error) { return NewStripe(512, pair, b) }, "leaf #1 appears"},
		{"linear past int64", func() (Layout, error) { return NewLinear(big, leaf(t, 3, 0, 1<<62)) }, "overflows"},
		{"stripe past int64", func() (Layout, error) { return NewStripe(1<<20, big, leaf(t, 3, 0, 1<<62)) }, "overflow"},
		{"too many replicas", func() (Layout, error) { return NewMirror(many...) }, "65 children"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := c.new()
			require.Error(t, err)
			assert.True(t, errors.Is(err, ErrInvalid), "%v does not wrap ErrInvalid", err)
			assert.Contains(t, err.Error(), c.msg)
		})
	}
}

func TestMapPanicsOnProgrammerErrors(t *testing.T) {
	l := must[*Linear](t)(NewLinear(leaf(t, 0, 0, 100), leaf(t, 1, 0, 100)))
	m := must[*Mirror](t)(NewMirror(leaf(t, 0, 0, 100), leaf(t, 1, 0, 100)))
	none := PickerFunc(func(*Mirror, int64, int64) ReplicaSet { return 0 })
	third := PickerFunc(func(*Mirror, int64, int64) ReplicaSet { return Replica(2) })
	for name, f := range map[string]func(){
		"negative offset":      func() { l.Map(nil, -1, 1, 0, nil) },
		"negative length":      func() { l.Map(nil, 0, -1, 0, nil) },
		"past the end":         func() { l.Map(nil, 150, 51, 0, nil) },
		"length overflows":     func() { l.Map(nil, 1, 1<<63-1, 0, nil) },
		"negative buffer":      func() { l.Map(nil, 0, 1, -1, nil) },
		"picker picks none":    func() { m.Map(nil, 0, 1, 0, none) },
		"no picker":            func() { m.Map(nil, 0, 1, 0, nil) },
		"picker picks a ghost": func() { m.Map(nil, 0, 1, 0, third) },
		"linear logical":       func() { l.Logical(0, 100) },
		"linear no child":      func() { l.Logical(2, 0) },
		"leaf logical":         func() { leaf(t, 0, 10, 10).Logical(9) },
		"replica 64":           func() { Replica(MaxReplicas) },
	} {
		assert.Panics(t, f, name)
	}
	assert.Empty(t, l.Map(nil, 200, 0, 0, nil), "a zero length at the end maps to nothing")
}

func TestDescriptions(t *testing.T) {
	assert.Equal(t, "#3@4096+10<-buf:7", Extent{3, 4096, 10, 7}.String())
	m := must[*Mirror](t)(NewMirror(
		must[*Stripe](t)(NewStripe(64<<10, leaf(t, 0, 4096, 1<<20), leaf(t, 1, 4096, 1<<20))),
		leaf(t, 2, 4096, 2<<20)))
	assert.False(t, strings.ContainsAny(m.String(), "\n\t"))
	assert.Equal(t, []int{0, 1, 2}, m.Leaves(nil))
}

func TestReplicaSet(t *testing.T) {
	s := Replica(0) | Replica(5) | Replica(63)
	assert.Equal(t, 3, s.Len())
	assert.True(t, s.Has(63))
	assert.False(t, s.Has(1))
	assert.False(t, s.Has(-1))
	assert.False(t, s.Has(64))
	many := make([]Layout, MaxReplicas)
	for i := range many {
		many[i] = leaf(t, i, 0, 1)
	}
	m := must[*Mirror](t)(NewMirror(many...))
	assert.Equal(t, MaxReplicas, m.All().Len())
}
