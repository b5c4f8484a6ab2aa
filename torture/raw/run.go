package raw

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
)

// Options configure Run. Zero values are documented per field.
type Options struct {
	// Seed of the op stream (the ledger's seed is stamped in the data).
	Seed uint64
	// Ops bounds the ops run; Duration bounds the time. At least one must
	// be set; with both, whichever ends first. Ops in flight when the
	// Duration ends complete normally.
	Ops      int
	Duration time.Duration
	// Concurrency is the number of workers. Zero means 4.
	Concurrency int
	// Boundaries, MaxRequest, FlushEvery, FUAPercent, ReadPercent: see
	// GenOptions.
	Boundaries  []int64
	MaxRequest  int64
	FlushEvery  int
	FUAPercent  int
	ReadPercent int
	// ReadMode is how strictly reads during the run are checked: Strict
	// (zero), or AfterLoss when a loss event may have happened that the
	// ledger was not told of (Ledger.Loss). Prefer calling Loss when the
	// event happens: Strict checks are then right again.
	ReadMode Mode
	// Locate maps a device offset to where it lives, for diagnoses.
	Locate func(off int64) string
	// Observe, if set, is called after every op, from the workers
	// concurrently.
	Observe func(Sample)
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// FailFast makes a device error end the run with that error; by
	// default errors are recorded and the run goes on.
	FailFast bool
	// MaxLog bounds the ops kept in Stats.Log and Stats.Failed, and the
	// Bads kept. Zero means 10000.
	MaxLog int
}

// GenOptions is the op stream of a run over a device of size bytes.
func (o Options) GenOptions(size int64) GenOptions {
	return GenOptions{Seed: o.Seed, Size: size, Boundaries: o.Boundaries, MaxRequest: o.MaxRequest,
		FlushEvery: o.FlushEvery, FUAPercent: o.FUAPercent, ReadPercent: o.ReadPercent}
}

// Sample is one completed op, for throughput and latency charts.
type Sample struct {
	At      time.Time     // completion
	Kind    OpKind        //
	Bytes   int64         // payload
	Latency time.Duration //
	Err     bool          // the device returned an error
}

// OpRecord is one op as run.
type OpRecord struct {
	Index int64 `json:"i"` // position in the op stream
	Op
	Write   uint64        `json:"write,omitempty"` // id, for writes
	Worker  int           `json:"worker"`
	Start   time.Duration `json:"start_ns"` // since the run started
	Latency time.Duration `json:"latency_ns"`
	Err     string        `json:"err,omitempty"`
}

// Latency summarises op latencies (quantiles within 20%).
type Latency struct {
	Count int64         `json:"count"`
	Min   time.Duration `json:"min_ns"`
	Mean  time.Duration `json:"mean_ns"`
	P50   time.Duration `json:"p50_ns"`
	P99   time.Duration `json:"p99_ns"`
	Max   time.Duration `json:"max_ns"`
}

// Stats is what a Run did.
type Stats struct {
	Seed          uint64 `json:"seed"`
	Ops           int64  `json:"ops"`
	Writes        int64  `json:"writes"`
	Reads         int64  `json:"reads"`
	Flushes       int64  `json:"flushes"`
	BytesWritten  int64  `json:"bytes_written"`
	BytesVerified int64  `json:"bytes_verified"`
	// Errors counts ops the device failed; Failed keeps the first ones.
	Errors int64      `json:"errors"`
	Failed []OpRecord `json:"failed,omitempty"`
	// Bad are bytes that reads during the run found wrong.
	Bad      []Bad `json:"bad,omitempty"`
	BadTotal int   `json:"bad_total"`
	// Latencies per kind of op.
	WriteLatency Latency `json:"write_latency"`
	ReadLatency  Latency `json:"read_latency"`
	FlushLatency Latency `json:"flush_latency"`
	// Log holds the last ops in completion order; LogDropped counts the
	// older ones left out (Ops replays them from the seed).
	Log        []OpRecord    `json:"log"`
	LogDropped int64         `json:"log_dropped"`
	Elapsed    time.Duration `json:"elapsed_ns"`
}

// job is an op taken from the stream, its ledger bookkeeping started.
type job struct {
	index int64
	op    Op
	id    uint64
	flush FlushToken
	read  readToken
}

type runner struct {
	dev   Device
	l     *Ledger
	o     Options
	start time.Time

	mu    sync.Mutex // guards everything below
	gen   *Generator
	n     int64
	stats Stats
	hist  [3]histogram
	log   []OpRecord
	logAt int
}

// Run drives dev with the op stream of o, recording every write, flush
// and their outcomes in l, and checking every read against l. Device
// errors are recorded in Stats (ops that failed stay candidates in the
// ledger); Run returns an error only with FailFast, when ctx ends, or when
// the device and the ledger disagree on the size. Ending ctx abandons the
// ops in flight (an NBD client then closes its connection); Ops and
// Duration end a phase gracefully. Run may be called again with the same
// ledger (phases of a torture run), never concurrently.
func Run(ctx context.Context, dev Device, l *Ledger, o Options) (Stats, error) {
	if dev.Size() != l.size {
		return Stats{}, fmt.Errorf("raw: run: device has %d bytes, ledger %d", dev.Size(), l.size)
	}
	if o.Ops <= 0 && o.Duration <= 0 {
		return Stats{}, errors.New("raw: run: neither Ops nor Duration set")
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxLog <= 0 {
		o.MaxLog = 10000
	}
	r := &runner{dev: dev, l: l, o: o, start: o.Now(), gen: NewGenerator(o.GenOptions(l.size))}
	r.stats.Seed = o.Seed
	g, gctx := errgroup.WithContext(ctx)
	for w := range o.Concurrency {
		g.Go(func() error { return r.worker(gctx, w) })
	}
	err := g.Wait()
	r.finish()
	if err == nil && ctx.Err() != nil {
		err = fmt.Errorf("raw: run: %w", ctx.Err())
	}
	return r.stats, err
}

// take returns the next op, or false when the run is over.
func (r *runner) take(ctx context.Context) (job, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ctx.Err() != nil || (r.o.Ops > 0 && r.n >= int64(r.o.Ops)) ||
		(r.o.Duration > 0 && r.o.Now().Sub(r.start) >= r.o.Duration) {
		return job{}, false
	}
	j := job{index: r.n, op: r.gen.Next()}
	r.n++
	switch j.op.Kind {
	case OpWrite:
		j.id = r.l.Begin(j.op.Off, j.op.Len, j.op.FUA)
	case OpFlush:
		j.flush = r.l.FlushBegin()
	case OpRead:
		j.read = r.l.readBegin(j.op.Off, j.op.Off+j.op.Len, r.o.ReadMode)
	}
	return j, true
}

func (r *runner) worker(ctx context.Context, w int) error {
	var buf []byte
	m := matcher{seed: r.l.seed}
	var bad []badRun
	var settle []settleRun
	for {
		j, ok := r.take(ctx)
		if !ok {
			return nil
		}
		if int64(cap(buf)) < j.op.Len {
			buf = make([]byte, j.op.Len)
		}
		p := buf[:j.op.Len]
		t0 := r.o.Now()
		var err error
		switch j.op.Kind {
		case OpWrite:
			Fill(p, j.op.Off, r.l.seed, Write{ID: j.id, Off: j.op.Off, Len: j.op.Len})
			err = r.dev.WriteAt(ctx, p, j.op.Off, j.op.FUA)
			r.l.End(j.id, err)
		case OpFlush:
			err = r.dev.Flush(ctx)
			r.l.FlushEnd(j.flush, err)
		case OpRead:
			err = r.dev.ReadAt(ctx, p, j.op.Off)
			if err == nil {
				bad, settle = bad[:0], settle[:0]
				m.match(p, j.op.Off, r.l.readEnd(j.read, r.o.ReadMode), &bad, &settle)
			}
		}
		t1 := r.o.Now()
		rec := OpRecord{Index: j.index, Op: j.op, Write: j.id, Worker: w, Start: t0.Sub(r.start), Latency: t1.Sub(t0)}
		if err != nil {
			rec.Err = err.Error()
		}
		r.record(rec, bad, p)
		if r.o.Observe != nil {
			r.o.Observe(Sample{At: t1, Kind: j.op.Kind, Bytes: j.op.Len, Latency: rec.Latency, Err: err != nil})
		}
		bad = bad[:0]
		if err != nil && r.o.FailFast {
			return fmt.Errorf("raw: op %d (%v): %w", j.index, j.op, err)
		}
	}
}

// record accounts for a completed op; bad are the wrong bytes a read found
// in p.
func (r *runner) record(rec OpRecord, bad []badRun, p []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := &r.stats
	s.Ops++
	switch rec.Kind {
	case OpWrite:
		s.Writes++
		if rec.Err == "" {
			s.BytesWritten += rec.Len
		}
	case OpFlush:
		s.Flushes++
	case OpRead:
		s.Reads++
		if rec.Err == "" {
			s.BytesVerified += rec.Len
		}
	}
	r.hist[rec.Kind].add(rec.Latency)
	if rec.Err != "" {
		s.Errors++
		if len(s.Failed) < r.o.MaxLog {
			s.Failed = append(s.Failed, rec)
		}
	}
	if len(bad) > 0 {
		s.BadTotal += r.l.explain(&s.Bad, r.o.MaxLog, bad, p, rec.Off, r.o.Locate)
	}
	if len(r.log) < r.o.MaxLog {
		r.log = append(r.log, rec)
	} else {
		r.log[r.logAt] = rec
		r.logAt = (r.logAt + 1) % len(r.log)
		s.LogDropped++
	}
}

func (r *runner) finish() {
	s := &r.stats
	s.Log = append(append([]OpRecord(nil), r.log[r.logAt:]...), r.log[:r.logAt]...)
	s.WriteLatency = r.hist[OpWrite].summary()
	s.FlushLatency = r.hist[OpFlush].summary()
	s.ReadLatency = r.hist[OpRead].summary()
	s.Elapsed = r.o.Now().Sub(r.start)
}

// histogram counts latencies in buckets a quarter of a power of two wide.
type histogram struct {
	n        int64
	sum      time.Duration
	min, max time.Duration
	b        [256]int64
}

func bucketOf(d time.Duration) int {
	v := uint64(max(d, 0))
	if v < 8 {
		return int(v)
	}
	e := bits.Len64(v) - 1
	return e*4 + int((v>>(e-2))&3)
}

// bucketTop is the largest duration in bucket i.
func bucketTop(i int) time.Duration {
	if i < 8 {
		return time.Duration(i)
	}
	e, m := i/4, i%4
	return time.Duration((uint64(4+m+1) << (e - 2)) - 1)
}

func (h *histogram) add(d time.Duration) {
	if h.n == 0 || d < h.min {
		h.min = d
	}
	h.max = max(h.max, d)
	h.n++
	h.sum += d
	h.b[bucketOf(d)]++
}

func (h *histogram) summary() Latency {
	if h.n == 0 {
		return Latency{}
	}
	q := func(f float64) time.Duration {
		want := int64(f*float64(h.n-1)) + 1
		var c int64
		for i, n := range h.b {
			if c += n; c >= want {
				return min(bucketTop(i), h.max)
			}
		}
		return h.max
	}
	return Latency{Count: h.n, Min: h.min, Mean: h.sum / time.Duration(h.n), P50: q(0.5), P99: q(0.99), Max: h.max}
}
