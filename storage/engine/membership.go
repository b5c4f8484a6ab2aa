// Member transitions. The rules live in package membership, a pure state
// machine the engine model test and the simulator step too; the engine
// holds one membership.Core under failMu, feeds it every event and
// executes its decisions:
//
//   - The regions active now are marked as missed by a member leaving
//     with writes not flushed (MarkActive) before its new state is
//     visible to the request path, so the monitor never rejoins it with
//     a partial copy.
//   - Each member's state is published to the request path in an atomic
//     (member.state), written only under failMu from the Core's state.
//   - Every change of membership is written to the superblocks of the
//     members in service before the request that caused it is answered
//     (recordChange, Storage.recordMembership). A member whose superblock
//     cannot be written fails like a member whose write failed; a change
//     that could not be recorded stays pending (changePending) and is
//     recorded before any later write or FLUSH is acknowledged.
//   - A replica is ready for a request (childReady) when every leaf under
//     it passes the request's test (readable for reads) and none failed
//     this request.
package engine

import (
	"context"

	"dst/storage/membership"
)

// facts are what the engine knows of m for a membership event.
func (e *Engine) facts(m *member) membership.Facts {
	return membership.Facts{Unflushed: m.unflushed(), Logged: m.logged()}
}

// decide runs one event on the membership core under failMu and applies
// its decision: the marks first, then the member's new state.
func (e *Engine) decide(event func(c *membership.Core) (membership.Decision, error)) (membership.Decision, error) {
	e.failMu.Lock()
	defer e.failMu.Unlock()
	d, err := event(e.core)
	if err != nil {
		return d, err
	}
	m := e.members[d.Member]
	if d.MarkActive {
		e.markUnflushed(m)
	}
	m.state.Store(int32(d.To))
	if d.Out() && d.Changed() && !d.MarkActive && m.writing.Load() > 0 {
		// A write piece that passed its in-service check after the facts
		// were read is on its way: what it writes is not flushed there.
		e.markUnflushed(m)
	}
	if d.Changed() || d.Whole || len(d.Promote) > 0 {
		e.log.Debug("membership", "decision", d.String())
	}
	return d, nil
}

// leave asks the core to take m out of service after err for cause; a
// change is logged and recorded. The decision's Out says whether m is out
// of service now.
func (e *Engine) leave(ctx context.Context, m *member, cause membership.Cause, err error) membership.Decision {
	d, _ := e.decide(func(c *membership.Core) (membership.Decision, error) {
		return c.Fail(m.index, cause, e.facts(m)), nil
	})
	if d.Changed() {
		e.failed(ctx, m, err)
	}
	return d
}

// failRedundant takes m out of service after the I/O error err if another
// in-sync replica stands in for it, and reports whether m is out of
// service (membership rule 1).
func (e *Engine) failRedundant(ctx context.Context, m *member, err error) bool {
	return e.leave(ctx, m, membership.PieceFailed, err).Out()
}

// probed reports whether the monitor probes m (membership rule 7).
func (e *Engine) probed(m *member) bool {
	e.failMu.Lock()
	defer e.failMu.Unlock()
	return e.core.Probed(m.index)
}

// wholeDue reports whether member i is to be copied whole on return.
func (e *Engine) wholeDue(i int) bool {
	e.failMu.Lock()
	defer e.failMu.Unlock()
	return e.core.WholeDue(i)
}

// start sets member i's state at an assembly.
func (e *Engine) start(i int, s membership.Start) {
	e.failMu.Lock()
	defer e.failMu.Unlock()
	e.core.Started(i, s)
	e.members[i].state.Store(int32(e.core.State(i)))
}

// failed records why m left service and the new membership.
func (e *Engine) failed(ctx context.Context, m *member, err error) {
	m.errMu.Lock()
	m.lastErr = err
	m.errMu.Unlock()
	m.log.Warn("member failed; mirror degraded", "err", err)
	if cerr := e.recordChange(ctx); cerr != nil {
		m.log.Error("could not record the failed member in the superblocks; retrying before the next flush", "err", cerr)
	}
}

// recordChange records the current membership with onChange. A failure
// leaves changePending set until a later record succeeds.
func (e *Engine) recordChange(ctx context.Context) error {
	if e.onChange == nil {
		return nil
	}
	err := e.onChange(ctx)
	e.failMu.Lock()
	e.core.Recorded(err == nil)
	e.changePending.Store(e.core.Pending())
	e.failMu.Unlock()
	return err
}

// childReady reports whether every leaf under child i passes ok and none is
// excluded; load is the sum of their pending pieces.
func (e *Engine) childReady(mi *mirrorInfo, i int, ok func(*member) bool, excluded []bool) (ready bool, load int) {
	for _, l := range mi.children[i] {
		m := e.members[l]
		if !ok(m) || (excluded != nil && excluded[l]) {
			return false, 0
		}
		load += int(m.pending.Load())
	}
	return true, load
}

// recordMembership writes superblocks with the current in-sync set.
//
// A member whose superblock cannot be written has failed like a member
// whose write failed: if a replica stands in for it, it leaves service
// (which records the membership again, without it); otherwise the error
// stands.
func (s *Storage) recordMembership(ctx context.Context) error {
	for range s.e.members {
		bad, err := s.writeSupersOnce(ctx, false)
		if err == nil {
			return nil
		}
		if bad < 0 || ctx.Err() != nil || !s.e.leave(ctx, s.e.members[bad], membership.RecordFailed, err).Out() {
			return err
		}
		// leave recorded the membership without the member; if that
		// record went through, so did this one.
		if !s.e.changePending.Load() {
			return nil
		}
	}
	_, err := s.writeSupersOnce(ctx, false)
	return err
}
