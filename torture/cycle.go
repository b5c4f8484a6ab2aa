package torture

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"time"

	"dst/reports"
	"dst/storage/attach"
	"dst/storage/node"
	"dst/torture/fsload"
)

// attachTimeout bounds attaching and detaching the storage.
const attachTimeout = time.Minute

// cycle runs cycle i: the raw workload when it is due (before the
// filesystem is rebuilt, since it overwrites the device), then a
// filesystem cycle.
func (r *runner) cycle(ctx context.Context, i int) error {
	w := r.sc.Workload
	fs := ""
	var fsys fsload.FS
	if len(w.Filesystems) > 0 {
		list := r.filesystems()
		fsys = fsload.Rotation(list, i/w.RebuildEvery)
		fs = fsys.String()
	}
	r.beginCycle(i, fs)
	rebuild := i%w.RebuildEvery == 0
	if w.Raw != nil && (len(w.Filesystems) == 0 || rebuild) && (i/w.RebuildEvery)%w.Raw.Every == 0 {
		if err := r.rawPhase(ctx, i); err != nil {
			return err
		}
		rebuild = true
	}
	if len(w.Filesystems) == 0 {
		return nil
	}
	if err := r.ensureAttached(ctx); err != nil {
		return err
	}
	if r.fsw == nil {
		r.fsw = fsload.New(r.seed)
	}
	err := r.fsw.Cycle(ctx, fsload.CycleOptions{
		Dev: r.att.Device(), MountDir: r.mountDir(), FS: fsys, Rebuild: rebuild, Seed: r.seed, Cycle: i,
		Budget: w.WriteBudget, Phase: r.phaseFunc(),
	})
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

// filesystems returns the scenario's filesystems.
func (r *runner) filesystems() []fsload.FS {
	var list []fsload.FS
	for _, name := range r.sc.Workload.Filesystems {
		f, err := fsload.ParseFS(name)
		if err != nil {
			panic(err) // the scenario parser admits only known names
		}
		list = append(list, f)
	}
	return list
}

func (r *runner) mountDir() string { return filepath.Join(r.work, "mnt") }

// beginCycle opens the report's record of cycle i.
func (r *runner) beginCycle(i int, fs string) {
	r.mu.Lock()
	r.run.Cycles = append(r.run.Cycles, reports.Cycle{Index: i, Filesystem: fs})
	r.curCycle = fmt.Sprintf("%d", i)
	if fs != "" {
		r.curCycle += " " + fs
	}
	r.mu.Unlock()
	r.event("cycle", "", map[string]any{"detail": "start", "filesystem": fs})
}

// phaseFunc records finished phases in the current cycle and the event
// log.
func (r *runner) phaseFunc() fsload.PhaseFunc {
	return func(name string, start time.Time, d time.Duration, err error, output string) {
		r.addPhase(name, start, d, err, output)
	}
}

// addPhase records a finished phase of the current cycle.
func (r *runner) addPhase(name string, start time.Time, d time.Duration, err error, output string) {
	const outputMax = 4 << 10
	if len(output) > outputMax {
		output = output[:outputMax] + "\n[...]"
	}
	r.mu.Lock()
	c := &r.run.Cycles[len(r.run.Cycles)-1]
	c.Phases = append(c.Phases, reports.Phase{Name: name, Start: start, Duration: d, Err: errString(err), Output: output})
	r.curPhase = name
	r.mu.Unlock()
	r.event("phase", name, map[string]any{"duration": d, "err": errString(err), "detail": output})
}

// startPhase marks name as running (for the progress line).
func (r *runner) startPhase(name string) {
	r.mu.Lock()
	r.curPhase = name
	r.mu.Unlock()
}

// countFS adds the filesystem workload's totals to the counters.
func (r *runner) countFS() {
	st := r.fsw.Stats()
	r.mu.Lock()
	r.run.Counters.BytesWritten += st.BytesWritten - r.fsCounted.BytesWritten
	r.run.Counters.BytesVerified += st.BytesVerified - r.fsCounted.BytesVerified
	r.run.Counters.Ops += int64(st.Ops - r.fsCounted.Ops)
	r.fsCounted = st
	r.mu.Unlock()
}

// failFS records a failed filesystem phase with what explains it.
func (r *runner) failFS(i int, err error) {
	var diag []string
	var mm *fsload.Mismatch
	if errors.As(err, &mm) {
		diag = append(diag, mm.Error())
	}
	var ce *fsload.CommandError
	if errors.As(err, &ce) {
		diag = append(diag, ce.Error())
	}
	phase := ""
	r.mu.Lock()
	if c := r.run.Cycles[len(r.run.Cycles)-1]; len(c.Phases) > 0 {
		phase = c.Phases[len(c.Phases)-1].Name
	}
	r.mu.Unlock()
	r.fail(i, phase, err.Error(), diag)
	r.bundle(i, phase, err)
}

// ensureAttached attaches the storage to this kernel unless it is.
func (r *runner) ensureAttached(ctx context.Context) error {
	if r.att != nil {
		return nil
	}
	actx, cancel := context.WithTimeout(ctx, attachTimeout)
	defer cancel()
	r.startPhase("attach")
	// The engine may legitimately hold a request for its whole retry
	// budget while a node is gone; the attachment must wait longer than
	// that before it counts a try lost, and go on retrying through an
	// engine restart.
	budget := r.sc.Topology.Engine.RetryBudget()
	dev, err := node.Open(actx, "nbd://"+r.c.Engine().Addr(), node.OpenOptions{
		Remote: node.RemoteOptions{Logger: r.log.With("client", "attach"),
			RequestTimeout: budget + 5*time.Second, Budget: 4 * (budget + 5*time.Second)},
	})
	if err != nil {
		return fmt.Errorf("torture: connect to the engine: %w", err)
	}
	a, err := attach.Attach(actx, meteredNode{Node: dev, m: r.m}, attach.Options{
		Dir: filepath.Join(r.work, "attach"), Name: "disk", Logger: r.log.With("attach", "disk"),
	})
	if err != nil {
		dev.Close()
		return fmt.Errorf("torture: attach the storage: %w", err)
	}
	r.att, r.attDev = a, dev
	r.event("attach", "", map[string]any{"detail": "attached", "target": a.Device(), "mode": a.Mode().String()})
	return nil
}

// detach unmounts what the workload left mounted, detaches the storage and
// closes its connection. With the engine dead it first closes the
// connection, so every request still queued fails at once instead of
// retrying.
func (r *runner) detach(ctx context.Context) {
	if r.att == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, attachTimeout)
	defer cancel()
	if !r.c.Engine().Alive() {
		r.attDev.Close()
	}
	if mounted, _ := fsload.Mounted(r.mountDir()); mounted {
		if err := fsload.Umount(ctx, r.mountDir()); err != nil {
			r.log.Warn("umount before detach", "err", err)
		}
	}
	// A btrfs the workload made stays registered with the kernel; forget
	// it so nothing refers to the device once it is gone.
	if _, err := exec.LookPath("btrfs"); err == nil {
		_ = exec.CommandContext(ctx, "btrfs", "device", "scan", "--forget", r.att.Device()).Run()
	}
	if err := r.att.Close(ctx); err != nil {
		r.log.Warn("detach", "err", err)
		r.event("attach", "", map[string]any{"detail": "detach failed", "target": r.att.Device(), "err": err.Error()})
	}
	r.attDev.Close()
	r.event("attach", "", map[string]any{"detail": "detached", "target": r.att.Device()})
	r.att, r.attDev = nil, nil
}
