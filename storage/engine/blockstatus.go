package engine

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"dst/storage/layout"
	"dst/storage/nbd"
	"dst/storage/node"
)

// BlockStatus reports which parts of [off, off+length) hold data
// (nbd.BlockStatusBackend), through the layout: each piece is asked of the
// member that serves it as a read would be (for a mirror, an in-sync
// replica, never one being resynced), in order; a member that cannot tell
// reports data, and metadata areas stay out of view (pieces lie in the
// members' data areas). The answer ends early where a member's does, or
// where dst is full: the client asks again from there.
//
// Durability: block status changes nothing. A range written since the
// last FLUSH is data now and may read as a hole after a member's machine
// loses power, as its data may.
func (e *Engine) BlockStatus(ctx context.Context, off, length int64, dst []nbd.Extent) ([]nbd.Extent, error) {
	if off < 0 || length <= 0 || off+length > e.Size() {
		return dst, fmt.Errorf("engine: BLOCK_STATUS offset %d length %d of %d bytes: %w", off, length, e.Size(), nbd.EINVAL)
	}
	r, err := e.get(ctx) // a request slot: its picker and extents, no allocation
	if err != nil {
		return dst, err
	}
	defer e.put(r)
	exts := e.root.Map(r.extBuf[:0], off, length, 0, &r.rp)
	r.exts = exts
	if r.rp.noReplica {
		return dst, fmt.Errorf("engine: BLOCK_STATUS offset %d length %d: %w", off, length, ErrNoReplica)
	}
	slices.SortFunc(exts, func(a, b layout.Extent) int { return cmp.Compare(a.BufOffset, b.BufOffset) })
	for _, x := range exts {
		if len(dst) == cap(dst) {
			break
		}
		m := e.members[x.Member]
		start := len(dst)
		var err error
		if dst, err = node.BlockStatus(ctx, m.node, x.Offset, x.Length, dst); err != nil {
			return dst[:start], fmt.Errorf("engine: BLOCK_STATUS offset %d length %d on member %d (%v): %w",
				off+x.BufOffset, x.Length, m.index, m.node, err)
		}
		var covered int64
		for _, d := range dst[start:] {
			covered += d.Length
		}
		if covered < x.Length {
			break
		}
	}
	return dst, nil
}
