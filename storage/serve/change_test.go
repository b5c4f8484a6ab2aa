// Membership changes of a running storage through the admin endpoint
// (change.go): while a client writes and reads without pause, a third
// replica is added (copied whole, then in sync) and the first one is
// removed; the client sees no error and every block reads back as last
// written, through the changes and after a restart with the config that
// names the new membership. Bad requests change nothing.
package serve_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/admin"
	"dst/storage/config"
	"dst/storage/nbd"
	"dst/storage/serve"
)

// writer writes self-describing 4 KiB blocks (block number, version) at
// random over the first span bytes until stopped, with a FLUSH every 16
// writes, and remembers the last version of each block.
type writer struct {
	c       *nbd.Client
	blocks  int
	mu      sync.Mutex
	version []uint64
	errs    []error
	writes  int
}

func block(i int, v uint64) []byte {
	p := make([]byte, 4096)
	for off := 0; off < len(p); off += 16 {
		binary.LittleEndian.PutUint64(p[off:], uint64(i))
		binary.LittleEndian.PutUint64(p[off+8:], v)
	}
	return p
}

func (w *writer) run(ctx context.Context, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(1, 2))
	for v := uint64(1); ; v++ {
		select {
		case <-stop:
			return
		default:
		}
		i := rng.IntN(w.blocks)
		if err := w.c.WriteAt(ctx, block(i, v), int64(i)*4096, 0); err != nil {
			w.mu.Lock()
			w.errs = append(w.errs, fmt.Errorf("write block %d: %w", i, err))
			w.mu.Unlock()
			return
		}
		w.mu.Lock()
		w.version[i] = v
		w.writes++
		w.mu.Unlock()
		if v%16 == 0 {
			if err := w.c.Flush(ctx); err != nil {
				w.mu.Lock()
				w.errs = append(w.errs, fmt.Errorf("flush: %w", err))
				w.mu.Unlock()
				return
			}
		}
	}
}

func (w *writer) verify(t *testing.T, ctx context.Context, c *nbd.Client) {
	t.Helper()
	got := make([]byte, 4096)
	for i, v := range w.version {
		require.NoError(t, c.ReadAt(ctx, got, int64(i)*4096))
		want := make([]byte, 4096)
		if v != 0 {
			want = block(i, v)
		}
		require.True(t, bytes.Equal(want, got), "block %d: want version %d, got version %d",
			i, v, binary.LittleEndian.Uint64(got[8:]))
	}
}

func waitInSync(t *testing.T, ctx context.Context, adm *admin.Client, n int) admin.Status {
	t.Helper()
	for {
		st, _, err := adm.Status(ctx)
		require.NoError(t, err)
		if len(st.Members) == n && st.Health == "ok" {
			return st
		}
		select {
		case <-ctx.Done():
			t.Fatalf("members not in sync: %+v", st.Members)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func TestServeMembershipChangeOnline(t *testing.T) {
	dir := t.TempDir()
	a, b, c := testkit.Image(t, "a.img", 8<<20), testkit.Image(t, "b.img", 8<<20), testkit.Image(t, "c.img", 8<<20)
	small := testkit.Image(t, "small.img", 4<<20)
	parse := func(members string) *config.Config {
		text := fmt.Sprintf("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nnode:\n  connect_timeout: 1s\nresync:\n  interval: 50ms\n  rate: unlimited\nstorage:\n  layout: mirror\n  members: [%s]\n", members)
		cfg, err := config.Parse(filepath.Join(dir, "storage.yaml"), []byte(text))
		require.NoError(t, err)
		return cfg
	}
	ctx := testkit.Context(t, 120*time.Second)
	srv, err := serve.Start(ctx, parse("file:"+a+", file:"+b), testkit.Logger(t))
	require.NoError(t, err)
	rctx, cancel := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- srv.Run(rctx) }()
	cl, err := nbd.Dial(ctx, "tcp", srv.Addr().String(), nbd.ClientOptions{})
	require.NoError(t, err)
	adm, err := admin.NewClient(srv.AdminAddr().String(), nil)
	require.NoError(t, err)

	w := &writer{c: cl, blocks: 1024}
	w.version = make([]uint64, w.blocks)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); w.run(ctx, stop) }()
	progressed := func() {
		w.mu.Lock()
		n := w.writes
		w.mu.Unlock()
		for {
			w.mu.Lock()
			m, errs := w.writes, len(w.errs)
			w.mu.Unlock()
			if m > n+50 || errs > 0 {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	progressed()

	// Bad requests change nothing, and the writes go on.
	for _, tc := range []struct {
		do   func() (admin.ChangeResult, error)
		want string
	}{
		{func() (admin.ChangeResult, error) { return adm.AddMember(ctx, "/0", "file:"+c, false) }, "the storage's mirrors: / (members 0 1)"},
		{func() (admin.ChangeResult, error) { return adm.AddMember(ctx, "/", "file:"+b, false) }, "appears twice"},
		{func() (admin.ChangeResult, error) { return adm.AddMember(ctx, "/", "file:"+small, false) }, "at least as large"},
		{func() (admin.ChangeResult, error) { return adm.AddMember(ctx, "/", "nbd://127.0.0.1:1/none", false) }, "membership change cannot be made"},
		{func() (admin.ChangeResult, error) { return adm.RemoveMember(ctx, 2) }, "no member 2"},
	} {
		res, err := tc.do()
		require.ErrorContains(t, err, tc.want)
		t.Log(err)
		require.Equal(t, "mirror(file:"+a+", file:"+b+")", res.Layout)
	}
	progressed()

	// A third replica, added while the client writes.
	res, err := adm.AddMember(ctx, "/", "file:"+c, false)
	require.NoError(t, err)
	t.Logf("added: %+v", res)
	require.Equal(t, 2, res.Member)
	require.Equal(t, "mirror(file:"+a+", file:"+b+", file:"+c+")", res.Layout)
	progressed()
	st := waitInSync(t, ctx, adm, 3)
	require.Equal(t, "mirror(file:"+a+", file:"+b+", file:"+c+")", st.Layout)
	require.Equal(t, "file:"+c, st.Members[2].URL)
	progressed()

	// The first replica removed, while the client writes.
	res, err = adm.RemoveMember(ctx, 0)
	require.NoError(t, err)
	t.Logf("removed: %+v", res)
	require.Equal(t, "mirror(file:"+b+", file:"+c+")", res.Layout)
	progressed()
	st = waitInSync(t, ctx, adm, 2)
	require.Greater(t, st.Requests["write"].Count, uint64(0), "the request counters go on")

	close(stop)
	<-done
	require.Empty(t, w.errs, "the client sees no error")
	t.Logf("%d writes through the changes", w.writes)
	w.verify(t, ctx, cl)
	require.NoError(t, cl.Close())
	cancel()
	require.NoError(t, <-ran)

	// The config names the new membership: a clean start, in sync, the
	// data as written; a is in no member table.
	srv, err = serve.Start(ctx, parse("file:"+b+", file:"+c), testkit.Logger(t))
	require.NoError(t, err)
	rctx, cancel = context.WithCancel(ctx)
	go func() { ran <- srv.Run(rctx) }()
	cl, err = nbd.Dial(ctx, "tcp", srv.Addr().String(), nbd.ClientOptions{})
	require.NoError(t, err)
	adm, err = admin.NewClient(srv.AdminAddr().String(), nil)
	require.NoError(t, err)
	st, _, err = adm.Status(ctx)
	require.NoError(t, err)
	for _, m := range st.Members {
		require.Equal(t, "in-sync", m.State, "a clean start after the changes")
	}
	w.verify(t, ctx, cl)
	require.NoError(t, cl.Close())
	cancel()
	require.NoError(t, <-ran)

	// The replicas hold the same data areas.
	bb, err := os.ReadFile(b)
	require.NoError(t, err)
	cb, err := os.ReadFile(c)
	require.NoError(t, err)
	off := st.Members[0].DataOffset
	n := st.Size
	require.True(t, bytes.Equal(bb[off:off+n], cb[st.Members[1].DataOffset:st.Members[1].DataOffset+n]))
}
