package torture

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"time"

	"dst/storage/nbd"
	"dst/torture/cluster"
	"dst/torture/raw"
)

// rawDiagnosisMax bounds the bad-sector diagnoses kept per failure.
const rawDiagnosisMax = 20

// rawState is the raw workload of the current phase, for the failure
// bundle.
type rawState struct {
	ledger *raw.Ledger
	stats  []raw.Stats
	check  *raw.Check
}

// rawPhase writes self-describing sectors across the whole device (the
// filesystem is not mounted) at node and page boundaries, flushes, and
// verifies every byte strictly: while no data-loss event happens, every
// byte must hold the newest write acknowledged there.
func (r *runner) rawPhase(ctx context.Context, i int) error {
	client, dev, err := r.rawClient(ctx)
	if err != nil {
		return err
	}
	defer client.Close()
	if err := r.rawZero(ctx, client); err != nil {
		return r.rawFailed(ctx, i, "raw-zero", err, nil)
	}
	l := raw.NewLedger(r.rawSeed(i), dev.Size())
	r.rawSt = &rawState{ledger: l}
	var st raw.Stats
	err = r.step("raw-write", func() (string, error) {
		st, err = raw.Run(ctx, dev, l, r.rawOptions(i, r.sc.Workload.Raw.Ops))
		r.countRaw(st)
		if err == nil {
			err = r.rawFlush(ctx, dev, l)
		}
		return rawSummary(st), err
	})
	if err != nil {
		return r.rawFailed(ctx, i, "raw-write", err, nil)
	}
	if st.Errors > 0 || st.BadTotal > 0 {
		return r.rawFailed(ctx, i, "raw-write", fmt.Errorf("%d ops failed and %d bad byte runs read back during the run", st.Errors, st.BadTotal), &st)
	}
	if r.o.hooks.afterRawWrites != nil {
		r.o.hooks.afterRawWrites(r.c, l)
	}
	if err := r.rawVerify(ctx, i, dev, l, raw.Strict); err != nil {
		return err
	}
	if r.c.Replicas() < 2 {
		return nil
	}
	r.lockQuiet(ctx)
	defer r.quiet.Unlock()
	return r.rawVerifyReplicas(ctx, i, l)
}

// rawCrashPhase writes and flushes sectors, then keeps writing while the
// engine is killed with SIGKILL; after the restart every byte must hold
// its last flushed write or one issued since, never anything else.
func (r *runner) rawCrashPhase(ctx context.Context, i int) error {
	client, dev, err := r.rawClient(ctx)
	if err != nil {
		return err
	}
	defer client.Close()
	if err := r.rawZero(ctx, client); err != nil {
		return r.rawFailed(ctx, i, "raw-zero", err, nil)
	}
	l := raw.NewLedger(r.rawSeed(i), dev.Size())
	r.rawSt = &rawState{ledger: l}
	half := max(r.sc.Workload.Raw.Ops/2, 1)
	err = r.step("raw-write", func() (string, error) {
		st, err := raw.Run(ctx, dev, l, r.rawOptions(i, half))
		r.countRaw(st)
		if err == nil && st.Errors > 0 {
			err = fmt.Errorf("%d ops failed before the engine was killed", st.Errors)
		}
		if err == nil {
			err = r.rawFlush(ctx, dev, l)
		}
		return rawSummary(st), err
	})
	if err != nil {
		return r.rawFailed(ctx, i, "raw-write", err, nil)
	}
	// Write on while the engine dies at a seeded moment.
	rng := rand.New(rand.NewPCG(r.rawSeed(i), 0xdead))
	killAfter := 50*time.Millisecond + time.Duration(rng.Int64N(int64(400*time.Millisecond)))
	err = r.step("raw-write-"+r.crashName(), func() (string, error) {
		o := r.rawOptions(i+1<<16, half)
		done := make(chan struct{})
		var st raw.Stats
		var rerr error
		go func() {
			defer close(done)
			st, rerr = raw.Run(ctx, dev, l, o)
		}()
		select {
		case <-time.After(killAfter):
		case <-done:
		}
		out, kerr := r.crash(ctx, r.rawSeed(i))
		// Unflushed writes may be gone now; no flush can complete after
		// this, the old connection is dead.
		l.Loss()
		client.Close()
		<-done
		r.countRaw(st)
		if rerr != nil && ctx.Err() != nil {
			return "", rerr
		}
		return fmt.Sprintf("%s; killed after %v: %s", rawSummary(st), killAfter, out), kerr
	})
	if err != nil {
		return r.rawFailed(ctx, i, "raw-write-"+r.crashName(), err, nil)
	}
	client2, dev2, err := r.rawClient(ctx)
	if err != nil {
		return err
	}
	defer client2.Close()
	if err := r.rawVerify(ctx, i, dev2, l, raw.AfterLoss); err != nil {
		return err
	}
	// What was read is now the truth; one more strict pass proves the
	// storage keeps it, on every replica (the crash cycle holds quiet).
	if err := r.rawVerify(ctx, i, dev2, l, raw.Strict); err != nil {
		return err
	}
	return r.rawVerifyReplicas(ctx, i, l)
}

// rawVerify checks every written byte of the device under mode and
// settles the ledger to what was read.
func (r *runner) rawVerify(ctx context.Context, i int, dev raw.Device, l *raw.Ledger, mode raw.Mode) error {
	var chk *raw.Check
	name := "raw-verify"
	if mode == raw.AfterLoss {
		name = "raw-verify-after-loss"
	}
	err := r.step(name, func() (string, error) {
		var err error
		chk, err = raw.Verify(ctx, dev, l, raw.VerifyOptions{Mode: mode, Locate: r.c.Locate, WrittenOnly: true})
		if err != nil {
			return "", err
		}
		r.rawSt.check = chk
		r.mu.Lock()
		r.run.Counters.BytesVerified += chk.BytesVerified
		r.mu.Unlock()
		summary := fmt.Sprintf("%d bytes verified (%v), %d bad runs, %d read errors", chk.BytesVerified, mode, chk.BadTotal, chk.ReadErrorTotal)
		if !chk.OK() {
			return summary, fmt.Errorf("%d runs of bad bytes and %d read errors", chk.BadTotal, chk.ReadErrorTotal)
		}
		return summary, l.Settle(chk)
	})
	if err != nil {
		return r.rawFailed(ctx, i, name, err, nil)
	}
	return nil
}

// rawVerifyReplicas checks every replica view of a mirrored storage
// (child k of every mirror) strictly against the ledger, reading the
// nodes' images directly once the storage is in sync and a FLUSH wrote
// the nodes' caches back. The engine's verify reads one replica of each
// piece; this one finds a bit the media of another flipped, or a write it
// acknowledged and lost, and names that replica. Call it with quiet held
// and no write in flight, after a strict verify settled the ledger.
func (r *runner) rawVerifyReplicas(ctx context.Context, i int, l *raw.Ledger) error {
	n := r.c.Replicas()
	if n < 2 {
		return nil
	}
	err := r.step("raw-verify-replicas", func() (string, error) {
		wctx, cancel := context.WithTimeout(ctx, r.sc.Checks.ResyncWithin)
		_, _, err := r.c.Engine().WaitInSync(wctx)
		cancel()
		if err == nil {
			err = r.c.Flush(ctx)
		}
		if err != nil {
			return "", err
		}
		imgs, err := r.c.OpenReplicas()
		if err != nil {
			return "", err
		}
		defer imgs.Close()
		var total int64
		for k := range n {
			chk, err := raw.Verify(ctx, replicaDevice{imgs, k, r.c.Size()}, l, raw.VerifyOptions{
				Mode: raw.Strict, WrittenOnly: true,
				Locate: func(off int64) string { return imgs.Locate(k, off) },
			})
			if err != nil {
				return "", err
			}
			total += chk.BytesVerified
			r.mu.Lock()
			r.run.Counters.BytesVerified += chk.BytesVerified
			r.mu.Unlock()
			if !chk.OK() {
				r.rawSt.check = chk
				return "", fmt.Errorf("replica %d of every mirror: %d runs of bad bytes and %d read errors", k, chk.BadTotal, chk.ReadErrorTotal)
			}
		}
		return fmt.Sprintf("%d replicas, %d bytes verified (strict) on the nodes' images", n, total), nil
	})
	if err != nil {
		return r.rawFailed(ctx, i, "raw-verify-replicas", err, nil)
	}
	return nil
}

// replicaDevice is replica view k of the cluster's storage, read from the
// nodes' images: a raw.Device that can only be read.
type replicaDevice struct {
	imgs *cluster.ReplicaImages
	k    int
	size int64
}

func (d replicaDevice) Size() int64 { return d.size }

func (d replicaDevice) ReadAt(_ context.Context, p []byte, off int64) error {
	return d.imgs.ReadAt(d.k, p, off)
}

func (d replicaDevice) WriteAt(context.Context, []byte, int64, bool) error {
	return fmt.Errorf("torture: replica %d is read-only", d.k)
}

func (d replicaDevice) Flush(context.Context) error { return nil }

// rawFailed records a failed raw phase with the decoded bad sectors and
// writes the bundle.
func (r *runner) rawFailed(ctx context.Context, i int, phase string, err error, st *raw.Stats) error {
	if ctx.Err() != nil {
		return fmt.Errorf("torture: interrupted: %w", ctx.Err())
	}
	var diag []string
	var bads []raw.Bad
	if st != nil {
		bads = append(bads, st.Bad...)
		for _, f := range st.Failed {
			if len(diag) >= rawDiagnosisMax {
				break
			}
			diag = append(diag, fmt.Sprintf("op %d %v failed: %s", f.Index, f.Op, f.Err))
		}
	}
	if r.rawSt != nil && r.rawSt.check != nil {
		bads = append(bads, r.rawSt.check.Bad...)
		diag = append(diag, r.rawSt.check.ReadErrors...)
	}
	for _, b := range bads {
		if len(diag) >= rawDiagnosisMax {
			diag = append(diag, fmt.Sprintf("... %d more", len(bads)-rawDiagnosisMax))
			break
		}
		diag = append(diag, b.Diagnosis)
	}
	r.fail(i, phase, err.Error(), diag)
	r.bundle(i, phase, err, diag...)
	return fmt.Errorf("%w: cycle %d %s: %v", ErrFailed, i, phase, err)
}

// rawZeroChunk is the length of one WRITE_ZEROES of rawZero.
const rawZeroChunk = 1 << 30

// rawZero zeroes the whole device (with NBD WRITE_ZEROES) and flushes, so
// the ledger's start — every byte zero — is true whatever the filesystem
// cycles left there.
func (r *runner) rawZero(ctx context.Context, c *nbd.Client) error {
	return r.step("raw-zero", func() (string, error) {
		size := c.Size()
		for off := int64(0); off < size; off += rawZeroChunk {
			if err := c.WriteZeroes(ctx, off, uint64(min(rawZeroChunk, size-off)), 0); err != nil {
				return "", err
			}
		}
		return fmt.Sprintf("%d bytes zeroed", size), c.Flush(ctx)
	})
}

// rawClient connects a new NBD client to the engine.
func (r *runner) rawClient(ctx context.Context) (*nbd.Client, raw.Device, error) {
	dctx, cancel := context.WithTimeout(ctx, attachTimeout)
	defer cancel()
	c, err := nbd.Dial(dctx, "tcp", r.c.Engine().Addr(), nbd.ClientOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("torture: connect the raw workload to the engine: %w", err)
	}
	return c, raw.NBD(c), nil
}

// rawFlush flushes the device and records it in the ledger.
func (r *runner) rawFlush(ctx context.Context, dev raw.Device, l *raw.Ledger) error {
	t := l.FlushBegin()
	err := dev.Flush(ctx)
	l.FlushEnd(t, err)
	return err
}

// rawSeed is the seed of cycle i's raw workload.
func (r *runner) rawSeed(i int) uint64 { return r.seed ^ uint64(i+1)*0x9e3779b97f4a7c15 }

// rawOptions are the raw workload's options for cycle i.
func (r *runner) rawOptions(i, ops int) raw.Options {
	w := r.sc.Workload.Raw
	return raw.Options{
		Seed: r.rawSeed(i), Ops: ops, Concurrency: w.Concurrency, Boundaries: r.c.Boundaries(),
		MaxRequest: w.MaxRequest, FlushEvery: w.FlushEvery, FUAPercent: w.FUAPercent, Locate: r.c.Locate,
		Observe: func(s raw.Sample) {
			switch s.Kind {
			case raw.OpWrite:
				r.m.Record(0, s.Bytes, s.Latency)
			case raw.OpRead:
				r.m.Record(s.Bytes, 0, s.Latency)
			default:
				r.m.Record(0, 0, s.Latency)
			}
		},
	}
}

// countRaw adds a raw run's totals to the counters.
func (r *runner) countRaw(st raw.Stats) {
	r.mu.Lock()
	r.run.Counters.BytesWritten += st.BytesWritten
	r.run.Counters.BytesVerified += st.BytesVerified
	r.run.Counters.Ops += st.Ops
	r.mu.Unlock()
	if r.rawSt != nil {
		r.rawSt.stats = append(r.rawSt.stats, st)
	}
}

func rawSummary(st raw.Stats) string {
	return fmt.Sprintf("%d ops (%d writes, %d reads, %d flushes), %d bytes written, %d failed, write p50 %v p99 %v",
		st.Ops, st.Writes, st.Reads, st.Flushes, st.BytesWritten, st.Errors, st.WriteLatency.P50, st.WriteLatency.P99)
}

// rawExpected is the raw workload's expected state for the bundle: the
// ledger (summarised), the run stats with their op logs, and the last
// check.
func (r *runner) rawExpected() []byte {
	if r.rawSt == nil {
		return nil
	}
	data, err := json.MarshalIndent(map[string]any{
		"seed": r.rawSt.ledger.Seed(), "ledger": r.rawSt.ledger.Dump(2000), "runs": r.rawSt.stats, "check": r.rawSt.check,
		"replay": "the op stream of each run is raw.Ops(raw.Options{Seed: runs[i].seed, ...}.GenOptions(size), ops)",
	}, "", " ")
	if err != nil {
		return nil
	}
	return data
}
