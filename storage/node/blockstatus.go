package node

import (
	"bytes"
	"context"
	"errors"
	"sync"

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
	const hole = nbd.StateHole | nbd.StateZero
	// lseek with SEEK_DATA and SEEK_HOLE (the file offset it moves is
	// unused: I/O is positioned).
	for off < end && len(dst) < cap(dst) {
		data, err := f.seek(off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) { // no data at or after off
			dst = append(dst, nbd.Extent{Length: end - off, Flags: hole})
			off = end
			break
		}
		if err == nil && data > off {
			to := min(data, end)
			dst = append(dst, nbd.Extent{Length: to - off, Flags: hole})
			off = to
			continue
		}
		var h int64
		if err == nil {
			h, err = f.seek(off, unix.SEEK_HOLE)
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			break // no hole reporting here: what is left counts as data
		}
		if err != nil {
			return dst, f.opErr("block status", off, end-off, err)
		}
		to := min(max(h, off+1), end)
		dst = append(dst, nbd.Extent{Length: to - off})
		off = to
	}
	if len(dst) == start || (off < end && len(dst) < cap(dst)) {
		dst = append(dst, nbd.Extent{Length: end - off})
	}
	return dst, nil
}

// SparseReads reports that the file's block status is cheap (two lseeks):
// a server may ask it before every large read and answer holes without
// reading them (nbd.SparseReadBackend). A block device says all data. A
// file on a memory file system says no: tmpfs answers SEEK_HOLE by
// walking its pages up to the next hole, so on a file that is all data
// every large read paid a walk to the end of the file (a 1 GiB file read
// at 183 MiB/s instead of 2340), and its reads are served from the
// mapping anyway (View); explicit BLOCK_STATUS still seeks.
func (f *File) SparseReads() bool { return !f.block && !f.memory }

// seekOp is one lseek on the descriptor, pooled so that block status
// allocates nothing (os.File.Seek wraps every error, ENXIO at the end of
// the data included, in a new PathError).
type seekOp struct {
	off, res int64
	whence   int
	err      error
	fn       func(fd uintptr)
}

var seekOps = sync.Pool{New: func() any {
	op := &seekOp{}
	op.fn = func(fd uintptr) { op.res, op.err = unix.Seek(int(fd), op.off, op.whence) }
	return op
}}

// seek is lseek(off, whence) on the file; errors are the bare errno.
func (f *File) seek(off int64, whence int) (int64, error) {
	op := seekOps.Get().(*seekOp)
	op.off, op.whence = off, whence
	if cerr := f.rc.Control(op.fn); cerr != nil {
		seekOps.Put(op)
		return 0, cerr
	}
	res, err := op.res, op.err
	seekOps.Put(op)
	return res, err
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

// zeroBlock is a block of zeroes to compare memory with.
var zeroBlock [VolatileUnit]byte

// BlockStatus reports, in 4 KiB blocks, the runs of zero bytes as reading
// zeroes (StateZero; memory has no holes) and the rest as data.
func (m *Memory) BlockStatus(_ context.Context, off, length int64, dst []nbd.Extent) ([]nbd.Extent, error) {
	if err := m.failure(); err != nil {
		return dst, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	end, start := off+length, len(dst)
	for off < end {
		to := min((off/VolatileUnit+1)*VolatileUnit, end)
		var flags uint32
		if bytes.Equal(m.data[off:to], zeroBlock[:to-off]) {
			flags = nbd.StateZero
		}
		switch n := len(dst); {
		case n > start && dst[n-1].Flags == flags:
			dst[n-1].Length += to - off
		case n == cap(dst) && n > start:
			return dst, nil
		default:
			dst = append(dst, nbd.Extent{Length: to - off, Flags: flags})
		}
		off = to
	}
	return dst, nil
}

// BlockStatus passes on the answer of the node below, except that a range
// holding writes still in the cache is data (they are not below yet).
func (v *Volatile) BlockStatus(ctx context.Context, off, length int64, dst []nbd.Extent) ([]nbd.Extent, error) {
	start := len(dst)
	// Held across the question below too: a write-back (under mu) moving
	// a unit from the cache to the node below between the two looks
	// would make written data look like a hole that reads zeroes, and a
	// resync would zero a replica's data (torture smoke run, 2026-12-07).
	v.mu.Lock()
	defer v.mu.Unlock()
	dst, err := BlockStatus(ctx, v.under, off, length, dst)
	if err != nil {
		return dst, err
	}
	at := off
	for i := start; i < len(dst); i++ {
		d := &dst[i]
		for u := at / VolatileUnit; d.Flags != 0 && u <= (at+d.Length-1)/VolatileUnit; u++ {
			if _, ok := v.cache[u]; ok {
				d.Flags = 0 // cached writes: data, whatever is below
			}
		}
		at += d.Length
	}
	return dst, nil
}
