package cluster

import (
	"context"
	"fmt"
	"os"

	"dst/storage/layout"
)

// Replicas returns how many replica views the storage has: the number of
// children of its widest mirror, or 1 without a mirror. View k of the
// device takes child k of every mirror (child k modulo the mirror's width
// where a mirror is narrower).
func (c *Cluster) Replicas() int {
	n := 1
	for _, m := range c.geo.root.mirrors(nil) {
		n = max(n, m.l.(*layout.Mirror).NumChildren())
	}
	return n
}

// replicaPicker picks child k of every mirror.
func replicaPicker(k int) layout.Picker {
	return layout.PickerFunc(func(m *layout.Mirror, _, _ int64) layout.ReplicaSet {
		return layout.ReplicaSet(1) << uint(k%m.NumChildren())
	})
}

// ReadReplica reads device range [off, off+len(p)) of replica view k from
// the nodes' image files, bypassing the engine. Only what the nodes wrote
// back is there: Flush first.
func (c *Cluster) ReadReplica(k int, p []byte, off int64) error {
	if off < 0 || off > c.Size()-int64(len(p)) {
		return fmt.Errorf("cluster: read replica %d: %#x+%d is outside the device of %#x bytes", k, off, len(p), c.Size())
	}
	for _, e := range c.geo.root.l.Map(nil, off, int64(len(p)), 0, replicaPicker(k)) {
		n := c.leaf(e.Member)
		f, err := os.Open(n.file)
		if err != nil {
			return fmt.Errorf("cluster: read replica %d: %w", k, err)
		}
		_, err = f.ReadAt(p[e.BufOffset:e.BufOffset+e.Length], e.Offset)
		f.Close()
		if err != nil {
			return fmt.Errorf("cluster: read replica %d: node %s at %#x+%d: %w", k, n.spec.Name, e.Offset, e.Length, err)
		}
	}
	return nil
}

// LocateReplica describes where device offset off of replica view k lives.
func (c *Cluster) LocateReplica(k int, off int64) string {
	if off < 0 || off >= c.Size() {
		return fmt.Sprintf("offset %#x is outside the device of %#x bytes", off, c.Size())
	}
	e := c.geo.root.l.Map(nil, off, 1, 0, replicaPicker(k))[0]
	n := c.leaf(e.Member)
	return Location{Leaf: e.Member, Node: n.spec.Name, URL: n.URL(), File: n.file, Offset: e.Offset}.String()
}

// Flush sends a FLUSH through the engine: every member writes its cache
// back.
func (c *Cluster) Flush(ctx context.Context) error { return c.flush(ctx) }
