// The buffer pool hands out buffers of the right class under its byte
// budget, and recycling is race-free when many workers share it.
package nbd

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestBufferPoolClasses(t *testing.T) {
	for n, want := range map[int]int{1: 4096, 4096: 4096, 4097: 8192, 1 << 20: 1 << 20, 32 << 20: 32 << 20} {
		require.Equal(t, want, 1<<(minBufferShift+classOf(n)), "class of %d", n)
	}
}

func TestBufferPoolBudget(t *testing.T) {
	p := newBufferPool(32 << 20)
	ctx := context.Background()
	b, err := p.get(ctx, 32<<20)
	require.NoError(t, err)
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	_, err = p.get(short, 1)
	require.ErrorIs(t, err, context.DeadlineExceeded, "the budget is spent")
	p.put(b)
	b, err = p.get(ctx, 1)
	require.NoError(t, err)
	require.Len(t, *b, 4096)
	p.put(b)
}

func TestBufferPoolConcurrent(t *testing.T) {
	p := newBufferPool(64 << 20)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				b, err := p.get(context.Background(), 4096<<(i%4))
				if err != nil {
					t.Error(err)
					return
				}
				(*b)[0] = byte(w)
				p.put(b)
			}
		})
	}
	wg.Wait()
}
