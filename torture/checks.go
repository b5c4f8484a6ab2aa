package torture

import (
	"context"
	"fmt"
	"time"

	"dst/reports"
)

// finalChecks run once the faults stopped and healed: the storage must be
// healthy within checks.resync_within, every mirror's replicas must hold
// identical data areas, and every fault must have recovered within the
// bound.
func (r *runner) finalChecks(ctx context.Context) error {
	r.startPhase("final checks")
	eng := r.c.Engine()
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, r.sc.Checks.ResyncWithin)
	took, _, err := eng.WaitInSync(wctx)
	cancel()
	name := fmt.Sprintf("storage in sync within %v after the last fault", r.sc.Checks.ResyncWithin)
	if err != nil {
		r.check(name, false, err.Error(), time.Since(start))
		r.fail(-1, "final", name, []string{err.Error()})
		return fmt.Errorf("%w: %s", ErrFailed, name)
	}
	r.check(name, true, fmt.Sprintf("in sync after %v", took.Round(time.Millisecond)), took)

	// The engine's own online check (dst scrub) must agree.
	start = time.Now()
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	res, err := eng.Scrub(sctx)
	cancel()
	name = "online scrub finds no difference"
	switch {
	case err != nil:
		r.check(name, false, err.Error(), time.Since(start))
		r.fail(-1, "final", name, []string{err.Error()})
		return fmt.Errorf("%w: %s", ErrFailed, name)
	case res.MismatchCount > 0:
		r.check(name, false, fmt.Sprintf("%d ranges differ", res.MismatchCount), time.Since(start))
		r.fail(-1, "final", name, scrubDiagnosis(res))
		return fmt.Errorf("%w: %s", ErrFailed, name)
	}
	r.check(name, true, fmt.Sprintf("%d regions compared, %d bytes read", res.Regions, res.BytesRead), time.Since(start))
	if iv := r.c.Topology().Engine.ScrubInterval; iv > 0 {
		// A scrub that found a difference failed the run when it was seen
		// (watchScrubs); this says how many ran.
		r.mu.Lock()
		n := r.scrubsSeen
		r.mu.Unlock()
		r.check("scheduled scrubs ran", n > 0, fmt.Sprintf("%d scheduled scrubs seen (every %v)", n, iv), 0)
	}

	start = time.Now()
	divs, err := r.c.Converged(ctx)
	name = "mirror replicas byte-identical"
	switch {
	case err != nil:
		r.check(name, false, err.Error(), time.Since(start))
		return fmt.Errorf("torture: compare replicas: %w", err)
	case len(divs) > 0:
		var diag []string
		for _, d := range divs {
			diag = append(diag, d.String())
		}
		r.check(name, false, fmt.Sprintf("%d pairs of replicas differ", len(divs)), time.Since(start))
		r.fail(-1, "final", name, diag)
		r.bundle(-1, "final", fmt.Errorf("replicas differ"), diag...)
		return fmt.Errorf("%w: %s", ErrFailed, name)
	}
	r.check(name, true, "every mirror's members hold the same data", time.Since(start))

	r.mu.Lock()
	var slow []string
	var worst time.Duration
	for _, f := range r.run.Faults {
		d, ok := f.Recovery()
		if !ok {
			continue
		}
		worst = max(worst, d)
		if d > r.sc.Checks.ResyncWithin {
			slow = append(slow, fmt.Sprintf("%s %s recovered after %v", f.Kind, f.Target, d))
		}
	}
	n := len(r.run.Faults)
	r.mu.Unlock()
	name = fmt.Sprintf("every fault recovered within %v", r.sc.Checks.ResyncWithin)
	if len(slow) > 0 {
		r.check(name, false, fmt.Sprint(slow), 0)
		r.fail(-1, "final", name, slow)
		return fmt.Errorf("%w: %s", ErrFailed, name)
	}
	r.check(name, true, fmt.Sprintf("%d faults, slowest recovery %v", n, worst.Round(time.Millisecond)), 0)
	return nil
}

// check records a run-level check.
func (r *runner) check(name string, passed bool, msg string, d time.Duration) {
	r.mu.Lock()
	r.run.Checks = append(r.run.Checks, reports.Check{Name: name, Passed: passed, Message: msg, Duration: d})
	r.mu.Unlock()
	verdict := "passed"
	if !passed {
		verdict = "FAILED"
	}
	r.event("check", "", map[string]any{"detail": name + ": " + verdict, "err": map[bool]string{true: "", false: msg}[passed]})
}
