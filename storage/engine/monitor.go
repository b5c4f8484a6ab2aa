package engine

import (
	"context"
	"fmt"
	"time"

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
	// Probe, if set, decides whether a failed member is back and whether it
	// needs a full copy (new or foreign media); nil probes with a read of
	// the member's first data byte and asks for an incremental copy.
	Probe func(ctx context.Context, i int) (back, full bool)
}

// Run probes failed members every interval and resyncs those that came
// back, one at a time, until ctx ends. Suspended members wait for Resume.
func (e *Engine) Run(ctx context.Context, opts MonitorOptions) error {
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
			if m.State() != Failed {
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
	if !m.state.CompareAndSwap(int32(Suspended), int32(Failed)) {
		return fmt.Errorf("%w: member %d is %v, not suspended", ErrBusy, i, m.State())
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
	LastError     string `json:"last_error,omitempty"`
}

// Status returns a snapshot of every member.
func (e *Engine) Status() []MemberStatus {
	out := make([]MemberStatus, len(e.members))
	for i, m := range e.members {
		st := MemberStatus{Index: i, Node: m.node.String(), State: m.State().String(),
			Pending: int(m.pending.Load()), ResyncedBytes: m.resyncedBytes.Load()}
		for _, a := range m.ancestors {
			st.DirtyRegions += a.mi.count(a.child)
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
