package node_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/nbd"
	"dst/storage/node"
)

const unit = node.VolatileUnit

func newVolatile(t *testing.T, size int, opts node.VolatileOptions) (*node.Volatile, *node.Memory) {
	t.Helper()
	mem := node.NewMemory(size)
	v, err := node.NewVolatile(mem, opts)
	require.NoError(t, err)
	return v, mem
}

func TestVolatileLosesUnflushedWritesAtPowerCut(t *testing.T) {
	ctx := testkit.Context(t, 10*time.Second)
	v, mem := newVolatile(t, 64*unit+100, node.VolatileOptions{Seed: 1})
	require.NoError(t, v.WriteAt(ctx, pattern(1, 4*unit), 0, 0))
	require.NoError(t, v.Flush(ctx))
	require.NoError(t, v.WriteAt(ctx, pattern(2, 4*unit), 0, 0))                 // unflushed: lost
	require.NoError(t, v.WriteAt(ctx, pattern(3, unit), 8*unit, nbd.CmdFlagFUA)) // FUA: kept
	require.NoError(t, v.WriteAt(ctx, pattern(4, 300), 64*unit-50, 0))           // across the short last unit

	got := make([]byte, 4*unit)
	require.NoError(t, v.ReadAt(ctx, got, 0))
	require.Equal(t, pattern(2, 4*unit), got, "reads see the cache")
	require.Equal(t, int64(6*unit), v.Stats().Cached)

	kept, lost, err := v.PowerCut(ctx, 0)
	require.NoError(t, err)
	require.Zero(t, kept)
	require.Equal(t, int64(6), lost)
	require.Equal(t, pattern(1, 4*unit), mem.Bytes(0, 4*unit), "flushed data survives, unflushed is lost")
	require.Equal(t, pattern(3, unit), mem.Bytes(8*unit, unit))
	require.Equal(t, pattern(0, 150), mem.Bytes(64*unit-50, 150))

	err = v.ReadAt(ctx, got, 0)
	require.ErrorIs(t, err, node.ErrPowerCut)
	require.ErrorIs(t, err, node.ErrUnavailable)
	require.ErrorIs(t, v.WriteAt(ctx, got, 0, 0), node.ErrPowerCut)
	require.ErrorIs(t, v.Flush(ctx), node.ErrPowerCut)
}

func TestVolatileFUAMergesCachedUnits(t *testing.T) {
	ctx := testkit.Context(t, 10*time.Second)
	v, mem := newVolatile(t, 16*unit, node.VolatileOptions{})
	require.NoError(t, v.WriteAt(ctx, pattern(1, 2*unit), 0, 0))
	// A FUA write over the middle of the cached units: the units it
	// touches go through whole, nothing of them is lost afterwards.
	require.NoError(t, v.WriteAt(ctx, pattern(2, 512), unit-256, nbd.CmdFlagFUA))
	_, lost, err := v.PowerCut(ctx, 0)
	require.NoError(t, err)
	require.Zero(t, lost)
	want := pattern(1, 2*unit)
	copy(want[unit-256:], pattern(2, 512))
	require.Equal(t, want, mem.Bytes(0, 2*unit))
}

func TestVolatilePartialUnitKeepsTheRestOfTheUnit(t *testing.T) {
	ctx := testkit.Context(t, 10*time.Second)
	v, mem := newVolatile(t, 4*unit, node.VolatileOptions{})
	require.NoError(t, mem.WriteAt(ctx, pattern(7, 4*unit), 0, 0))
	require.NoError(t, v.WriteAt(ctx, pattern(8, 512), 1000, 0))
	got := make([]byte, unit)
	require.NoError(t, v.ReadAt(ctx, got, 0))
	want := pattern(7, unit)
	copy(want[1000:], pattern(8, 512))
	require.Equal(t, want, got)
	require.NoError(t, v.Close())
	require.Equal(t, want, mem.Bytes(0, unit), "an orderly close writes the cache back")
}

func TestVolatileZeroesAndTrimGoThrough(t *testing.T) {
	ctx := testkit.Context(t, 10*time.Second)
	v, mem := newVolatile(t, 8*unit, node.VolatileOptions{})
	require.NoError(t, v.WriteAt(ctx, pattern(5, 4*unit), 0, 0))
	require.NoError(t, v.WriteZeroes(ctx, 100, 2*unit, 0))
	require.NoError(t, v.Trim(ctx, 3*unit, unit, 0))
	got := make([]byte, 4*unit)
	require.NoError(t, v.ReadAt(ctx, got, 0))
	want := pattern(5, 4*unit)
	clear(want[100 : 100+2*unit])
	clear(want[3*unit:])
	require.Equal(t, want, got)
	require.NoError(t, v.Flush(ctx))
	require.Equal(t, want, mem.Bytes(0, 4*unit))
}

func TestVolatileBoundedCacheWritesBack(t *testing.T) {
	ctx := testkit.Context(t, 10*time.Second)
	v, mem := newVolatile(t, 64*unit, node.VolatileOptions{Seed: 3, MaxBytes: 8 * unit})
	for i := range 20 {
		require.NoError(t, v.WriteAt(ctx, pattern(byte(i+1), unit), int64(i)*unit, 0))
	}
	s := v.Stats()
	require.LessOrEqual(t, s.Cached, int64(8*unit))
	require.Equal(t, int64(20*unit), s.Cached+s.WrittenBack*unit)
	for i := range 20 {
		got := make([]byte, unit)
		require.NoError(t, v.ReadAt(ctx, got, int64(i)*unit))
		require.Equal(t, pattern(byte(i+1), unit), got)
	}
	_, lost, err := v.PowerCut(ctx, 0)
	require.NoError(t, err)
	require.Equal(t, s.Cached/unit, lost)
	written := 0
	for i := range 20 {
		if bytes.Equal(mem.Bytes(i*unit, unit), pattern(byte(i+1), unit)) {
			written++
		}
	}
	require.Equal(t, int(s.WrittenBack), written)
}

func TestVolatileRejectsBadOptions(t *testing.T) {
	v, err := node.NewVolatile(node.NewMemory(unit), node.VolatileOptions{})
	require.NoError(t, err)
	_, _, err = v.PowerCut(context.Background(), 101)
	require.ErrorContains(t, err, "torn percent 101")
	_, err = node.NewVolatile(node.NewMemory(unit), node.VolatileOptions{MaxBytes: -1})
	require.ErrorContains(t, err, "negative")
}

// TestVolatileRandomPowerCuts drives random writes, FUA writes, zeroes and
// flushes with a small cache and torn power cuts, and checks the contract
// unit by unit: reads see the latest write; after the cut each unit holds
// one whole version at least as new as its last durable one.
func TestVolatileRandomPowerCuts(t *testing.T) {
	for seed := range uint64(40) {
		ctx := context.Background()
		const units = 24
		size := units*unit - 700 // a short last unit
		v, mem := newVolatile(t, size, node.VolatileOptions{Seed: seed, MaxBytes: 6 * unit})
		rng := rand.New(rand.NewPCG(seed, 9))
		latest := make([]byte, size)
		// versions[u]: the contents unit u may hold after a cut: its last
		// durable version and every version written since.
		versions := make([][][]byte, units)
		span := func(u int) (int, int) { return u * unit, min((u+1)*unit, size) }
		for u := range units {
			lo, hi := span(u)
			versions[u] = [][]byte{bytes.Clone(latest[lo:hi])}
		}
		record := func(off, n int, durable bool) {
			for u := off / unit; u*unit < off+n; u++ {
				lo, hi := span(u)
				if durable {
					versions[u] = nil
				}
				versions[u] = append(versions[u], bytes.Clone(latest[lo:hi]))
			}
		}
		for range 300 {
			off := rng.IntN(size - 1)
			n := 1 + rng.IntN(min(size-off, 3*unit))
			switch r := rng.IntN(10); {
			case r <= 6:
				fua := r == 6
				p := make([]byte, n)
				for i := range p {
					p[i] = byte(rng.Uint32())
				}
				var f nbd.CmdFlags
				if fua {
					f = nbd.CmdFlagFUA
				}
				require.NoError(t, v.WriteAt(ctx, p, int64(off), f))
				copy(latest[off:], p)
				if fua {
					// Only the bytes of p are durable; the rest of its
					// units went through too, which is allowed.
					record(off, n, true)
				} else {
					record(off, n, false)
				}
			case r == 7:
				require.NoError(t, v.WriteZeroes(ctx, int64(off), int64(n), 0))
				clear(latest[off : off+n])
				record(off, n, false)
			case r == 8:
				require.NoError(t, v.Flush(ctx))
				for u := range units {
					lo, hi := span(u)
					versions[u] = [][]byte{bytes.Clone(latest[lo:hi])}
				}
			default:
				got := make([]byte, n)
				require.NoError(t, v.ReadAt(ctx, got, int64(off)))
				require.Equal(t, latest[off:off+n], got, "seed %d", seed)
			}
		}
		_, _, err := v.PowerCut(ctx, 50)
		require.NoError(t, err)
		for u := range units {
			lo, hi := span(u)
			have := mem.Bytes(lo, hi-lo)
			require.True(t, containsBytes(versions[u], have), "seed %d unit %d holds no whole version", seed, u)
		}
	}
}

func containsBytes(vs [][]byte, b []byte) bool {
	for _, v := range vs {
		if bytes.Equal(v, b) {
			return true
		}
	}
	return false
}

func TestVolatileCrashKeepsTheCache(t *testing.T) {
	ctx := testkit.Context(t, 10*time.Second)
	v, mem := newVolatile(t, 8*unit, node.VolatileOptions{})
	require.NoError(t, v.WriteAt(ctx, pattern(6, 3*unit), 100, 0))
	require.NoError(t, v.Crash(ctx))
	require.Equal(t, pattern(6, 3*unit), mem.Bytes(100, 3*unit))
	require.ErrorIs(t, v.Flush(ctx), node.ErrPowerCut)
	require.Zero(t, mem.Flushes(), "a crash of the process flushes nothing")
}
