// A storage runs in the test's own process: Start assembles a mirror of two
// files from a config, an NBD client writes and flushes through it, the
// admin endpoint counts the requests the engine served, cancelling Run
// shuts down clean, and a second Start assembles the same storage with
// both members in sync and the data intact.
package serve_test

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/admin"
	"dst/storage/config"
	"dst/storage/nbd"
	"dst/storage/serve"
)

func TestServeInProcess(t *testing.T) {
	dir := t.TempDir()
	a, b := testkit.Image(t, "a.img", 8<<20), testkit.Image(t, "b.img", 8<<20)
	text := fmt.Sprintf("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nstorage:\n  layout: mirror\n  members: [file:%s, file:%s]\n", a, b)
	cfg, err := config.Parse(filepath.Join(dir, "storage.yaml"), []byte(text))
	require.NoError(t, err)
	ctx := testkit.Context(t, 60*time.Second)
	want := bytes.Repeat([]byte("in-process "), 1000)

	run := func(check func(c *nbd.Client, adm *admin.Client)) {
		srv, err := serve.Start(ctx, cfg, testkit.Logger(t))
		require.NoError(t, err)
		rctx, cancel := context.WithCancel(ctx)
		ran := make(chan error, 1)
		go func() { ran <- srv.Run(rctx) }()
		c, err := nbd.Dial(ctx, "tcp", srv.Addr().String(), nbd.ClientOptions{})
		require.NoError(t, err)
		adm, err := admin.NewClient(srv.AdminAddr().String(), nil)
		require.NoError(t, err)
		check(c, adm)
		require.NoError(t, c.Close())
		cancel()
		require.NoError(t, <-ran)
	}
	run(func(c *nbd.Client, adm *admin.Client) {
		require.NoError(t, c.WriteAt(ctx, want, 4096, 0))
		require.NoError(t, c.Flush(ctx))
		st, _, err := adm.Status(ctx)
		require.NoError(t, err)
		require.Equal(t, uint64(1), st.Requests["write"].Count, "the engine counted the write")
		require.Equal(t, uint64(len(want)), st.Requests["write"].Bytes)
		require.Equal(t, uint64(1), st.Requests["flush"].Count)
	})
	run(func(c *nbd.Client, adm *admin.Client) {
		st, _, err := adm.Status(ctx)
		require.NoError(t, err)
		for _, m := range st.Members {
			require.Equal(t, "in-sync", m.State, "a clean stop restarts without a resync")
			require.Zero(t, m.DirtyRegions)
		}
		got := make([]byte, len(want))
		require.NoError(t, c.ReadAt(ctx, got, 4096))
		require.Equal(t, want, got)
	})
}
