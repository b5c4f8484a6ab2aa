package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"dst/internal/bugs"
	"dst/storage/membership"
	"dst/storage/meta"
)

// Defaults of the activity log (Options.ActivityRegions, ActivityQuiet).
const (
	// DefaultActivityRegions bounds a mirror's active regions: with the
	// default 1 MiB regions an unclean stop recopies at most 1 GiB per
	// mirror (0.1% of a 1 TiB storage), whatever its size; a smaller
	// mirror is bounded by its size.
	DefaultActivityRegions = 1024
	// DefaultActivityQuiet is how long a region stays marked after its
	// last write before the log clears it (md's bitmap daemon waits about
	// as long).
	DefaultActivityQuiet = 5 * time.Second
)

// activity is a mirror's activity log (see the package doc): the regions
// written recently, marked in every member's bitmap before the data goes
// out, cleared lazily once quiet and flushed. Its fields are guarded by
// the mirror's mu, except the atomics.
type activity struct {
	max   int
	quiet time.Duration
	// bm is the active set as it is persisted: ORed into the bitmap page
	// of every member (mirrorInfo.marshalPage).
	bm  *meta.Bitmap
	use map[int]regionUse
	// epoch advances every quiet/2; a region idle for two epochs is quiet.
	epoch atomic.Uint64
	// room is closed (and replaced) when regions are cleared; writers
	// waiting for room wait on it. waiting counts them.
	room    chan struct{}
	waiting int
	kick    chan struct{}
	// failures counts the clears that failed (a FLUSH failed on a member
	// no replica stands in for), failure is the last one's error: a writer
	// waiting for room when one fails gets it instead of waiting on.
	failures uint64
	failure  error
	cand     []clearCandidate // the clearer's scratch

	// Counters for status and metrics.
	cleared    atomic.Uint64
	metaWrites atomic.Uint64
	rateMu     sync.Mutex
	rate       writeRate
}

// regionUse is an active region's state: writes in flight, a sequence
// number that changes with every write, and the epoch of the last one.
type regionUse struct {
	inflight int32
	seq      uint32
	last     uint64
}

type clearCandidate struct {
	r    int
	seq  uint32
	last uint64
}

// activeRange is a run of regions of one mirror a request keeps active.
type activeRange struct {
	mi          *mirrorInfo
	first, last int
}

func newActivity(regions, max int, quiet time.Duration) *activity {
	return &activity{max: max, quiet: quiet, bm: meta.NewBitmap(regions), use: make(map[int]regionUse, max+1),
		room: make(chan struct{}), kick: make(chan struct{}, 1)}
}

// enableActivity starts the activity log of every mirror that persists
// its bitmap; Assemble calls it. Engines built by New alone keep none.
func (e *Engine) enableActivity() {
	if e.opts.ActivityRegions < 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	started := false
	for _, mi := range e.mirrors {
		if mi.pending == nil {
			continue
		}
		regions := mi.dirty[0].Regions()
		max := e.opts.ActivityRegions
		if max == 0 {
			max = DefaultActivityRegions
		}
		mi.al = newActivity(regions, min(max, regions), e.opts.ActivityQuiet)
		started = true
		e.wg.Go(func() { e.runActivity(ctx, mi) })
	}
	if started {
		e.stopActivity = cancel
	} else {
		cancel()
	}
}

// logged reports whether every mirror above m keeps an activity log (and
// m is under one): then m's bitmap is an activity log.
func (m *member) logged() bool {
	for _, a := range m.ancestors {
		if a.mi.al == nil {
			return false
		}
	}
	return len(m.ancestors) > 0
}

// noteActive records that the request writes [off, off+length) of mi.
func (r *request) noteActive(mi *mirrorInfo, off, length int64) {
	if length <= 0 {
		return
	}
	if r.active == nil {
		r.active = r.activeBuf[:0]
	}
	r.active = append(r.active, activeRange{mi: mi, first: int(off / mi.regionSize), last: int((off + length - 1) / mi.regionSize)})
}

// activate keeps every region the request writes active until deactivate,
// waiting while a mirror's log is full: all of a request's regions are
// taken at once or none, so requests never hold some while waiting for
// others. Mirrors whose log set new bits are added to r.persist.
func (e *Engine) activate(ctx context.Context, r *request) error {
	for {
		var wait <-chan struct{}
		var full *mirrorInfo
		var failures uint64
		done := 0
		for i, a := range r.active {
			if slices.ContainsFunc(r.active[:i], func(b activeRange) bool { return b.mi == a.mi }) {
				continue
			}
			w, f, pages := a.mi.activate(r.active)
			if w != nil {
				wait, full, failures = w, a.mi, f
				break
			}
			done = i + 1
			if pages && !slices.Contains(r.persist, a.mi) {
				r.persist = append(r.persist, a.mi)
			}
		}
		if wait == nil {
			return nil
		}
		e.deactivateFirst(r, done)
		select {
		case full.al.kick <- struct{}{}:
		default:
		}
		select {
		case <-wait:
		case <-ctx.Done():
		}
		full.mu.Lock()
		full.al.waiting--
		var failed error
		if full.al.failures != failures {
			failed = full.al.failure
		}
		full.mu.Unlock()
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("engine: waiting for room in the activity log: %w", err)
		}
		if failed != nil {
			return fmt.Errorf("engine: no room in the activity log: %w", failed)
		}
	}
}

// deactivate releases the regions activate took.
func (e *Engine) deactivate(r *request) { e.deactivateFirst(r, len(r.active)) }

// deactivateFirst releases the mirrors of r.active[:n] (each mirror's
// ranges together, as activate took them).
func (e *Engine) deactivateFirst(r *request, n int) {
	for i, a := range r.active[:n] {
		if !slices.ContainsFunc(r.active[:i], func(b activeRange) bool { return b.mi == a.mi }) {
			a.mi.deactivate(r.active)
		}
	}
}

// activate takes the regions of mi's ranges in rs, or none of them: if
// they do not fit in the log it returns the channel to wait on (counted
// in waiting) and the count of failed clears so far. A request that could
// never fit (more regions than the bound) goes ahead and exceeds the
// bound while it runs. pages reports whether bitmap pages must be
// persisted before the data goes out.
func (mi *mirrorInfo) activate(rs []activeRange) (wait <-chan struct{}, failures uint64, pages bool) {
	al := mi.al
	mi.mu.Lock()
	defer mi.mu.Unlock()
	need := 0
	for _, a := range rs {
		if a.mi != mi {
			continue
		}
		for r := a.first; r <= a.last; r++ {
			if _, ok := al.use[r]; !ok {
				need++
			}
		}
	}
	if need > 0 && need <= al.max && len(al.use)+need > al.max {
		al.waiting++
		return al.room, al.failures, false
	}
	ep := al.epoch.Load()
	for _, a := range rs {
		if a.mi != mi {
			continue
		}
		for r := a.first; r <= a.last; r++ {
			u, ok := al.use[r]
			if !ok && !bugs.On(bugs.ActivityNoMark) && al.bm.Set(r) {
				mi.pendAll(al.bm.PageOf(r))
			}
			u.inflight++
			u.seq++
			u.last = ep
			al.use[r] = u
		}
	}
	return nil, 0, mi.unpersisted()
}

// deactivate ends the writes of mi's ranges in rs.
func (mi *mirrorInfo) deactivate(rs []activeRange) {
	al := mi.al
	mi.mu.Lock()
	for _, a := range rs {
		if a.mi != mi {
			continue
		}
		for r := a.first; r <= a.last; r++ {
			u := al.use[r]
			u.inflight--
			al.use[r] = u
		}
	}
	waiting := al.waiting > 0
	mi.mu.Unlock()
	if waiting {
		select {
		case al.kick <- struct{}{}:
		default:
		}
	}
}

// pendAll marks page p of every child's bitmap to be persisted (under mu).
func (mi *mirrorInfo) pendAll(p int) {
	for c := range mi.pending {
		mi.pending[c][p] = struct{}{}
	}
}

// How clearActive chooses the regions it clears.
type clearMode int

const (
	clearQuiet    clearMode = iota // idle for a quiet period
	clearPressure                  // writers wait for room: the least recently used idle ones too
	clearAll                       // every idle region (clean shutdown)
)

// runActivity advances mi's epoch and clears quiet regions every half
// quiet period, and makes room when a writer waits for it.
func (e *Engine) runActivity(ctx context.Context, mi *mirrorInfo) {
	al := mi.al
	t := time.NewTicker(max(al.quiet/2, time.Millisecond))
	defer t.Stop()
	for {
		var err error
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			al.epoch.Add(1)
			al.sampleRate()
			err = e.clearActive(ctx, mi, clearQuiet)
		case <-al.kick:
			err = e.clearActive(ctx, mi, clearPressure)
		}
		if err != nil && ctx.Err() == nil {
			e.log.Warn("activity log: regions stay marked until the next try", "err", err)
			// Do not spin on a failing member: pause before the next try.
			select {
			case <-ctx.Done():
				return
			case <-time.After(min(al.quiet/2, 200*time.Millisecond)):
			}
		}
	}
}

// clearActive clears idle regions of mi's log (which, by mode), after a
// FLUSH of every member in service made their writes stable, and persists
// the pages that changed.
func (e *Engine) clearActive(ctx context.Context, mi *mirrorInfo, mode clearMode) error {
	al := mi.al
	mi.mu.Lock()
	ep := al.epoch.Load()
	al.cand = al.cand[:0]
	for r, u := range al.use {
		if u.inflight == 0 && (mode != clearQuiet || ep-u.last >= 2) {
			al.cand = append(al.cand, clearCandidate{r: r, seq: u.seq, last: u.last})
		}
	}
	if mode == clearPressure {
		// Make room for a quarter of the log at once, least recently used
		// first, so a full log costs one flush per many new regions.
		// Ties are broken by how often the region was written, then by
		// region, never by the map's order: which regions stay marked
		// decides what a crash recopies, and a simulation replays it.
		slices.SortFunc(al.cand, func(a, b clearCandidate) int {
			return cmp.Or(cmp.Compare(a.last, b.last), cmp.Compare(a.seq, b.seq), cmp.Compare(a.r, b.r))
		})
		al.cand = al.cand[:min(len(al.cand), max(al.max/4, 1))]
	}
	n := len(al.cand)
	mi.mu.Unlock()
	if n == 0 {
		if mode == clearAll {
			return e.persist(ctx, mi) // pages waiting for a rewrite
		}
		return nil
	}
	if err := e.flushMirror(ctx, mi); err != nil {
		// Writers waiting for room fail with it rather than wait on.
		mi.mu.Lock()
		al.failures++
		al.failure = err
		close(al.room)
		al.room = make(chan struct{})
		mi.mu.Unlock()
		return err
	}
	mi.mu.Lock()
	cleared := 0
	for _, c := range al.cand {
		if u, ok := al.use[c.r]; !ok || u.inflight != 0 || u.seq != c.seq {
			continue // written again since: it stays
		}
		delete(al.use, c.r)
		if al.bm.Clear(c.r) {
			mi.pendAll(al.bm.PageOf(c.r))
		}
		cleared++
	}
	if cleared > 0 {
		close(al.room)
		al.room = make(chan struct{})
	}
	mi.mu.Unlock()
	al.cleared.Add(uint64(cleared))
	return e.persist(ctx, mi)
}

// flushMirror flushes every member under mi that is in service, in
// parallel. A member whose FLUSH fails leaves service if a replica stands
// in for it (copied whole when it returns, as Flush does); otherwise the
// error is returned and nothing is cleared.
func (e *Engine) flushMirror(ctx context.Context, mi *mirrorInfo) error {
	var wg sync.WaitGroup
	var ms []*member
	for _, leaves := range mi.children {
		for _, l := range leaves {
			if m := e.members[l]; m.writable() {
				ms = append(ms, m)
			}
		}
	}
	errs := make([]error, len(ms))
	for i, m := range ms {
		wg.Go(func() {
			m.flushing.Add(1)
			errs[i] = m.node.Flush(ctx)
			m.flushing.Add(-1)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err == nil {
			continue
		}
		m := ms[i]
		if ctx.Err() == nil && e.leave(ctx, m, membership.FlushFailed, err).Out() {
			continue
		}
		return fmt.Errorf("FLUSH of member %d (%v) before clearing: %w", m.index, m.node, err)
	}
	return nil
}

// clearAllActive clears every idle region of every log (clean shutdown:
// nothing is in flight, everything gets flushed).
func (e *Engine) clearAllActive(ctx context.Context) error {
	var errs []error
	for _, mi := range e.mirrors {
		if mi.al != nil {
			errs = append(errs, e.clearActive(ctx, mi, clearAll))
		}
	}
	return errors.Join(errs...)
}

// markUnflushed records, for every mirror above m, that m may lack every
// region active now (writes to them may not be flushed on m: it is
// leaving service, or its machine restarted), and reports whether every
// mirror above m keeps a log; where one does not, the caller must copy m
// whole.
func (e *Engine) markUnflushed(m *member) bool {
	if !m.logged() {
		return false
	}
	for _, a := range m.ancestors {
		mi := a.mi
		mi.mu.Lock()
		for r := range mi.al.use {
			mi.markLocked(a.child, r)
		}
		if invariantsOn {
			mi.checkUnions()
		}
		mi.mu.Unlock()
	}
	return true
}

// rewriteBitmap marks every page of child c's bitmap to be persisted: a
// member coming back into service may carry marks from before that no
// longer hold.
func (mi *mirrorInfo) rewriteBitmap(c int) {
	if mi.pending == nil {
		return
	}
	mi.mu.Lock()
	for p := range mi.others[c].Pages() {
		mi.pending[c][p] = struct{}{}
	}
	mi.mu.Unlock()
}

// writeRate keeps the metadata write counter at the last two samples, a
// few seconds apart, for a per-second rate.
type writeRate struct {
	at    [2]time.Time
	count [2]uint64
}

func (al *activity) sampleRate() {
	al.rateMu.Lock()
	defer al.rateMu.Unlock()
	now := time.Now()
	if now.Sub(al.rate.at[1]) < 2*time.Second {
		return
	}
	al.rate.at[0], al.rate.count[0] = al.rate.at[1], al.rate.count[1]
	al.rate.at[1], al.rate.count[1] = now, al.metaWrites.Load()
}

func (al *activity) perSecond() float64 {
	al.rateMu.Lock()
	defer al.rateMu.Unlock()
	d := al.rate.at[1].Sub(al.rate.at[0]).Seconds()
	if al.rate.at[0].IsZero() || d <= 0 {
		return 0
	}
	return float64(al.rate.count[1]-al.rate.count[0]) / d
}

// ActivityStatus describes the activity logs of a storage's mirrors.
type ActivityStatus struct {
	// Mirrors is the number of mirrors that keep a log.
	Mirrors int `json:"mirrors"`
	// ActiveRegions are the regions marked now, of at most MaxRegions.
	ActiveRegions int   `json:"active_regions"`
	MaxRegions    int   `json:"max_regions"`
	RegionSize    int64 `json:"region_size"`
	// ClearedRegions counts the regions cleared since the start.
	ClearedRegions uint64 `json:"cleared_regions"`
	// MetadataWrites counts bitmap page writes (one per member per page),
	// for marks and for clears; MetadataWritesPerSec is their recent rate.
	MetadataWrites       uint64  `json:"metadata_writes"`
	MetadataWritesPerSec float64 `json:"metadata_writes_per_sec"`
	// CrashResyncRegions are the regions the start after an unclean stop
	// marked to copy from each mirror's source (summed over members);
	// CrashFullCopies the members under a log it copied whole all the
	// same (a log unreadable or written without FlagActivityLog).
	CrashResyncRegions int `json:"crash_resync_regions"`
	CrashFullCopies    int `json:"crash_full_copies"`
}

// Activity returns the state of the activity logs.
func (e *Engine) Activity() ActivityStatus {
	var st ActivityStatus
	for _, mi := range e.mirrors {
		al := mi.al
		if al == nil {
			continue
		}
		st.Mirrors++
		mi.mu.Lock()
		st.ActiveRegions += len(al.use)
		mi.mu.Unlock()
		st.MaxRegions += al.max
		st.RegionSize = mi.regionSize
		st.ClearedRegions += al.cleared.Load()
		st.MetadataWrites += al.metaWrites.Load()
		st.MetadataWritesPerSec += al.perSecond()
	}
	for _, m := range e.members {
		st.CrashResyncRegions += int(m.crashRegions.Load())
		if m.crashFull.Load() {
			st.CrashFullCopies++
		}
	}
	return st
}
