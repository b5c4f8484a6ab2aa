// A remote node works against a real third-party server — nbdkit's file
// plugin on a Unix socket, reached by an nbd+unix URL — for every command
// nbdkit advertises, and its idle pings keep a healthy nbdkit connection
// up, checked by reading back what was written and by the counters.
package node_test

import (
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/nbd"
	"dst/storage/nbd/nbdtest"
	"dst/storage/node"
)

func TestRemoteAgainstNbdkit(t *testing.T) {
	testkit.Need(t, "nbdkit")
	const size = 4 << 20
	p := nbdtest.Nbdkit(t, size)
	st := newStates()
	opts := fastOptions(st)
	opts.PingInterval = 50 * time.Millisecond
	r := newRemote(t, "nbd+unix:///"+p.Export+"?socket="+url.QueryEscape(p.Addr), opts)
	ready(t, r)
	ctx := ctxFor(t, 60*time.Second)
	require.Equal(t, int64(size), r.Size())
	t.Logf("nbdkit flags: %v", r.Flags())
	require.NotZero(t, r.Flags()&nbd.FlagSendFlush)

	data := make([]byte, 1<<20+3)
	for i := range data {
		data[i] = byte(i * 13)
	}
	require.NoError(t, r.WriteAt(ctx, data, 4095, nbd.CmdFlagFUA))
	require.NoError(t, r.Flush(ctx))
	got := make([]byte, len(data))
	require.NoError(t, r.ReadAt(ctx, got, 4095))
	require.Equal(t, data, got)
	if r.Flags()&nbd.FlagSendTrim != 0 {
		require.NoError(t, r.Trim(ctx, 2<<20, 4096, 0))
	}
	if r.Flags()&nbd.FlagSendWriteZero != 0 {
		require.NoError(t, r.WriteZeroes(ctx, 4096, 8192, 0))
		require.NoError(t, r.ReadAt(ctx, got[:8192], 4096))
		require.Equal(t, make([]byte, 8192), got[:8192])
	}
	if r.Flags()&nbd.FlagSendCache != 0 {
		require.NoError(t, r.Cache(ctx, 0, size))
	}
	// Idle pings to nbdkit keep the connection.
	for r.Metrics().Pings < 3 {
		select {
		case e := <-st.ch:
			if e.state != node.StateConnected {
				t.Fatalf("state changed on a healthy nbdkit connection: %v (%v)", e.state, e.err)
			}
		case <-ctx.Done():
			t.Fatal("no pings")
		case <-time.After(10 * time.Millisecond):
		}
	}
	require.Zero(t, r.Metrics().Fences)
	require.Zero(t, r.Metrics().Failures)
}
