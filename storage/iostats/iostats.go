// Package iostats counts the client requests a storage serves: per op,
// the requests, payload bytes, errors and a latency histogram with fixed
// buckets, plus the requests in flight — with atomics, so recording
// allocates nothing and takes no lock. The engine records its requests
// where it serves them; the admin endpoint only reads the counters.
package iostats

import (
	"sync/atomic"
	"time"
)

// Op is a kind of client request, the label of the request metrics.
type Op int

// Ops counted.
const (
	OpRead Op = iota
	OpWrite
	OpFlush
	OpTrim
	OpWriteZeroes
	OpCache
	NumOps
)

var opNames = [NumOps]string{"read", "write", "flush", "trim", "write_zeroes", "cache"}

func (o Op) String() string {
	if o < 0 || o >= NumOps {
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

// Requests counts the client requests of a device: per op,
// the requests, payload bytes (of reads and writes), errors and a latency
// histogram with fixed buckets, plus the requests in flight. The zero
// value is ready to use.
type Requests struct {
	ops      [NumOps]opCounters
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
func (r *Requests) Snapshot() ([NumOps]OpSnapshot, int64) {
	var out [NumOps]OpSnapshot
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

// Begin records the start of a request and returns its start time, for
// End.
func (r *Requests) Begin() time.Time {
	r.inFlight.Add(1)
	if r.now != nil {
		return r.now()
	}
	return time.Now()
}

// End records the end of one request of op that Begin started at t0: n
// payload bytes (reads and writes) and its error.
func (r *Requests) End(op Op, t0 time.Time, n int64, err error) {
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
