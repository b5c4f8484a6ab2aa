package raw

import (
	"fmt"
	"math/rand/v2"
	"slices"
)

// OpKind is what an operation of the workload does.
type OpKind uint8

const (
	OpWrite OpKind = iota
	OpFlush
	OpRead
)

var opNames = [...]string{"write", "flush", "read"}

func (k OpKind) String() string {
	if int(k) < len(opNames) {
		return opNames[k]
	}
	return fmt.Sprintf("op(%d)", uint8(k))
}

// MarshalText makes op kinds readable in JSON.
func (k OpKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// Op is one generated operation. A read verifies what it reads.
type Op struct {
	Kind OpKind `json:"kind"`
	Off  int64  `json:"off,omitempty"`
	Len  int64  `json:"len,omitempty"`
	FUA  bool   `json:"fua,omitempty"`
}

func (o Op) String() string {
	switch o.Kind {
	case OpFlush:
		return "flush"
	case OpWrite:
		if o.FUA {
			return fmt.Sprintf("write %#x+%d fua", o.Off, o.Len)
		}
	}
	return fmt.Sprintf("%v %#x+%d", o.Kind, o.Off, o.Len)
}

// Defaults of GenOptions (and Options).
const (
	DefaultMaxRequest  = 4 << 20
	DefaultFlushEvery  = 50
	DefaultFUAPercent  = 5
	DefaultReadPercent = 10
)

// GenOptions configure a Generator. Zero values are documented per field.
type GenOptions struct {
	Seed uint64
	// Size is the device size in bytes; required.
	Size int64
	// Boundaries are device offsets where one member ends and another
	// begins, and stripe chunk edges. Offsets are drawn around them.
	Boundaries []int64
	// MaxRequest bounds a request's length. Zero means DefaultMaxRequest.
	MaxRequest int64
	// FlushEvery makes every FlushEvery-th op a flush. Zero means
	// DefaultFlushEvery; negative: no flushes.
	FlushEvery int
	// FUAPercent of writes carry FUA. Zero means DefaultFUAPercent;
	// negative: none.
	FUAPercent int
	// ReadPercent of the other ops are reads. Zero means
	// DefaultReadPercent; negative: none.
	ReadPercent int
}

func (o *GenOptions) defaults() {
	if o.Size <= 0 {
		panic(fmt.Sprintf("raw: generator for a device of %d bytes", o.Size))
	}
	if o.MaxRequest <= 0 {
		o.MaxRequest = DefaultMaxRequest
	}
	o.FlushEvery = orDefault(o.FlushEvery, DefaultFlushEvery)
	o.FUAPercent = orDefault(o.FUAPercent, DefaultFUAPercent)
	o.ReadPercent = orDefault(o.ReadPercent, DefaultReadPercent)
}

func orDefault(v, def int) int {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 0
	}
	return v
}

// Generator is a seeded stream of operations: the same options give the
// same ops, whoever consumes them and whenever. Not safe for concurrent use.
type Generator struct {
	o       GenOptions
	rng     *rand.Rand
	anchors []int64
	members []int64 // member (or chunk) sizes between boundaries, in order
	n       int64
}

// NewGenerator returns the generator for o.
func NewGenerator(o GenOptions) *Generator {
	o.defaults()
	g := &Generator{o: o, rng: rand.New(rand.NewPCG(o.Seed, 0x7261772d6f707321))}
	edges := []int64{0, o.Size}
	for _, b := range o.Boundaries {
		if b > 0 && b < o.Size {
			edges = append(edges, b)
		}
	}
	slices.Sort(edges)
	edges = slices.Compact(edges)
	for i := 0; i+1 < len(edges); i++ {
		g.members = append(g.members, edges[i+1]-edges[i])
	}
	g.anchors = append(g.anchors, edges...)
	for _, b := range edges[1 : len(edges)-1] {
		g.anchors = append(g.anchors, b&^4095, min((b+4095)&^4095, o.Size))
	}
	slices.Sort(g.anchors)
	g.anchors = slices.Compact(g.anchors)
	return g
}

// Ops returns the first n ops of the stream of o: the op log of a run with
// these options, replayed from its seed.
func Ops(o GenOptions, n int) []Op {
	g := NewGenerator(o)
	out := make([]Op, n)
	for i := range out {
		out[i] = g.Next()
	}
	return out
}

var deltas = [...]int64{0, 0, 0, 1, -1, 3, -3, 511, -511, 512, -512, 513, -513, 4095, -4095, 4096, -4096, 4097, -4097, 8192, -8192}

// Next returns the next op.
func (g *Generator) Next() Op {
	g.n++
	r := g.rng
	if g.o.FlushEvery > 0 && g.n%int64(g.o.FlushEvery) == 0 {
		return Op{Kind: OpFlush}
	}
	op := Op{Kind: OpWrite}
	if r.IntN(100) < g.o.ReadPercent {
		op.Kind = OpRead
	} else {
		op.FUA = r.IntN(100) < g.o.FUAPercent
	}
	op.Len = g.length()
	switch k := r.IntN(10); {
	case k < 2: // anywhere, half the time sector aligned
		op.Off = r.Int64N(g.o.Size)
		if r.IntN(2) == 0 {
			op.Off &^= SectorSize - 1
		}
	case k < 4: // straddling an anchor
		a := g.anchors[r.IntN(len(g.anchors))]
		op.Off = a - 1 - r.Int64N(op.Len)
	default: // at an anchor, plus a delta
		a := g.anchors[r.IntN(len(g.anchors))]
		d := deltas[r.IntN(len(deltas))]
		if r.IntN(4) == 0 {
			d = r.Int64N(4*4096+1) - 2*4096
		}
		op.Off = a + d
	}
	op.Off = min(max(op.Off, 0), g.o.Size-1)
	op.Len = min(op.Len, g.o.Size-op.Off)
	return op
}

// length draws a request length, clamped to MaxRequest.
func (g *Generator) length() int64 {
	r := g.rng
	var n int64
	switch k := r.IntN(14); k {
	case 0, 1, 2, 3, 4, 5, 6, 7:
		n = [...]int64{1, 511, 512, 513, 4095, 4096, 4097, 65536}[k]
	case 8, 9: // a member
		n = g.members[r.IntN(len(g.members))]
	case 10: // two members
		i := r.IntN(len(g.members))
		n = g.members[i]
		if i+1 < len(g.members) {
			n += g.members[i+1]
		}
	case 11: // three members
		i := r.IntN(len(g.members))
		for j := i; j < min(i+3, len(g.members)); j++ {
			n += g.members[j]
		}
	default: // anything up to 64 KiB
		n = 1 + r.Int64N(64<<10)
	}
	return max(1, min(n, g.o.MaxRequest))
}
