package engine

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/layout"
	"dst/storage/node"
)

// A scrub finds exactly the range where one replica's bytes were flipped
// behind the engine's back, names the member, repairs it from the other
// with repair, and a second scrub is clean.
func TestScrubFindsAndRepairs(t *testing.T) {
	ctx := testkit.Context(t, 30*time.Second)
	r := mirror2(t)
	rng := rand.New(rand.NewPCG(1, 2))
	r.write(t, rng, 0, r.l.Size())
	// A bit flips on member 1 at storage offset 300000 (in the block
	// 299008..303104), and 5000 bytes rot at 700000.
	flipBit(t, r.mems[1], int(dataOffset)+300000, 0x10)
	require.NoError(t, r.mems[1].WriteAt(context.Background(), make([]byte, 5000), int64(dataOffset)+700000, 0))

	res, err := r.e.Scrub(ctx, ScrubOptions{})
	require.NoError(t, err)
	require.Equal(t, 2, res.MismatchCount)
	require.Equal(t, []ScrubMismatch{
		{Mirror: 0, Child: 1, Source: 0, Members: []int{1}, Offset: 299008, Length: 4096},
		{Mirror: 0, Child: 1, Source: 0, Members: []int{1}, Offset: 696320, Length: 12288},
	}, res.Mismatches)
	require.Equal(t, r.e.mirrorList[0].regions(), res.Regions)
	require.Equal(t, 2*r.l.Size(), res.BytesRead)

	res, err = r.e.Scrub(ctx, ScrubOptions{Repair: true})
	require.NoError(t, err)
	require.Equal(t, 2, res.MismatchCount)
	require.True(t, res.Mismatches[0].Repaired)
	r.verify(t) // both members hold the model's bytes again

	res, err = r.e.Scrub(ctx, ScrubOptions{})
	require.NoError(t, err)
	require.Zero(t, res.MismatchCount, "clean after the repair")
	st := r.e.ScrubStatus()
	require.False(t, st.Running)
	require.Equal(t, uint64(4), st.Mismatches)
	require.Equal(t, res, st.Last)
}

// flipBit flips the bits of mask in the byte at at of m, behind the
// engine's back (bit rot).
func flipBit(t *testing.T, m *node.Memory, at int, mask byte) {
	t.Helper()
	b := m.Bytes(at, 1)
	b[0] ^= mask
	require.NoError(t, m.WriteAt(context.Background(), b, int64(at), 0))
}

// Client writes during a scrub never show as mismatches: a region is
// compared under its lock stripe.
func TestScrubUnderWrites(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	r := mirror2(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writes atomic.Int64
	for w := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			p := make([]byte, 64<<10)
			for {
				select {
				case <-stop:
					return
				default:
				}
				n := int64(1+rng.IntN(16)) * 4096
				for i := range p[:n] {
					p[i] = byte(rng.Uint32())
				}
				if err := r.e.WriteAt(ctx, p[:n], rng.Int64N(r.l.Size()-n), 0); err != nil {
					t.Error(err)
					return
				}
				writes.Add(1)
			}
		})
	}
	for range 30 {
		before := writes.Load()
		res, err := r.e.Scrub(ctx, ScrubOptions{})
		require.NoError(t, err)
		require.Zero(t, res.MismatchCount, "%+v", res.Mismatches)
		if writes.Load() == before {
			time.Sleep(time.Millisecond) // let the writers in
		}
	}
	close(stop)
	wg.Wait()
	require.Positive(t, writes.Load())
}

// A scrub's pace holds to its rate; a second scrub while one runs is
// refused.
func TestScrubRateAndExclusion(t *testing.T) {
	ctx := testkit.Context(t, 30*time.Second)
	r := mirror2(t)
	done := make(chan *ScrubResult, 1)
	begin := time.Now()
	go func() {
		res, err := r.e.Scrub(ctx, ScrubOptions{Rate: 8 << 20}) // 2 MiB read at 8 MiB/s: 250 ms
		require.NoError(t, err)
		done <- res
	}()
	require.Eventually(t, func() bool { return r.e.ScrubStatus().Running }, 5*time.Second, time.Millisecond)
	_, err := r.e.Scrub(ctx, ScrubOptions{})
	require.ErrorIs(t, err, ErrScrubRunning)
	res := <-done
	require.GreaterOrEqual(t, time.Since(begin), 200*time.Millisecond, "read %d bytes", res.BytesRead)
}

// A scheduled scrub (MonitorOptions.Scrub) runs an interval after Run
// starts and at every interval after: the first finds and repairs the
// flipped byte, a later one is clean; the status names the next start
// while Run runs, and none after.
func TestScheduledScrub(t *testing.T) {
	ctx := testkit.Context(t, 30*time.Second)
	r := mirror2(t)
	rng := rand.New(rand.NewPCG(3, 4))
	r.write(t, rng, 0, r.l.Size())
	flipBit(t, r.mems[1], int(dataOffset)+123456, 0x01)

	rctx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	begun := time.Now()
	const every = 100 * time.Millisecond
	go func() {
		ran <- r.e.Run(rctx, MonitorOptions{Interval: time.Hour, Scrub: ScrubSchedule{Interval: every, Repair: true}})
	}()
	require.Eventually(t, func() bool { return r.e.ScrubStatus().Next != nil }, 5*time.Second, time.Millisecond)
	require.Nil(t, r.e.ScrubStatus().Last, "none before the interval")

	var first *ScrubResult
	require.Eventually(t, func() bool { first = r.e.ScrubStatus().Last; return first != nil }, 10*time.Second, 5*time.Millisecond)
	require.GreaterOrEqual(t, first.Started.Sub(begun), every, "the first one interval after Run started")
	require.Equal(t, 1, first.MismatchCount)
	require.Equal(t, int64(122880), first.Mismatches[0].Offset)
	require.True(t, first.Repair && first.Mismatches[0].Repaired)
	r.verify(t)

	require.Eventually(t, func() bool {
		last := r.e.ScrubStatus().Last
		return last != first && last.Started.After(first.Started)
	}, 10*time.Second, 5*time.Millisecond, "a second scheduled scrub")
	require.Zero(t, r.e.ScrubStatus().Last.MismatchCount, "clean after the repair")
	stop()
	require.NoError(t, <-ran)
	require.Nil(t, r.e.ScrubStatus().Next, "nothing scheduled once Run ended")
}

// A repair of a child that is itself a mirror rewrites every replica of
// that nested mirror: with both of its replicas rotten alike (so the
// nested mirror's own compare sees nothing), the outer scrub repairs the
// range on both, and a second scrub of every mirror is clean.
func TestScrubRepairsNestedMirror(t *testing.T) {
	ctx := testkit.Context(t, 30*time.Second)
	ls, ms := leaves(t, 1<<20, 1<<20, 1<<20) // c, a, b
	inner, err := layout.NewMirror(ls[1], ls[2])
	require.NoError(t, err)
	outer, err := layout.NewMirror(ls[0], inner)
	require.NoError(t, err)
	r := newRig(t, outer, ms)
	rng := rand.New(rand.NewPCG(3, 4))
	r.write(t, rng, 0, r.l.Size())
	for _, m := range ms[1:] {
		require.NoError(t, m.WriteAt(context.Background(), make([]byte, 4096), int64(dataOffset)+8192, 0))
	}
	res, err := r.e.Scrub(ctx, ScrubOptions{Repair: true})
	require.NoError(t, err)
	require.Equal(t, []ScrubMismatch{{Mirror: 0, Child: 1, Source: 0, Members: []int{1, 2}, Offset: 8192, Length: 4096, Repaired: true}},
		res.Mismatches)
	res, err = r.e.Scrub(ctx, ScrubOptions{})
	require.NoError(t, err)
	require.Zero(t, res.MismatchCount, "both replicas of the nested mirror were repaired: %+v", res.Mismatches)
	for i, m := range ms {
		require.Equal(t, r.model, m.Bytes(dataOffset, int(r.l.Size())), "member %d", i)
	}
}
