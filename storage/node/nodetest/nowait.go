// Package nodetest holds node backends that only tests use: a memory node
// that also offers the NBD server's in-place path (Nowait).
package nodetest

import (
	"context"
	"sync/atomic"

	"dst/storage/nbd"
	"dst/storage/node"
)

// Nowait is a node.Memory that also offers the server's in-place path
// (nbd.NowaitBackend). Memory itself does not, on purpose: test backends
// embed it to override ReadAt or WriteAt, and a promoted TryReadAt would
// silently bypass their overrides.
//
// Refuse decides per request whether the in-place try says "would block"
// (the request then goes to a worker); nil takes every one. Served and
// Refused count the tries.
type Nowait struct {
	*node.Memory
	Refuse  func(write bool, off int64, n int) bool
	Served  atomic.Int64
	Refused atomic.Int64
}

var _ nbd.NowaitBackend = (*Nowait)(nil)

// NewNowait returns a Nowait over a new node.Memory of size bytes.
func NewNowait(size int) *Nowait { return &Nowait{Memory: node.NewMemory(size)} }

// TryReadAt implements nbd.NowaitBackend.
func (m *Nowait) TryReadAt(p []byte, off int64) (bool, error) {
	if m.Refuse != nil && m.Refuse(false, off, len(p)) {
		m.Refused.Add(1)
		return false, nil
	}
	m.Served.Add(1)
	return true, m.ReadAt(context.Background(), p, off)
}

// TryWriteAt implements nbd.NowaitBackend.
func (m *Nowait) TryWriteAt(p []byte, off int64, flags nbd.CmdFlags) (bool, error) {
	if m.Refuse != nil && m.Refuse(true, off, len(p)) {
		m.Refused.Add(1)
		return false, nil
	}
	m.Served.Add(1)
	return true, m.WriteAt(context.Background(), p, off, flags)
}
