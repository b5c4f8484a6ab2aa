package torture

import (
	"context"
	"fmt"
	"time"

	"dst/storage/engine"
)

// watchScrubs follows the engine's scheduled scrubs (topology.engine.
// scrub_interval) until ctx ends: every scrub result it sees for the
// first time is counted, and one that found replicas that differ fails
// the run, naming the ranges. The engine keeps only its last result, so
// it polls at a quarter of the interval (at least every second).
func (r *runner) watchScrubs(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(min(max(interval/4, 100*time.Millisecond), time.Second))
	defer t.Stop()
	var seen time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st, err := r.c.Engine().Status(ctx)
		if err != nil || st.Scrub == nil || st.Scrub.Last == nil || !st.Scrub.Last.Started.After(seen) {
			continue // the engine restarting, or nothing new
		}
		last := st.Scrub.Last
		seen = last.Started
		r.mu.Lock()
		r.scrubsSeen++
		r.mu.Unlock()
		if last.MismatchCount > 0 {
			r.fail(-1, "scrub", fmt.Sprintf("a scheduled scrub found %d ranges where replicas differ", last.MismatchCount), scrubDiagnosis(last))
		}
	}
}

// scrubDiagnosis names each differing range of a scrub.
func scrubDiagnosis(res *engine.ScrubResult) []string {
	var diag []string
	for _, m := range res.Mismatches {
		diag = append(diag, fmt.Sprintf("mirror %d child %d (members %v) differs from child %d at %d+%d", m.Mirror, m.Child, m.Members, m.Source, m.Offset, m.Length))
	}
	return diag
}
