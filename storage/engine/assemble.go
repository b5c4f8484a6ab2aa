package engine

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"dst/internal/bugs"
	"dst/storage/layout"
	"dst/storage/membership"
	"dst/storage/meta"
	"dst/storage/nbd"
	"dst/storage/node"
	"dst/storage/spec"
)

// AssembleOptions configure Assemble; zero values are documented per field.
type AssembleOptions struct {
	// Open opens a member by URL; required.
	Open func(ctx context.Context, url string) (node.Node, error)
	// RegionSize of new storages' bitmaps. Zero means meta.DefaultRegionSize.
	// An existing storage keeps the region size it was created with.
	RegionSize int64
	// AllowDegraded assembles a mirror even when an in-sync member is
	// missing: a read of its superblock fails, or its node has not
	// connected (node.OpenOptions.Background). The member table gives it
	// its recorded identity and geometry; it stays out of service until
	// it answers as that member, then copies what it missed (Storage.probe).
	//
	// Durability: the storage serves what the members present hold, which
	// includes every write an earlier engine acknowledged while they were
	// in sync. What it gives up is a missing member that ran on alone
	// after the others left (writes acknowledged by such a run): that
	// medium answers with a newer generation and is copied whole, those
	// writes discarded. Writes acknowledged from here on follow the usual
	// contract on the members in service.
	AllowDegraded bool
	// Replace lists member URLs that may be overwritten although their
	// superblock is foreign, damaged or mismatched.
	Replace []string
	// Engine and Monitor configure the engine and its resync monitor.
	Engine  Options
	Monitor MonitorOptions
	// OpenDigests, if set, opens the digest export of a member's node
	// (node.DigestURL): a scrub then compares the replicas behind dst
	// exports by the digests their nodes compute, and reads only the
	// regions that differ. It should fail fast where there is none (a
	// foreign NBD server): its member is read, as without it.
	OpenDigests func(ctx context.Context, url string) (node.Node, error)
	// Rand is the source of storage and member ids; nil means crypto/rand.
	Rand io.Reader
	// Logger receives assembly and membership events; nil discards them.
	Logger *slog.Logger
}

// Assemble opens the members of tree and either creates the storage (all
// members blank: superblocks and clean bitmaps are written) or assembles it
// from their superblocks: members that are in sync serve, stale ones are
// resynced from the dirty regions the bitmaps recorded, blank or replaced
// ones are copied whole — by Run, without operator steps. Foreign or
// mismatched members are refused with an error naming them, unless listed
// in Replace.
func Assemble(ctx context.Context, tree spec.Tree, opts AssembleOptions) (*Storage, error) {
	return assemble(ctx, tree, opts, false)
}

// assemble is Assemble; keep leaves the nodes open when it fails (their
// owner is the caller: Reassemble).
func assemble(ctx context.Context, tree spec.Tree, opts AssembleOptions, keep bool) (*Storage, error) {
	if err := tree.Validate(); err != nil {
		return nil, fmt.Errorf("engine: storage %s: %w", tree.String(), err)
	}
	if opts.Open == nil {
		return nil, errors.New("engine: Assemble needs an Open function")
	}
	if opts.RegionSize <= 0 {
		opts.RegionSize = meta.DefaultRegionSize
	}
	if opts.Rand == nil {
		opts.Rand = rand.Reader
	}
	s := &Storage{tree: tree, log: opts.Logger, opts: opts, mu: newIOLock()}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	urls := tree.Leaves()
	if len(urls) > meta.MaxMembers {
		return nil, fmt.Errorf("engine: %d members, at most %d", len(urls), meta.MaxMembers)
	}
	ok := false
	defer func() {
		switch {
		case ok:
		case keep:
			for _, sl := range s.slots {
				sl.SetVerify(nil) // the nodes outlive this storage
			}
			if s.e != nil {
				s.e.Close()
			}
		case !keep:
			s.Abandon() // the engine too, if one was made (its workers would leak)
		}
	}()
	probes := make([]meta.Probe, len(urls))
	for i, u := range urls {
		n, err := opts.Open(ctx, u)
		if err != nil {
			return nil, fmt.Errorf("engine: member %d (%s): %w", i, u, err)
		}
		s.slots = append(s.slots, newSlot(n, u))
		s.nodes = append(s.nodes, s.slots[i])
		probes[i] = readSuper(ctx, n)
	}
	shape := tree.Shape()
	replace := make([]bool, len(urls))
	for i, u := range urls {
		for _, r := range opts.Replace {
			replace[i] = replace[i] || r == u
		}
	}
	mo := meta.Options{Layout: shape, Replace: replace, AllowDegraded: opts.AllowDegraded}
	ch, err := findChange(tree, probes)
	if err != nil {
		return nil, fmt.Errorf("engine: assemble %s: %w", tree.String(), err)
	}
	if ch != nil {
		mo.Layout, mo.Recorded, s.change = ch.layout, ch.recorded, ch
	}
	as, err := meta.Classify(probes, mo)
	switch {
	case errors.Is(err, meta.ErrUnformatted) && allBlank(probes):
		err = s.create(ctx, shape)
	case err != nil:
		return nil, fmt.Errorf("engine: assemble %s: %w%s", tree.String(), err, verdicts(urls, as))
	default:
		err = s.assemble(ctx, as, probes)
	}
	if err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

func allBlank(probes []meta.Probe) bool {
	for _, p := range probes {
		if !errors.Is(p.Err, meta.ErrBlank) {
			return false
		}
	}
	return true
}

func verdicts(urls []string, as meta.Assembly) string {
	var b strings.Builder
	for i, v := range as.Members {
		fmt.Fprintf(&b, "\n  member %d (%s): %v, %v: %s", i, urls[i], v.State, v.Action, v.Reason)
	}
	return b.String()
}

// readSuper reads both superblock slots of a member.
func readSuper(ctx context.Context, n node.Node) meta.Probe {
	if !reached(n) {
		return meta.Probe{Err: fmt.Errorf("%w: no connection yet", node.ErrUnavailable)}
	}
	if n.Size() < meta.MinRawSize {
		return meta.Probe{Err: fmt.Errorf("%w: %d bytes, fewer than the %d a member needs", meta.ErrTooSmall, n.Size(), meta.MinRawSize)}
	}
	buf := make([]byte, 2*meta.SuperblockSize)
	if err := n.ReadAt(ctx, buf, 0); err != nil {
		return meta.Probe{Err: fmt.Errorf("read superblock: %w", err)}
	}
	sb, _, err := meta.Newest(buf[:meta.SuperblockSize], buf[meta.SuperblockSize:])
	return meta.Probe{Super: sb, Err: err}
}

// create writes superblocks and clean bitmaps to blank members.
func (s *Storage) create(ctx context.Context, shape string) error {
	storageID, err := meta.NewID(s.opts.Rand)
	if err != nil {
		return err
	}
	areas := make([]meta.Area, len(s.nodes))
	s.supers = make([]meta.Superblock, len(s.nodes))
	all := meta.Mask(0)
	for i := range s.nodes {
		all = all.With(i)
	}
	now := time.Now().UnixNano()
	for i, n := range s.nodes {
		a, err := meta.Plan(n.Size(), s.opts.RegionSize)
		if err != nil {
			return fmt.Errorf("engine: member %d (%v): %w", i, n, err)
		}
		areas[i] = a
		mid, err := meta.NewID(s.opts.Rand)
		if err != nil {
			return err
		}
		s.supers[i] = meta.Superblock{StorageID: storageID, MemberID: mid, MemberIndex: i, MemberCount: len(s.nodes),
			InSync: all, Area: a, Layout: shape, CreatedUnixNano: now}
		bm := make([]byte, a.BitmapBytes)
		if err := meta.NewBitmap(a.Regions()).MarshalTo(bm); err != nil {
			return err
		}
		if err := n.WriteAt(ctx, bm, a.BitmapOffset, 0); err != nil {
			return fmt.Errorf("engine: write bitmap of member %d (%v): %w", i, n, err)
		}
	}
	if err := s.build(areas); err != nil {
		return err
	}
	s.created = true
	s.log.Info("storage created", "id", storageID, "layout", shape, "size", s.e.Size())
	return s.writeSupers(ctx, false)
}

// assemble brings up an existing storage as Classify decided.
func (s *Storage) assemble(ctx context.Context, as meta.Assembly, probes []meta.Probe) error {
	s.gen = as.Generation
	s.supers = make([]meta.Superblock, len(s.nodes))
	areas := make([]meta.Area, len(s.nodes))
	src := probes[as.Source].Super
	s.unconfirmed = make([]uint64, len(s.nodes))
	shape := s.tree.Shape()
	rec := func(i int) int { return i }
	if s.change != nil {
		rec = func(i int) int { return s.change.recorded[i] }
	}
	for i, n := range s.nodes {
		v := as.Members[i]
		if probes[i].Err == nil && v.Action != meta.ActionResyncFull {
			// Its position and the layout as the config has them (a change
			// of membership, or superblocks that lag one, numbered it
			// otherwise): the next superblock write records them.
			s.supers[i] = probes[i].Super
			s.supers[i].MemberIndex, s.supers[i].MemberCount, s.supers[i].Layout = i, len(s.nodes), shape
			areas[i] = probes[i].Super.Area
			continue
		}
		if v.State == meta.StateAbsent {
			// Missing (a node that does not answer, a read that failed):
			// the member table gives its identity and geometry, checked
			// when it answers (probe). Without a table (superblocks of an
			// older dst) it gets a fresh identity, copied whole when back.
			if id, raw := src.Members[rec(i)], src.RawSizes[rec(i)]; !id.IsZero() && raw != 0 {
				a, err := meta.Plan(raw, as.RegionSize)
				if err != nil {
					return fmt.Errorf("engine: member %d (%v): the recorded raw size: %w", i, n, err)
				}
				areas[i] = a
				s.supers[i] = meta.Superblock{StorageID: as.StorageID, MemberID: id, MemberIndex: i, MemberCount: len(s.nodes),
					Area: a, Layout: shape, CreatedUnixNano: src.CreatedUnixNano}
				s.unconfirmed[i] = as.Generation
				continue
			}
			if !reached(n) {
				return fmt.Errorf("engine: member %d (%v) does not answer, and no superblock records its geometry "+
					"(they were written by an older dst): start once with it reachable", i, n)
			}
		}
		// New, wiped or replaced media: a fresh identity in this storage.
		a, err := meta.Plan(n.Size(), as.RegionSize)
		if err != nil {
			return fmt.Errorf("engine: member %d (%v): %w", i, n, err)
		}
		mid, err := meta.NewID(s.opts.Rand)
		if err != nil {
			return err
		}
		areas[i] = a
		s.supers[i] = meta.Superblock{StorageID: as.StorageID, MemberID: mid, MemberIndex: i, MemberCount: len(s.nodes),
			Area: a, Layout: shape, CreatedUnixNano: src.CreatedUnixNano}
	}
	if err := s.build(areas); err != nil {
		return err
	}
	if c := s.change; c != nil {
		if got := s.e.Size(); got != c.size {
			return fmt.Errorf("engine: %s: the storage would have %d bytes, it has %d: a replica added must be at least as large "+
				"as its mirror, and a replica removed must not leave a mirror larger than it was (the rest of its replicas hold "+
				"no copy there); replace it with one that fits instead", c.what, got, c.size)
		}
		s.log.Warn("membership changed by the config", "change", c.what, "recorded", c.layout, "config", shape)
	}
	e := s.e
	var copies []bool
	logs := map[*mirrorInfo]*crashLog{}
	var sources []int
	if !as.Clean {
		served := make([]bool, len(as.Members))
		for i, v := range as.Members {
			served[i] = v.Action == meta.ActionServe
		}
		copies, sources = e.core.UncleanCopies(as.Source, served)
	}
	for i, v := range as.Members {
		m := e.members[i]
		switch v.Action {
		case meta.ActionServe:
			if copies != nil && copies[i] {
				// The engine stopped uncleanly: writes in flight then may
				// have reached some replicas only. Copy from the source
				// what the activity log marked, or everything without one.
				if s.copyLogged(ctx, m, as, probes, sources, logs) {
					e.start(i, membership.CopyDirty)
				} else {
					e.start(i, membership.CopyWhole)
					// Counted where a log should have said what to copy.
					m.crashFull.Store(m.logged())
				}
			}
		case meta.ActionResyncDirty:
			if err := s.loadDirty(ctx, m, as.Source); err != nil {
				return err
			}
			e.start(i, membership.CopyDirty)
		case meta.ActionResyncFull:
			e.start(i, membership.CopyWhole)
		case meta.ActionSkip:
			if s.unconfirmed[i] == 0 {
				e.start(i, membership.Skip)
				break
			}
			// It keeps its identity: when it answers it copies what it
			// missed, as the source's bitmap records it, and after an
			// unclean stop what the activity log marked (or everything).
			if err := s.loadDirty(ctx, m, as.Source); err != nil {
				return err
			}
			if !as.Clean && !s.copyLogged(ctx, m, as, probes, sources, logs) {
				e.start(i, membership.CopyWhole)
				break
			}
			e.start(i, membership.Skip)
		default:
			return fmt.Errorf("engine: member %d (%v) refused: %s", i, m.node, v.Reason)
		}
		if v.Action != meta.ActionServe {
			s.log.Info("member will be resynced", "member", i, "node", m.node.String(), "state", v.State, "reason", v.Reason)
		}
	}
	if !as.Clean {
		// The engine before this one may have acknowledged writes it never
		// flushed: make them durable before anything is served, so that a
		// member whose machine restarts later loses nothing this engine
		// does not know about (its boot check covers only its own writes).
		for i, m := range e.members {
			if as.Members[i].Action != meta.ActionServe {
				continue
			}
			if err := m.node.Flush(ctx); err != nil {
				return fmt.Errorf("engine: member %d (%v): flush after an unclean stop: %w", i, m.node, err)
			}
		}
	}
	for i := range as.Members {
		// A member under no mirror has no replica to stand in for it.
		if e.members[i].State() == Failed && len(e.members[i].ancestors) == 0 {
			return fmt.Errorf("engine: member %d (%v) is needed and not usable: %s", i, e.members[i].node, as.Members[i].Reason)
		}
	}
	s.log.Info("storage assembled", "id", as.StorageID, "generation", as.Generation, "layout", as.Layout, "size", e.Size())
	return s.writeSupers(ctx, false)
}

// build makes the layout and the engine and enables bitmap persistence on
// mirrors whose children are all members with metadata.
func (s *Storage) build(areas []meta.Area) error {
	l, err := s.tree.Build(func(i int) (layout.Layout, error) {
		return layout.NewLeaf(i, areas[i].DataOffset, areas[i].DataSize)
	})
	if err != nil {
		return fmt.Errorf("engine: %w", err)
	}
	eo := s.opts.Engine
	eo.RegionSize = areas[0].RegionSize
	for _, a := range areas {
		if a.RegionSize != eo.RegionSize {
			return fmt.Errorf("engine: members disagree on the region size (%d and %d)", a.RegionSize, eo.RegionSize)
		}
	}
	if eo.Logger == nil {
		eo.Logger = s.log
	}
	e, err := New(l, s.nodes, eo)
	if err != nil {
		return err
	}
	for i := range e.members {
		e.members[i].area = &areas[i]
	}
	for _, mi := range e.mirrors {
		if mi.persistable() {
			mi.pending = make([]map[int]struct{}, len(mi.children))
			for c := range mi.pending {
				mi.pending[c] = map[int]struct{}{}
			}
		}
	}
	e.enableActivity()
	e.onChange = s.recordMembership
	e.openDigests = s.opts.OpenDigests
	s.e = e
	s.boots = make([]string, len(s.nodes))
	s.replacing = make([]bool, len(s.nodes))
	if s.unconfirmed == nil {
		s.unconfirmed = make([]uint64, len(s.nodes)) // assemble sets it first
	}
	for i, n := range s.nodes {
		if b, ok := n.(interface{ BootID() string }); ok {
			s.boots[i] = b.BootID()
		}
		if v, ok := n.(interface {
			SetVerify(func(context.Context, *nbd.Client) error)
		}); ok {
			v.SetVerify(s.verifier(i))
		}
	}
	return nil
}

// verifier checks, at every reconnect of member i, that its media still
// carries the member's superblock. Other media (a wiped or swapped disk
// behind a restarted server) take the member out of service before the
// connection is used, so no read is served from it; the monitor then
// finds it and copies it whole.
func (s *Storage) verifier(i int) func(context.Context, *nbd.Client) error {
	return func(ctx context.Context, c *nbd.Client) error {
		buf := make([]byte, 2*meta.SuperblockSize)
		if err := c.ReadAt(ctx, buf, 0); err != nil {
			return fmt.Errorf("read superblock: %w", err)
		}
		sb, _, err := meta.Newest(buf[:meta.SuperblockSize], buf[meta.SuperblockSize:])
		s.identMu.Lock()
		wantStorage, wantMember := s.supers[i].StorageID, s.supers[i].MemberID
		s.identMu.Unlock()
		if err == nil && sb.StorageID == wantStorage && sb.MemberID == wantMember {
			return s.checkBoot(ctx, i, c.Info().BootID)
		}
		if err == nil {
			err = fmt.Errorf("superblock of storage %v member %v", sb.StorageID, sb.MemberID)
		}
		err = fmt.Errorf("%w: member %d: %w", node.ErrMediaChanged, i, err)
		// Copied whole, also when it is out of service already.
		s.e.leave(ctx, s.e.members[i], membership.MediaChanged, err)
		return err
	}
}

// checkBoot notes the boot id of member i's machine at a reconnect. If
// the machine restarted since the last connection while the member had
// writes not yet flushed, those writes may be gone with the page cache:
// a mirror member then leaves service (if a replica stands in) and is
// copied whole when the monitor finds it back; for a member no replica
// covers, it is logged — nothing can restore them.
func (s *Storage) checkBoot(ctx context.Context, i int, boot string) error {
	s.identMu.Lock()
	prev := s.boots[i]
	if boot != "" {
		s.boots[i] = boot
	}
	s.identMu.Unlock()
	m := s.e.members[i]
	// A FLUSH in flight counts as writes not flushed: it began before the
	// restart, so the writes it was to cover may be gone, and its replay
	// on the new boot would succeed over nothing (m.written was cleared
	// when it began).
	unflushed := m.unflushed()
	if prev == "" || boot == "" || boot == prev || !unflushed || bugs.On(bugs.IgnoreBoot) {
		return nil
	}
	err := fmt.Errorf("%w: member %d: its machine restarted (boot %s, before %s) with writes not flushed", node.ErrMediaChanged, i, boot, prev)
	// What it may have lost is marked before it leaves service, so the
	// monitor never rejoins it with a partial copy: the regions active
	// now (or, for a member out of service, active when it left), or
	// everything without an activity log (membership rule 5).
	if !s.e.leave(ctx, m, membership.Rebooted, err).Out() {
		m.log.Error("member's machine restarted; writes to it that were not flushed may be lost and no replica can restore them", "err", err)
		return nil
	}
	return err
}
