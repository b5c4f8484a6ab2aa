package admin

import (
	"context"
	"sync/atomic"
	"time"

	"dst/storage/nbd"
	"dst/storage/node"
)

// Op is a kind of client request, the label of the request metrics.
type Op int

// Ops counted by Instrument.
const (
	OpRead Op = iota
	OpWrite
	OpFlush
	OpTrim
	OpWriteZeroes
	OpCache
	numOps
)

var opNames = [numOps]string{"read", "write", "flush", "trim", "write_zeroes", "cache"}

func (o Op) String() string {
	if o < 0 || o >= numOps {
		return "op(?)"
	}
	return opNames[o]
}

// LatencyBuckets are the upper bounds of the latency histogram, in
// seconds (Prometheus "le"); an implicit +Inf bucket follows.
var LatencyBuckets = [...]float64{
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// bucketNanos are LatencyBuckets in nanoseconds, for the hot path.
var bucketNanos = func() (b [len(LatencyBuckets)]int64) {
	for i, s := range LatencyBuckets {
		b[i] = int64(s * 1e9)
	}
	return b
}()

// opCounters are the counters of one op. Every field is updated with
// atomics, so recording allocates nothing and takes no lock.
type opCounters struct {
	count, bytes, errors atomic.Uint64
	sumNanos             atomic.Uint64
	buckets              [len(LatencyBuckets) + 1]atomic.Uint64 // non-cumulative; the last is +Inf
}

// Requests counts the client requests of an instrumented device: per op,
// the requests, payload bytes (of reads and writes), errors and a latency
// histogram with fixed buckets, plus the requests in flight. The zero
// value is ready to use.
type Requests struct {
	ops      [numOps]opCounters
	inFlight atomic.Int64
	now      func() time.Time // nil: time.Now
}

// OpSnapshot is a copy of one op's counters.
type OpSnapshot struct {
	Op       Op
	Count    uint64
	Bytes    uint64
	Errors   uint64
	SumNanos uint64
	// Buckets[i] counts requests that took at most LatencyBuckets[i] and
	// more than the bound before; the last one those above every bound
	// (not cumulative).
	Buckets [len(LatencyBuckets) + 1]uint64
}

// NewRequests returns counters that measure latency with now (tests
// inject a clock); the zero Requests uses time.Now.
func NewRequests(now func() time.Time) *Requests { return &Requests{now: now} }

// Snapshot returns every op's counters (each counter is read atomically;
// the set is not one instant) and the requests in flight.
func (r *Requests) Snapshot() ([numOps]OpSnapshot, int64) {
	var out [numOps]OpSnapshot
	for i := range r.ops {
		c := &r.ops[i]
		s := &out[i]
		s.Op = Op(i)
		s.Count = c.count.Load()
		s.Bytes = c.bytes.Load()
		s.Errors = c.errors.Load()
		s.SumNanos = c.sumNanos.Load()
		for b := range c.buckets {
			s.Buckets[b] = c.buckets[b].Load()
		}
	}
	return out, r.inFlight.Load()
}

func (r *Requests) start() time.Time {
	r.inFlight.Add(1)
	if r.now != nil {
		return r.now()
	}
	return time.Now()
}

// done records one request of op that started at t0.
func (r *Requests) done(op Op, t0 time.Time, n int64, err error) {
	var d time.Duration
	if r.now != nil {
		d = r.now().Sub(t0)
	} else {
		d = time.Since(t0)
	}
	r.inFlight.Add(-1)
	c := &r.ops[op]
	c.count.Add(1)
	if err != nil {
		c.errors.Add(1)
	} else if n > 0 {
		c.bytes.Add(uint64(n))
	}
	ns := max(int64(d), 0)
	c.sumNanos.Add(uint64(ns))
	b := 0
	for b < len(bucketNanos) && ns > bucketNanos[b] {
		b++
	}
	c.buckets[b].Add(1)
}

// Device is what Instrument wraps: a backend with its size and
// capabilities, such as *engine.Engine or a node.Node.
type Device interface {
	nbd.Backend
	Size() int64
	Flags() nbd.TransmissionFlags
}

// Instrumented is a node.Node that forwards every request to a Device and
// counts it in Requests. It is what dst serve exports: export.Server takes
// a node.Node, which is why it is one rather than a bare nbd.Backend.
type Instrumented struct {
	d    Device
	name string
	reqs *Requests
}

var _ node.Node = (*Instrumented)(nil)

// Instrument returns d counting its requests into reqs (a new Requests if
// nil). name is what String returns. Close does nothing: the owner of d
// closes it.
func Instrument(d Device, name string, reqs *Requests) *Instrumented {
	if reqs == nil {
		reqs = &Requests{}
	}
	return &Instrumented{d: d, name: name, reqs: reqs}
}

// Requests returns the counters.
func (i *Instrumented) Requests() *Requests { return i.reqs }

// ReadAt forwards to the device and counts.
func (i *Instrumented) ReadAt(ctx context.Context, p []byte, off int64) error {
	t0 := i.reqs.start()
	err := i.d.ReadAt(ctx, p, off)
	i.reqs.done(OpRead, t0, int64(len(p)), err)
	return err
}

// WriteAt forwards to the device and counts.
func (i *Instrumented) WriteAt(ctx context.Context, p []byte, off int64, flags nbd.CmdFlags) error {
	t0 := i.reqs.start()
	err := i.d.WriteAt(ctx, p, off, flags)
	i.reqs.done(OpWrite, t0, int64(len(p)), err)
	return err
}

// Flush forwards to the device and counts.
func (i *Instrumented) Flush(ctx context.Context) error {
	t0 := i.reqs.start()
	err := i.d.Flush(ctx)
	i.reqs.done(OpFlush, t0, 0, err)
	return err
}

// Trim forwards to the device and counts (length is not payload: no
// bytes).
func (i *Instrumented) Trim(ctx context.Context, off, length int64, flags nbd.CmdFlags) error {
	t0 := i.reqs.start()
	err := i.d.Trim(ctx, off, length, flags)
	i.reqs.done(OpTrim, t0, 0, err)
	return err
}

// WriteZeroes forwards to the device and counts.
func (i *Instrumented) WriteZeroes(ctx context.Context, off, length int64, flags nbd.CmdFlags) error {
	t0 := i.reqs.start()
	err := i.d.WriteZeroes(ctx, off, length, flags)
	i.reqs.done(OpWriteZeroes, t0, 0, err)
	return err
}

// Cache forwards to the device and counts.
func (i *Instrumented) Cache(ctx context.Context, off, length int64) error {
	t0 := i.reqs.start()
	err := i.d.Cache(ctx, off, length)
	i.reqs.done(OpCache, t0, 0, err)
	return err
}

// Size returns the device's size.
func (i *Instrumented) Size() int64 { return i.d.Size() }

// Flags returns the device's capabilities.
func (i *Instrumented) Flags() nbd.TransmissionFlags { return i.d.Flags() }

// Close does nothing; the device's owner closes it.
func (i *Instrumented) Close() error { return nil }

// String returns the name given to Instrument.
func (i *Instrumented) String() string { return i.name }
