package nbd

import (
	"context"
	"fmt"
	"math/bits"
	"sync"

	"golang.org/x/sync/semaphore"
)

const (
	minBufferShift = 12 // 4 KiB, the smallest pooled buffer
	maxBufferShift = 25 // 32 MiB, the largest pooled buffer
	bufferClasses  = maxBufferShift - minBufferShift + 1
)

// bufferPool hands out payload buffers in power-of-two classes from 4 KiB
// to 32 MiB, under a byte budget: memory for payloads in flight never
// exceeds the budget, and a caller that would exceed it waits (natural
// back-pressure). Buffers are recycled, so the steady state allocates
// nothing.
type bufferPool struct {
	classes [bufferClasses]sync.Pool
	budget  *semaphore.Weighted
	limit   int64
}

func newBufferPool(budgetBytes int64) *bufferPool {
	if budgetBytes < 1<<maxBufferShift {
		panic(fmt.Sprintf("nbd: buffer budget %d below the largest buffer", budgetBytes))
	}
	p := &bufferPool{budget: semaphore.NewWeighted(budgetBytes), limit: budgetBytes}
	for i := range p.classes {
		size := 1 << (minBufferShift + i)
		p.classes[i].New = func() any { b := make([]byte, size); return &b }
	}
	return p
}

func classOf(n int) int {
	if n <= 1<<minBufferShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufferShift
}

// get returns a buffer of length n (1 <= n <= 32 MiB), waiting for budget.
func (p *bufferPool) get(ctx context.Context, n int) (*[]byte, error) {
	c := mustClass(n)
	if err := p.budget.Acquire(ctx, 1<<(minBufferShift+c)); err != nil {
		return nil, err
	}
	return p.classes[c].Get().(*[]byte), nil
}

// tryGet is get without waiting: ok=false when the budget is spent.
func (p *bufferPool) tryGet(n int) (b *[]byte, ok bool) {
	c := mustClass(n)
	if !p.budget.TryAcquire(1 << (minBufferShift + c)) {
		return nil, false
	}
	return p.classes[c].Get().(*[]byte), true
}

// mustClass is classOf for a length the pool serves.
func mustClass(n int) int {
	c := classOf(n)
	if c >= bufferClasses {
		panic(fmt.Sprintf("nbd: buffer of %d bytes requested", n))
	}
	return c
}

// put returns a buffer obtained from get.
func (p *bufferPool) put(b *[]byte) {
	n := cap(*b)
	*b = (*b)[:n]
	p.classes[classOf(n)].Put(b) // b belongs to the pool from here on
	p.budget.Release(int64(n))
}
