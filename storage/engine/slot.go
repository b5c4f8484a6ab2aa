package engine

import (
	"context"
	"sync"
	"sync/atomic"

	"dst/storage/nbd"
	"dst/storage/node"
)

// slot is a member's place in the storage: the node that serves it now
// and the URL it was opened from. The engine reaches every member's node
// through its slot, so an online replacement (Storage.ReplaceMember)
// swaps the node under a running engine: the member is out of service
// with no piece in flight when it does, so no request sees the change.
type slot struct {
	cur atomic.Pointer[slotNode]

	mu     sync.Mutex
	verify func(context.Context, *nbd.Client) error // given to every node the slot takes
}

type slotNode struct {
	n   node.Node
	url string
}

func newSlot(n node.Node, url string) *slot {
	s := &slot{}
	s.cur.Store(&slotNode{n: n, url: url})
	return s
}

// node returns the node now in the slot.
func (s *slot) node() node.Node { return s.cur.Load().n }

// url returns the URL of the node now in the slot.
func (s *slot) url() string { return s.cur.Load().url }

// swap puts n, opened from url, in the slot and returns the node it held.
func (s *slot) swap(n node.Node, url string) node.Node {
	s.mu.Lock()
	if s.verify != nil {
		setVerify(n, s.verify)
	}
	old := s.cur.Swap(&slotNode{n: n, url: url})
	s.mu.Unlock()
	return old.n
}

func (s *slot) ReadAt(ctx context.Context, p []byte, off int64) error {
	return s.node().ReadAt(ctx, p, off)
}

func (s *slot) WriteAt(ctx context.Context, p []byte, off int64, flags nbd.CmdFlags) error {
	return s.node().WriteAt(ctx, p, off, flags)
}

func (s *slot) Flush(ctx context.Context) error { return s.node().Flush(ctx) }

func (s *slot) Trim(ctx context.Context, off, length int64, flags nbd.CmdFlags) error {
	return s.node().Trim(ctx, off, length, flags)
}

func (s *slot) WriteZeroes(ctx context.Context, off, length int64, flags nbd.CmdFlags) error {
	return s.node().WriteZeroes(ctx, off, length, flags)
}

func (s *slot) Cache(ctx context.Context, off, length int64) error {
	return s.node().Cache(ctx, off, length)
}

func (s *slot) BlockStatus(ctx context.Context, off, length int64, dst []nbd.Extent) ([]nbd.Extent, error) {
	return node.BlockStatus(ctx, s.node(), off, length, dst)
}

func (s *slot) Size() int64                  { return s.node().Size() }
func (s *slot) Flags() nbd.TransmissionFlags { return s.node().Flags() }
func (s *slot) Close() error                 { return s.node().Close() }
func (s *slot) String() string               { return s.node().String() }

// BootID is the boot id of the node's machine, "" where it sends none.
func (s *slot) BootID() string {
	if b, ok := s.node().(interface{ BootID() string }); ok {
		return b.BootID()
	}
	return ""
}

// Info is the node's latest handshake and whether it had one (a node
// without handshakes, such as a file, has always been reached).
func (s *slot) Info() (nbd.ExportInfo, bool) {
	if r, ok := s.node().(interface{ Info() (nbd.ExportInfo, bool) }); ok {
		return r.Info()
	}
	return nbd.ExportInfo{}, true
}

// SetVerify gives the check of every reconnect to the node in the slot
// and to every node it takes later.
func (s *slot) SetVerify(f func(context.Context, *nbd.Client) error) {
	s.mu.Lock()
	s.verify = f
	setVerify(s.node(), f)
	s.mu.Unlock()
}

func setVerify(n node.Node, f func(context.Context, *nbd.Client) error) {
	if v, ok := n.(interface {
		SetVerify(func(context.Context, *nbd.Client) error)
	}); ok {
		v.SetVerify(f)
	}
}

// Abort ends the node's requests in flight, if it can (Aborter).
func (s *slot) Abort(reason error) {
	if a, ok := s.node().(Aborter); ok {
		a.Abort(reason)
	}
}

// reached reports whether n has had a connection, so its Size and Flags
// are known: false only for a remote node opened in the background
// (node.OpenOptions.Background) that has not connected yet.
func reached(n node.Node) bool {
	if r, ok := n.(interface{ Info() (nbd.ExportInfo, bool) }); ok {
		_, had := r.Info()
		return had
	}
	return true
}
