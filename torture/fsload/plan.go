package fsload

import (
	"fmt"
	"math/rand/v2"
	"path"
)

// OpKind is the kind of one file operation of a write phase.
type OpKind uint8

// The operations. Create and Rewrite write whole files, Patch overwrites a
// range, Truncate shrinks or extends (extension reads back as zeros).
const (
	OpInvalid OpKind = iota
	OpCreate
	OpRewrite
	OpPatch
	OpTruncate
	OpDelete
	OpRename
)

func (k OpKind) String() string {
	switch k {
	case OpCreate:
		return "create"
	case OpRewrite:
		return "rewrite"
	case OpPatch:
		return "patch"
	case OpTruncate:
		return "truncate"
	case OpDelete:
		return "delete"
	case OpRename:
		return "rename"
	default:
		return fmt.Sprintf("OpKind(%d)", uint8(k))
	}
}

// MarshalText encodes the kind by name (for op logs in failure bundles).
func (k OpKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// Op is one planned file operation. Paths are relative to the mount point.
type Op struct {
	Kind OpKind `json:"kind"`
	Path string `json:"path"`
	To   string `json:"to,omitempty"`  // rename target
	ID   uint64 `json:"id,omitempty"`  // create: new file id; rename: name counter
	Gen  uint32 `json:"gen,omitempty"` // rewrite, patch: new generation
	Off  int64  `json:"off,omitempty"` // patch offset
	Len  int64  `json:"len,omitempty"` // create, rewrite: size; patch: length; truncate: new size
}

func (o Op) String() string {
	switch o.Kind {
	case OpCreate:
		return fmt.Sprintf("create %s id %d size %d", o.Path, o.ID, o.Len)
	case OpRewrite:
		return fmt.Sprintf("rewrite %s gen %d size %d", o.Path, o.Gen, o.Len)
	case OpPatch:
		return fmt.Sprintf("patch %s gen %d at %d len %d", o.Path, o.Gen, o.Off, o.Len)
	case OpTruncate:
		return fmt.Sprintf("truncate %s to %d", o.Path, o.Len)
	case OpDelete:
		return "delete " + o.Path
	case OpRename:
		return fmt.Sprintf("rename %s to %s", o.Path, o.To)
	default:
		return fmt.Sprintf("op %v %s", o.Kind, o.Path)
	}
}

// written returns how many bytes the op writes.
func (o Op) written() int64 {
	switch o.Kind {
	case OpCreate, OpRewrite, OpPatch:
		return o.Len
	default:
		return 0
	}
}

// PlanOptions bound one write phase.
type PlanOptions struct {
	// WriteBytes is the budget of bytes written (creates, rewrites, patches).
	// Must be > 0.
	WriteBytes int64
	// LiveBytesMax caps the total size of existing files after every op.
	// Must be > 0; Cycle sets it to 45% of Workload.Usable.
	LiveBytesMax int64
	// OpsMax bounds the number of ops; 0 means 256.
	OpsMax int
	// FilesMax bounds the number of existing files; 0 means 1024.
	FilesMax int
	// FileBytesMax bounds one file's size; 0 means 3 MiB.
	FileBytesMax int64
}

const (
	patchLayersMax = 8 // a file with this many layers is rewritten instead
	dirCount       = 8 // top-level directories d0..d7
	patchLenMax    = 128 << 10
)

// Plan draws the ops of one write phase from rng against the state in m
// (which it does not modify). The same rng state, manifest and options give
// the same plan.
func Plan(rng *rand.Rand, m *Manifest, o PlanOptions) []Op {
	if o.WriteBytes <= 0 || o.LiveBytesMax <= 0 {
		panic(fmt.Sprintf("fsload: Plan with invalid options %+v", o))
	}
	if o.OpsMax == 0 {
		o.OpsMax = 256
	}
	if o.FilesMax == 0 {
		o.FilesMax = 1024
	}
	if o.FileBytesMax == 0 {
		o.FileBytesMax = 3 << 20
	}
	sim := m.Clone()
	live := sim.LiveBytes()
	var ops []Op
	var written int64
	for len(ops) < o.OpsMax && written < o.WriteBytes {
		files := sim.Paths()
		op, ok := planOne(rng, sim, files, live, o, o.WriteBytes-written)
		if !ok {
			break
		}
		if err := sim.apply(op, false); err != nil {
			panic(fmt.Sprintf("fsload: planned op does not apply: %v", err))
		}
		ops = append(ops, op)
		written += op.written()
		live = sim.LiveBytes()
	}
	return ops
}

// planOne draws one op; ok is false when nothing fits any more.
func planOne(rng *rand.Rand, m *Manifest, files []string, live int64, o PlanOptions, budget int64) (Op, bool) {
	room := o.LiveBytesMax - live
	pick := func() (string, *Entry) {
		p := files[rng.IntN(len(files))]
		return p, m.Files[p]
	}
	r := rng.IntN(100)
	if len(files) == 0 {
		r = 0
	}
	if r < 40 && (len(files) >= o.FilesMax || room < 1) {
		if len(files) == 0 {
			return Op{}, false
		}
		r = 80 // delete to make room
	}
	switch {
	case r < 40:
		id := m.NextID
		return Op{Kind: OpCreate, Path: newPath(rng, id), ID: id, Len: drawSize(rng, min(budget, room, o.FileBytesMax))}, true
	case r < 52:
		p, e := pick()
		limit := min(budget, room+e.Size, o.FileBytesMax)
		return Op{Kind: OpRewrite, Path: p, Gen: e.Gen + 1, Len: drawSize(rng, limit)}, true
	case r < 64:
		p, e := pick()
		if e.Size == 0 || len(e.Layers) >= patchLayersMax {
			return Op{Kind: OpRewrite, Path: p, Gen: e.Gen + 1, Len: drawSize(rng, min(budget, room+e.Size, o.FileBytesMax))}, true
		}
		off := drawOffset(rng, e.Size)
		limit := min(budget, patchLenMax, room+e.Size-off, o.FileBytesMax-off)
		if limit < 1 {
			off, limit = 0, min(budget, e.Size)
		}
		return Op{Kind: OpPatch, Path: p, Gen: e.Gen + 1, Off: off, Len: 1 + rng.Int64N(max(limit, 1))}, true
	case r < 72:
		p, e := pick()
		size := int64(0)
		if e.Size > 0 {
			size = rng.Int64N(e.Size)
		}
		if grow := min(room, 64<<10, o.FileBytesMax-e.Size); rng.IntN(2) == 0 && grow > 0 {
			size = e.Size + 1 + rng.Int64N(grow)
		}
		return Op{Kind: OpTruncate, Path: p, Len: size}, true
	case r < 86:
		p, _ := pick()
		return Op{Kind: OpDelete, Path: p}, true
	default:
		p, e := pick()
		id := m.NextID
		to := path.Join(drawDir(rng), fmt.Sprintf("r%06d.%d", e.ID, id))
		return Op{Kind: OpRename, Path: p, To: to, ID: id}, true
	}
}

// newPath names file id in a random directory: the root, dN, or dN/eM.
func newPath(rng *rand.Rand, id uint64) string {
	return path.Join(drawDir(rng), fmt.Sprintf("f%06d", id))
}

func drawDir(rng *rand.Rand) string {
	switch r := rng.IntN(10); {
	case r < 4:
		return "."
	case r < 8:
		return fmt.Sprintf("d%d", rng.IntN(dirCount))
	default:
		return fmt.Sprintf("d%d/e%d", rng.IntN(dirCount), rng.IntN(4))
	}
}

// drawSize draws a file size in [1, limit]: tiny files, sizes at and around
// page multiples, medium and large files.
func drawSize(rng *rand.Rand, limit int64) int64 {
	limit = max(limit, 1)
	var n int64
	switch r := rng.IntN(100); {
	case r < 15:
		n = 1 + rng.Int64N(512)
	case r < 35:
		n = (1+rng.Int64N(16))*BlockSize + rng.Int64N(3) - 1
	case r < 80:
		n = 1 + rng.Int64N(256<<10)
	default:
		n = 256<<10 + rng.Int64N(3<<20-256<<10)
	}
	return min(n, limit)
}

// drawOffset draws a patch offset in [0, size): anywhere, at a block
// boundary, or one byte either side of one.
func drawOffset(rng *rand.Rand, size int64) int64 {
	off := rng.Int64N(size)
	switch rng.IntN(4) {
	case 0:
		off &^= BlockSize - 1
	case 1:
		off = max(0, off&^(BlockSize-1)+rng.Int64N(3)-1)
	}
	return min(off, size-1)
}
