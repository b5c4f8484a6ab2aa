package cluster

import (
	"fmt"
	"slices"
	"strings"

	"dst/storage/layout"
	"dst/storage/meta"
	"dst/storage/spec"
)

// maxBoundaries bounds what Boundaries returns.
const maxBoundaries = 4096

// edgeStripes is how many stripes at each end of a stripe contribute
// their chunk edges to Boundaries.
const edgeStripes = 3

// geometry is the layout the engine builds for a topology: the same
// meta.Plan areas (a new storage plans every member from its size and the
// region size; an existing one reads the areas planned so from its
// superblocks) and the same tree of storage/layout nodes.
type geometry struct {
	root   *tree
	leaves []string // node names, by member index
	areas  []meta.Area
}

// tree is a node of the layout with the spec it came from and its place
// in the parent, so that logical offsets map back up to the device.
type tree struct {
	spec     *spec.Tree
	l        layout.Layout
	parent   *tree
	index    int // child index in parent
	children []*tree
}

// build plans every member and builds the layout as engine.Assemble does.
func (t Topology) build() (*geometry, error) {
	g := &geometry{leaves: t.Storage.Leaves()}
	for i, name := range g.leaves {
		n, ok := t.node(name)
		if !ok {
			return nil, fmt.Errorf("%w: unknown node %q", ErrTopology, name)
		}
		a, err := meta.Plan(n.Size, t.Engine.regionSize())
		if err != nil {
			return nil, fmt.Errorf("member %d (node %s): %w", i, name, err)
		}
		g.areas = append(g.areas, a)
	}
	l, err := t.Storage.Build(func(i int) (layout.Layout, error) {
		return layout.NewLeaf(i, g.areas[i].DataOffset, g.areas[i].DataSize)
	})
	if err != nil {
		return nil, err
	}
	g.root = newTree(&t.Storage, l, nil, 0)
	return g, nil
}

// newTree pairs the spec node s with the layout l built from it, and their
// children likewise.
func newTree(s *spec.Tree, l layout.Layout, parent *tree, index int) *tree {
	tr := &tree{spec: s, l: l, parent: parent, index: index}
	if p, ok := l.(interface{ Child(int) layout.Layout }); ok {
		for i := range s.Members {
			tr.children = append(tr.children, newTree(&s.Members[i], p.Child(i), tr, i))
		}
	}
	return tr
}

// deviceOffset maps logical offset x of tr up to the device.
func (tr *tree) deviceOffset(x int64) int64 {
	for ; tr.parent != nil; tr = tr.parent {
		switch p := tr.parent.l.(type) {
		case *layout.Linear:
			x = p.Logical(tr.index, x)
		case *layout.Stripe:
			x = p.Logical(tr.index, x)
		case *layout.Mirror:
		}
	}
	return x
}

// mirrors returns every mirror of the tree, depth first.
func (tr *tree) mirrors(dst []*tree) []*tree {
	if _, ok := tr.l.(*layout.Mirror); ok {
		dst = append(dst, tr)
	}
	for _, c := range tr.children {
		dst = c.mirrors(dst)
	}
	return dst
}

// boundaries returns the logical offsets in (0, Size()) of l where one
// leaf ends and another begins: linear child edges, the chunk edges of
// the first and last edgeStripes stripes of a stripe, and the boundaries
// inside children mapped up.
func boundaries(l layout.Layout) []int64 {
	var out []int64
	switch l := l.(type) {
	case *layout.Linear:
		for i := range l.NumChildren() {
			if i > 0 {
				out = append(out, l.Start(i))
			}
			for _, b := range boundaries(l.Child(i)) {
				out = append(out, l.Start(i)+b)
			}
		}
	case *layout.Stripe:
		n := int64(l.NumChildren())
		chunks := l.Size() / l.Chunk()
		for k := int64(1); k < chunks; k++ {
			if k > edgeStripes*n && k < chunks-edgeStripes*n {
				k = chunks - edgeStripes*n
			}
			out = append(out, k*l.Chunk())
		}
		for i := range l.NumChildren() {
			for _, b := range boundaries(l.Child(i)) {
				if b < l.PerChild() {
					out = append(out, l.Logical(i, b))
				}
			}
		}
	case *layout.Mirror:
		for i := range l.NumChildren() {
			for _, b := range boundaries(l.Child(i)) {
				if b < l.Size() {
					out = append(out, b)
				}
			}
		}
	}
	slices.Sort(out)
	out = slices.Compact(out)
	if len(out) > maxBoundaries {
		// Keep both ends: the first and last edges matter most.
		out = append(out[:maxBoundaries/2], out[len(out)-maxBoundaries/2:]...)
	}
	return out
}

// Location is where one replica of a device byte lives.
type Location struct {
	// Leaf is the member index.
	Leaf int
	// Node is the node's name, URL the member URL the engine uses (the
	// proxy's when there is one), File the node's image.
	Node, URL, File string
	// Offset is the member offset: the byte is at this offset of File.
	Offset int64
}

func (l Location) String() string {
	return fmt.Sprintf("leaf %d node %s (%s) at member offset %#x", l.Leaf, l.Node, l.URL, l.Offset)
}

// Size returns the size of the device in bytes.
func (c *Cluster) Size() int64 { return c.geo.root.l.Size() }

// Boundaries returns, in ascending order, the device offsets where the
// layout crosses from one leaf to another: linear member ends and the
// chunk edges of the first and last few stripes (at most 4096 offsets).
func (c *Cluster) Boundaries() []int64 { return boundaries(c.geo.root.l) }

// Where returns every replica of device offset off, in member order; nil
// if off is outside the device.
func (c *Cluster) Where(off int64) []Location {
	if off < 0 || off >= c.Size() {
		return nil
	}
	var out []Location
	for _, e := range c.geo.root.l.Map(nil, off, 1, 0, layout.AllReplicas) {
		n := c.leaf(e.Member)
		out = append(out, Location{Leaf: e.Member, Node: n.spec.Name, URL: n.URL(), File: n.File(), Offset: e.Offset})
	}
	return out
}

// Locate describes where device offset off lives, e.g. "leaf 0 node a
// (nbd://127.0.0.1:4711) at member offset 0x5000; leaf 1 node b (...) at
// member offset 0x5000" for a mirror.
func (c *Cluster) Locate(off int64) string {
	locs := c.Where(off)
	if locs == nil {
		return fmt.Sprintf("offset %#x is outside the device of %#x bytes", off, c.Size())
	}
	parts := make([]string, len(locs))
	for i, l := range locs {
		parts[i] = l.String()
	}
	return strings.Join(parts, "; ")
}

// leaf returns the node of member i.
func (c *Cluster) leaf(i int) *Node { return c.nodes[c.geo.leaves[i]] }

// DataArea returns where the data area of the named node's member lies
// in its image (after the superblock and bitmap), or false when the node
// is no member.
func (c *Cluster) DataArea(name string) (off, size int64, ok bool) {
	for i, leaf := range c.geo.leaves {
		if leaf == name {
			return c.geo.areas[i].DataOffset, c.geo.areas[i].DataSize, true
		}
	}
	return 0, 0, false
}
