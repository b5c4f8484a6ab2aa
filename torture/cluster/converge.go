package cluster

import (
	"bytes"
	"context"
	"fmt"
	"os"

	"dst/storage/layout"
	"dst/storage/nbd"
)

// compareChunk is how many bytes of each replica Converged reads at once.
const compareChunk = 1 << 20

// Divergence is the first difference between two replicas of a mirror.
type Divergence struct {
	// Mirror is the mirror's subtree, e.g. "mirror(a,b)"; A and B are the
	// two children compared, e.g. "a" and "b".
	Mirror, A, B string
	// Offset is the first differing byte in the mirror's own address space
	// and DeviceOffset where it is on the device.
	Offset, DeviceOffset int64
	// AWhere and BWhere say where that byte lives in each child.
	AWhere, BWhere Location
	// Differing counts the differing bytes in the chunk of up to 1 MiB
	// where the first one was found.
	Differing int
}

func (d Divergence) String() string {
	return fmt.Sprintf("%s: %s and %s differ at mirror offset %#x (device %#x, %d bytes in its MiB): %v vs %v",
		d.Mirror, d.A, d.B, d.Offset, d.DeviceOffset, d.Differing, d.AWhere, d.BWhere)
}

// Converged checks that the replicas of every mirror hold the same bytes.
// It waits until every member is in sync (WaitInSync, within ctx), sends
// a FLUSH through the engine, then reads the image files directly: each
// child of each mirror is compared with child 0 over the mirror's whole
// data (through the layout, so children that are themselves layouts
// compare too; a mirror under a mirror picks its child 0). It returns the
// first difference of each pair, or none. The caller stops writing first:
// writes in flight make replicas differ for a moment.
func (c *Cluster) Converged(ctx context.Context) ([]Divergence, error) {
	if _, _, err := c.eng.WaitInSync(ctx); err != nil {
		return nil, err
	}
	if err := c.flush(ctx); err != nil {
		return nil, err
	}
	files, err := c.openImages()
	if err != nil {
		return nil, fmt.Errorf("cluster: converged: %w", err)
	}
	defer files.close()
	var out []Divergence
	bufA, bufB := make([]byte, compareChunk), make([]byte, compareChunk)
	for _, m := range c.geo.root.mirrors(nil) {
		ml := m.l.(*layout.Mirror)
		for j := 1; j < ml.NumChildren(); j++ {
			d, err := c.compare(ctx, files, m, 0, j, bufA, bufB)
			if err != nil {
				return nil, err
			}
			if d != nil {
				out = append(out, *d)
			}
		}
	}
	// The comparison is meaningful only if nothing fell out of sync
	// meanwhile.
	st, err := c.eng.Status(ctx)
	if err != nil {
		return nil, err
	}
	if !InSync(st) {
		return out, fmt.Errorf("%w while comparing: %s", ErrNotInSync, describeMembers(st))
	}
	return out, nil
}

// compare compares children a and b of mirror m.
func (c *Cluster) compare(ctx context.Context, files images, m *tree, a, b int, bufA, bufB []byte) (*Divergence, error) {
	size := m.l.Size()
	ca, cb := m.children[a], m.children[b]
	var extents []layout.Extent
	for off := int64(0); off < size; off += compareChunk {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("cluster: converged: %w", err)
		}
		n := min(compareChunk, size-off)
		var err error
		if extents, err = readThrough(files, ca.l, off, bufA[:n], extents, layout.FirstReplica); err != nil {
			return nil, err
		}
		if extents, err = readThrough(files, cb.l, off, bufB[:n], extents, layout.FirstReplica); err != nil {
			return nil, err
		}
		if bytes.Equal(bufA[:n], bufB[:n]) {
			continue
		}
		first, count := -1, 0
		for i := range n {
			if bufA[i] != bufB[i] {
				count++
				if first < 0 {
					first = int(i)
				}
			}
		}
		x := off + int64(first)
		return &Divergence{
			Mirror: m.spec.String(), A: ca.spec.String(), B: cb.spec.String(),
			Offset: x, DeviceOffset: m.deviceOffset(x),
			AWhere: c.locateIn(ca.l, x, layout.FirstReplica), BWhere: c.locateIn(cb.l, x, layout.FirstReplica), Differing: count,
		}, nil
	}
	return nil, nil
}

// images are the image files of the leaves, in leaf order, open for
// reading.
type images []*os.File

// openImages opens every leaf's image file.
func (c *Cluster) openImages() (images, error) {
	files := make(images, len(c.geo.leaves))
	for i := range files {
		f, err := os.Open(c.leaf(i).file)
		if err != nil {
			files.close()
			return nil, err
		}
		files[i] = f
	}
	return files, nil
}

func (files images) close() {
	for _, f := range files {
		if f != nil {
			f.Close()
		}
	}
}

// readThrough reads logical range [off, off+len(p)) of l from the image
// files, taking the child pick picks of any mirror on the way.
func readThrough(files images, l layout.Layout, off int64, p []byte, extents []layout.Extent, pick layout.Picker) ([]layout.Extent, error) {
	extents = l.Map(extents[:0], off, int64(len(p)), 0, pick)
	for _, e := range extents {
		buf := p[e.BufOffset : e.BufOffset+e.Length]
		if _, err := files[e.Member].ReadAt(buf, e.Offset); err != nil {
			return extents, fmt.Errorf("cluster: read member %d at %d+%d: %w", e.Member, e.Offset, e.Length, err)
		}
	}
	return extents, nil
}

// locateIn returns where logical offset x of l lives (the child pick
// picks of mirrors).
func (c *Cluster) locateIn(l layout.Layout, x int64, pick layout.Picker) Location {
	e := l.Map(nil, x, 1, 0, pick)[0]
	n := c.leaf(e.Member)
	return Location{Leaf: e.Member, Node: n.spec.Name, URL: n.URL(), File: n.File(), Offset: e.Offset}
}

// flush sends a FLUSH to the engine over a connection of its own.
func (c *Cluster) flush(ctx context.Context) error {
	cl, err := nbd.Dial(ctx, "tcp", c.eng.Addr(), nbd.ClientOptions{})
	if err != nil {
		return fmt.Errorf("cluster: flush: %w", err)
	}
	defer cl.Close()
	if err := cl.Flush(ctx); err != nil {
		return fmt.Errorf("cluster: flush: %w", err)
	}
	return nil
}
