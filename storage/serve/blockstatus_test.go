package serve_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/config"
	"dst/storage/nbd"
	"dst/storage/serve"
)

// nbdinfo --map through dst serve shows exactly the data written, for a
// linear storage of odd-sized members, a stripe and a mirror of local
// files: block status maps through the layout to the members' own holes,
// their metadata areas out of view.
func TestServeBlockStatusMap(t *testing.T) {
	testkit.Need(t, "nbdinfo")
	const k64 = 64 << 10
	layouts := []struct {
		name  string
		yaml  string
		sizes []int64
	}{
		{"linear", "layout: linear", []int64{3<<20 + 12<<10, 5<<20 + 4<<10}},
		{"stripe", "layout: stripe\n  chunk: 64KiB", []int64{4 << 20, 4 << 20}},
		{"mirror", "layout: mirror", []int64{6 << 20, 6 << 20}},
	}
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) {
			dir := t.TempDir()
			members := ""
			for i, n := range l.sizes {
				if i > 0 {
					members += ", "
				}
				members += "file:" + testkit.Image(t, fmt.Sprintf("m%d.img", i), n)
			}
			text := fmt.Sprintf("listen: 127.0.0.1:0\nstorage:\n  %s\n  members: [%s]\n", l.yaml, members)
			cfg, err := config.Parse(filepath.Join(dir, "storage.yaml"), []byte(text))
			require.NoError(t, err)
			ctx := testkit.Context(t, 60*time.Second)
			srv, err := serve.Start(ctx, cfg, testkit.Logger(t))
			require.NoError(t, err)
			rctx, cancel := context.WithCancel(ctx)
			ran := make(chan error, 1)
			go func() { ran <- srv.Run(rctx) }()
			defer func() { cancel(); require.NoError(t, <-ran) }()

			c, err := nbd.Dial(ctx, "tcp", srv.Addr().String(), nbd.ClientOptions{})
			require.NoError(t, err)
			size := c.Info().Size
			// Data across a member boundary (linear: 3 MiB + 12 KiB) and
			// across stripe chunks, holes elsewhere.
			runs := [][2]int64{{k64, 2 * k64}, {3 << 20, 4 * k64}, {size - k64, k64}}
			for _, r := range runs {
				p := make([]byte, r[1])
				for i := range p {
					p[i] = byte(i) | 1
				}
				require.NoError(t, c.WriteAt(ctx, p, r[0], 0))
			}
			require.NoError(t, c.Flush(ctx))
			require.NoError(t, c.Close())

			type entry struct {
				Offset, Length int64
				Type           int
			}
			var want []entry
			at := int64(0)
			for _, r := range runs {
				if r[0] > at {
					want = append(want, entry{at, r[0] - at, 3})
				}
				want = append(want, entry{r[0], r[1], 0})
				at = r[0] + r[1]
			}
			out, err := exec.CommandContext(ctx, "nbdinfo", "--map", "--json", "nbd://"+srv.Addr().String()+"/").CombinedOutput()
			require.NoError(t, err, "%s", out)
			var got []entry
			require.NoError(t, json.Unmarshal(out, &got), "%s", out)
			require.Equal(t, want, got)
		})
	}
}
