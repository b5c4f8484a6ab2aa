// The life of an assembled storage after Assemble: its accessors, the
// resync monitor (Run, probe), and Close, which marks the superblocks
// clean when every member is in sync.
package engine

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"dst/storage/meta"
	"dst/storage/node"
	"dst/storage/spec"
)

// Storage is an assembled storage: the engine over its members, with the
// superblocks kept up to date as members leave and rejoin.
type Storage struct {
	e     *Engine
	nodes []node.Node // the slots, as nodes
	slots []*slot
	tree  spec.Tree
	log   *slog.Logger
	opts  AssembleOptions

	mu ioLock // guards the fields below and superblock writes, held across them
	// identMu guards the StorageID and MemberID fields of supers too (they
	// are written under both locks): the reconnect verifier reads them
	// under identMu alone, since mu is held across superblock writes that
	// may wait for that very reconnect.
	identMu sync.Mutex
	supers  []meta.Superblock
	// boots are the boot ids of the members' machines as last seen (under
	// identMu); "" where unknown (a peer that does not send one).
	boots   []string
	gen     uint64
	created bool
	// replacing[i]: a new node took position i and its identity is not
	// recorded yet; the monitor leaves it alone until it is.
	replacing []bool
	// unconfirmed[i] (non-zero) is the generation member i was assembled
	// at while missing, under the identity the member table gave it: a
	// medium with that identity but a newer generation ran on without
	// this storage, or one in the middle of a full copy, is copied whole
	// when it answers.
	unconfirmed []uint64
	// change is the membership change the config made at the start (nil:
	// none); the first superblock write records it.
	change *change

	changeMu sync.Mutex // one membership change (ReplaceMember) at a time
}

// Engine returns the storage's engine (an nbd.Backend).
func (s *Storage) Engine() *Engine { return s.e }

// Generation returns the generation of the last superblocks written.
func (s *Storage) Generation() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen
}

// Member returns the URL member i was opened from and its node, as they
// are now (an online replacement changes them).
func (s *Storage) Member(i int) (url string, n node.Node) {
	return s.slots[i].url(), s.slots[i].node()
}

// DataOffset returns where member i's data area starts.
func (s *Storage) DataOffset(i int) int64 { return s.e.members[i].area.DataOffset }

// Run runs the resync monitor until ctx ends: failed members are probed
// and, when back, checked (same storage and member: incremental copy; new
// or wiped media: full copy) and resynced.
func (s *Storage) Run(ctx context.Context) error {
	mo := s.opts.Monitor
	mo.Probe = s.probe
	return s.e.Run(ctx, mo)
}

// probe reads a failed member's superblock to decide how it returns.
func (s *Storage) probe(ctx context.Context, i int) (back, full bool) {
	p := readSuper(ctx, s.nodes[i])
	s.mu.Lock()
	want, replacing := s.supers[i], s.replacing[i]
	s.mu.Unlock()
	if replacing {
		return false, false
	}
	n := s.nodes[i]
	if err := s.e.takes(n); reached(n) && err != nil {
		s.log.Warn("member answered, but cannot serve: not using it", "member", i, "why", err)
		return false, false
	}
	switch {
	case p.Err == nil && p.Super.StorageID == want.StorageID && p.Super.MemberID == want.MemberID && p.Super.Area == want.Area:
		s.mu.Lock()
		g := s.unconfirmed[i]
		s.unconfirmed[i] = 0
		s.mu.Unlock()
		if g != 0 && (p.Super.Generation > g || !p.Super.Complete()) {
			// Missing at the start: it ran on without this storage since
			// (its writes there are lost to it), or it was being copied
			// whole when it went away.
			s.log.Warn("member missing at the start answered; it is copied whole", "member", i,
				"generation", p.Super.Generation, "start generation", g, "complete", p.Super.Complete())
			return true, true
		}
		if g != 0 {
			s.log.Info("member missing at the start answered as the member recorded; it copies what it missed", "member", i)
		}
		return true, false
	case p.Err == nil || errors.Is(p.Err, meta.ErrBlank):
		// Other media than the member had: copy everything, and give it a
		// fresh identity in this storage.
		if p.Err == nil && p.Super.StorageID != want.StorageID && !s.replaceable(i) {
			s.log.Warn("member returned with a foreign superblock; not touching it", "member", i, "storage", p.Super.StorageID)
			return false, false
		}
		// Media at least as large takes the member's area as it was (a
		// larger disk's rest stays unused).
		if n.Size() < want.RawSize {
			s.log.Warn("member returned with smaller media; not using it", "member", i, "size", n.Size(), "needs", want.RawSize)
			return false, false
		}
		mid, err := meta.NewID(s.opts.Rand)
		if err != nil {
			return false, false
		}
		s.mu.Lock()
		s.identMu.Lock()
		s.supers[i].MemberID = mid
		s.identMu.Unlock()
		s.mu.Unlock()
		return true, true
	default:
		return false, false
	}
}

func (s *Storage) replaceable(i int) bool {
	u := s.tree.Leaves()[i]
	for _, r := range s.opts.Replace {
		if r == u {
			return true
		}
	}
	return false
}

// Close marks the superblocks clean when every member is in sync, stops
// the engine and closes the members. A member that does not answer the
// final FLUSH within half the time ctx leaves (its machine hangs) leaves
// service first where a replica stands in, recorded as out of sync on the
// others, so they are marked clean in time and the next start copies to
// it what it may have missed.
func (s *Storage) Close(ctx context.Context) error {
	var err error
	if s.e != nil {
		err = s.markClean(ctx)
	}
	s.Abandon()
	return err
}

// Abandon stops the engine and closes the members without flushing or
// marking anything, as a killed process leaves them: the next Assemble
// finds the superblocks unclean and resyncs what the activity log names.
// Requests must not be in flight and Run must have returned.
func (s *Storage) Abandon() {
	if s.e != nil {
		s.e.Close()
	}
	s.closeNodes()
}

func (s *Storage) markClean(ctx context.Context) error {
	// A member gets half of what is left to answer the FLUSH: one that
	// does not (its machine hangs) leaves service where a replica stands
	// in, so the rest can be marked clean in time.
	answerBy := ctx
	if d, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		answerBy, cancel = context.WithTimeout(ctx, time.Until(d)/2)
		defer cancel()
	}
	if err := s.e.flushBy(ctx, answerBy); err != nil {
		return err
	}
	if err := s.e.clearAllActive(ctx); err != nil {
		return err
	}
	return s.writeSupers(ctx, true)
}

func (s *Storage) closeNodes() {
	for _, n := range s.nodes {
		n.Close()
	}
}
