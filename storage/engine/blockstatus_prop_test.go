package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/leanovate/gopter"
	"github.com/leanovate/gopter/gen"
	"github.com/leanovate/gopter/prop"
	"golang.org/x/sys/unix"

	"dst/internal/proptest"
	"dst/storage/layout"
	"dst/storage/nbd"
	"dst/storage/node"
)

// bsOp is one write or trim of the block status property.
type bsOp struct {
	Trim     bool
	Off, Len int64
}

func (o bsOp) String() string {
	if o.Trim {
		return fmt.Sprintf("trim(%d+%d)", o.Off, o.Len)
	}
	return fmt.Sprintf("write(%d+%d)", o.Off, o.Len)
}

// allReplicas sends a mirror range to every child (the model's writes).
type allReplicas struct{}

func (allReplicas) Pick(m *layout.Mirror, _, _ int64) layout.ReplicaSet {
	var s layout.ReplicaSet
	for i := range m.NumChildren() {
		s |= layout.Replica(i)
	}
	return s
}

// firstReplica sends a mirror range to child 0 (the model's reads: every
// replica got the same writes, so the same allocation).
type firstReplica struct{}

func (firstReplica) Pick(*layout.Mirror, int64, int64) layout.ReplicaSet { return layout.Replica(0) }

// bsTree is linear(stripe(8 KiB chunks, two members), mirror of two,
// one member), with member sizes that put member boundaries inside a
// file system block.
func bsTree() (layout.Layout, []int64, error) {
	sizes := []int64{40960 + 3000, 40960 + 3000, 30001, 30001, 20481}
	var ls []layout.Layout
	for i, n := range sizes {
		l, err := layout.NewLeaf(i, 0, n)
		if err != nil {
			return nil, nil, err
		}
		ls = append(ls, l)
	}
	st, err := layout.NewStripe(8192, ls[0], ls[1])
	if err != nil {
		return nil, nil, err
	}
	mi, err := layout.NewMirror(ls[2], ls[3])
	if err != nil {
		return nil, nil, err
	}
	root, err := layout.NewLinear(st, mi, ls[4])
	return root, sizes, err
}

// TestBlockStatusProperty: after random writes and trims on a layout tree
// of sparse files, block status of any range is the members' allocation
// (file system blocks written and not punched since) seen through the
// layout: descriptors from the start of the range, in order, each byte
// once, data exactly where the model has it, holes reading zero.
func TestBlockStatusProperty(t *testing.T) {
	var sfs unix.Statfs_t
	dir := t.TempDir()
	if err := unix.Statfs(dir, &sfs); err != nil {
		t.Fatal(err)
	}
	block := sfs.Bsize
	root, _, err := bsTree()
	if err != nil {
		t.Fatal(err)
	}
	size := root.Size()
	genOp := gopter.CombineGens(gen.Bool(), gen.Int64Range(0, size-1), gen.Int64Range(1, 24000)).Map(func(v []any) bsOp {
		off := v[1].(int64)
		return bsOp{Trim: v[0].(bool), Off: off, Len: min(v[2].(int64), size-off)}
	})
	params := proptest.Params(t, 40)
	props := gopter.NewProperties(params)
	iter := 0
	props.Property("block status is the members' allocation through the layout", prop.ForAll(
		func(ops []bsOp, qOff, qLen int64) string {
			iter++
			return checkBlockStatus(t, filepath.Join(dir, fmt.Sprint(iter)), block, ops, qOff, min(qLen, size-qOff))
		},
		gen.SliceOfN(10, genOp),
		gen.Int64Range(0, size-1), gen.Int64Range(1, size),
	))
	props.TestingRun(t)
}

// checkBlockStatus runs ops on a fresh tree in dir and checks block
// status of [qOff, qOff+qLen) against the model of each member file's
// allocated blocks.
func checkBlockStatus(t *testing.T, dir string, block int64, ops []bsOp, qOff, qLen int64) string {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err.Error()
	}
	defer os.RemoveAll(dir)
	root, sizes, err := bsTree()
	if err != nil {
		return err.Error()
	}
	nodes := make([]node.Node, len(sizes))
	alloc := make([][]bool, len(sizes))
	for i, n := range sizes {
		f, err := node.OpenFile(filepath.Join(dir, fmt.Sprintf("m%d.img", i)), node.FileOptions{Size: n})
		if err != nil {
			return err.Error()
		}
		defer f.Close()
		nodes[i], alloc[i] = f, make([]bool, (n+block-1)/block)
	}
	e, err := New(root, nodes, Options{})
	if err != nil {
		return err.Error()
	}
	defer e.Close()
	ctx := context.Background()
	for k, o := range ops {
		if o.Trim {
			err = e.Trim(ctx, o.Off, o.Len, 0)
		} else {
			p := make([]byte, o.Len)
			for i := range p {
				p[i] = byte(k+i) | 1
			}
			err = e.WriteAt(ctx, p, o.Off, 0)
		}
		if err != nil {
			return fmt.Sprintf("%v: %v", o, err)
		}
		for _, x := range root.Map(nil, o.Off, o.Len, 0, allReplicas{}) {
			end := x.Offset + x.Length
			for b := x.Offset / block; b <= (end-1)/block; b++ {
				switch {
				case !o.Trim:
					alloc[x.Member][b] = true
				case x.Offset <= b*block && end >= (b+1)*block:
					// A punched hole frees whole blocks only; the partial
					// block at the end of a file stays (zeroed).
					alloc[x.Member][b] = false
				}
			}
		}
	}
	var descs []nbd.Extent
	for at := qOff; at < qOff+qLen; {
		d, err := e.BlockStatus(ctx, at, qOff+qLen-at, make([]nbd.Extent, 0, 7))
		if err != nil {
			return fmt.Sprintf("block status %d+%d: %v", at, qOff+qLen-at, err)
		}
		if len(d) == 0 {
			return fmt.Sprintf("block status %d+%d: no descriptor", at, qOff+qLen-at)
		}
		for _, x := range d {
			if x.Length <= 0 || (x.Flags != 0 && x.Flags != nbd.StateHole|nbd.StateZero) {
				return fmt.Sprintf("descriptor %+v", x)
			}
			at += x.Length
		}
		if at > qOff+qLen {
			return fmt.Sprintf("descriptors %v end at %d, past the range's end %d", d, at, qOff+qLen)
		}
		descs = append(descs, d...)
	}
	// Each descriptor's first and last byte, and every 256th between:
	// runs of one state are longer than that.
	at := qOff
	for _, d := range descs {
		for b := at; b < at+d.Length; b = min(b+256, at+d.Length-1) {
			x := root.Map(nil, b, 1, 0, firstReplica{})[0]
			want, got := alloc[x.Member][x.Offset/block], d.Flags&nbd.StateHole == 0
			if got != want {
				return fmt.Sprintf("byte %d (member %d offset %d): data=%v, the model says %v; descriptors from %d: %v",
					b, x.Member, x.Offset, got, want, qOff, descs)
			}
			if b == at+d.Length-1 {
				break
			}
		}
		at += d.Length
	}
	return ""
}
