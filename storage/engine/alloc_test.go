// The engine's steady-state request path — a read, a write, a flush and a
// block status split over members, through a mirror of stripes —
// allocates nothing.
package engine

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/layout"
	"dst/storage/nbd"
)

func TestSteadyStateAllocs(t *testing.T) {
	testkit.SkipUnderRace(t)
	if invariantsOn {
		t.Skip("-tags invariants: the self-checks allocate")
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
	exts := make([]nbd.Extent, 0, 64)
	for name, op := range map[string]func() error{
		"read 64k at an odd offset": func() error { return r.e.ReadAt(ctx, buf, 4095) },
		"write 64k":                 func() error { return r.e.WriteAt(ctx, buf, 12345, 0) },
		"flush":                     func() error { return r.e.Flush(ctx) },
		"block status 1m":           func() error { _, err := r.e.BlockStatus(ctx, 4095, 1<<20, exts[:0]); return err },
	} {
		testkit.NoAllocs(t, name, DefaultMaxInFlight+1, 200, op) // every pooled request grows once
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
