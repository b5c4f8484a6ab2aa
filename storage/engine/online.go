// A change of membership while the storage serves (md's --grow --add,
// --remove on a running array): Reassemble takes a running storage to a
// tree with one mirror replica more or fewer, by the same road a restart
// with that config takes (change.go), without closing the members'
// nodes or the clients' connections.
//
// The caller (package serve) holds the clients' requests at a gate and
// stops the resync monitor first, so nothing is in flight. Then:
//
//  1. The change is checked against what the running storage knows (the
//     superblocks it wrote last, the members' states and areas): the
//     config a start would refuse, a replica removed that is the last
//     in sync, a replica added that does not answer, is too small, lacks
//     a capability or carries another storage without force — each is
//     refused here, and nothing has changed.
//  2. The storage stops as at a clean shutdown (everything flushed, the
//     activity log cleared, the superblocks marked clean), but its nodes
//     stay open.
//  3. The new tree is assembled over the same nodes (and the added
//     one): the first superblock write records the new membership at a
//     new generation before anything is served, and a replica added is
//     copied whole by the new storage's monitor.
//  4. If that assembly fails after all, the old tree is assembled again
//     over the same nodes, as a restart with the old config would.
//
// Durability: a change loses nothing acknowledged. When the gate closes
// every request was answered, and step 2 makes every write acknowledged
// durable before the superblocks change; from there it is a restart, and
// a crash at any point is one too (TestChangeInterruptedAnySubset: a
// crash at every subset of the change's superblock writes assembles with
// either config). Writes are acknowledged again only by the new storage,
// under its contract. One difference from a restart: a member out of
// service stays so (the assembly takes a missing member as a degraded
// start does, from the member table, whatever the config's
// allow_degraded says: the running storage had it out already).
package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"dst/storage/layout"
	"dst/storage/meta"
	"dst/storage/node"
	"dst/storage/spec"
)

// ErrBadChange: the membership change asked for is not one the storage
// can make (the tree is not one replica more or fewer, the replica added
// cannot serve, the replica removed is the last in sync). Nothing changed.
var ErrBadChange = errors.New("the membership change cannot be made")

// ReassembleOptions steer Reassemble.
type ReassembleOptions struct {
	// Force adds a node that carries another dst storage's superblock or
	// a damaged one (it is overwritten).
	Force bool
}

// Tree is the storage's layout tree with each member's URL as it is now
// (an online replacement changes one).
func (s *Storage) Tree() spec.Tree {
	urls := make([]string, len(s.slots))
	for i, sl := range s.slots {
		urls[i] = sl.url()
	}
	return s.tree.WithLeaves(urls)
}

// Change is a membership change checked by PrepareChange, with the
// node it adds opened: Reassemble makes it, Abort drops it.
type Change struct {
	s     *Storage
	tree  spec.Tree
	opts  ReassembleOptions
	added map[string]node.Node
}

// Tree is the layout the change makes.
func (c *Change) Tree() spec.Tree { return c.tree }

// Abort drops the change: the node it opened is closed.
func (c *Change) Abort() {
	for _, n := range c.added {
		n.Close()
	}
	c.added = nil
}

// PrepareChange checks a change of the running storage's membership to
// tree (step 1 above) while it serves, opening the node it adds. An
// error wraps ErrBadChange when the change cannot be made; nothing
// changed.
func (s *Storage) PrepareChange(ctx context.Context, tree spec.Tree, opts ReassembleOptions) (*Change, error) {
	s.changeMu.Lock()
	defer s.changeMu.Unlock()
	c := &Change{s: s, tree: tree, opts: opts, added: map[string]node.Node{}}
	if err := tree.Validate(); err != nil {
		return nil, fmt.Errorf("engine: %w: %w", ErrBadChange, err)
	}
	if err := s.checkChange(ctx, c); err != nil {
		c.Abort()
		return nil, err
	}
	return c, nil
}

// Reassemble makes the change c (steps 2 to 4 above) and returns the
// storage that serves from now on, in place of s. Requests must not be
// in flight and Run must have returned. It checks c again first: when
// the error wraps ErrBadChange, s is unchanged, still serves, and c is
// aborted. Otherwise s is not to be used after; on error, the storage
// returned (non-nil if the old tree could be assembled again) serves the
// old membership; nil means none could be assembled and every node was
// closed.
func (s *Storage) Reassemble(ctx context.Context, c *Change) (*Storage, error) {
	s.changeMu.Lock()
	defer s.changeMu.Unlock()
	if c.s != s || c.added == nil {
		panic("engine: Reassemble of a change prepared for another storage, or aborted")
	}
	if err := s.checkChange(ctx, c); err != nil {
		c.Abort()
		return s, err
	}
	// No scrub may run on the old engine from here (this one never ends).
	if !s.e.scrub.running.CompareAndSwap(false, true) {
		c.Abort()
		return s, fmt.Errorf("engine: %w: a scrub is running: change the membership when it is done", ErrBadChange)
	}
	tree, added := c.tree, c.added
	old := s.Tree()
	oldURLs := old.Leaves()
	c.added = nil // the storage that serves owns them from here

	// 2. A clean stop that keeps the nodes.
	for _, sl := range s.slots {
		sl.SetVerify(nil) // the old storage checks no reconnect from here
	}
	if err := s.markClean(ctx); err != nil {
		// The superblocks stay unclean: the assembly resyncs what the
		// activity log names, as after a crash.
		s.log.Warn("membership change: the storage could not be marked clean; it is assembled as after an unclean stop", "err", err)
	}
	s.e.Close()

	// 3. The new tree over the same nodes.
	nodes := map[string]node.Node{}
	for i, sl := range s.slots {
		nodes[oldURLs[i]] = sl.node()
	}
	for u, n := range added {
		nodes[u] = n
	}
	ao := s.opts
	ao.Open = func(_ context.Context, url string) (node.Node, error) {
		if n, ok := nodes[url]; ok {
			return n, nil
		}
		return nil, fmt.Errorf("engine: membership change: %s is not a node of the change", url)
	}
	ao.AllowDegraded = true
	ao.Engine.Requests = s.e.Requests() // the counters go on
	if c.opts.Force {
		for u := range added {
			ao.Replace = append(slices.Clip(ao.Replace), u)
		}
	}
	restore := func(ns *Storage) *Storage {
		ns.opts.Open, ns.opts.AllowDegraded, ns.opts.Replace = s.opts.Open, s.opts.AllowDegraded, s.opts.Replace
		ns.opts.Engine.Requests = nil
		return ns
	}
	ns, err := assemble(ctx, tree, ao, true)
	if err == nil {
		keep := map[node.Node]bool{}
		for _, sl := range ns.slots {
			keep[sl.node()] = true
		}
		for _, n := range nodes {
			if !keep[n] {
				n.Close() // the replica removed
			}
		}
		ns.log.Warn("membership changed online", "layout", tree.String(), "was", old.String(), "generation", ns.gen)
		return restore(ns), nil
	}

	// 4. The old tree again.
	s.log.Error("membership change: the new membership did not assemble; assembling the old one again", "err", err)
	back, err2 := assemble(ctx, old, ao, true)
	if err2 != nil {
		for _, n := range nodes {
			n.Close()
		}
		return nil, fmt.Errorf("engine: membership change to %s: %w; and the old membership did not assemble again either: %w", tree.String(), err, err2)
	}
	for _, n := range added {
		n.Close()
	}
	return restore(back), fmt.Errorf("engine: membership change to %s: %w (the old membership serves again)", tree.String(), err)
}

// checkChange is step 1: it opens the nodes c adds (into c.added, also
// with an error, for the caller to close) where it has not yet, and
// refuses, wrapping ErrBadChange, a change a start would refuse or that
// would leave a mirror without an in-sync replica.
func (s *Storage) checkChange(ctx context.Context, c *Change) error {
	e, tree, opts, added := s.e, c.tree, c.opts, c.added
	cur := s.Tree().Leaves()
	urls := tree.Leaves()
	bad := func(format string, a ...any) error {
		return fmt.Errorf("engine: %w: "+format, append([]any{ErrBadChange}, a...)...)
	}
	s.mu.Lock()
	supers := slices.Clone(s.supers)
	replacing := slices.Index(s.replacing, true)
	s.mu.Unlock()
	if replacing >= 0 {
		return bad("member %d was replaced and the replacement's identity is not recorded yet: retry the replace first", replacing)
	}
	for i := range e.members {
		if e.members[i].State() == Suspended {
			return bad("member %d is suspended: resume it first", i)
		}
	}
	probes := make([]meta.Probe, len(urls))
	for p, u := range urls {
		if j := slices.Index(cur, u); j >= 0 {
			probes[p] = meta.Probe{Super: supers[j]}
			continue
		}
		n := added[u]
		if n == nil {
			octx, cancel := context.WithTimeout(ctx, ReplaceOpenTimeout)
			var err error
			n, err = s.opts.Open(octx, u)
			cancel()
			if err != nil {
				return bad("%s: %w", u, err)
			}
			added[u] = n
		}
		probes[p] = readSuper(ctx, n)
		pr := probes[p]
		switch {
		case !reachedProbe(pr):
			return bad("%s does not answer: %w", u, pr.Err)
		case pr.Err == nil && pr.Super.StorageID != supers[0].StorageID && !opts.Force:
			return bad("%s carries member %d of dst storage %s; add it with force to overwrite it", u, pr.Super.MemberIndex, pr.Super.StorageID)
		case isDamage(pr.Err) && !opts.Force:
			return bad("%s carries a damaged superblock (%v); add it with force to overwrite it", u, pr.Err)
		}
		if err := e.takes(n); err != nil {
			return bad("%s: %w", u, err)
		}
	}
	ch, err := findChange(tree, probes)
	switch {
	case err != nil:
		return fmt.Errorf("%w: %w", ErrBadChange, err)
	case ch == nil:
		return bad("the storage is %s already", tree.String())
	}
	for j := range cur {
		if !slices.Contains(ch.recorded, j) && e.members[j].State() == InSync {
			e.failMu.Lock()
			redundant := e.core.Redundant(j)
			e.failMu.Unlock()
			if !redundant {
				return bad("member %d (%s) is the only in-sync replica of its data: %w", j, cur[j], ErrNoReplica)
			}
		}
	}
	// The size the new tree gives, from the areas the members have and
	// the one a medium added gets.
	l, err := tree.Build(func(p int) (layout.Layout, error) {
		if j := ch.recorded[p]; j >= 0 {
			a := e.members[j].area
			return layout.NewLeaf(p, a.DataOffset, a.DataSize)
		}
		a, err := meta.Plan(added[urls[p]].Size(), e.members[0].area.RegionSize)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", urls[p], err)
		}
		return layout.NewLeaf(p, a.DataOffset, a.DataSize)
	})
	if err != nil {
		return bad("%w", err)
	}
	if l.Size() != e.Size() {
		return bad("%s: the storage would have %d bytes, it has %d: a replica added must be at least as large as its mirror, "+
			"and a replica removed must not leave a mirror larger than it was", ch.what, l.Size(), e.Size())
	}
	return nil
}
