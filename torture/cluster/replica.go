package cluster

import (
	"context"
	"fmt"

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

// ReplicaImages reads the replica views of the device from the nodes'
// image files, bypassing the engine. Only what the nodes wrote back is
// there: Flush first.
type ReplicaImages struct {
	c       *Cluster
	files   images
	extents []layout.Extent
}

// OpenReplicas opens the nodes' image files for ReadAt; Close them.
func (c *Cluster) OpenReplicas() (*ReplicaImages, error) {
	files, err := c.openImages()
	if err != nil {
		return nil, fmt.Errorf("cluster: open replicas: %w", err)
	}
	return &ReplicaImages{c: c, files: files}, nil
}

// ReadAt reads device range [off, off+len(p)) of replica view k. Calls
// must not overlap.
func (r *ReplicaImages) ReadAt(k int, p []byte, off int64) error {
	if off < 0 || off > r.c.Size()-int64(len(p)) {
		return fmt.Errorf("cluster: read replica %d: %#x+%d is outside the device of %#x bytes", k, off, len(p), r.c.Size())
	}
	var err error
	r.extents, err = readThrough(r.files, r.c.geo.root.l, off, p, r.extents, replicaPicker(k))
	if err != nil {
		return fmt.Errorf("cluster: read replica %d: %w", k, err)
	}
	return nil
}

// Locate describes where device offset off of replica view k lives.
func (r *ReplicaImages) Locate(k int, off int64) string {
	if off < 0 || off >= r.c.Size() {
		return fmt.Sprintf("offset %#x is outside the device of %#x bytes", off, r.c.Size())
	}
	return r.c.locateIn(r.c.geo.root.l, off, replicaPicker(k)).String()
}

// Close closes the image files.
func (r *ReplicaImages) Close() { r.files.close() }

// Flush sends a FLUSH through the engine: every member writes its cache
// back.
func (c *Cluster) Flush(ctx context.Context) error { return c.flush(ctx) }
