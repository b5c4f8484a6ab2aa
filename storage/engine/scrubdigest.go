package engine

// Scrub by digests: where every in-sync child of a mirror is one member
// behind a dst export, a region is compared by the CRC-32C of each 4 KiB
// block that each member's node computes where the data is (its hidden
// digest export, node.Digests): 4 bytes cross the network for each 4 KiB.
// A region whose digests all agree is done; one where they differ, or a
// member without digests (a foreign NBD server, a file, a read that
// failed), is read and compared byte for byte as before, which finds the
// exact ranges and repairs them. So a digest can only save a read, never
// report or hide a mismatch by itself: a false match needs a CRC-32C
// collision of two different blocks (one in 2^32 per block that differs).
//
// The region's lock stripe is held as for a read compare: no client write
// to the region runs meanwhile, and every write completed before it was
// acknowledged by the node, so the digests cover it.

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"dst/storage/nbd"
	"dst/storage/node"
)

// digestOpenTimeout bounds the opening of a member's digest export.
const digestOpenTimeout = 3 * time.Second

// digestNode is the digest export opened for a member while its slot held
// url; n is nil where there is none.
type digestNode struct {
	url string
	n   node.Node
}

// digestsOf returns m's digest node, opening it on first use (and again
// after the member's node was replaced); nil when m has none.
func (e *Engine) digestsOf(ctx context.Context, m *member) node.Node {
	sl, ok := m.node.(*slot)
	if !ok || e.openDigests == nil {
		return nil
	}
	u := sl.url()
	e.digestMu.Lock()
	d, ok := e.digests[m.index]
	e.digestMu.Unlock()
	if ok && d.url == u {
		return d.n // asked once per member, not per region
	}
	if ok && d.n != nil {
		d.n.Close()
	}
	var n node.Node
	du, ok := node.DigestURL(u)
	err := fmt.Errorf("%s names no NBD export", u)
	if ok {
		octx, cancel := context.WithTimeout(ctx, digestOpenTimeout)
		n, err = e.openDigests(octx, du)
		cancel()
	}
	if err == nil {
		// A server that ignores export names (nbdkit's file plugin does)
		// serves the data itself under the digest name: the size and the
		// read-only flag tell it from a digest export.
		want := (m.node.Size() + node.DigestBlock - 1) / node.DigestBlock * node.DigestSize
		if n.Size() != want || n.Flags()&nbd.FlagReadOnly == 0 {
			err = fmt.Errorf("%s is not a digest export: %d bytes (want %d), flags %v", du, n.Size(), want, n.Flags())
			n.Close()
		}
	}
	if err != nil {
		m.log.Info("scrub: the member's node offers no digests; its replicas are read to compare", "url", du, "err", err)
		n = nil
	}
	e.digestMu.Lock()
	if e.digests == nil {
		e.digests = map[int]digestNode{}
	}
	e.digests[m.index] = digestNode{url: u, n: n}
	e.digestMu.Unlock()
	return n
}

func (e *Engine) closeDigests() {
	e.digestMu.Lock()
	defer e.digestMu.Unlock()
	for _, d := range e.digests {
		if d.n != nil {
			d.n.Close()
		}
	}
	e.digests = nil
}

// digestsAgree compares [off, off+length) of mirror mi across children by
// their members' digests, into bufs (one per child), asking the children
// in parallel. ok is false when the region cannot be compared so (then it
// is read); same reports whether every child's digests are the first's.
// n is the digest bytes read.
func (e *Engine) digestsAgree(ctx context.Context, mi *mirrorInfo, children []int, off, length int64, bufs [][]byte) (ok, same bool, n int64) {
	if !mi.persistable() || e.openDigests == nil || length%node.DigestBlock != 0 {
		return false, false, 0 // a partial block would hash bytes beyond the region
	}
	nodes := make([]node.Node, len(children))
	starts := make([]int64, len(children))
	for k, c := range children {
		m := e.members[mi.children[c][0]]
		starts[k] = m.leaf.DataOffset() + off
		if starts[k]%node.DigestBlock != 0 {
			return false, false, 0
		}
		if nodes[k] = e.digestsOf(ctx, m); nodes[k] == nil {
			return false, false, 0
		}
	}
	size := length / node.DigestBlock * node.DigestSize
	errs := make([]error, len(children))
	var wg sync.WaitGroup
	for k := range children {
		wg.Go(func() { errs[k] = nodes[k].ReadAt(ctx, bufs[k][:size], starts[k]/node.DigestBlock*node.DigestSize) })
	}
	wg.Wait()
	for k, err := range errs {
		if err != nil {
			e.members[mi.children[children[k]][0]].log.Debug("scrub: digests not read; the region is read", "offset", off, "err", err)
			return false, false, 0
		}
	}
	n = size * int64(len(children))
	for k := 1; k < len(children); k++ {
		if !bytes.Equal(bufs[0][:size], bufs[k][:size]) {
			return true, false, n
		}
	}
	return true, true, n
}
