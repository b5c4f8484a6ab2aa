package node

import (
	"context"
	"fmt"
	"sync"

	"dst/storage/nbd"
)

// MemoryFlags are the capabilities a Memory node honestly supports: every
// command, FUA (memory is as durable as it gets) and multi-conn (a flush
// covers everything, there is nothing to flush).
const MemoryFlags = nbd.FlagSendFlush | nbd.FlagSendFUA | nbd.FlagSendTrim | nbd.FlagSendWriteZero |
	nbd.FlagSendFastZero | nbd.FlagSendCache | nbd.FlagCanMultiConn

// Memory is a Node over a byte slice, for tests, with hooks that let a
// test fail, block or observe requests. Offsets and lengths must be within
// Size (as the Node contract says; the NBD server checks them).
type Memory struct {
	mu      sync.RWMutex
	data    []byte
	flushes int
	fail    error
	closed  bool

	// Block, when set before use, makes ReadAt and WriteAt wait until it
	// is closed (or their context ends).
	Block chan struct{}
	// Entered, when set before use, receives a value as each ReadAt or
	// WriteAt starts.
	Entered chan struct{}
}

var _ Node = (*Memory)(nil)

// NewMemory returns a zeroed node of size bytes.
func NewMemory(size int) *Memory { return &Memory{data: make([]byte, size)} }

// Size returns the size given to NewMemory.
func (m *Memory) Size() int64 { return int64(len(m.data)) }

// Flags returns MemoryFlags.
func (m *Memory) Flags() nbd.TransmissionFlags { return MemoryFlags }

// String returns "memory:SIZE".
func (m *Memory) String() string { return fmt.Sprintf("memory:%d", len(m.data)) }

// Close makes every later request fail with an error wrapping
// ErrUnavailable; the data stays readable through Bytes.
func (m *Memory) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	return nil
}

// SetFail makes every later request fail with err (nil: succeed again).
func (m *Memory) SetFail(err error) {
	m.mu.Lock()
	m.fail = err
	m.mu.Unlock()
}

func (m *Memory) failure() error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return fmt.Errorf("%v: closed: %w", m, ErrUnavailable)
	}
	return m.fail
}

// Bytes returns a copy of [off, off+n).
func (m *Memory) Bytes(off, n int) []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return append([]byte(nil), m.data[off:off+n]...)
}

// Flushes counts the flushes served.
func (m *Memory) Flushes() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.flushes
}

func (m *Memory) wait(ctx context.Context) error {
	if m.Entered != nil {
		m.Entered <- struct{}{}
	}
	if m.Block != nil {
		select {
		case <-m.Block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return m.failure()
}

// ReadAt implements nbd.Backend.
func (m *Memory) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := m.wait(ctx); err != nil {
		return err
	}
	m.mu.RLock()
	copy(p, m.data[off:])
	m.mu.RUnlock()
	return nil
}

// WriteAt implements nbd.Backend.
func (m *Memory) WriteAt(ctx context.Context, p []byte, off int64, _ nbd.CmdFlags) error {
	if err := m.wait(ctx); err != nil {
		return err
	}
	m.mu.Lock()
	copy(m.data[off:], p)
	m.mu.Unlock()
	return nil
}

// Flush implements nbd.Backend.
func (m *Memory) Flush(context.Context) error {
	m.mu.Lock()
	m.flushes++
	m.mu.Unlock()
	return m.failure()
}

func (m *Memory) zero(off, length int64) error {
	if err := m.failure(); err != nil {
		return err
	}
	m.mu.Lock()
	clear(m.data[off : off+length])
	m.mu.Unlock()
	return nil
}

// Trim implements nbd.Backend; trimmed bytes read back as zeroes.
func (m *Memory) Trim(_ context.Context, off, length int64, _ nbd.CmdFlags) error {
	return m.zero(off, length)
}

// WriteZeroes implements nbd.Backend.
func (m *Memory) WriteZeroes(_ context.Context, off, length int64, _ nbd.CmdFlags) error {
	return m.zero(off, length)
}

// Cache implements nbd.Backend.
func (m *Memory) Cache(context.Context, int64, int64) error { return m.failure() }
