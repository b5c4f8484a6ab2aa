package torture

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"dst/reports"
	"dst/storage/admin"
	"dst/torture/cluster"
)

// resetAfterBytes is where a reset fault cuts a connection.
const resetAfterBytes = 1 << 20

// injectFaults runs the seeded schedule until ctx ends: one fault at a
// time, each only once the storage is healthy (every member in sync), then
// healed after its downtime; the time until the storage is healthy again
// is the fault's recovery, which must stay within checks.resync_within.
func (r *runner) injectFaults(ctx context.Context) {
	sched := NewSchedule(r.seed, r.sc.Faults)
	for {
		f, ok := sched.Next()
		if !ok {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(f.Gap):
		}
		r.faultDue.Store(true)
		r.quiet.Lock()
		r.faultDue.Store(false)
		if ctx.Err() != nil {
			r.quiet.Unlock()
			return
		}
		r.fault(ctx, f)
		r.quiet.Unlock()
	}
}

// fault injects f, heals it and measures the recovery. Call with quiet
// held.
func (r *runner) fault(ctx context.Context, f Fault) {
	eng := r.c.Engine()
	wctx, cancel := context.WithTimeout(ctx, r.sc.Checks.ResyncWithin)
	_, before, err := eng.WaitInSync(wctx)
	cancel()
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		r.fail(-1, "fault", fmt.Sprintf("the storage was not healthy %v before %v", r.sc.Checks.ResyncWithin, f), []string{err.Error()})
		return
	}
	member := r.memberIndex(f.Target)
	r.mu.Lock()
	r.active = f.String()
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.active = ""
		r.mu.Unlock()
	}()
	rec := reports.Fault{Kind: f.Kind, Target: f.Target, Start: time.Now(), Note: f.String()}
	r.event("fault", "", map[string]any{"detail": f.String(), "target": f.Target, "fault": f.Kind})
	r.mu.Lock()
	r.run.Counters.FaultsInjected++
	r.mu.Unlock()

	err = r.applyFault(ctx, f, member)
	rec.End = time.Now()
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		rec.Note += ": " + err.Error()
		r.fail(-1, "fault", fmt.Sprintf("injecting or healing %v", f), []string{err.Error()})
	}
	r.event("recovery", "", map[string]any{"detail": "healed " + f.String(), "target": f.Target})
	if (f.Kind == "replace" || f.Kind == "replace-online") && member >= 0 && err == nil {
		// Blank media must be noticed and copied whole: until the engine
		// has, "in sync" would be the old state.
		bm := before.Members[member]
		if err := r.waitNoticed(ctx, member, bm.ResyncedBytes+bm.ResyncZeroedBytes); err != nil && ctx.Err() == nil {
			r.fail(-1, "fault", fmt.Sprintf("the engine did not notice %v", f), []string{err.Error()})
		}
	}

	wctx, cancel = context.WithTimeout(ctx, r.sc.Checks.ResyncWithin)
	took, after, err := eng.WaitInSync(wctx)
	cancel()
	if ctx.Err() != nil {
		r.addFault(rec)
		return
	}
	if err != nil {
		r.addFault(rec)
		r.fail(-1, "resync", fmt.Sprintf("the storage did not recover within %v after %v", r.sc.Checks.ResyncWithin, f), []string{err.Error()})
		return
	}
	rec.Recovered = rec.End.Add(took)
	r.addFault(rec)
	r.event("recovery", "", map[string]any{"detail": "in sync after " + f.String(), "target": f.Target, "duration": took})
	if member >= 0 && member < len(after.Members) && member < len(before.Members) {
		if n := after.Members[member].ResyncedBytes - before.Members[member].ResyncedBytes; n > 0 {
			r.mu.Lock()
			r.run.Resyncs = append(r.run.Resyncs, reports.Resync{Member: f.Target, Start: rec.End, Bytes: n,
				Duration: took, Full: f.Kind == "replace" || f.Kind == "replace-online"})
			r.mu.Unlock()
		}
	}
}

// noticeWithin bounds how long the engine may take to notice new media
// behind a restarted node.
const noticeWithin = 30 * time.Second

// waitNoticed polls the engine until member leaves the in-sync state or
// has resynced or zeroed bytes beyond resynced (the copy may be over
// already).
func (r *runner) waitNoticed(ctx context.Context, member int, resynced int64) error {
	ctx, cancel := context.WithTimeout(ctx, noticeWithin)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		st, err := r.c.Engine().Status(ctx)
		if err == nil && member < len(st.Members) {
			m := st.Members[member]
			if m.State != "in-sync" || m.ResyncedBytes+m.ResyncZeroedBytes > resynced {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("member %d still in sync with nothing copied after %v", member, noticeWithin)
		case <-t.C:
		}
	}
}

func (r *runner) addFault(rec reports.Fault) {
	r.mu.Lock()
	r.run.Faults = append(r.run.Faults, rec)
	r.mu.Unlock()
}

// applyFault injects f on its node and heals it after its downtime.
func (r *runner) applyFault(ctx context.Context, f Fault, member int) error {
	n := r.c.Node(f.Target)
	if n == nil {
		return fmt.Errorf("no node %q", f.Target)
	}
	wait := func() error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(f.Downtime):
			return nil
		}
	}
	// heal runs even when ctx ends, so no fault outlives the run.
	heal := context.WithoutCancel(ctx)
	switch f.Kind {
	case "kill":
		if err := n.Kill(); err != nil {
			return err
		}
		werr := wait()
		return firstErr(n.Start(heal), werr)
	case "hang":
		if err := n.Stop(); err != nil {
			return err
		}
		werr := wait()
		return firstErr(n.Cont(), werr)
	case "replace":
		return n.ReplaceMedia(heal)
	case "replace-online":
		return r.replaceOnline(ctx, f, n, member)
	case "add-online":
		return r.addOnline(ctx, f, n, member)
	case "power-cut", "torn-write":
		return r.applyPowerFault(ctx, f, n, wait)
	case "media-error", "bit-flip", "lost-write":
		return r.applyMediaFault(ctx, f, n, wait)
	case "suspend":
		if member < 0 {
			return fmt.Errorf("node %q is no member", f.Target)
		}
		if err := r.c.Engine().Suspend(ctx, member); err != nil {
			return err
		}
		werr := wait()
		return firstErr(r.c.Engine().Resume(heal, member), werr)
	}
	p := n.Proxy()
	if p == nil {
		return fmt.Errorf("a %s fault needs a proxy in front of node %q", f.Kind, f.Target)
	}
	switch f.Kind {
	case "cut":
		p.Refuse(true)
		p.Cut()
		werr := wait()
		p.Refuse(false)
		return werr
	case "delay":
		p.Delay(f.Delay)
		werr := wait()
		p.Delay(0)
		return werr
	case "blackhole":
		p.Blackhole(true)
		werr := wait()
		p.Blackhole(false)
		p.Cut() // connections that saw the blackhole are dead to the engine
		return werr
	case "reset":
		p.Reset(resetAfterBytes)
		return nil
	}
	return fmt.Errorf("unknown fault kind %q", f.Kind)
}

// replaceOnline puts a new machine (a blank node on a new address) in
// member's position with dst member replace while the workload runs, as
// an administrator swaps a disk: with an even seed the old machine still
// serves when the replace starts (md's hot replace), with an odd one it
// died first. The old machine is retired once the new one holds the
// position; the engine copies the new one whole, and the engine's next
// config names it.
func (r *runner) replaceOnline(ctx context.Context, f Fault, n *cluster.Node, member int) error {
	if member < 0 {
		return fmt.Errorf("node %q is no member", f.Target)
	}
	rep, err := n.StartReplacement(ctx)
	if err != nil {
		return err
	}
	hot := f.Seed%2 == 0
	if !hot {
		if err := n.Kill(); err != nil {
			return errors.Join(err, rep.Discard())
		}
	}
	if err := r.c.Engine().Replace(ctx, member, rep.URL()); err != nil {
		// The position is the old machine's still: bring it back.
		return errors.Join(fmt.Errorf("replace member %d by %s: %w", member, rep.URL(), err),
			rep.Discard(), n.Start(context.WithoutCancel(ctx)))
	}
	r.event("fault", "", map[string]any{"detail": fmt.Sprintf("member %d replaced by %s (old machine %s)", member, rep.URL(),
		map[bool]string{true: "serving", false: "dead"}[hot]), "target": f.Target, "fault": f.Kind})
	return n.Adopt(rep)
}

// addOnline grows the mirror member is a replica of by a new machine (a
// blank node of the node's size on a new address) with dst member add
// while the workload runs, waits until it is copied whole and in sync,
// and removes it again with dst member remove; the new machine is then
// retired. The storage ends with the membership it had, which the
// engine's config names (no engine crash comes between: the fault holds
// quiet).
func (r *runner) addOnline(ctx context.Context, f Fault, n *cluster.Node, member int) error {
	path, ok := r.c.Topology().Storage.ParentMirror(member)
	if member < 0 || !ok {
		return fmt.Errorf("node %q is no mirror replica", f.Target)
	}
	rep, err := n.StartReplacement(ctx)
	if err != nil {
		return err
	}
	eng := r.c.Engine()
	var res admin.ChangeResult
	err = retryBusy(ctx, r.sc.Checks.ResyncWithin, func() (err error) {
		res, err = eng.AddMember(ctx, path, rep.URL())
		return err
	})
	if err != nil {
		return errors.Join(fmt.Errorf("add %s to mirror %s: %w", rep.URL(), path, err), rep.Discard())
	}
	r.event("fault", "", map[string]any{"detail": fmt.Sprintf("member %d (%s) added to mirror %s; clients paused %.1f ms",
		res.Member, rep.URL(), path, res.PausedSeconds*1e3), "target": f.Target, "fault": f.Kind})
	wctx, cancel := context.WithTimeout(ctx, r.sc.Checks.ResyncWithin)
	_, _, werr := eng.WaitInSync(wctx)
	cancel()
	if werr != nil {
		werr = fmt.Errorf("the replica added was not in sync within %v: %w", r.sc.Checks.ResyncWithin, werr)
	}
	var out admin.ChangeResult
	err = retryBusy(context.WithoutCancel(ctx), r.sc.Checks.ResyncWithin, func() (err error) {
		out, err = eng.RemoveMember(context.WithoutCancel(ctx), res.Member)
		return err
	})
	if err != nil {
		// It stays a member: the storage serves with it, the machine too.
		return errors.Join(werr, fmt.Errorf("remove member %d (%s) again: %w", res.Member, rep.URL(), err))
	}
	r.event("fault", "", map[string]any{"detail": fmt.Sprintf("member %d (%s) removed again; clients paused %.1f ms",
		res.Member, rep.URL(), out.PausedSeconds*1e3), "target": f.Target, "fault": f.Kind})
	return errors.Join(werr, rep.Discard())
}

// retryBusy calls change until it is not refused for a scrub running
// (a periodic scrub holds the admin endpoint), for at most within.
func retryBusy(ctx context.Context, within time.Duration, change func() error) error {
	deadline := time.Now().Add(within)
	for {
		err := change()
		if err == nil || !strings.Contains(err.Error(), "a scrub") || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// memberIndex is the engine's member index of a node (leaf order), or -1.
func (r *runner) memberIndex(name string) int {
	for i, leaf := range r.c.Topology().Storage.Leaves() {
		if leaf == name {
			return i
		}
	}
	return -1
}

// fail records a failure of the run.
func (r *runner) fail(cycle int, phase, msg string, diagnosis []string) {
	r.mu.Lock()
	if cycle < 0 {
		cycle = len(r.run.Cycles) - 1
	}
	// Name the fault that preceded the failure: the one in progress, else
	// the last one injected.
	switch {
	case r.active != "":
		diagnosis = append(diagnosis, "during "+r.active)
	case len(r.run.Faults) > 0:
		last := r.run.Faults[len(r.run.Faults)-1]
		diagnosis = append(diagnosis, fmt.Sprintf("after %s (injected %s)", last.Note, last.Start.Format(time.TimeOnly)))
	}
	r.run.Failures = append(r.run.Failures, reports.Failure{Cycle: cycle, Phase: phase, Time: time.Now(), Message: msg, Diagnosis: diagnosis})
	r.mu.Unlock()
	r.event("check", phase, map[string]any{"detail": "FAILED: " + msg, "err": fmt.Sprint(diagnosis)})
	r.log.Error("failure", "cycle", cycle, "phase", phase, "msg", msg, "diagnosis", diagnosis)
	if !r.o.KeepGoing {
		r.abort()
	}
}
