// Proves that Map allocates nothing in steady state, by counting allocations with testing.AllocsPerRun over linear, stripe, mirror-of-stripes and stripe-of-mirrors layouts mapping into a preallocated slice; the benchmarks report the same.
package layout

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// allocLayouts returns the layouts whose Map must not allocate, with a
// request that crosses several members of each.
func allocLayouts(t testing.TB) []struct {
	name        string
	l           Layout
	off, length int64
} {
	lin := must[*Linear](t)(NewLinear(leaf(t, 0, 4096, 1000003), leaf(t, 1, 4096, 4097), leaf(t, 2, 4096, 70001)))
	str := must[*Stripe](t)(NewStripe(4096, leaf(t, 0, 4096, 1<<20), leaf(t, 1, 4096, 1<<20), leaf(t, 2, 4096, 1<<20)))
	mos := must[*Mirror](t)(NewMirror(
		must[*Stripe](t)(NewStripe(64<<10, leaf(t, 0, 4096, 1<<20), leaf(t, 1, 4096, 1<<20))),
		must[*Stripe](t)(NewStripe(4096, leaf(t, 2, 4096, 1<<20), leaf(t, 3, 4096, 1<<20), leaf(t, 4, 4096, 1<<20))),
	))
	som := must[*Stripe](t)(NewStripe(8192,
		must[*Mirror](t)(NewMirror(leaf(t, 0, 0, 1<<20), leaf(t, 1, 0, 1<<20))),
		must[*Mirror](t)(NewMirror(leaf(t, 2, 0, 1<<20), leaf(t, 3, 0, 1<<20))),
	))
	return []struct {
		name        string
		l           Layout
		off, length int64
	}{
		{"linear", lin, 1000003 - 100, 100 + 4097 + 50},
		{"stripe", str, 4000, 64 << 10},
		{"mirror of stripes", mos, 64<<10 - 512, 128 << 10},
		{"stripe of mirrors", som, 8191, 64 << 10},
	}
}

func TestMapAllocatesNothing(t *testing.T) {
	dst := make([]Extent, 0, 64)
	for _, c := range allocLayouts(t) {
		for _, p := range []struct {
			name string
			p    Picker
		}{{"read", FirstReplica}, {"write", AllReplicas}} {
			n := len(c.l.Map(dst[:0], c.off, c.length, 0, p.p))
			require.LessOrEqual(t, n, cap(dst), "%s %s: the test's slice is too small", c.name, p.name)
			allocs := testing.AllocsPerRun(100, func() {
				dst = c.l.Map(dst[:0], c.off, c.length, 0, p.p)
			})
			require.Zero(t, allocs, "%s %s of %v allocates", c.name, p.name, c.l)
		}
	}
}

func BenchmarkMap(b *testing.B) {
	dst := make([]Extent, 0, 64)
	for _, c := range allocLayouts(b) {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				dst = c.l.Map(dst[:0], c.off, c.length, 0, AllReplicas)
			}
		})
	}
}
