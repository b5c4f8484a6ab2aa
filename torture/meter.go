package torture

import (
	"context"
	"slices"
	"sync"
	"time"

	"dst/reports"
	"dst/storage/nbd"
	"dst/storage/node"
)

// meterWindowMax bounds the latencies a Meter keeps per sample; beyond it
// every other one is kept (the percentiles stay honest, memory bounded).
const meterWindowMax = 1 << 14

// Meter measures what the workloads see of the storage: bytes and
// requests per second and the latency of each request, turned into one
// reports.Sample per Tick.
type Meter struct {
	mu             sync.Mutex
	last           time.Time
	readB, writeB  int64
	ops            int64
	lat            []time.Duration
	skip           int
	latMax         time.Duration
	totalR, totalW int64
	now            func() time.Time
}

// NewMeter returns a meter whose first sample starts now.
func NewMeter(now func() time.Time) *Meter {
	return &Meter{now: now, last: now(), lat: make([]time.Duration, 0, meterWindowMax)}
}

// Record notes one request: bytes read or written and its latency.
func (m *Meter) Record(read, written int64, d time.Duration) {
	m.mu.Lock()
	m.readB += read
	m.writeB += written
	m.totalR += read
	m.totalW += written
	m.ops++
	m.latMax = max(m.latMax, d)
	m.skip++
	if len(m.lat) < meterWindowMax {
		m.lat = append(m.lat, d)
	} else if m.skip%2 == 0 {
		m.lat[m.skip/2%meterWindowMax] = d
	}
	m.mu.Unlock()
}

// Totals returns the bytes read and written since the meter started.
func (m *Meter) Totals() (read, written int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.totalR, m.totalW
}

// Tick closes the current sample and starts the next.
func (m *Meter) Tick() reports.Sample {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	secs := now.Sub(m.last).Seconds()
	if secs <= 0 {
		secs = 1
	}
	s := reports.Sample{T: now, ReadBytesPerSec: float64(m.readB) / secs, WriteBytesPerSec: float64(m.writeB) / secs,
		OpsPerSec: float64(m.ops) / secs, LatencyMax: m.latMax}
	if len(m.lat) > 0 {
		slices.Sort(m.lat)
		s.LatencyP50 = m.lat[len(m.lat)/2]
		s.LatencyP99 = m.lat[min(len(m.lat)-1, len(m.lat)*99/100)]
	}
	m.last, m.readB, m.writeB, m.ops, m.latMax, m.skip = now, 0, 0, 0, 0, 0
	m.lat = m.lat[:0]
	return s
}

// meteredNode is a node whose reads, writes and flushes are measured.
type meteredNode struct {
	node.Node
	m *Meter
}

func (n meteredNode) ReadAt(ctx context.Context, p []byte, off int64) error {
	t := time.Now()
	err := n.Node.ReadAt(ctx, p, off)
	n.m.Record(int64(len(p)), 0, time.Since(t))
	return err
}

func (n meteredNode) WriteAt(ctx context.Context, p []byte, off int64, f nbd.CmdFlags) error {
	t := time.Now()
	err := n.Node.WriteAt(ctx, p, off, f)
	n.m.Record(0, int64(len(p)), time.Since(t))
	return err
}

func (n meteredNode) Flush(ctx context.Context) error {
	t := time.Now()
	err := n.Node.Flush(ctx)
	n.m.Record(0, 0, time.Since(t))
	return err
}
