package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"dst/storage/membership"

	"golang.org/x/time/rate"
)

// MonitorOptions configure Run.
type MonitorOptions struct {
	// Interval between probes of failed members. Zero means one second.
	Interval time.Duration
	// ProbeTimeout bounds one probe. Zero means the interval.
	ProbeTimeout time.Duration
	// ResyncBytesPerSec limits the resync copy rate; zero is unlimited.
	ResyncBytesPerSec int64
	// Failover is how long a member under a mirror may have pieces
	// pending without finishing any before it is taken out of service
	// (when another in-sync replica stands in for it) and its node's
	// requests in flight are aborted (node.Aborter), so clients wait about
	// this long for a dead replica instead of its node's whole retry
	// budget. Zero means DefaultFailover; negative disables it.
	Failover time.Duration
	// Probe, if set, decides whether a failed member is back and whether it
	// needs a full copy (new or foreign media); nil probes with a read of
	// the member's first data byte and asks for an incremental copy.
	Probe func(ctx context.Context, i int) (back, full bool)
	// Scrub schedules scrubs of the mirrors beside the probes; the zero
	// value schedules none.
	Scrub ScrubSchedule
}

// DefaultFailover is MonitorOptions.Failover when zero.
const DefaultFailover = 5 * time.Second

// ErrStalled is wrapped by the error a member is failed with when it
// stopped answering (see MonitorOptions.Failover).
var ErrStalled = errors.New("engine: member stopped answering")

// Aborter is a node whose requests in flight can be ended at once
// (node.Remote); the failover watchdog uses it.
type Aborter interface {
	Abort(reason error)
}

// Run probes failed members every interval and resyncs those that came
// back, one at a time, until ctx ends. Suspended members wait for Resume.
// Beside it, a watchdog fails stalled mirror members (Failover), and
// scheduled scrubs run (Scrub).
func (e *Engine) Run(ctx context.Context, opts MonitorOptions) error {
	if opts.Failover == 0 {
		opts.Failover = DefaultFailover
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	if opts.Failover > 0 && len(e.mirrors) > 0 {
		wg.Go(func() { e.watchdog(wctx, opts.Failover) })
	}
	if opts.Scrub.Interval > 0 && len(e.mirrors) > 0 {
		wg.Go(func() { e.scheduleScrubs(wctx, opts.Scrub) })
	}
	if opts.Interval <= 0 {
		opts.Interval = time.Second
	}
	if opts.ProbeTimeout <= 0 {
		opts.ProbeTimeout = opts.Interval
	}
	if opts.Probe == nil {
		opts.Probe = e.probeRead
	}
	var limit *rate.Limiter
	if opts.ResyncBytesPerSec > 0 {
		limit = rate.NewLimiter(rate.Limit(opts.ResyncBytesPerSec), int(min(opts.ResyncBytesPerSec, 64<<20)))
	}
	t := time.NewTicker(opts.Interval)
	defer t.Stop()
	for {
		if e.changePending.Load() {
			if err := e.recordChange(ctx); err != nil && ctx.Err() == nil {
				e.log.Warn("membership still not recorded in every superblock", "err", err)
			}
		}
		for _, m := range e.members {
			if !e.probed(m) {
				continue
			}
			pctx, cancel := context.WithTimeout(ctx, opts.ProbeTimeout)
			back, full := opts.Probe(pctx, m.index)
			cancel()
			if !back {
				continue
			}
			if err := e.Rejoin(ctx, m.index, full, limit); err != nil && ctx.Err() == nil {
				m.log.Warn("resync failed; will retry", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// watchdog takes a mirror member out of service once it has had pieces
// other than FLUSH pending for failover without finishing one (a flush
// may legitimately take long on a busy disk; the node's request timeout
// bounds it), if another replica stands
// in, and aborts what its node has in flight: the pieces waiting on it
// return, their writes are recorded dirty and acknowledged, their reads
// go to another replica.
func (e *Engine) watchdog(ctx context.Context, failover time.Duration) {
	t := time.NewTicker(max(failover/4, 10*time.Millisecond))
	defer t.Stop()
	stall := membership.NewStall(len(e.members), failover)
	for {
		var now time.Time
		select {
		case <-ctx.Done():
			return
		case now = <-t.C:
		}
		for i, m := range e.members {
			stalled, quiet := stall.Tick(now, i, membership.Progress{Watched: len(m.ancestors) > 0 && m.writable(),
				Done: m.completed.Load(), Busy: m.pending.Load() - m.flushing.Load()})
			if !stalled {
				continue
			}
			err := fmt.Errorf("%w: %d pieces pending and none finished for %v", ErrStalled, m.pending.Load(), quiet.Round(time.Millisecond))
			if !e.leave(ctx, m, membership.Stalled, err).Abort {
				m.log.Warn("member stalled, but no other replica stands in for it; waiting", "pending", m.pending.Load(), "quiet", quiet.Round(time.Millisecond))
				continue
			}
			if a, ok := m.node.(Aborter); ok {
				a.Abort(err)
			}
		}
	}
}

// FailBusy takes out of service, where another replica stands in, every
// mirror member that has pieces other than FLUSH pending and finished none
// during sample, and aborts what its node has in flight (as the watchdog
// does after Failover). A stop calls it once its grace for requests in
// flight is over: the watchdog has stopped with the engine's Run, and a
// member still busy then is hung or too slow to wait for. It returns how
// many members it took out.
func (e *Engine) FailBusy(ctx context.Context, sample time.Duration) int {
	done := make([]uint64, len(e.members))
	for i, m := range e.members {
		done[i] = m.completed.Load()
	}
	select {
	case <-ctx.Done():
		return 0
	case <-time.After(sample):
	}
	out := 0
	for i, m := range e.members {
		busy := m.pending.Load() - m.flushing.Load()
		if len(m.ancestors) == 0 || !m.writable() || busy <= 0 || m.completed.Load() != done[i] {
			continue
		}
		err := fmt.Errorf("%w: %d pieces pending at shutdown and none finished for %v", ErrStalled, busy, sample)
		if !e.leave(ctx, m, membership.Stalled, err).Abort {
			continue // the last replica: its requests go on until their budget
		}
		out++
		if a, ok := m.node.(Aborter); ok {
			a.Abort(err)
		}
	}
	return out
}

// Resume ends a member's suspension: it rejoins and catches up like a
// member that returned. It blocks until the copy is done.
func (e *Engine) Resume(ctx context.Context, i int) error {
	return e.Rejoin(ctx, i, false, nil)
}

// Release ends a member's suspension without waiting for the copy: the
// member counts as failed again, and Run rejoins it at its next probe,
// copying what it missed at the configured resync rate. Releasing a
// member that is not suspended is an error wrapping ErrBusy.
func (e *Engine) Release(i int) error {
	m, err := e.member(i)
	if err != nil {
		return err
	}
	if _, err := e.decide(func(c *membership.Core) (membership.Decision, error) { return c.Release(i) }); err != nil {
		return err
	}
	m.log.Info("member released from suspension; it rejoins at the next probe")
	return nil
}

func (e *Engine) probeRead(ctx context.Context, i int) (bool, bool) {
	m := e.members[i]
	var b [1]byte
	return m.node.ReadAt(ctx, b[:], m.leaf.DataOffset()) == nil, false
}

// MemberStatus describes one member for status displays.
type MemberStatus struct {
	Index         int    `json:"index"`
	Node          string `json:"node"`
	State         string `json:"state"`
	Pending       int    `json:"pending"`
	DirtyRegions  int    `json:"dirty_regions"`
	ResyncedBytes int64  `json:"resynced_bytes"`
	// ResyncZeroedBytes are the bytes resync wrote as zeroes instead of
	// copying them (the source's block status said they read zeroes).
	ResyncZeroedBytes int64 `json:"resync_zeroed_bytes"`
	// ReadErrorsCorrected are the ranges the member failed to read with a
	// media error (EIO) that were served from another replica and
	// rewritten on it.
	ReadErrorsCorrected int64  `json:"read_errors_corrected"`
	LastError           string `json:"last_error,omitempty"`
	// Copy is the resync in progress, if any.
	Copy *CopyProgress `json:"copy,omitempty"`
}

// CopyProgress is a resync in progress: what it has copied (or zeroed)
// since it began, what is left (the regions still dirty), its mean rate
// and the time left at that rate.
type CopyProgress struct {
	DoneBytes      int64   `json:"done_bytes"`
	LeftBytes      int64   `json:"left_bytes"`
	Percent        float64 `json:"percent"`
	BytesPerSecond float64 `json:"bytes_per_second"`
	// ETASeconds is -1 while no rate is known yet.
	ETASeconds float64 `json:"eta_seconds"`
}

// Status returns a snapshot of every member.
func (e *Engine) Status() []MemberStatus {
	out := make([]MemberStatus, len(e.members))
	for i, m := range e.members {
		st := MemberStatus{Index: i, Node: m.node.String(), State: m.State().String(),
			Pending: int(m.pending.Load()), ResyncedBytes: m.resyncedBytes.Load(),
			ResyncZeroedBytes: m.resyncZeroedBytes.Load(), ReadErrorsCorrected: m.readErrorsCorrected.Load()}
		var left int64
		for _, a := range m.ancestors {
			n := a.mi.count(a.child)
			st.DirtyRegions += n
			left = max(left, int64(n)*a.mi.regionSize)
		}
		if t0 := m.copyStart.Load(); t0 != 0 && m.State() == Resyncing {
			done := max(m.resyncedBytes.Load()+m.resyncZeroedBytes.Load()-m.copyBase.Load(), 0)
			cp := &CopyProgress{DoneBytes: done, LeftBytes: left, ETASeconds: -1}
			if done+left > 0 {
				cp.Percent = 100 * float64(done) / float64(done+left)
			}
			if el := time.Since(time.Unix(0, t0)).Seconds(); el > 0 && done > 0 {
				cp.BytesPerSecond = float64(done) / el
				cp.ETASeconds = float64(left) / cp.BytesPerSecond
			}
			st.Copy = cp
		}
		m.errMu.Lock()
		if m.lastErr != nil {
			st.LastError = m.lastErr.Error()
		}
		m.errMu.Unlock()
		out[i] = st
	}
	return out
}
