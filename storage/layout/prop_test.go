// Proves with gopter that linear, stripe, mirror and composed layouts of 1–5 odd-sized members map every request exactly, by checking checkMapping on requests generated around boundaries (offset by a delta and a length index that shrink toward the boundary and toward one byte).
package layout

import (
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"testing"

	"github.com/leanovate/gopter"
	"github.com/leanovate/gopter/gen"
	"github.com/leanovate/gopter/prop"

	"dst/internal/proptest"
	"dst/internal/size"
)

const (
	pageSize = 4096
	// maxLevels bounds the depth of generated trees.
	maxLevels = 3
	// maxLeaves is the product of levelCap.
	maxLeaves = 5 * 3 * 2
	// defaultIterations per property keeps the package around 6 s with
	// -race on 2 cores (the budget is 20 s).
	defaultIterations = 1000
)

// levelCap bounds the number of children of a node at each level: the root
// has 1–5 children, deeper nodes fewer, so a tree has at most 30 leaves.
var levelCap = [maxLevels]int{5, 3, 2}

// chunkSizes holds powers of two from 512 to 256KiB and odd sizes, in
// ascending order: a level's chunk is chunkSizes[Chunk+ChunkSteps[level]].
var chunkSizes = []int64{511, 512, 1000, 1024, 2048, 4096, 4097, 8192, 12345, 16384, 32768, 65536, 65537, 131072, 262144}

// dataOffsets are the sizes of the reserved metadata area of a member; the
// first is the usual one, so that shrinking keeps a metadata area.
var dataOffsets = []int64{4096, 0, 1, 512, 1<<20 + 3}

// Node kinds, in the order shrinking prefers them.
const (
	kindLinear = iota
	kindStripe
	kindMirror
	numKinds
)

var kindNames = [numKinds]string{"linear", "stripe", "mirror"}

// layoutSpec describes a layout tree in plain integers so that gopter can
// shrink every choice on its own: fewer levels, fewer children, smaller
// chunks, smaller members.
type layoutSpec struct {
	Depth      int   // levels of inner nodes, 0 for a single leaf
	Kinds      []int // node kind at each level
	Counts     []int // children of each node at each level (capped by levelCap)
	Chunk      int   // index into chunkSizes
	ChunkSteps []int // added to Chunk at each level
	Mults      []int // per leaf: whole units above the minimum
	Rems       []int // per leaf: odd bytes above that
	Metas      []int // per leaf: index into dataOffsets
	Align      int   // 0: sizes as generated; 1: rounded up to 512; 2: to 4096
}

// genSpec generates specs with depth in [depthMin, depthMax]; a kind >= 0
// fixes the kind of every level.
func genSpec(depthMin, depthMax, kind int) gopter.Gen {
	kinds := gen.IntRange(0, numKinds-1)
	if kind >= 0 {
		kinds = gen.Const(kind)
	}
	return gen.Struct(reflect.TypeOf(layoutSpec{}), map[string]gopter.Gen{
		"Depth":      gen.IntRange(depthMin, depthMax),
		"Kinds":      gen.SliceOfN(maxLevels, kinds),
		"Counts":     gen.SliceOfN(maxLevels, gen.IntRange(1, 5)),
		"Chunk":      gen.IntRange(0, len(chunkSizes)-1),
		"ChunkSteps": gen.SliceOfN(maxLevels, gen.IntRange(0, 2)),
		"Mults":      gen.SliceOfN(maxLeaves, gen.IntRange(0, 3)),
		"Rems":       gen.SliceOfN(maxLeaves, gen.IntRange(0, 1<<20)),
		"Metas":      gen.SliceOfN(maxLeaves, gen.IntRange(0, len(dataOffsets)-1)),
		"Align":      gen.IntRange(0, 2),
	})
}

// String shows only the parts of s that build uses, so that a shrunk
// counterexample reads easily.
func (s layoutSpec) String() string {
	leaves := 1
	var levels []string
	for level := range s.Depth {
		n := min(s.Counts[level], levelCap[level])
		leaves *= n
		kind := kindNames[s.Kinds[level]]
		if s.Kinds[level] == kindStripe {
			kind += "/" + size.Format(s.chunk(level))
		}
		levels = append(levels, fmt.Sprintf("%s×%d", kind, n))
	}
	return fmt.Sprintf("{Depth:%d Levels:%v Chunk:%d ChunkSteps:%v Mults:%v Rems:%v Metas:%v Align:%d}",
		s.Depth, levels, s.Chunk, s.ChunkSteps[:s.Depth], s.Mults[:leaves], s.Rems[:leaves], s.Metas[:leaves], s.Align)
}

// builder makes the nodes of a layout; the mutation tests swap in broken
// ones.
type builder struct {
	leaf   func(index int, dataOffset, dataSize int64) (Layout, error)
	linear func(children ...Layout) (Layout, error)
	stripe func(chunk int64, children ...Layout) (Layout, error)
	mirror func(children ...Layout) (Layout, error)
	root   func(Layout) Layout
}

var realBuilder = builder{
	leaf:   func(i int, off, size int64) (Layout, error) { return NewLeaf(i, off, size) },
	linear: func(c ...Layout) (Layout, error) { return NewLinear(c...) },
	stripe: func(chunk int64, c ...Layout) (Layout, error) { return NewStripe(chunk, c...) },
	mirror: func(c ...Layout) (Layout, error) { return NewMirror(c...) },
	root:   func(l Layout) Layout { return l },
}

// chunk returns the chunk size of a stripe at level.
func (s layoutSpec) chunk(level int) int64 {
	return chunkSizes[min(s.Chunk+s.ChunkSteps[level], len(chunkSizes)-1)]
}

// build makes the layout s describes. Members are at least four times the
// largest chunk of the tree, which keeps every stripe at every level valid:
// a stripe loses less than one chunk of its smallest child.
func (s layoutSpec) build(b builder) (Layout, error) {
	unit := s.chunk(0)
	for level := range s.Depth {
		if s.Kinds[level] == kindStripe {
			unit = max(unit, s.chunk(level))
		}
	}
	next := 0
	var node func(level int) (Layout, error)
	node = func(level int) (Layout, error) {
		if level == s.Depth {
			i := next
			next++
			size := (4+int64(s.Mults[i]))*unit + int64(s.Rems[i])%(2*unit+2*pageSize)
			switch s.Align {
			case 1:
				size = (size + 511) / 512 * 512
			case 2:
				size = (size + pageSize - 1) / pageSize * pageSize
			}
			return b.leaf(i, dataOffsets[s.Metas[i]], size)
		}
		children := make([]Layout, min(s.Counts[level], levelCap[level]))
		for i := range children {
			c, err := node(level + 1)
			if err != nil {
				return nil, err
			}
			children[i] = c
		}
		switch s.Kinds[level] {
		case kindLinear:
			return b.linear(children...)
		case kindStripe:
			return b.stripe(s.chunk(level), children...)
		default:
			return b.mirror(children...)
		}
	}
	l, err := node(0)
	if err != nil {
		return nil, err
	}
	return b.root(l), nil
}

// anchors returns the sorted offsets that requests are generated around: 0,
// the end, every boundary, and the page boundaries on both sides of each.
func anchors(l Layout) []int64 {
	size := l.Size()
	out := []int64{0, size}
	for _, b := range sortedBounds(l, 0, size) {
		page := b / pageSize * pageSize
		out = append(out, b, page, page+pageSize)
	}
	slices.Sort(out)
	out = slices.Compact(out)
	for len(out) > 1 && out[len(out)-1] > size {
		out = out[:len(out)-1]
	}
	return out
}

// lengthChoices are the request lengths by index; negative entries are
// resolved against the layout by request.
var lengthChoices = []int64{1, 511, 512, 513, 4095, 4096, 4097, lengthMember, lengthSpan2, lengthSpan3}

const (
	lengthMember = -1 - iota // the data size of the member under the offset
	lengthSpan2              // to the second boundary past the offset
	lengthSpan3              // to the third boundary past the offset
)

// request turns an anchor index, a delta and a length index into a request
// inside l.
func request(l Layout, marks []int64, anchor, delta, lengthIndex int) (off, length int64) {
	size := l.Size()
	off = min(max(marks[anchor%len(marks)]+int64(delta), 0), size-1)
	length = lengthChoices[lengthIndex]
	switch length {
	case lengthMember:
		length = leafOf(l)[refMap(l, off, firstOnly, nil)[0].member].DataSize()
	case lengthSpan2, lengthSpan3:
		n := 2
		if length == lengthSpan3 {
			n = 3
		}
		bounds := sortedBounds(l, off, min(size, off+1<<24))
		length = size - off
		if len(bounds) >= n {
			length = bounds[n-1] - off
		}
	}
	return off, min(length, size-off)
}

// propParams returns the gopter parameters of one property (see
// proptest: PROP_SEED replays, PROP_ITER multiplies defaultIterations).
func propParams(t testing.TB) *gopter.TestParameters {
	t.Helper()
	return proptest.Params(t, defaultIterations)
}

// mappingProp is the property that checkMapping holds for layouts made by b
// from specs drawn from specs, on requests around their anchors.
func mappingProp(b builder, specs gopter.Gen) gopter.Prop {
	return prop.ForAll(
		func(spec layoutSpec, anchor, delta, lengthIndex int) string {
			l, err := spec.build(b)
			if err != nil {
				return fmt.Sprintf("building %+v: %v", spec, err)
			}
			off, length := request(l, anchors(l), anchor, delta, lengthIndex)
			return checkMapping(l, off, length)
		},
		specs,
		gen.IntRange(0, 1<<16),                // anchor index, taken modulo the number of anchors
		gen.IntRange(-2*pageSize, 2*pageSize), // delta from the anchor, shrinks to 0
		gen.IntRange(0, len(lengthChoices)-1), // length index, shrinks to one byte
	)
}

// describeResult formats a gopter result: the failure and every shrunk
// argument next to the original one.
func describeResult(r *gopter.TestResult) string {
	s := fmt.Sprintf("%s after %d tests", r.Status, r.Succeeded)
	for _, l := range r.Labels {
		s += "\n  " + l
	}
	if r.Error != nil {
		s += fmt.Sprintf("\n  error: %v", r.Error)
	}
	names := []string{"spec", "anchor", "delta", "length index"}
	for i, a := range r.Args {
		name := strconv.Itoa(i)
		if i < len(names) {
			name = names[i]
		}
		s += fmt.Sprintf("\n  %s = %s (shrunk %d times from %s)", name, a.ArgFormatted, a.Shrinks, a.OrigArgFormatted)
	}
	return s
}

// runProp checks p and fails t with the seed and the shrunk counterexample.
func runProp(t *testing.T, p gopter.Prop) {
	t.Helper()
	params := propParams(t)
	r := p.Check(params)
	if !r.Passed() {
		t.Errorf("seed %d: %s", params.Seed(), describeResult(r))
	}
}

func TestPropLinear(t *testing.T) { runProp(t, mappingProp(realBuilder, genSpec(1, 1, kindLinear))) }
func TestPropStripe(t *testing.T) { runProp(t, mappingProp(realBuilder, genSpec(1, 1, kindStripe))) }
func TestPropMirror(t *testing.T) { runProp(t, mappingProp(realBuilder, genSpec(1, 1, kindMirror))) }
func TestPropComposed(t *testing.T) {
	runProp(t, mappingProp(realBuilder, genSpec(0, maxLevels, -1)))
}

// TestAnchorsAreBoundaries checks the generator itself on a fixed layout:
// the anchors are the member boundaries and the pages around them, and
// request clips to the device.
func TestAnchorsAreBoundaries(t *testing.T) {
	l := must[*Linear](t)(NewLinear(leaf(t, 0, 0, 5000), leaf(t, 1, 0, 3000)))
	marks := anchors(l)
	if want := []int64{0, 4096, 5000, 8000}; !slices.Equal(marks, want) {
		t.Fatalf("anchors %v, want %v", marks, want)
	}
	off, length := request(l, marks, 2, 0, len(lengthChoices)-1)
	if off != 5000 || length != 3000 {
		t.Fatalf("request at the boundary spanning three: [%d, +%d), want [5000, +3000)", off, length)
	}
}
