// Integration test: the workload runs concurrently against a real NBD
// server (nbdkit's file plugin) through the project's pipelined NBD
// client, every byte verifies Strict and AfterLoss, and bytes changed
// behind the ledger's back are caught and located.
package raw

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/storage/nbd"
	"dst/storage/nbd/nbdtest"
)

func TestWorkloadOverNBD(t *testing.T) {
	const size = 4 << 20
	peer := nbdtest.Nbdkit(t, size) // skips, saying what to install, without nbdkit or under -short
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := nbd.Dial(ctx, peer.Network, peer.Addr, nbd.ClientOptions{ExportName: peer.Export})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	dev := NBD(c)
	require.Equal(t, int64(size), dev.Size())

	l := NewLedger(testSeed, size)
	bounds := []int64{1<<20 + 100, 2 << 20, 3<<20 + 7}
	o := Options{Seed: 77, Ops: 800, Concurrency: 4, Boundaries: bounds, MaxRequest: 1 << 20, FlushEvery: 30, FUAPercent: 10, ReadPercent: 20}
	st, err := Run(ctx, dev, l, o)
	require.NoError(t, err)
	require.Zero(t, st.Errors, "%v", st.Failed)
	require.Zero(t, st.BadTotal, "%v", st.Bad)
	require.Positive(t, st.Flushes)
	require.Positive(t, st.BytesVerified)

	for _, mode := range []Mode{Strict, AfterLoss} {
		chk, err := Verify(ctx, dev, l, VerifyOptions{Mode: mode})
		require.NoError(t, err)
		requireClean(t, chk)
		require.Equal(t, int64(size), chk.BytesVerified)
		if mode == Strict {
			require.NoError(t, l.Settle(chk))
		}
	}

	// Three bytes changed behind the ledger's back at a boundary.
	at := bounds[1] - 1
	want := l.Expect(at, Strict)[0]
	p := make([]byte, 3)
	require.NoError(t, dev.ReadAt(ctx, p, at))
	for i := range p {
		p[i] ^= 0xff
	}
	require.NoError(t, dev.WriteAt(ctx, p, at, true))
	where := func(off int64) string { return "nbdkit " + peer.Addr }
	chk, err := Verify(ctx, dev, l, VerifyOptions{Locate: where})
	require.NoError(t, err)
	require.Equal(t, 2, chk.BadTotal, "one Bad per sector the bytes straddle")
	require.Equal(t, at, chk.Bad[0].Off)
	require.Equal(t, int64(1), chk.Bad[0].Wrong)
	require.Equal(t, at+1, chk.Bad[1].Off)
	require.Equal(t, int64(2), chk.Bad[1].Wrong)
	require.Equal(t, want, chk.Bad[0].Expected[0])
	require.Contains(t, chk.Bad[0].Diagnosis, "(nbdkit "+peer.Addr+")")
	require.Contains(t, chk.Bad[0].Diagnosis, "expected "+want.String())
}
