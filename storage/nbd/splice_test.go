// Large reads from a file backend on a plain TCP connection go through a
// pipe (SpliceReader): the bytes read back exactly, on tmpfs and on a disk
// file system, aligned or not, many at once; reads spanning more pages
// than a pipe holds take the copying path; a read the file cannot serve
// fails alone (EIO) before any header goes out and the connection stays
// usable; the pipes are closed at shutdown.
package nbd_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	. "dst/storage/nbd"
	"dst/storage/node"
)

func TestSplicedReads(t *testing.T) {
	dirs := map[string]string{"disk": t.TempDir()}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "dst-splice")
		require.NoError(t, err)
		t.Cleanup(func() { os.RemoveAll(d) })
		dirs["tmpfs"] = d
	}
	for name, dir := range dirs {
		t.Run(name, func(t *testing.T) {
			const size = 8 << 20
			data := make([]byte, size)
			rng := rand.New(rand.NewPCG(3, 4))
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			p := filepath.Join(dir, "img")
			require.NoError(t, os.WriteFile(p, data, 0o644))
			f, err := node.OpenFile(p, node.FileOptions{})
			require.NoError(t, err)
			defer f.Close()
			srv, addr := startServer(t, ServerOptions{Exports: []*Export{{Name: "f", Size: size, Flags: f.Flags(), Backend: f}}})
			c := dial(t, addr, ClientOptions{})
			ctx := testCtx(t)

			var wg sync.WaitGroup
			errs := make(chan string, 64)
			for w := range 8 {
				wg.Go(func() {
					r := rand.New(rand.NewPCG(uint64(w), 9))
					for range 20 {
						n := []int{128 << 10, 1 << 20, 1<<20 - 4096, 300 << 10, 1 << 20}[r.IntN(5)]
						off := int64(r.IntN(size - n))
						if r.IntN(2) == 0 {
							off -= off % 4096 // page-aligned: a whole 1 MiB read fits a pipe
						}
						got := make([]byte, n)
						if err := c.ReadAt(ctx, got, off); err != nil {
							errs <- err.Error()
							return
						}
						if !bytes.Equal(got, data[off:off+int64(n)]) {
							errs <- "read back differs"
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for e := range errs {
				t.Fatal(e)
			}
			require.NotZero(t, PipesMade(srv), "no read was spliced")
			if !raceEnabled {
				buf := make([]byte, 1<<20)
				for range 20 {
					require.NoError(t, c.ReadAt(ctx, buf, 1<<20))
				}
				require.Zero(t, testing.AllocsPerRun(100, func() { _ = c.ReadAt(ctx, buf, 1<<20) }),
					"a spliced read allocates")
			}

			// The file shrinks underneath: a read past its end fails with
			// EIO on its own; the connection goes on.
			require.NoError(t, os.Truncate(p, size/2))
			require.ErrorIs(t, c.ReadAt(ctx, make([]byte, 1<<20), size-(1<<20)), EIO)
			got := make([]byte, 1<<20)
			require.NoError(t, c.ReadAt(ctx, got, 0))
			require.Equal(t, data[:1<<20], got)

			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			require.NoError(t, srv.Shutdown(sctx))
			require.Zero(t, PipesMade(srv), "pipes left open after shutdown")
		})
	}
}
