package engine

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"dst/internal/bugs"
	"dst/storage/iostats"
	"dst/storage/layout"
	"dst/storage/membership"
	"dst/storage/nbd"
)

// request is one client request in flight. Request objects come from a
// free list whose size is the in-flight limit; everything a request needs
// (extents, tasks, pickers) lives inside it, so the common case allocates
// nothing.
type request struct {
	e   *Engine
	ctx context.Context
	// detached is ctx without its cancellation, for a write's pieces once
	// dispatched (writeLike).
	detached detachedCtx
	cmd      nbd.Command
	flags    nbd.CmdFlags
	off      int64
	buf      []byte // read destination or write source; nil for trim/zeroes

	// extBuf and taskBuf start with room for inlineExtents pieces and keep
	// what they grew to, up to maxRetainedExtents, so requests that split
	// into many pieces stop allocating once warmed up.
	extBuf  []layout.Extent
	exts    []layout.Extent
	taskBuf []task
	tasks   []task

	pending atomic.Int32
	done    chan struct{}
	// wake is the request's channel for e.order (capacity 1).
	wake chan struct{}

	rp readPicker
	wp writePicker
	dp dirtyPicker

	// persist are mirrors whose bitmap changed for this request and must
	// be persisted before its writes are issued.
	persistBuf [4]*mirrorInfo
	persist    []*mirrorInfo

	// active are the regions of mirrors with an activity log this write
	// keeps active (see activate).
	activeBuf [4]activeRange
	active    []activeRange

	// held are the mirror lock stripes this request holds (read side).
	heldBuf [4]heldLocks
	held    []heldLocks
}

type heldLocks struct {
	mi   *mirrorInfo
	mask uint64
}

// lock takes the read side of the stripes in mask of mi that the request
// does not hold yet.
func (r *request) lock(mi *mirrorInfo, mask uint64) {
	var h *heldLocks
	for i := range r.held {
		if r.held[i].mi == mi {
			h = &r.held[i]
		}
	}
	if h == nil {
		if r.held == nil {
			r.held = r.heldBuf[:0]
		}
		r.held = append(r.held, heldLocks{mi: mi})
		h = &r.held[len(r.held)-1]
	}
	for s := range lockStripes {
		if bit := uint64(1) << s; mask&bit != 0 && h.mask&bit == 0 {
			mi.locks[s].RLock()
			h.mask |= bit
		}
	}
}

// unlock releases every stripe the request holds.
func (r *request) unlock() {
	for _, h := range r.held {
		for s := range lockStripes {
			if h.mask&(1<<s) != 0 {
				h.mi.locks[s].RUnlock()
			}
		}
	}
	r.held = r.held[:0]
}

// task is one piece of a request on one member.
type task struct {
	r   *request
	ext layout.Extent
	err error
}

func (e *Engine) get(ctx context.Context) (*request, error) {
	select {
	case r := <-e.free:
		r.ctx = ctx
		if r.rp.excluded == nil {
			r.rp.excluded = make([]bool, len(e.members))
		}
		return r, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (e *Engine) put(r *request) {
	if c := cap(r.exts); c > cap(r.extBuf) && c <= maxRetainedExtents {
		r.extBuf = r.exts[:0]
	}
	r.ctx, r.buf, r.detached.parent = nil, nil, nil
	clear(r.rp.excluded)
	r.rp.noReplica, r.wp.noReplica = false, false
	for i := range r.tasks {
		r.tasks[i] = task{}
	}
	r.tasks = nil
	clear(r.persistBuf[:])
	r.persist = r.persistBuf[:0]
	r.dp.persist = r.dp.persist[:0]
	clear(r.activeBuf[:])
	r.active = r.activeBuf[:0]
	e.free <- r
}

// run executes the piece on its member's node.
func (t *task) run() {
	r := t.r
	m := r.e.members[t.ext.Member]
	m.pending.Add(1)
	write := r.cmd.IsWrite()
	if write {
		// Counted before the check, so that a member leaving service
		// either is seen to have left here (the piece is not sent, and
		// the range is recorded as missed by it) or sees this piece in
		// flight when it leaves (its active regions are marked missed).
		m.writing.Add(1)
	}
	switch {
	case write && !m.writable():
		t.err = errLeftService
	case r.cmd == nbd.CmdRead:
		t.err = m.node.ReadAt(r.ctx, r.buf[t.ext.BufOffset:t.ext.BufOffset+t.ext.Length], t.ext.Offset)
		if t.err == nil && !m.readable() {
			// The member left service while the read ran (its media
			// changed, say): its bytes may not be the storage's.
			t.err = errLeftService
		}
	case r.cmd == nbd.CmdWrite:
		t.err = m.node.WriteAt(r.ctx, r.buf[t.ext.BufOffset:t.ext.BufOffset+t.ext.Length], t.ext.Offset, r.flags&nbd.CmdFlagFUA)
	case r.cmd == nbd.CmdTrim:
		t.err = m.node.Trim(r.ctx, t.ext.Offset, t.ext.Length, r.flags&nbd.CmdFlagFUA)
	case r.cmd == nbd.CmdWriteZeroes:
		t.err = m.node.WriteZeroes(r.ctx, t.ext.Offset, t.ext.Length, r.flags)
	case r.cmd == nbd.CmdCache:
		t.err = m.node.Cache(r.ctx, t.ext.Offset, t.ext.Length)
	case r.cmd == nbd.CmdFlush:
		m.flushing.Add(1)
		t.err = m.node.Flush(r.ctx)
		m.flushing.Add(-1)
	default:
		panic(fmt.Sprintf("engine: task for command %v", r.cmd))
	}
	m.pending.Add(-1)
	m.completed.Add(1)
	if write {
		if t.err == nil {
			// Set after completion, so a FLUSH that follows the client's
			// acknowledgement of this write is sure to see it.
			m.written.Store(true)
		}
		m.writing.Add(-1)
	}
	if r.pending.Add(-1) == 0 {
		r.done <- struct{}{}
	}
}

// errLeftService fails a read whose member left service while it ran, and
// a write piece whose member left service before it was sent.
var errLeftService = errors.New("engine: member left service")

// dispatch runs tasks: all but the first on the workers, the first on the
// calling goroutine, and waits for all of them.
func (r *request) dispatch() {
	n := len(r.tasks)
	if n == 0 {
		return
	}
	r.pending.Store(int32(n))
	for i := 1; i < n; i++ {
		r.e.work <- &r.tasks[i]
	}
	r.tasks[0].run()
	<-r.done
}

// setTasks makes one task per extent.
func (r *request) setTasks() {
	n := len(r.exts)
	switch {
	case n <= cap(r.taskBuf):
		r.tasks = r.taskBuf[:n]
	case n <= maxRetainedExtents:
		r.taskBuf = make([]task, n)
		r.tasks = r.taskBuf
	default:
		r.tasks = make([]task, n) // too many to keep for later
	}
	for i, x := range r.exts {
		r.tasks[i] = task{r: r, ext: x}
	}
}

// readAt reads [off, off+len(p)), retrying a mirror piece whose replica
// failed on another replica.
func (e *Engine) readAt(ctx context.Context, cmd nbd.Command, p []byte, off, length int64) error {
	r, err := e.get(ctx)
	if err != nil {
		return err
	}
	defer e.put(r)
	r.cmd, r.buf, r.off = cmd, p, off
	// Each retry excludes at least one more member, so this ends.
	r.exts = e.root.Map(r.extBuf[:0], off, length, 0, &r.rp)
	if invariantsOn && !r.rp.noReplica {
		checkExtents(cmd, r.exts, length)
	}
	var bad []badRead // media errors to correct once the read is served
	var badErr error
	for {
		if r.rp.noReplica {
			if badErr != nil {
				return badErr // no other replica has it: the media error stands
			}
			return fmt.Errorf("engine: %v offset %d length %d: %w", cmd, off, length, ErrNoReplica)
		}
		r.setTasks()
		r.dispatch()
		var retry bool
		exts := r.extBuf[:0]
		for i := range r.tasks {
			t := &r.tasks[i]
			if t.err == nil {
				continue
			}
			m := e.members[t.ext.Member]
			pieceErr := fmt.Errorf("engine: %v offset %d length %d on member %d (%v): %w",
				cmd, off+t.ext.BufOffset, t.ext.Length, m.index, m.node, t.err)
			switch {
			case cmd == nbd.CmdRead && errors.Is(t.err, nbd.EIO) && len(m.ancestors) > 0 && m.State() == InSync:
				// A bad range on a replica (md's read-error correction):
				// served from another one, then rewritten on this one,
				// which stays in service if it takes the rewrite.
				bad = append(bad, badRead{m, off + t.ext.BufOffset, t.ext.Length})
				if badErr == nil {
					badErr = pieceErr
				}
			case ctx.Err() != nil || !e.failRedundant(ctx, m, t.err):
				return pieceErr
			}
			r.rp.excluded[m.index] = true
			exts = e.root.Map(exts, off+t.ext.BufOffset, t.ext.Length, t.ext.BufOffset, &r.rp)
			retry = true
		}
		if !retry {
			for _, b := range bad {
				e.correct(ctx, b)
			}
			return nil
		}
		r.exts = exts
	}
}

// badRead is a range of the storage one replica failed to read with a
// media error.
type badRead struct {
	m           *member
	off, length int64
}

// correct rewrites a range member b.m failed to read with a media error,
// from another replica of its innermost mirror, holding the range's lock
// stripes so that no client write to it runs meanwhile (the bytes are read
// again under the lock). The member stays in service if the rewrite goes
// through (counted in ReadErrorsCorrected); else it leaves service where a
// replica stands in, the range recorded as missed by it.
func (e *Engine) correct(ctx context.Context, b badRead) {
	m := b.m
	inner := m.ancestors[len(m.ancestors)-1]
	cp := correctPicker{member: m, inner: inner.mi}
	e.root.Map(nil, b.off, b.length, 0, &cp)
	var err error
	for _, x := range cp.ranges {
		if err = e.rewrite(ctx, inner, m, x[0], x[1]); err != nil {
			break
		}
	}
	if err == nil {
		m.readErrorsCorrected.Add(1)
		m.log.Warn("read error corrected: the range was rewritten from another replica", "offset", b.off, "length", b.length)
		return
	}
	m.log.Warn("read error not corrected", "offset", b.off, "length", b.length, "err", err)
	if e.failRedundant(ctx, m, err) {
		dp := dirtyPicker{e: e, member: m}
		e.root.Map(nil, b.off, b.length, 0, &dp)
		for _, mi := range dp.persist {
			if perr := e.persist(ctx, mi); perr != nil {
				m.log.Error("could not persist the range the member missed", "err", perr)
			}
		}
	}
}

// rewrite copies [off, off+length) of mirror a.mi (its own offsets) from
// another child to m, under the range's lock stripes.
func (e *Engine) rewrite(ctx context.Context, a ancestor, m *member, off, length int64) error {
	mi := a.mi
	mask := mi.stripesOf(off, length)
	for s := range lockStripes {
		if mask&(1<<s) != 0 {
			mi.locks[s].Lock()
			defer mi.locks[s].Unlock()
		}
	}
	rp := readPicker{e: e, excluded: make([]bool, len(e.members))}
	for _, l := range mi.children[a.child] {
		rp.excluded[l] = true
	}
	p := make([]byte, length)
	if err := e.mapRun(ctx, mi.m, nbd.CmdRead, p, off, &rp); err != nil {
		return fmt.Errorf("read the range from another replica: %w", err)
	}
	if rp.noReplica {
		return fmt.Errorf("read the range from another replica: %w", ErrNoReplica)
	}
	if err := e.mapRun(ctx, mi.m, nbd.CmdWrite, p, off, &onlyPicker{member: m}); err != nil {
		return fmt.Errorf("rewrite the range: %w", err)
	}
	return nil
}

// correctPicker maps a range of the storage to m, collecting the ranges of
// m's innermost mirror it covers (in that mirror's offsets).
type correctPicker struct {
	member *member
	inner  *mirrorInfo
	ranges [][2]int64
}

func (p *correctPicker) Pick(m *layout.Mirror, off, length int64) layout.ReplicaSet {
	for _, a := range p.member.ancestors {
		if a.mi.m == m {
			if a.mi == p.inner {
				p.ranges = append(p.ranges, [2]int64{off, length})
			}
			return layout.Replica(a.child)
		}
	}
	return layout.Replica(0)
}

// writeLike runs a write, trim or write-zeroes: to every writable replica;
// acknowledged when all of them acknowledged. A replica that fails while
// another replica holds the same bytes drops out (degraded) and its range
// is recorded dirty; otherwise the error is returned.
func (e *Engine) writeLike(ctx context.Context, cmd nbd.Command, flags nbd.CmdFlags, p []byte, off, length int64) error {
	if e.flags&nbd.FlagReadOnly != 0 {
		return fmt.Errorf("engine: %v on a read-only storage: %w", cmd, nbd.EPERM)
	}
	r, err := e.get(ctx)
	if err != nil {
		return err
	}
	defer e.put(r)
	if e.order != nil {
		slot, err := e.order.Acquire(ctx, nil, r.wake, off, off+length)
		if err != nil {
			return err
		}
		defer e.order.Release(slot)
	}
	r.cmd, r.flags, r.buf, r.off = cmd, flags, p, off
	r.exts = e.root.Map(r.extBuf[:0], off, length, 0, &r.wp)
	defer r.unlock()
	if r.wp.noReplica {
		return fmt.Errorf("engine: %v offset %d length %d: %w", cmd, off, length, ErrNoReplica)
	}
	if len(r.active) > 0 {
		if err := e.activate(ctx, r); err != nil {
			return fmt.Errorf("engine: %v offset %d length %d: %w", cmd, off, length, err)
		}
		defer e.deactivate(r)
	}
	for _, mi := range r.persist {
		if err := e.persist(ctx, mi); err != nil {
			return fmt.Errorf("engine: %v offset %d length %d: %w", cmd, off, length, err)
		}
	}
	// A write acknowledged while a membership change is unrecorded could
	// be lost after a crash (the superblocks would name a replica that
	// missed it as the source): record it first.
	if e.changePending.Load() {
		if err := e.recordChange(ctx); err != nil {
			return fmt.Errorf("engine: %v offset %d length %d: record the membership: %w", cmd, off, length, err)
		}
	}
	if invariantsOn {
		checkExtents(cmd, r.exts, length)
		r.checkWriteLocks(off, length)
	}
	// Once the pieces go out, the write is carried out on every replica
	// whatever becomes of the caller (a client that went away, a stop):
	// a piece cancelled on one replica while another took it would leave
	// them different, with nothing recorded to copy. Pieces end by their
	// nodes' budgets, or an abort of a stalled member (the watchdog, or
	// FailBusy at a stop), which records the range dirty.
	r.detached.parent = ctx
	ctx = &r.detached
	r.ctx = ctx
	r.setTasks()
	r.dispatch()
	var firstErr error
	for i := range r.tasks {
		t := &r.tasks[i]
		if t.err == nil {
			continue
		}
		m := e.members[t.ext.Member]
		if ctx.Err() == nil && r.coveredElsewhere(i) && e.failRedundant(ctx, m, t.err) {
			r.dp.member = m
			e.root.Map(r.extBuf[:0], off+t.ext.BufOffset, t.ext.Length, t.ext.BufOffset, &r.dp)
			continue
		}
		if firstErr == nil {
			firstErr = fmt.Errorf("engine: %v offset %d length %d on member %d (%v): %w",
				cmd, off+t.ext.BufOffset, t.ext.Length, m.index, m.node, t.err)
		}
	}
	// What failed members missed is on disk before the write is answered.
	for _, mi := range r.dp.persist {
		if err := e.persist(ctx, mi); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("engine: %v offset %d length %d: %w", cmd, off, length, err)
		}
	}
	return firstErr
}

// detachedCtx is a context.Context with its parent's values but never
// done (context.WithoutCancel, kept in the pooled request so that a write
// allocates nothing).
type detachedCtx struct{ parent context.Context }

func (detachedCtx) Deadline() (time.Time, bool) { return time.Time{}, false }
func (detachedCtx) Done() <-chan struct{}       { return nil }
func (detachedCtx) Err() error                  { return nil }
func (c *detachedCtx) Value(key any) any        { return c.parent.Value(key) }

// coveredElsewhere reports whether the buffer range of failed task i was
// written by successful tasks on other members (other replicas).
func (r *request) coveredElsewhere(i int) bool {
	f := r.tasks[i].ext
	start, end := f.BufOffset, f.BufOffset+f.Length
	// Advance start through successful pieces until the range is covered;
	// each pass either advances or gives up, so at most len(tasks) passes.
	for range r.tasks {
		if start >= end {
			return true
		}
		advanced := false
		for j := range r.tasks {
			t := &r.tasks[j]
			if t.err != nil || t.ext.Member == f.Member {
				continue
			}
			if b, e := t.ext.BufOffset, t.ext.BufOffset+t.ext.Length; b <= start && e > start {
				start, advanced = e, true
			}
		}
		if !advanced {
			return false
		}
	}
	return start >= end
}

// ReadAt implements nbd.Backend.
func (e *Engine) ReadAt(ctx context.Context, p []byte, off int64) error {
	t0 := e.reqs.Begin()
	err := e.readAt(ctx, nbd.CmdRead, p, off, int64(len(p)))
	e.reqs.End(iostats.OpRead, t0, int64(len(p)), err)
	return err
}

// WriteAt implements nbd.Backend.
func (e *Engine) WriteAt(ctx context.Context, p []byte, off int64, flags nbd.CmdFlags) error {
	t0 := e.reqs.Begin()
	err := e.writeLike(ctx, nbd.CmdWrite, flags, p, off, int64(len(p)))
	e.reqs.End(iostats.OpWrite, t0, int64(len(p)), err)
	return err
}

// Trim implements nbd.Backend.
func (e *Engine) Trim(ctx context.Context, off, length int64, flags nbd.CmdFlags) error {
	t0 := e.reqs.Begin()
	err := e.writeLike(ctx, nbd.CmdTrim, flags, nil, off, length)
	e.reqs.End(iostats.OpTrim, t0, 0, err)
	return err
}

// WriteZeroes implements nbd.Backend.
func (e *Engine) WriteZeroes(ctx context.Context, off, length int64, flags nbd.CmdFlags) error {
	t0 := e.reqs.Begin()
	err := e.writeLike(ctx, nbd.CmdWriteZeroes, flags, nil, off, length)
	e.reqs.End(iostats.OpWriteZeroes, t0, 0, err)
	return err
}

// Cache implements nbd.Backend: a hint passed to the members that would
// serve the reads.
func (e *Engine) Cache(ctx context.Context, off, length int64) error {
	t0 := e.reqs.Begin()
	err := e.readAt(ctx, nbd.CmdCache, nil, off, length)
	if !errors.Is(err, ErrNoReplica) {
		err = nil // a failed hint is no failure
	}
	e.reqs.End(iostats.OpCache, t0, 0, err)
	return err
}

// Flush implements nbd.Backend: every member that completed a write since
// its last flush is flushed, in parallel; the flush succeeds when all of
// them did. A mirror member that fails its flush drops out and will be
// copied whole when it returns, since its unflushed writes may be lost.
func (e *Engine) Flush(ctx context.Context) error {
	t0 := e.reqs.Begin()
	err := e.flush(ctx)
	e.reqs.End(iostats.OpFlush, t0, 0, err)
	return err
}

func (e *Engine) flush(ctx context.Context) error { return e.flushBy(ctx, nil) }

// flushBy is flush; if answerBy is not nil, a member whose FLUSH has not
// completed when answerBy ends (a hung machine at shutdown) is treated as
// one whose FLUSH failed: it leaves service if a replica stands in, its
// unflushed regions recorded as missed on the others.
func (e *Engine) flushBy(ctx, answerBy context.Context) error {
	r, err := e.get(ctx)
	if err != nil {
		return err
	}
	defer e.put(r)
	if answerBy != nil {
		r.ctx = answerBy
	}
	r.cmd = nbd.CmdFlush
	r.exts = r.extBuf[:0]
	for _, m := range e.members {
		// At shutdown (answerBy) every writable member is asked: one
		// that does not answer must leave before the rest are marked
		// clean.
		if !m.writable() {
			continue
		}
		// From clearing written until the FLUSH is counted in flushing,
		// settling says the member still has writes not flushed (a
		// restart of its machine noticed meanwhile must recopy them).
		m.settling.Add(1)
		if !m.written.Swap(false) && answerBy == nil {
			m.settling.Add(-1)
			continue
		}
		if bugs.On(bugs.FlushOneMember) && len(r.exts) > 0 {
			m.settling.Add(-1)
			continue
		}
		r.exts = append(r.exts, layout.Extent{Member: m.index})
	}
	r.setTasks()
	r.dispatch()
	for i := range r.tasks {
		t := &r.tasks[i]
		if t.err != nil {
			e.members[t.ext.Member].written.Store(true) // still unflushed
		}
		e.members[t.ext.Member].settling.Add(-1)
	}
	var firstErr error
	for i := range r.tasks {
		t := &r.tasks[i]
		if t.err == nil {
			continue
		}
		m := e.members[t.ext.Member]
		// Still unflushed: leaving service now records the regions active
		// as missed by it, in the bitmaps, so a restarted engine copies
		// them too (fullResync lives in memory only).
		m.written.Store(true)
		if ctx.Err() == nil && e.leave(ctx, m, membership.FlushFailed, t.err).Out() {
			continue
		}
		if firstErr == nil {
			firstErr = fmt.Errorf("engine: FLUSH on member %d (%v): %w", m.index, m.node, t.err)
		}
	}
	// What a flush makes durable must survive an engine crash: the
	// superblocks must name the members that hold it. A flush that had
	// nothing to flush puts nothing at risk.
	if firstErr == nil && len(r.tasks) > 0 && e.changePending.Load() {
		if err := e.recordChange(ctx); err != nil {
			firstErr = fmt.Errorf("engine: FLUSH: record the membership: %w", err)
		}
	}
	return firstErr
}
