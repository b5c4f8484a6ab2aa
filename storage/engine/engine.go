// Package engine is dst's request path: it splits each client request over
// the members of a layout tree, runs the pieces on the members' nodes in
// parallel, and answers when the last piece completed.
//
// A linear or stripe range whose member fails returns an error for that
// range only. A mirror keeps serving from its in-sync replicas when one
// fails (degraded), records in a per-mirror dirty map which regions the
// missing replica missed, and copies just those regions when the replica
// returns (resync). Writes go to every replica that is in sync or being
// resynced; reads go to the in-sync replica with the fewest pending
// requests.
//
// Durability: a write is acknowledged when every replica it went to
// acknowledged it; FLUSH fans out to every member that completed a write
// since its last flush and is acknowledged after all of them; FUA is passed
// to every replica. The engine is shared by every client connection, so a
// FLUSH covers writes from all of them and multi-conn is honest. A write
// whose pieces went out is carried out on every replica even if its
// caller's context ends (a client gone, a stop): its pieces end by their
// nodes' budgets or an abort of a stalled member, which records the range
// dirty, so replicas never differ unrecorded. A resync's commit flush of
// its target counts as that member's flush: a later client FLUSH has
// nothing to ask of it unless a write completed since.
//
// A read that an in-sync mirror replica fails with a media error (EIO) is
// served from another replica and the range rewritten on the failing one,
// under the range's lock stripes (no client write runs between the read
// of the good copy and the rewrite); the replica stays in sync if the
// rewrite succeeds. The rewrite is a plain write: durable at the member's
// next FLUSH, and if it is lost the next read finds the error again.
//
// # Activity log
//
// A mirror whose children are single members with metadata (Assemble)
// keeps an activity log in the members' write-intent bitmaps, so that an
// unclean stop of the engine (SIGKILL, crash, its machine losing power)
// recopies only the regions that were being written, not whole replicas:
//
//   - Before a WRITE, TRIM or WRITE_ZEROES goes out, every region it
//     touches that is not active yet is set in the bitmap page of every
//     member in service (in sync or resyncing), written with FUA (or write
//     and FLUSH), and only then is any data write sent to any member.
//     Requests that need new regions together share the page writes; a
//     region already active costs no metadata write.
//   - A region is cleared when it has had no write for Options.ActivityQuiet
//     (or, when the log is full, the least recently used idle regions), and
//     only after a FLUSH of every member in service that was issued after
//     the region's last write completed; the page is then rewritten. A
//     clean shutdown flushes and clears every region before it marks the
//     superblocks clean.
//   - At most Options.ActivityRegions regions are active per mirror; a
//     write that needs more waits for room (a request larger than the
//     bound goes ahead alone). A writer waiting when a clear fails gets the
//     error instead of waiting on.
//   - After an unclean stop, each mirror keeps one child as the source and
//     copies to the others the union of the regions marked in the bitmaps
//     of the members served: every region a write may have reached one
//     replica and not another. A member whose bitmap cannot be read, or
//     whose superblock lacks meta.FlagActivityLog (written before the
//     log), is copied whole; so is every replica if the source's cannot.
//   - A member leaving service with writes not flushed gets the regions
//     active then recorded as missed (persisted with the rest of the
//     bitmap); a member whose machine restarted while in service gets the
//     regions active now. Either is copied back instead of the whole
//     replica. The two compose with the dirty map: a returning member gets
//     the regions it missed and those.
//
// The log's cost is one FUA page write per member per newly active page
// batch, and one FLUSH per member and one page write per clear; the engine
// model crashes the engine after any number of node operations of a write
// and checks replicas agree and only written regions are copied, and the
// torture harness's engine-kill and power-loss faults fail a run that
// recopies a replica whole.
//
// # Members that lose unflushed writes
//
// A member whose node may hold writes that are acknowledged but not
// flushed (a write since its last FLUSH, or a FLUSH still in flight) and
// then reports a new boot (its machine restarted: the volatile cache is
// gone) leaves service and is resynced from an in-sync replica over the
// activity log's regions (whole, under a mirror without a log). An
// assembly after an unclean stop first flushes every member it serves:
// the engine before it may have acknowledged writes it never flushed,
// and the boot check of this one covers only its own. A
// failed FLUSH on a replica takes that replica out of service and the
// client's FLUSH succeeds if an in-sync replica flushed; a read error on
// a replica is retried on another. The torture harness breaks each of
// these with power cuts, torn writes and media faults (dst export
// --volatile-cache, --faults), and the planted bugs of package
// dst/internal/bugs prove that it would notice.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"dst/storage/iostats"
	"dst/storage/layout"
	"dst/storage/membership"
	"dst/storage/meta"
	"dst/storage/nbd"
	"dst/storage/node"
	"dst/storage/rangelock"
)

// Defaults of Options.
const (
	// DefaultMaxInFlight is four NBD connections' worth of requests
	// (nbd.DefaultMaxInFlight each), so a few clients keep every member busy.
	DefaultMaxInFlight = 4 * nbd.DefaultMaxInFlight
	DefaultWorkers     = 64
	DefaultRegionSize  = meta.DefaultRegionSize
	// inlineExtents is how many pieces a request holds without allocating
	// at first; maxRetainedExtents is how many it keeps room for.
	inlineExtents      = 16
	maxRetainedExtents = 1024
)

// Options configure an Engine; zero values are documented per field.
type Options struct {
	// MaxInFlight bounds the client requests being served at once; more
	// wait. Zero means DefaultMaxInFlight.
	MaxInFlight int
	// Workers is the number of goroutines that run the second and later
	// pieces of split requests (the first runs on the caller's goroutine).
	// Zero means DefaultWorkers.
	Workers int
	// RegionSize is the granularity of a mirror's dirty map, in bytes.
	// Zero means DefaultRegionSize.
	RegionSize int64
	// ActivityRegions bounds the active regions of each mirror's activity
	// log (a mirror whose bitmap is persisted, see Assemble): zero means
	// DefaultActivityRegions, negative keeps no log (an unclean stop then
	// copies replicas whole).
	ActivityRegions int
	// ActivityQuiet is how long a region stays active after its last
	// write. Zero means DefaultActivityQuiet.
	ActivityQuiet time.Duration
	// Logger receives state changes; nil discards them.
	Logger *slog.Logger
	// Requests, if set, are the counters the engine counts its client
	// requests in (a storage whose membership changed online counts on
	// in its predecessor's); nil means counters of its own.
	Requests *iostats.Requests
}

// ErrNoReplica is wrapped by errors for a mirror range that no in-sync
// replica can serve.
var ErrNoReplica = errors.New("engine: no in-sync replica")

// Engine serves a layout over its members' nodes. It implements
// nbd.Backend, so an nbd.Server can export it directly. Its methods are
// safe for concurrent use.
type Engine struct {
	opts    Options
	log     *slog.Logger
	root    layout.Layout
	members []*member
	mirrors map[*layout.Mirror]*mirrorInfo
	flags   nbd.TransmissionFlags
	reqs    *iostats.Requests // the client requests served, for the admin endpoint

	free chan *request
	work chan *task
	// order admits overlapping write-like requests one after another, so
	// every replica of a mirror applies them in the same order (two
	// overlapping writes in flight at once could otherwise land in one
	// order on one replica and in the other on another); nil without
	// mirrors, where one copy cannot disagree with itself.
	order *rangelock.Table

	// onChange, if set, is called (synchronously, before the request that
	// caused it is answered) when a member leaves or rejoins the in-sync
	// set; Assemble uses it to record the change in the superblocks.
	onChange func(ctx context.Context) error
	// changePending is set while the last membership change could not be
	// recorded on every member that stays in service: until it is, a
	// FLUSH is not acknowledged (after a crash the superblocks would name
	// a stale replica as a source) and the monitor keeps trying.
	changePending atomic.Bool
	// failMu guards core, so "is another replica in sync?" and taking a
	// member out of service are one step.
	failMu sync.Mutex
	core   *membership.Core
	// mirrorList are the mirrors in walk order (outermost first); a
	// mirror's index there is its index in core.
	mirrorList []*mirrorInfo
	// scrub is the scrub in progress and the last one's result (Scrub).
	scrub scrubState
	// digests are the members' digest exports a scrub compares by
	// (scrubdigest.go), opened by openDigests (nil: none).
	openDigests func(ctx context.Context, url string) (node.Node, error)
	digestMu    sync.Mutex
	digests     map[int]digestNode

	// stopActivity stops the activity logs' clearers; nil without logs.
	stopActivity context.CancelFunc

	closeOnce sync.Once
	wg        sync.WaitGroup
}

// New builds an engine for root, whose leaf i is served by nodes[i]. The
// leaves' data areas must lie inside their nodes. New starts the worker
// goroutines; Close stops them.
func New(root layout.Layout, nodes []node.Node, opts Options) (*Engine, error) {
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = DefaultMaxInFlight
	}
	if opts.Workers <= 0 {
		opts.Workers = DefaultWorkers
	}
	if opts.RegionSize <= 0 {
		opts.RegionSize = DefaultRegionSize
	}
	if opts.ActivityQuiet <= 0 {
		opts.ActivityQuiet = DefaultActivityQuiet
	}
	e := &Engine{opts: opts, log: opts.Logger, root: root, mirrors: map[*layout.Mirror]*mirrorInfo{}, reqs: opts.Requests}
	if e.reqs == nil {
		e.reqs = new(iostats.Requests)
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	leaves := root.Leaves(nil)
	if len(leaves) != len(nodes) {
		return nil, fmt.Errorf("engine: layout %v has %d members, %d nodes given", root, len(leaves), len(nodes))
	}
	e.members = make([]*member, len(nodes))
	for i, n := range nodes {
		if n == nil {
			return nil, fmt.Errorf("engine: member %d has no node", i)
		}
		e.members[i] = &member{index: i, node: n, log: e.log.With("member", i, "node", n.String())}
	}
	if err := e.walk(root, nil); err != nil {
		return nil, err
	}
	shape := make([][][]int, len(e.mirrorList))
	for i, mi := range e.mirrorList {
		shape[i] = mi.children
	}
	core, err := membership.New(len(nodes), shape)
	if err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	e.core = core
	for _, m := range e.members {
		if m.leaf == nil {
			return nil, fmt.Errorf("engine: member %d is not a leaf of %v", m.index, root)
		}
		// A node not reached yet has no size to check; the monitor checks
		// its superblock and area when it answers.
		if end := m.leaf.DataOffset() + m.leaf.DataSize(); reached(m.node) && end > m.node.Size() {
			return nil, fmt.Errorf("engine: member %d (%v): data area ends at %d, beyond the node's %d bytes",
				m.index, m.node, end, m.node.Size())
		}
	}
	e.flags = e.capabilities()
	e.free = make(chan *request, opts.MaxInFlight)
	if len(e.mirrors) > 0 {
		e.order = rangelock.New(opts.MaxInFlight)
	}
	for range opts.MaxInFlight {
		r := &request{e: e, done: make(chan struct{}, 1), wake: make(chan struct{}, 1),
			extBuf: make([]layout.Extent, 0, inlineExtents), taskBuf: make([]task, 0, inlineExtents)}
		r.rp.e, r.wp.r, r.dp.e = e, r, e
		e.free <- r
	}
	e.work = make(chan *task, opts.MaxInFlight*inlineExtents)
	for range opts.Workers {
		e.wg.Go(func() {
			for t := range e.work {
				t.run()
			}
		})
	}
	return e, nil
}

// walk records each leaf's member and each mirror's children.
func (e *Engine) walk(l layout.Layout, anc []ancestor) error {
	switch n := l.(type) {
	case *layout.Leaf:
		if n.Index() < 0 || n.Index() >= len(e.members) {
			return fmt.Errorf("engine: leaf #%d has no node", n.Index())
		}
		m := e.members[n.Index()]
		m.leaf = n
		m.ancestors = append([]ancestor(nil), anc...)
	case *layout.Mirror:
		mi := newMirrorInfo(n, e.opts.RegionSize)
		mi.id = len(e.mirrorList)
		e.mirrors[n] = mi
		e.mirrorList = append(e.mirrorList, mi)
		for i := range n.NumChildren() {
			if err := e.walk(n.Child(i), append(anc, ancestor{mi: mi, child: i})); err != nil {
				return err
			}
		}
	case *layout.Linear:
		for i := range n.NumChildren() {
			if err := e.walk(n.Child(i), anc); err != nil {
				return err
			}
		}
	case *layout.Stripe:
		for i := range n.NumChildren() {
			if err := e.walk(n.Child(i), anc); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("engine: unknown layout node %T", l)
	}
	return nil
}

// capabilities are the NBD flags every member supports; the engine adds
// multi-conn, which it makes true (see the package doc). A member not
// reached yet does not count: it must have them when it answers, or it
// is not taken back (Storage.probe).
func (e *Engine) capabilities() nbd.TransmissionFlags {
	f := nbd.FlagSendFlush | nbd.FlagSendFUA | nbd.FlagSendTrim | nbd.FlagSendWriteZero | nbd.FlagSendCache
	ro := false
	for _, m := range e.members {
		if !reached(m.node) {
			continue
		}
		nf := m.node.Flags()
		f &= nf | nbd.FlagSendFUA | nbd.FlagSendFlush | nbd.FlagSendWriteZero | nbd.FlagSendCache
		if nf&nbd.FlagReadOnly != 0 {
			ro = true
		}
	}
	f |= nbd.FlagCanMultiConn
	if ro {
		f |= nbd.FlagReadOnly
	}
	return f
}

// takes says why node n cannot serve a member of this storage: it lacks
// TRIM, which the storage offers (FLUSH, FUA and write-zeroes the engine
// makes whatever the node has; see capabilities), or it is read-only
// under a writable storage. Nil if it can.
func (e *Engine) takes(n node.Node) error {
	f := n.Flags()
	switch {
	case e.flags&nbd.FlagSendTrim != 0 && f&nbd.FlagSendTrim == 0:
		return errors.New("it lacks TRIM, which the storage offers")
	case f&nbd.FlagReadOnly != 0 && e.flags&nbd.FlagReadOnly == 0:
		return errors.New("it is read-only")
	}
	return nil
}

// Size returns the bytes the storage exposes.
func (e *Engine) Size() int64 { return e.root.Size() }

// Flags returns the NBD capabilities to advertise for the storage.
func (e *Engine) Flags() nbd.TransmissionFlags { return e.flags }

// Layout returns the layout tree.
func (e *Engine) Layout() layout.Layout { return e.root }

// Requests are the counters of the client requests the engine served
// (ReadAt, WriteAt, Flush, Trim, WriteZeroes, Cache): what the admin
// endpoint reports.
func (e *Engine) Requests() *iostats.Requests { return e.reqs }

// String names the engine by its layout, for logs.
func (e *Engine) String() string { return "storage " + e.root.String() }

// Close stops the workers. Requests must not be in flight; nodes are not
// closed (their owner closes them).
func (e *Engine) Close() error {
	e.closeOnce.Do(func() {
		e.closeDigests()
		if e.stopActivity != nil {
			e.stopActivity()
		}
		close(e.work)
		e.wg.Wait()
	})
	return nil
}

// State is the state of a member (see package membership).
type State = membership.State

// Member states.
const (
	InSync    = membership.InSync
	Resyncing = membership.Resyncing
	Failed    = membership.Failed
	Suspended = membership.Suspended
)

// member is one leaf of the layout and its node.
type member struct {
	index     int
	node      node.Node
	leaf      *layout.Leaf
	ancestors []ancestor // mirrors above this leaf, outermost first
	log       *slog.Logger
	// area is the member's metadata geometry; nil for an engine built
	// without metadata (New alone), whose dirty maps live in memory only.
	area *meta.Area

	state   atomic.Int32
	pending atomic.Int32 // pieces in flight, for read balancing
	written atomic.Bool  // completed a write since its last flush
	// settling counts the flushes between clearing written and their end
	// (see unflushed).
	settling      atomic.Int32
	resyncedBytes atomic.Int64
	// resyncZeroedBytes are the bytes a resync wrote as WRITE_ZEROES
	// instead of copying (the source reads zeroes there).
	resyncZeroedBytes atomic.Int64
	// readErrorsCorrected counts the ranges the member failed to read with
	// a media error and took rewritten from another replica.
	readErrorsCorrected atomic.Int64
	// crashRegions are the regions the start after an unclean stop marked
	// to copy to the member from the activity log; crashFull is set if it
	// had to be copied whole instead.
	crashRegions atomic.Int64
	crashFull    atomic.Bool
	// completed counts the pieces the member finished (either way); the
	// failover watchdog finds a stalled member by it not moving while
	// pieces are pending.
	completed atomic.Uint64
	// flushing counts the FLUSH pieces among pending: a flush may take
	// long on a busy disk without the member being stalled.
	flushing atomic.Int32
	// writing counts the write-like pieces on their way to the member
	// (from before the check that it is in service until their written
	// flag is set): a member leaving service while one is in flight has
	// unflushed writes (see unflushed and Engine.decide).
	writing atomic.Int32
	// copyStart and copyBase are when the member's current resync began
	// (unix ns, 0: none) and its copied plus zeroed bytes then: the
	// status derives the copy's rate and ETA from them.
	copyStart atomic.Int64
	copyBase  atomic.Int64
	errMu     sync.Mutex
	lastErr   error
}

func (m *member) State() State { return State(m.state.Load()) }

// readable reports whether reads may be sent to the member.
func (m *member) readable() bool { return m.State() == InSync }

// writable reports whether writes go to the member.
func (m *member) writable() bool { s := m.State(); return s == InSync || s == Resyncing }

// ancestor is a mirror above a leaf and the child of it the leaf is under.
type ancestor struct {
	mi    *mirrorInfo
	child int
}

// unflushed reports whether m may hold writes not flushed: one completed
// since its last flush, or a flush that has not ended (it began before a
// restart of the member's machine, so what it was to cover may be gone,
// and its replay on the new boot would succeed over nothing).
func (m *member) unflushed() bool {
	return m.written.Load() || m.flushing.Load() > 0 || m.settling.Load() > 0 || m.writing.Load() > 0
}
