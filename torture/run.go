// Package torture is the harness that proves dst keeps data: it starts a
// scenario's topology as real processes (torture/cluster), attaches the
// storage to this kernel (storage/attach), runs filesystem cycles
// (torture/fsload) and raw self-describing sectors (torture/raw) on it
// while a seeded schedule kills, hangs, replaces, suspends and cuts its
// nodes, checks that no byte is ever wrong, that synced data survives,
// that filesystems fsck clean and that mirrors converge, and writes a
// report per run (package reports): report.html, summary.json, junit.xml,
// events.jsonl, and a failure bundle that replays the failure.
package torture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"dst/reports"
	"dst/storage/attach"
	"dst/storage/node"
	"dst/torture/cluster"
	"dst/torture/fsload"
	"dst/torture/raw"
	"dst/torture/scenario"
)

// Options configure Run.
type Options struct {
	// Scenario is what to run; required.
	Scenario *scenario.Scenario
	// Seed drives every random choice of the run; zero means draw one
	// (it is printed and recorded either way).
	Seed uint64
	// Duration overrides the scenario's duration when positive.
	Duration time.Duration
	// Cycles, when positive, stops the run after that many cycles.
	Cycles int
	// KeepGoing continues after a failed cycle instead of stopping.
	KeepGoing bool
	// Binary is the dst binary that runs the nodes and the engine;
	// required.
	Binary string
	// Out is the folder under which the run's report folder is made;
	// empty means "out/torture".
	Out string
	// KeepWork keeps the node images and mounts' folder after a passing
	// run (a failing run always keeps them).
	KeepWork bool
	// Progress receives a live progress line; nil means none.
	Progress io.Writer
	// Logger receives the harness's log; nil discards it.
	Logger *slog.Logger
	// Replay is the command line that replays this run; the runner adds
	// nothing to it.
	Replay string

	// hooks let the package's tests plant bugs.
	hooks hooks
}

// hooks are test-only interventions in a run.
type hooks struct {
	// afterRawWrites runs between the raw workload's writes and its
	// verification.
	afterRawWrites func(c *cluster.Cluster, l *raw.Ledger)
}

// Result is what Run leaves behind.
type Result struct {
	// Dir is the run's report folder.
	Dir string
	// Run is the collected run, as written to the reports.
	Run *reports.Run
}

// ErrFailed is wrapped by Run's error when the run found a failure (as
// opposed to not being able to run).
var ErrFailed = errors.New("torture: run failed")

// NewSeed draws a seed for a run: positive and below 2^63, so it reads
// back from a command line as it was printed.
func NewSeed() uint64 { return rand.Uint64()>>1 | 1 }

// runner is the state of one run.
type runner struct {
	o    Options
	sc   *scenario.Scenario
	seed uint64
	log  *slog.Logger
	dir  string
	work string
	ev   *reports.EventLog
	c    *cluster.Cluster
	m    *Meter

	mu  sync.Mutex
	run reports.Run

	// quiet is held by the fault injector while a fault is active or
	// healing, and by the cycle loop while it needs the storage without
	// faults (engine crash, convergence check).
	quiet sync.Mutex
	// faultDue is set while the fault injector waits for quiet: the cycle
	// loop lets it in first (lockQuiet), so a fault is not starved by
	// cycles that take quiet again as soon as they let go of it.
	faultDue atomic.Bool
	// active describes the fault being injected or healed, under mu.
	active string
	// scrubsSeen counts the scheduled scrubs watchScrubs saw, under mu.
	scrubsSeen int

	att    *attach.Attachment
	attDev node.Node

	fsw       *fsload.Workload
	fsCounted fsload.Stats
	rawSt     *rawState

	// progress fields, under mu
	curCycle, curPhase string
	deadline           time.Time
	// abort ends the run early (a failure without KeepGoing).
	abort context.CancelFunc
}

// Run runs a scenario and writes its reports. The error wraps ErrFailed
// when the run found a failure; any other error means the run could not
// be carried out (the reports then say aborted).
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.Scenario == nil || o.Binary == "" {
		return nil, errors.New("torture: Options.Scenario and Options.Binary are required")
	}
	if o.Seed == 0 {
		o.Seed = NewSeed()
	}
	if o.Out == "" {
		o.Out = filepath.Join("out", "torture")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	sc := o.Scenario
	start := time.Now()
	dir := filepath.Join(o.Out, fmt.Sprintf("%s-%s-seed%d", sc.Name, start.UTC().Format("20060102T150405"), o.Seed))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("torture: %w", err)
	}
	ev, err := reports.CreateEventLog(filepath.Join(dir, "events.jsonl"), reports.EventLogOptions{})
	if err != nil {
		return nil, err
	}
	r := &runner{o: o, sc: sc, seed: o.Seed, log: o.Logger.With("scenario", sc.Name, "seed", o.Seed), dir: dir,
		work: filepath.Join(dir, "work"), ev: ev, m: NewMeter(time.Now)}
	r.run = reports.Run{Scenario: sc.Name, Description: sc.Description, Seed: int64(o.Seed), Replay: o.Replay,
		Start: start, Topology: topologyText(sc)}
	d := sc.Duration
	if o.Duration > 0 {
		d = o.Duration
	}
	r.deadline = start.Add(d)
	r.event("run", "", map[string]any{"detail": "start", "seed": o.Seed, "run_seconds": d.Seconds(), "replay": o.Replay})

	err = r.execute(ctx)
	r.mu.Lock()
	r.run.End = time.Now()
	switch {
	case len(r.run.Failures) > 0:
		r.run.Result = reports.ResultFail
		if !errors.Is(err, ErrFailed) {
			err = fmt.Errorf("%w: %d failures (first: %s)", ErrFailed, len(r.run.Failures), r.run.Failures[0].Message)
		}
	case errors.Is(err, ErrFailed):
		r.run.Result = reports.ResultFail
	case err != nil:
		r.run.Result = reports.ResultAborted
		if r.run.StopReason == "" {
			r.run.StopReason = err.Error()
		}
	default:
		r.run.Result = reports.ResultPass
	}
	run := r.run
	r.mu.Unlock()
	r.event("run", "", map[string]any{"detail": "end", "result": run.Result.String(), "err": errString(err)})
	if cerr := ev.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if werr := reports.Write(dir, &run); werr != nil && err == nil {
		err = werr
	}
	if run.Result == reports.ResultPass && !o.KeepWork {
		_ = os.RemoveAll(r.work)
	}
	return &Result{Dir: dir, Run: &run}, err
}

// execute starts the cluster, runs cycles until the deadline, the cycle
// count or the first failure, and tears everything down.
func (r *runner) execute(ctx context.Context) (err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.abort = cancel
	if err := r.preflight(); err != nil {
		return err
	}
	topo := clusterTopology(r.sc)
	c, err := cluster.Start(ctx, cluster.Options{Binary: r.o.Binary, Dir: r.work, Topology: topo, Logger: r.log})
	if err != nil {
		return fmt.Errorf("torture: start the cluster: %w", err)
	}
	r.c = c
	defer func() {
		// Each step of the teardown has its own deadline, so one that hangs
		// does not leave the others without time.
		dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), attachTimeout)
		r.detach(dctx)
		dcancel()
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer ccancel()
		if cerr := c.Close(cctx); cerr != nil && err == nil {
			err = fmt.Errorf("torture: stop the cluster: %w", cerr)
		}
	}()
	r.event("cluster", "", map[string]any{"detail": "started", "size": c.Size(), "layout": topo.Storage.String(),
		"engine": c.Engine().Addr()})

	var bg sync.WaitGroup
	bgCtx, bgCancel := context.WithCancel(ctx)
	bg.Add(1)
	go func() { defer bg.Done(); r.sample(bgCtx) }()
	if len(r.sc.Faults.Kinds) > 0 {
		bg.Add(1)
		go func() { defer bg.Done(); r.injectFaults(bgCtx) }()
	}
	if iv := topo.Engine.ScrubInterval; iv > 0 {
		bg.Add(1)
		go func() { defer bg.Done(); r.watchScrubs(bgCtx, iv) }()
	}
	defer func() {
		bgCancel()
		bg.Wait()
	}()

	err = r.cycles(ctx)
	// Stop faults first, then check that the healed storage converged.
	bgCancel()
	bg.Wait()
	if err == nil || errors.Is(err, ErrFailed) && r.o.KeepGoing {
		if cerr := r.finalChecks(ctx); cerr != nil && err == nil {
			err = cerr
		}
	}
	return err
}

// preflight checks what the scenario needs of this machine before
// anything starts, so a missing piece is named at once.
func (r *runner) preflight() error {
	var missing []string
	if len(r.sc.Workload.Filesystems) > 0 {
		if os.Geteuid() != 0 {
			missing = append(missing, "root (the filesystem workload mounts a FUSE file, binds a loop device and mounts it)")
		}
		if _, err := os.Stat("/dev/fuse"); err != nil && !kernelNBD() {
			missing = append(missing, "/dev/fuse (or the kernel nbd driver) to attach the storage")
		}
		for _, f := range r.filesystems() {
			if err := fsload.CheckTools(f); err != nil {
				missing = append(missing, err.Error())
			}
		}
	}
	if r.sc.Topology.Netns && os.Geteuid() != 0 {
		missing = append(missing, "root (netns: true makes network namespaces)")
	}
	if len(missing) > 0 {
		return fmt.Errorf("torture: scenario %s cannot run here: missing %s (make deps installs the tools)",
			r.sc.Name, strings.Join(missing, "; "))
	}
	return nil
}

// kernelNBD reports whether the kernel nbd driver is there.
func kernelNBD() bool { return attach.KernelNBDAvailable() == nil }

// cycles runs the workload's cycles.
func (r *runner) cycles(ctx context.Context) error {
	w := r.sc.Workload
	limit := r.sc.Cycles
	if r.o.Cycles > 0 {
		limit = r.o.Cycles
	}
	var failed error
	for i := 0; ; i++ {
		if limit > 0 && i >= limit {
			return failed
		}
		if limit == 0 || r.o.Duration > 0 {
			if !time.Now().Before(r.deadline) {
				return failed
			}
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("torture: interrupted: %w", err)
		}
		var err error
		if w.EngineCrash {
			err = r.crashCycle(ctx, i)
		} else {
			err = r.cycle(ctx, i)
		}
		r.mu.Lock()
		r.run.Counters.Cycles++
		r.mu.Unlock()
		if err != nil {
			if !errors.Is(err, ErrFailed) {
				return err
			}
			failed = err
			if !r.o.KeepGoing {
				return err
			}
		}
	}
}

// event writes one line to the event log.
func (r *runner) event(kind, phase string, fields map[string]any) {
	r.mu.Lock()
	cycle := len(r.run.Cycles) - 1
	r.mu.Unlock()
	e := reports.Event{Time: time.Now(), Kind: reports.EventKind(kind), Cycle: cycle, Phase: phase}
	if d, ok := fields["detail"].(string); ok {
		e.Detail = d
		delete(fields, "detail")
	}
	if t, ok := fields["target"].(string); ok {
		e.Target = t
		delete(fields, "target")
	}
	if s, ok := fields["err"].(string); ok {
		e.Err = s
		delete(fields, "err")
	}
	if d, ok := fields["duration"].(time.Duration); ok {
		e.Duration = d
		delete(fields, "duration")
	}
	if len(fields) > 0 {
		e.Fields = fields
	}
	if err := r.ev.Log(e); err != nil {
		r.log.Warn("event log", "err", err)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// topologyText describes the scenario's topology for the report.
func topologyText(sc *scenario.Scenario) string {
	var b strings.Builder
	fmt.Fprintf(&b, "storage %s\n", sc.Topology.Storage)
	for _, n := range sc.Topology.Nodes {
		proxy := ""
		if n.Proxy {
			proxy = " behind a fault proxy"
		}
		fmt.Fprintf(&b, "node %s: %d bytes%s\n", n.Name, n.Size, proxy)
	}
	if sc.Topology.Netns {
		b.WriteString("every node in its own network namespace\n")
	}
	return b.String()
}

// clusterTopology converts the scenario's topology; nodes that power
// faults target (every node, with workload.power_loss) get a volatile
// cache, nodes that media faults target a rules file.
func clusterTopology(sc *scenario.Scenario) cluster.Topology {
	t := sc.Topology
	volatile, media := map[string]bool{}, map[string]bool{}
	for _, k := range sc.Faults.Kinds {
		for _, tg := range k.Targets {
			volatile[tg] = volatile[tg] || scenario.PowerKinds[k.Kind]
			media[tg] = media[tg] || scenario.MediaKinds[k.Kind]
		}
	}
	out := cluster.Topology{Netns: t.Netns, Storage: t.Storage, Engine: cluster.EngineSpec{
		RequestTimeout: t.Engine.RequestTimeout, Retries: t.Engine.Retries, BackoffMax: t.Engine.BackoffMax,
		PingInterval: t.Engine.PingInterval, ResyncRate: t.Engine.ResyncRate, ResyncInterval: t.Engine.ResyncInterval,
		RegionSize: t.Engine.RegionSize, ScrubInterval: t.Engine.ScrubInterval,
	}}
	for _, n := range t.Nodes {
		out.Nodes = append(out.Nodes, cluster.NodeSpec{Name: n.Name, Size: n.Size, Proxy: n.Proxy,
			Volatile: volatile[n.Name] || sc.Workload.PowerLoss, MediaFaults: media[n.Name]})
	}
	return out
}

// lockQuiet takes quiet for the cycle loop, after the fault due, if one
// waits for it.
func (r *runner) lockQuiet(ctx context.Context) {
	for r.faultDue.Load() && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	r.quiet.Lock()
}
