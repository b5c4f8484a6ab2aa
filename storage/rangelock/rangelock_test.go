// The range table admits a write-like request at once unless an earlier
// one overlapping it still holds a slot, admits queued overlapping
// requests in the order they arrived (even when the later one overlaps
// only the queued one), lets a waiter that gives up leave without a trace,
// and allocates nothing — stepped one acquire and release at a time.
package rangelock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// pending is an acquire started in a goroutine by startAcquire and returns where its slot (or
// error) arrives.
type pending struct {
	slot chan int
	err  chan error
}

func startAcquire(ctx context.Context, tb *Table, off, end int64) pending {
	p := pending{slot: make(chan int, 1), err: make(chan error, 1)}
	wake := make(chan struct{}, 1)
	go func() {
		s, err := tb.Acquire(ctx, nil, wake, off, end)
		if err != nil {
			p.err <- err
			return
		}
		p.slot <- s
	}()
	return p
}

// admitted waits for p's slot.
func (p pending) admitted(t *testing.T) int {
	t.Helper()
	select {
	case s := <-p.slot:
		return s
	case err := <-p.err:
		t.Fatalf("acquire failed: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("not admitted within 10 s")
	}
	return -1
}

// waiting checks that p is not admitted yet, once the table holds want
// slots (every acquire started has reached the table).
func (p pending) waiting(t *testing.T, tb *Table, want int) {
	t.Helper()
	require.Eventually(t, func() bool { return tb.InFlight() == want }, 10*time.Second, time.Millisecond)
	select {
	case s := <-p.slot:
		t.Fatalf("admitted (slot %d) while an earlier overlapping request holds its range", s)
	default:
	}
}

func TestRangeTableOrder(t *testing.T) {
	ctx := context.Background()
	tb := New(8)
	a := startAcquire(ctx, tb, 0, 10).admitted(t)

	b := startAcquire(ctx, tb, 5, 15) // overlaps a
	b.waiting(t, tb, 2)
	c := startAcquire(ctx, tb, 12, 20) // overlaps only b, which is queued
	c.waiting(t, tb, 3)
	d := startAcquire(ctx, tb, 20, 25).admitted(t) // touches c, overlaps none
	e := startAcquire(ctx, tb, 30, 40).admitted(t)

	tb.Release(a)
	sb := b.admitted(t)
	c.waiting(t, tb, 4)
	tb.Release(sb)
	sc := c.admitted(t)
	for _, s := range []int{sc, d, e} {
		tb.Release(s)
	}
	require.Zero(t, tb.InFlight())
}

func TestRangeTableGiveUp(t *testing.T) {
	tb := New(4)
	a := startAcquire(context.Background(), tb, 0, 100).admitted(t)
	ctx, cancel := context.WithCancel(context.Background())
	b := startAcquire(ctx, tb, 50, 60)
	b.waiting(t, tb, 2)
	c := startAcquire(context.Background(), tb, 55, 70) // queued behind b
	c.waiting(t, tb, 3)
	cancel()
	select {
	case err := <-b.err:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(10 * time.Second):
		t.Fatal("a cancelled waiter did not leave")
	}
	c.waiting(t, tb, 2) // still behind a
	tb.Release(a)
	tb.Release(c.admitted(t))
	require.Zero(t, tb.InFlight())

	stop := make(chan struct{})
	s := startAcquire(context.Background(), tb, 0, 1).admitted(t)
	wake := make(chan struct{}, 1)
	close(stop)
	_, err := tb.Acquire(context.Background(), stop, wake, 0, 1)
	require.ErrorIs(t, err, ErrStopped, "stopped while waiting")
	tb.Release(s)
	require.Zero(t, tb.InFlight())
}

func TestRangeTableFullPanics(t *testing.T) {
	tb := New(1)
	wake := make(chan struct{}, 1)
	_, err := tb.Acquire(context.Background(), nil, wake, 0, 1)
	require.NoError(t, err)
	require.Panics(t, func() { _, _ = tb.Acquire(context.Background(), nil, wake, 2, 3) })
}

func TestRangeTableAllocatesNothing(t *testing.T) {
	tb := New(64)
	wake := make(chan struct{}, 1)
	ctx := context.Background()
	other, err := tb.Acquire(ctx, nil, wake, 10000, 20000) // held, overlapping nothing
	require.NoError(t, err)
	allocs := testing.AllocsPerRun(1000, func() {
		s, err := tb.Acquire(ctx, nil, wake, 0, 4096)
		if err != nil {
			panic(err)
		}
		tb.Release(s)
	})
	require.Zero(t, allocs)
	tb.Release(other)
}
