// Member transitions: how a member leaves service and how the change is
// recorded. The rules, which the engine model test checks:
//
//   - A member leaves service (Failed) after an error only when another
//     in-sync replica stands in for it (failRedundant); the check and the
//     change are one step under failMu, so replicas failing together never
//     take each other out: the last one stays in service and its error
//     goes to the client. A member whose media changed or whose resync
//     failed leaves service regardless (fail). Suspended is the same by an
//     operator's choice (Suspend, admin POST /members/{i}/suspend).
//   - A member leaving service with writes not yet flushed has the regions
//     active now recorded as missed (noteLeaving), so if its machine loses
//     them the return copies them.
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

import "context"

// redundant reports whether another in-sync replica can stand in for m.
func (e *Engine) redundant(m *member) bool {
	for _, a := range m.ancestors {
		for i := range a.mi.children {
			if i == a.child {
				continue
			}
			if ok, _ := e.childReady(a.mi, i, (*member).readable, nil); ok {
				return true
			}
		}
	}
	return false
}

// failRedundant takes m out of service after err if another in-sync
// replica stands in for it, and reports whether m is out of service. The
// check and the change are one step (under failMu), so replicas failing
// together never take each other out: the last one stays in service and
// its error goes to the client.
func (e *Engine) failRedundant(ctx context.Context, m *member, err error) bool {
	e.failMu.Lock()
	if s := m.State(); s == Failed || s == Suspended {
		e.failMu.Unlock()
		return true
	}
	changed := e.redundant(m) && e.setFailed(m)
	e.failMu.Unlock()
	if !changed {
		return false
	}
	e.failed(ctx, m, err)
	return true
}

// fail takes m out of service after err whether or not another replica
// stands in for it (its media changed, its resync failed); what it misses
// is recorded from now on by the write picker.
func (e *Engine) fail(ctx context.Context, m *member, err error) {
	e.failMu.Lock()
	changed := e.setFailed(m)
	e.failMu.Unlock()
	if changed {
		e.failed(ctx, m, err)
	}
}

// setFailed moves m to Failed and reports whether it was in service.
func (e *Engine) setFailed(m *member) bool {
	for {
		s := m.State()
		if s == Failed || s == Suspended {
			return false
		}
		e.noteLeaving(m)
		if m.state.CompareAndSwap(int32(s), int32(Failed)) {
			return true
		}
	}
}

// noteLeaving is called before m leaves service: if it holds writes not
// yet flushed, the regions active now are recorded as missed by it, so
// that if they are lost (its machine restarts) the return copies them;
// without a log to say which, it is copied whole instead then.
func (e *Engine) noteLeaving(m *member) {
	if m.written.Load() || m.flushing.Load() > 0 {
		e.markUnflushed(m)
	}
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
	// Records are serialised by onChange and each writes the state of its
	// own moment, so the outcome of the last one decides.
	e.changePending.Store(err != nil)
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
		if bad < 0 || ctx.Err() != nil || !s.e.failRedundant(ctx, s.e.members[bad], err) {
			return err
		}
		// failRedundant recorded the membership without the member; if
		// that record went through, so did this one.
		if !s.e.changePending.Load() {
			return nil
		}
	}
	_, err := s.writeSupersOnce(ctx, false)
	return err
}
