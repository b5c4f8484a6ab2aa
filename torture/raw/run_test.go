// Workload tests on the in-memory device (the unit under test is the
// workload, ledger and checker, not the device): unaligned writes across
// sector boundaries verify; concurrent overlapping writes verify Strict;
// after a crash that keeps a random part of the volatile cache every byte
// passes AfterLoss (and Strict catches the loss); failed writes that
// landed in part are accepted; the op stream is a pure function of the
// seed; the expected state serialises to bounded JSON.
package raw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
)

const memSize = 2 << 20

// boundaries of a pretend 3-member layout with unaligned edges.
var testBoundaries = []int64{512<<10 + 100, 1<<20 + 7, 1536 << 10}

// locate names the pretend member holding off.
func locate(off int64) string {
	start := int64(0)
	for i, b := range testBoundaries {
		if off < b {
			return fmt.Sprintf("member %d (mem://%d) +%#x", i, i, off-start)
		}
		start = b
	}
	return fmt.Sprintf("member %d (mem://%d) +%#x", len(testBoundaries), len(testBoundaries), off-start)
}

func testOptions(seed uint64, ops int) Options {
	return Options{Seed: seed, Ops: ops, Concurrency: 4, Boundaries: testBoundaries, MaxRequest: 256 << 10,
		FlushEvery: 40, FUAPercent: 10, ReadPercent: 15, Locate: locate}
}

// write issues one write through the ledger, as Run does.
func write(ctx context.Context, t *testing.T, dev Device, l *Ledger, off, n int64, fua bool) uint64 {
	id := l.Begin(off, n, fua)
	p := make([]byte, n)
	Fill(p, off, l.Seed(), Write{ID: id, Off: off, Len: n})
	err := dev.WriteAt(ctx, p, off, fua)
	l.End(id, err)
	require.NoError(t, err)
	return id
}

func flush(ctx context.Context, t *testing.T, dev Device, l *Ledger) {
	tok := l.FlushBegin()
	err := dev.Flush(ctx)
	l.FlushEnd(tok, err)
	require.NoError(t, err)
}

func requireClean(t *testing.T, c *Check) {
	t.Helper()
	for _, b := range c.Bad {
		t.Log(b.Diagnosis)
	}
	require.True(t, c.OK(), "%d bad, %d read errors", c.BadTotal, c.ReadErrorTotal)
}

func TestUnalignedWritesVerify(t *testing.T) {
	ctx := testkit.Context(t, 30*time.Second)
	dev := NewMemory(64 << 10)
	l := NewLedger(testSeed, dev.Size())
	for _, w := range [][2]int64{{1, 1}, {511, 2}, {510, 515}, {1000, 4097}, {4095, 1}, {8191, 513}, {0, 512}, {700, 30000}, {65535, 1}} {
		write(ctx, t, dev, l, w[0], w[1], false)
	}
	c, err := Verify(ctx, dev, l, VerifyOptions{ChunkBytes: 3000}) // chunks cut sectors too
	require.NoError(t, err)
	requireClean(t, c)
	require.Equal(t, dev.Size(), c.BytesVerified)
	require.Equal(t, []uint64{8}, idsOf(l.Expect(701, Strict)))
	require.Equal(t, []uint64{3}, idsOf(l.Expect(699, Strict)))
}

func TestConcurrentOverlappingWritesVerifyStrict(t *testing.T) {
	ctx := testkit.Context(t, 30*time.Second)
	dev := NewMemory(memSize)
	l := NewLedger(testSeed, memSize)
	o := testOptions(1, 2000)
	o.Concurrency = 8
	var samples atomic.Int64
	o.Observe = func(Sample) { samples.Add(1) }
	st, err := Run(ctx, dev, l, o)
	require.NoError(t, err)
	require.Zero(t, st.BadTotal, "%v", st.Bad)
	require.Zero(t, st.Errors)
	require.Equal(t, int64(2000), st.Ops)
	require.Equal(t, int64(2000), samples.Load())
	require.Equal(t, st.Ops, st.Writes+st.Reads+st.Flushes)
	require.Positive(t, st.BytesVerified)
	require.Positive(t, st.WriteLatency.Count)
	require.LessOrEqual(t, st.WriteLatency.P50, st.WriteLatency.P99)
	require.LessOrEqual(t, st.WriteLatency.P99, st.WriteLatency.Max)

	for _, mode := range []Mode{Strict, AfterLoss} {
		c, err := Verify(ctx, dev, l, VerifyOptions{Mode: mode, Locate: locate})
		require.NoError(t, err)
		requireClean(t, c)
	}
	c, err := Verify(ctx, dev, l, VerifyOptions{WrittenOnly: true})
	require.NoError(t, err)
	requireClean(t, c)
	require.NoError(t, l.Settle(c))

	// Phase two on the same ledger.
	st, err = Run(ctx, dev, l, testOptions(2, 500))
	require.NoError(t, err)
	require.Zero(t, st.BadTotal)
	c, err = Verify(ctx, dev, l, VerifyOptions{})
	require.NoError(t, err)
	requireClean(t, c)
}

func TestAfterLossAcceptsDurableOrSince(t *testing.T) {
	ctx := testkit.Context(t, 30*time.Second)
	dev := NewMemory(memSize)
	l := NewLedger(testSeed, memSize)
	o := testOptions(3, 800)
	o.FlushEvery = 150
	_, err := Run(ctx, dev, l, o)
	require.NoError(t, err)
	dev.Crash(rand.New(rand.NewPCG(3, 3))) // keeps about half of the unflushed writes

	c, err := Verify(ctx, dev, l, VerifyOptions{Mode: AfterLoss})
	require.NoError(t, err)
	requireClean(t, c)
	c, err = Verify(ctx, dev, l, VerifyOptions{Mode: Strict})
	require.NoError(t, err)
	require.Positive(t, c.BadTotal, "Strict must notice acknowledged writes the crash lost")

	// A phase that runs before the harness declares the loss checks its
	// reads AfterLoss (and must not flush: a flush would make the writes
	// the crash lost durable in the ledger).
	o = testOptions(30, 300)
	o.ReadPercent, o.ReadMode, o.FlushEvery = 50, AfterLoss, -1
	st, err := Run(ctx, dev, l, o)
	require.NoError(t, err)
	require.Zero(t, st.BadTotal, "%v", st.Bad)

	// After Loss(), Strict checks accept the same; Settle narrows them to
	// what is there, and the next phase verifies strictly.
	l.Loss()
	c, err = Verify(ctx, dev, l, VerifyOptions{})
	require.NoError(t, err)
	requireClean(t, c)
	require.NoError(t, l.Settle(c))
	st, err = Run(ctx, dev, l, testOptions(4, 400))
	require.NoError(t, err)
	require.Zero(t, st.BadTotal)
	c, err = Verify(ctx, dev, l, VerifyOptions{})
	require.NoError(t, err)
	requireClean(t, c)
}

func TestAfterLossRejectsOlderThanDurable(t *testing.T) {
	ctx := testkit.Context(t, 30*time.Second)
	dev := NewMemory(64 << 10)
	l := NewLedger(testSeed, dev.Size())
	a := write(ctx, t, dev, l, 4096, 8192, false)
	flush(ctx, t, dev, l)
	b := write(ctx, t, dev, l, 4096, 4096, false)
	flush(ctx, t, dev, l)
	write(ctx, t, dev, l, 4096+1024, 100, false) // unflushed
	dev.Crash(nil)
	// Plant a's old image over b's sector 0x1200: older than durable b.
	p := make([]byte, 512)
	Fill(p, 0x1200, testSeed, Write{ID: a, Off: 4096, Len: 8192})
	require.NoError(t, dev.WriteAt(ctx, p, 0x1200, false))

	c, err := Verify(ctx, dev, l, VerifyOptions{Mode: AfterLoss, Locate: locate})
	require.NoError(t, err)
	for _, b := range c.Bad {
		t.Log(b.Diagnosis)
	}
	require.Equal(t, 1, c.BadTotal)
	bad := c.Bad[0]
	require.Equal(t, int64(0x1200), bad.Sector)
	require.Equal(t, int64(0x1210), bad.Off, "the header bytes before the write id are the same in both")
	require.Equal(t, a, bad.Found.Write.ID)
	require.Equal(t, []uint64{b}, idsOf(bad.Expected))
	require.Equal(t, "sector 0x1200 (member 0 (mem://0) +0x1210): bytes 0x1210+496 (464 wrong): holds write 1 aimed at 0x1000+8192 "+
		"(stale: acknowledged, durable, since overwritten); expected write 2 aimed at 0x1000+4096", bad.Diagnosis)
}

// failing lands only the first half of every 5th write and fails it.
type failing struct {
	*Memory
	n atomic.Int64
}

func (f *failing) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if f.n.Add(1)%5 == 0 {
		if err := f.Memory.WriteAt(ctx, p[:len(p)/2], off, fua); err != nil {
			return err
		}
		return errors.New("planted EIO")
	}
	return f.Memory.WriteAt(ctx, p, off, fua)
}

func TestFailedWritesAreRecordedAndMayLandInPart(t *testing.T) {
	ctx := testkit.Context(t, 30*time.Second)
	dev := &failing{Memory: NewMemory(memSize)}
	l := NewLedger(testSeed, memSize)
	st, err := Run(ctx, dev, l, testOptions(5, 600))
	require.NoError(t, err)
	require.Positive(t, st.Errors)
	require.Len(t, st.Failed, int(st.Errors))
	require.Equal(t, OpWrite, st.Failed[0].Kind)
	require.Equal(t, "planted EIO", st.Failed[0].Err)
	info, ok := l.Write(st.Failed[0].Write)
	require.True(t, ok)
	require.Equal(t, "failed", info.State)
	require.Zero(t, st.BadTotal)
	c, err := Verify(ctx, dev, l, VerifyOptions{})
	require.NoError(t, err)
	requireClean(t, c)

	o := testOptions(5, 600)
	o.FailFast = true
	_, err = Run(ctx, dev, l, o)
	require.ErrorContains(t, err, "planted EIO")
}

func TestSameSeedSameOps(t *testing.T) {
	g := GenOptions{Seed: 9, Size: memSize, Boundaries: testBoundaries, MaxRequest: 256 << 10}
	a, b := Ops(g, 2000), Ops(g, 2000)
	require.Equal(t, a, b)
	g.Seed = 10
	require.NotEqual(t, a, Ops(g, 2000))

	// Ops stay inside the device and the request bound, and hit the
	// boundaries.
	straddle := 0
	for _, op := range a {
		if op.Kind == OpFlush {
			continue
		}
		require.True(t, op.Off >= 0 && op.Len >= 1 && op.Off+op.Len <= memSize && op.Len <= 256<<10, "%v", op)
		for _, e := range testBoundaries {
			if op.Off < e && op.Off+op.Len > e {
				straddle++
			}
		}
	}
	require.Greater(t, straddle, 100)

	// A concurrent run's log, in stream order, is the replayed stream, and
	// write ids follow stream order.
	dev := NewMemory(memSize)
	l := NewLedger(testSeed, memSize)
	o := testOptions(9, 300)
	st, err := Run(testkit.Context(t, 30*time.Second), dev, l, o)
	require.NoError(t, err)
	log := slices.Clone(st.Log)
	slices.SortFunc(log, func(x, y OpRecord) int { return int(x.Index - y.Index) })
	replay := Ops(o.GenOptions(memSize), 300)
	var id uint64
	for i, r := range log {
		require.Equal(t, replay[i], r.Op)
		if r.Kind == OpWrite {
			id++
			require.Equal(t, id, r.Write)
		}
	}
}

func TestDumpIsBoundedJSON(t *testing.T) {
	ctx := testkit.Context(t, 30*time.Second)
	dev := NewMemory(memSize)
	l := NewLedger(testSeed, memSize)
	o := testOptions(11, 1000)
	o.FlushEvery = -1
	o.FUAPercent = -1
	o.MaxLog = 100
	st, err := Run(ctx, dev, l, o)
	require.NoError(t, err)
	require.Len(t, st.Log, 100)
	require.Equal(t, int64(900), st.LogDropped)
	d := l.Dump(50)
	require.Len(t, d.Ranges, 50)
	require.Greater(t, d.RangesTotal, 50)
	require.Equal(t, int(st.Writes), d.OpenTotal, "nothing was flushed")
	js, err := json.Marshal(l)
	require.NoError(t, err)
	require.Less(t, len(js), 1<<20)
	_, err = json.Marshal(st)
	require.NoError(t, err)
}
