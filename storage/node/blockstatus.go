package node

import (
	"context"
	"errors"

	"golang.org/x/sys/unix"

	"dst/storage/nbd"
)

// BlockStatus returns the allocation of [off, off+length) of n from its
// nbd.BlockStatusBackend, or one data descriptor for a node that cannot
// tell (always true). See nbd.BlockStatusBackend for the contract.
func BlockStatus(ctx context.Context, n Node, off, length int64, dst []nbd.Extent) ([]nbd.Extent, error) {
	if bs, ok := n.(nbd.BlockStatusBackend); ok {
		return bs.BlockStatus(ctx, off, length, dst)
	}
	return append(dst, nbd.Extent{Length: length}), nil
}

// BlockStatus reports the file's holes (SEEK_DATA and SEEK_HOLE): a hole
// reads as zeroes (StateHole|StateZero), the rest is data. A block device,
// or a file system that does not report holes, is all data. Bytes past
// the end of a file shorter than the node read as zeroes and are a hole.
func (f *File) BlockStatus(ctx context.Context, off, length int64, dst []nbd.Extent) ([]nbd.Extent, error) {
	end, start := off+length, len(dst)
	if f.block {
		return append(dst, nbd.Extent{Length: length}), nil
	}
	add := func(to int64, flags uint32) {
		if to > off {
			dst = append(dst, nbd.Extent{Length: to - off, Flags: flags})
			off = to
		}
	}
	const hole = nbd.StateHole | nbd.StateZero
	err := f.control(func(fd int) error {
		for off < end && len(dst) < cap(dst) {
			data, err := unix.Seek(fd, off, unix.SEEK_DATA)
			switch {
			case errors.Is(err, unix.ENXIO): // no data at or after off
				add(end, hole)
				return nil
			case err != nil:
				return err
			}
			if data > off {
				add(min(data, end), hole)
				continue
			}
			h, err := unix.Seek(fd, off, unix.SEEK_HOLE)
			if err != nil {
				return err
			}
			add(min(max(h, off+1), end), 0)
		}
		return nil
	})
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
		// No hole reporting here: what is left counts as data.
		add(end, 0)
		return dst, nil
	}
	if err != nil {
		return dst, f.opErr("block status", off, end-off, err)
	}
	if len(dst) == start {
		add(end, 0)
	}
	return dst, nil
}

// BlockStatus passes on the node below's answer; with an injector set,
// no range is reported as reading zeroes (a flipped bit would make that
// untrue).
func (f *Faulty) BlockStatus(ctx context.Context, off, length int64, dst []nbd.Extent) ([]nbd.Extent, error) {
	start := len(dst)
	dst, err := BlockStatus(ctx, f.under, off, length, dst)
	if f.inj.Load() != nil {
		for i := start; i < len(dst); i++ {
			dst[i].Flags &^= nbd.StateZero
		}
	}
	return dst, err
}
