package raw

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"

	"dst/storage/nbd"
)

// Device is the block device under test. Its methods are called
// concurrently; a call's buffer belongs to the device only until the call
// returns.
type Device interface {
	// Size is the device size in bytes.
	Size() int64
	// ReadAt reads len(p) bytes at off.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt writes p at off; fua asks that it be durable when it
	// returns.
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	// Flush makes every write that completed before it durable.
	Flush(ctx context.Context) error
}

// NBD adapts an NBD client to Device.
func NBD(c *nbd.Client) Device { return nbdDevice{c} }

type nbdDevice struct{ c *nbd.Client }

func (d nbdDevice) Size() int64 { return d.c.Size() }

func (d nbdDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	return d.c.ReadAt(ctx, p, off)
}

func (d nbdDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	var f nbd.CmdFlags
	if fua {
		f = nbd.CmdFlagFUA
	}
	return d.c.WriteAt(ctx, p, off, f)
}

func (d nbdDevice) Flush(ctx context.Context) error { return d.c.Flush(ctx) }

// Memory is an in-memory Device with a volatile cache: writes are visible
// at once but reach stable storage only at Flush (or at once with FUA).
// Crash loses the cache the way a killed server does. It is the reference
// device for testing the workload itself; each request is atomic.
type Memory struct {
	mu      sync.Mutex
	cur     []byte
	stable  []byte
	pending []pendingWrite // since the last Flush, in completion order
}

type pendingWrite struct {
	off  int64
	data []byte
	fua  bool
}

// NewMemory returns a zeroed memory device of size bytes.
func NewMemory(size int64) *Memory {
	return &Memory{cur: make([]byte, size), stable: make([]byte, size)}
}

// Size is the device size.
func (m *Memory) Size() int64 { return int64(len(m.cur)) }

func (m *Memory) check(off int64, n int) error {
	if off < 0 || off+int64(n) > int64(len(m.cur)) {
		return fmt.Errorf("memory: %#x+%d beyond %d bytes", off, n, len(m.cur))
	}
	return nil
}

// ReadAt reads the current content.
func (m *Memory) ReadAt(_ context.Context, p []byte, off int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(off, len(p)); err != nil {
		return err
	}
	copy(p, m.cur[off:])
	return nil
}

// WriteAt writes p; the write stays volatile until Flush unless fua.
func (m *Memory) WriteAt(_ context.Context, p []byte, off int64, fua bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(off, len(p)); err != nil {
		return err
	}
	copy(m.cur[off:], p)
	m.pending = append(m.pending, pendingWrite{off: off, data: append([]byte(nil), p...), fua: fua})
	return nil
}

// Flush makes every completed write stable.
func (m *Memory) Flush(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range m.pending {
		copy(m.stable[w.off:], w.data)
	}
	m.pending = m.pending[:0]
	return nil
}

// Crash loses the volatile cache: stable storage keeps every FUA write and,
// if rng is not nil, a random subset of the other unflushed writes (in
// completion order), and becomes the current content.
func (m *Memory) Crash(rng *rand.Rand) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range m.pending {
		if w.fua || (rng != nil && rng.IntN(2) == 0) {
			copy(m.stable[w.off:], w.data)
		}
	}
	m.pending = m.pending[:0]
	copy(m.cur, m.stable)
}
