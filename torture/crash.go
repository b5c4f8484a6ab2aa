package torture

import (
	"context"
	"fmt"
	"time"

	"github.com/dustin/go-humanize"

	"dst/reports"
	"dst/torture/fsload"
)

// crashCycle runs cycle i of an engine-crash scenario: the raw workload
// across an engine kill when it is due, then a filesystem that is
// written, synced, written again without a sync, and cut off by SIGKILL
// of the engine; the engine restarts, the storage is re-attached, and
// everything synced must be there (unsynced files may be old or new, never
// other bytes), and the filesystem must fsck clean.
func (r *runner) crashCycle(ctx context.Context, i int) error {
	w := r.sc.Workload
	fs := ""
	var fsys fsload.FS
	if len(w.Filesystems) > 0 {
		fsys = fsload.Rotation(r.filesystems(), i/w.RebuildEvery)
		fs = fsys.String()
	}
	r.beginCycle(i, fs)
	r.lockQuiet(ctx)
	defer r.quiet.Unlock()
	rebuild := i%w.RebuildEvery == 0
	if w.Raw != nil && (len(w.Filesystems) == 0 || rebuild) && (i/w.RebuildEvery)%w.Raw.Every == 0 {
		if err := r.rawCrashPhase(ctx, i); err != nil {
			return err
		}
		rebuild = true
	}
	if len(w.Filesystems) == 0 {
		return nil
	}
	if r.fsw == nil {
		r.fsw = fsload.New(r.seed)
	}
	if r.fsw.FS() != fsys {
		rebuild = true
	}
	err := r.crashFS(ctx, i, fsys, rebuild)
	r.countFS()
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("torture: interrupted: %w", ctx.Err())
		}
		r.failFS(i, err)
		return fmt.Errorf("%w: %v", ErrFailed, err)
	}
	return nil
}

// step runs one named phase of a cycle and records it.
func (r *runner) step(name string, fn func() (string, error)) error {
	r.startPhase(name)
	start := time.Now()
	out, err := fn()
	r.addPhase(name, start, time.Since(start), err, out)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

func (r *runner) crashFS(ctx context.Context, i int, fsys fsload.FS, rebuild bool) error {
	if err := r.ensureAttached(ctx); err != nil {
		return err
	}
	dir := r.mountDir()
	if rebuild {
		if err := r.step(fsload.PhaseMkfs, func() (string, error) { return r.fsw.Rebuild(ctx, fsys, r.att.Device()) }); err != nil {
			return err
		}
	}
	if err := r.step(fsload.PhaseMount, func() (string, error) { return "", fsload.Mount(ctx, fsys, r.att.Device(), dir) }); err != nil {
		return err
	}
	write := func(name string, sync bool) error {
		return r.step(name, func() (string, error) {
			capacity, err := r.fsw.Usable(dir)
			if err != nil {
				return "", err
			}
			n, err := r.fsw.Write(ctx, dir, fsload.WriteOptions{Seed: r.seed ^ uint64(i)<<20 ^ uint64(len(name)),
				Plan: fsload.PlanFor(capacity, r.sc.Workload.WriteBudget)})
			if err != nil || !sync {
				return fmt.Sprintf("%d bytes written", n), err
			}
			return fmt.Sprintf("%d bytes written and synced", n), r.fsw.Sync(ctx, dir)
		})
	}
	if err := write("write-sync", true); err != nil {
		return err
	}
	if err := write("write-unsynced", false); err != nil {
		return err
	}
	if err := r.step(r.crashName(), func() (string, error) { return r.crash(ctx, uint64(i)) }); err != nil {
		return err
	}
	if err := r.ensureAttached(ctx); err != nil {
		return err
	}
	// Mounting replays the journal; fsck comes after the clean umount.
	if err := r.step(fsload.PhaseRemount, func() (string, error) { return "", fsload.Mount(ctx, fsys, r.att.Device(), dir) }); err != nil {
		return err
	}
	if err := r.step(fsload.PhaseVerify, func() (string, error) { return "", r.fsw.VerifyAfterCrash(ctx, dir) }); err != nil {
		return err
	}
	if err := r.step(fsload.PhaseUmount, func() (string, error) { return "", fsload.Umount(ctx, dir) }); err != nil {
		return err
	}
	return r.step(fsload.PhaseFsck, func() (string, error) { return fsload.Fsck(ctx, fsys, r.att.Device()) })
}

// crashName names the crash step: an engine kill, or with
// workload.power_loss the power loss of the engine's host.
func (r *runner) crashName() string {
	if r.sc.Workload.PowerLoss {
		return "power-loss"
	}
	return "engine-kill"
}

// crash is the crash of a crash cycle: killEngine, or powerLoss.
func (r *runner) crash(ctx context.Context, seed uint64) (string, error) {
	if r.sc.Workload.PowerLoss {
		return r.powerLoss(ctx, r.seed^seed*0x2545f4914f6cdd1d)
	}
	return r.killEngine(ctx)
}

// killEngine kills the engine with SIGKILL, detaches the storage (its
// queued requests fail), starts the engine again on the same members and
// waits until it serves.
func (r *runner) killEngine(ctx context.Context) (string, error) {
	eng := r.c.Engine()
	if err := eng.Kill(); err != nil {
		return "", err
	}
	r.event("fault", "", map[string]any{"detail": "SIGKILL of the engine", "target": "engine", "fault": "engine-kill"})
	r.mu.Lock()
	r.run.Counters.FaultsInjected++
	r.mu.Unlock()
	start := time.Now()
	r.detach(ctx)
	if err := eng.Start(ctx); err != nil {
		return "", fmt.Errorf("restart the engine: %w", err)
	}
	took := time.Since(start)
	resync, err := r.crashResync(ctx)
	if err != nil {
		return "", err
	}
	r.event("recovery", "", map[string]any{"detail": "engine restarted; " + resync, "target": "engine", "duration": took})
	r.addFault(reports.Fault{Kind: "engine-kill", Target: "engine", Start: start, End: time.Now(), Recovered: time.Now(),
		Note: "SIGKILL of dst serve, restart, re-attach; " + resync})
	return fmt.Sprintf("engine killed and restarted in %v; %s", took.Round(time.Millisecond), resync), nil
}

// crashResync reports what the restarted engine's crash resync copies:
// the regions its mirrors' activity logs marked. A member under a log
// that is copied whole fails the run: the logs are written by this dst
// and must be readable after a kill or a power loss.
func (r *runner) crashResync(ctx context.Context) (string, error) {
	st, err := r.c.Engine().Status(ctx)
	if err != nil {
		return "", fmt.Errorf("status after the restart: %w", err)
	}
	a := st.Activity
	if a == nil {
		return "no activity log (no mirror persists a bitmap): replicas copied whole", nil
	}
	msg := fmt.Sprintf("crash resync copies %d regions (%s) of %s", a.CrashResyncRegions,
		humanize.IBytes(uint64(int64(a.CrashResyncRegions)*a.RegionSize)), humanize.IBytes(uint64(st.Size)))
	r.mu.Lock()
	r.run.Counters.CrashResyncBytes += int64(a.CrashResyncRegions) * a.RegionSize
	r.mu.Unlock()
	if a.CrashFullCopies > 0 {
		return "", fmt.Errorf("%w: the restart copies %d replicas whole although their mirrors keep an activity log (%s); see the engine log",
			ErrFailed, a.CrashFullCopies, msg)
	}
	return msg, nil
}
