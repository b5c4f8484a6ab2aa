// The engine's steady-state request path — a read, a write and a flush
// split over members, through a mirror of stripes — allocates nothing.
package engine

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"dst/storage/layout"
)

func TestSteadyStateAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under -race; make test runs this test without it")
	}
	ls, ms := leaves(t, 1<<20, 1<<20, 1<<20, 1<<20)
	s1, err := layout.NewStripe(4096, ls[0], ls[1])
	require.NoError(t, err)
	s2, err := layout.NewStripe(8192, ls[2], ls[3])
	require.NoError(t, err)
	m, err := layout.NewMirror(s1, s2)
	require.NoError(t, err)
	r := newRig(t, m, ms)
	ctx := context.Background()
	buf := make([]byte, 64<<10)
	for name, op := range map[string]func() error{
		"read 64k at an odd offset": func() error { return r.e.ReadAt(ctx, buf, 4095) },
		"write 64k":                 func() error { return r.e.WriteAt(ctx, buf, 12345, 0) },
		"flush":                     func() error { return r.e.Flush(ctx) },
	} {
		for range DefaultMaxInFlight + 1 { // every pooled request grows once
			require.NoError(t, op())
		}
		var err error
		allocs := testing.AllocsPerRun(200, func() {
			if e := op(); e != nil {
				err = e
			}
		})
		require.NoError(t, err)
		require.Zero(t, allocs, "%s allocates %.2f times per request", name, allocs)
	}
}

func BenchmarkMirrorWrite4K(b *testing.B) {
	r := mirror2(b)
	ctx := context.Background()
	buf := make([]byte, 4096)
	b.SetBytes(4096)
	b.ReportAllocs()
	for b.Loop() {
		if err := r.e.WriteAt(ctx, buf, 8192, 0); err != nil {
			b.Fatal(err)
		}
	}
}
