// Online replacement of a mirror member (md's --replace, DRBD's new
// disk): another node takes a member's position while the storage serves.
//
// The order makes every crash point a consistent storage:
//
//  1. The member leaves service, to be copied whole, and that is recorded
//     on every member in service (a new generation without it) before
//     anything else happens. A crash here restarts with the old node
//     as a member that missed writes, as after any failure.
//  2. Once no piece is in flight to the old node, the new node takes the
//     position with a new member id, and the member table of every
//     superblock in service records that id (the next generation) before
//     the new node may receive a copy. From here the old medium can never
//     come back as in sync: assembly refuses it at this position (meta
//     rule 4a) and says to put the replacement's URL in the config.
//  3. The monitor probes the new node like any member back with other
//     media and copies it whole from an in-sync replica, allocated data
//     only where block status is known; it joins when the copy is
//     complete and flushed. A crash during the copy restarts it: the new
//     node is blank or not in its own in-sync set (a full resync).
//
// Durability: nothing acknowledged depends on the member being replaced.
// It is out of service before the swap, so every write acknowledged
// since step 1 is on the other replicas, and the copy is flushed on the
// new node before it counts as in sync (the resync contract).
package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"dst/storage/membership"
	"dst/storage/meta"
)

// Errors of ReplaceMember, for callers that tell them apart (the admin
// endpoint answers 409 for ErrMemberHealthy, 400 for the others). A
// member without an in-sync replica to copy from (under no mirror, or
// every other replica out of sync) wraps ErrNoReplica.
var (
	// ErrMemberHealthy: the member is in sync; replacing it needs force.
	ErrMemberHealthy = errors.New("the member is in sync and healthy")
	// ErrBadReplacement: the node offered cannot take the position.
	ErrBadReplacement = errors.New("the replacement cannot take the position")
)

// ReplaceOpenTimeout bounds the first connection to a replacement: a node
// that does not answer within it is refused.
const ReplaceOpenTimeout = 5 * time.Second

var errReplaced = errors.New("engine: member replaced online")

// ReplaceOptions steer ReplaceMember.
type ReplaceOptions struct {
	// Force replaces a member that is in sync, and a node that carries
	// another dst storage's superblock.
	Force bool
}

// ReplaceMember puts the node at url in member i's position while the
// storage serves (see the order above) and returns once the new node
// has taken the position and its identity is recorded; the monitor (Run)
// then copies it whole, which MemberStatus shows with progress. It
// changes nothing and returns a clear error for a member index out of
// range, a member without an in-sync replica, an in-sync member without
// Force, a URL that is a member already, a node that does not answer, is
// smaller than the member or lacks a capability the member had.
func (s *Storage) ReplaceMember(ctx context.Context, i int, url string, opts ReplaceOptions) error {
	s.changeMu.Lock()
	defer s.changeMu.Unlock()
	e := s.e
	if i < 0 || i >= len(e.members) {
		return fmt.Errorf("engine: replace member %d: %w: the storage has members 0 to %d", i, ErrBadReplacement, len(e.members)-1)
	}
	m := e.members[i]
	old := s.slots[i].url()
	if len(m.ancestors) == 0 {
		return fmt.Errorf("engine: replace member %d (%s): %w: it is under no mirror, so its data exists nowhere else; "+
			"copy it offline (dst export the new disk, copy with nbdcopy) instead", i, old, ErrNoReplica)
	}
	for j, sl := range s.slots {
		if sl.url() == url {
			if j == i && s.replacing[i] {
				// A retry after the identity could not be recorded.
				return s.recordReplacement(ctx, i, url)
			}
			return fmt.Errorf("engine: replace member %d with %s: %w: it is member %d already", i, url, ErrBadReplacement, j)
		}
	}
	e.failMu.Lock()
	redundant, state := e.core.Redundant(i), e.core.State(i)
	e.failMu.Unlock()
	if !redundant {
		return fmt.Errorf("engine: replace member %d (%s): %w: no other replica of it is in sync", i, old, ErrNoReplica)
	}
	if state == InSync && !opts.Force {
		return fmt.Errorf("engine: replace member %d (%s): %w; replace it anyway with force", i, old, ErrMemberHealthy)
	}

	octx, cancel := context.WithTimeout(ctx, ReplaceOpenTimeout)
	n, err := s.opts.Open(octx, url)
	cancel()
	if err != nil {
		return fmt.Errorf("engine: replace member %d with %s: %w: %w", i, url, ErrBadReplacement, err)
	}
	ok := false
	defer func() {
		if !ok {
			n.Close()
		}
	}()
	s.mu.Lock()
	want := s.supers[i]
	s.mu.Unlock()
	p := readSuper(ctx, n)
	switch {
	case p.Err == nil && p.Super.StorageID == want.StorageID:
		return fmt.Errorf("engine: replace member %d with %s: %w: it carries member %d of this storage already", i, url, ErrBadReplacement, p.Super.MemberIndex)
	case p.Err == nil && !opts.Force:
		return fmt.Errorf("engine: replace member %d with %s: %w: it carries member %d of dst storage %s; replace with force to overwrite it",
			i, url, ErrBadReplacement, p.Super.MemberIndex, p.Super.StorageID)
	case !reachedProbe(p):
		return fmt.Errorf("engine: replace member %d with %s: %w: read its first pages: %w", i, url, ErrBadReplacement, p.Err)
	}
	if n.Size() < want.RawSize {
		return fmt.Errorf("engine: replace member %d with %s: %w: it has %d bytes, the member needs %d", i, url, ErrBadReplacement, n.Size(), want.RawSize)
	}
	if err := e.takes(n); err != nil {
		return fmt.Errorf("engine: replace member %d with %s: %w: %w", i, url, ErrBadReplacement, err)
	}
	mid, err := meta.NewID(s.opts.Rand)
	if err != nil {
		return err
	}

	// 1. Out of service, to be copied whole, recorded.
	if _, err := e.decide(func(c *membership.Core) (membership.Decision, error) {
		if c.State(i) == Suspended {
			if _, err := c.Release(i); err != nil {
				return membership.Decision{}, err
			}
		}
		return c.Fail(i, membership.MediaChanged, e.facts(m)), nil
	}); err != nil {
		return fmt.Errorf("engine: replace member %d: %w", i, err)
	}
	m.errMu.Lock()
	m.lastErr = fmt.Errorf("%w by %s", errReplaced, url)
	m.errMu.Unlock()
	if err := e.recordChange(ctx); err != nil {
		return fmt.Errorf("engine: replace member %d: the member left service but that could not be recorded, so its node was kept: %w", i, err)
	}
	m.log.Warn("member leaves service to be replaced", "by", url)

	// 2. No piece in flight to the old node; then the swap, recorded.
	for m.pending.Load() != 0 {
		if ctx.Err() != nil {
			return fmt.Errorf("engine: replace member %d: pieces still in flight to the old node: %w", i, ctx.Err())
		}
		time.Sleep(time.Millisecond)
	}
	s.mu.Lock()
	s.identMu.Lock()
	s.supers[i].MemberID = mid
	s.supers[i].Flags = 0
	s.boots[i] = ""
	if b, ok := n.(interface{ BootID() string }); ok {
		s.boots[i] = b.BootID()
	}
	s.identMu.Unlock()
	s.replacing[i] = true
	prev := s.slots[i].swap(n, url)
	s.mu.Unlock()
	ok = true
	go prev.Close() // a hung node must not hold the change up
	return s.recordReplacement(ctx, i, url)
}

// recordReplacement records the new member id of position i in every
// superblock in service; until it is, the monitor leaves the position
// alone (the new node receives nothing).
func (s *Storage) recordReplacement(ctx context.Context, i int, url string) error {
	if err := s.writeSupers(ctx, false); err != nil {
		return fmt.Errorf("engine: replace member %d with %s: the new member's identity could not be recorded; "+
			"it receives no copy until a retry of the replace records it: %w", i, url, err)
	}
	s.mu.Lock()
	s.replacing[i] = false
	s.mu.Unlock()
	s.e.members[i].log.Warn("member replaced online; it is copied whole from an in-sync replica", "node", url)
	return nil
}

func isDamage(err error) bool {
	return errors.Is(err, meta.ErrChecksum) || errors.Is(err, meta.ErrVersion) ||
		errors.Is(err, meta.ErrCorrupt) || errors.Is(err, meta.ErrTruncated)
}
