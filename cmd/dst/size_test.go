package main

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/size"
	"dst/storage/config"
	"dst/torture/scenario"
)

// TestSizesAgree: `dst export --size`, --volatile-cache, the config file and
// the scenario file read a size with one rule (IEC units; SI refused with a
// hint, since 64KB reads as 64 KiB to storage people) and one error text.
func TestSizesAgree(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.img")
	cases := []struct {
		in      string
		want    int64  // 0: refused
		wantErr string // the parser's own text, which every path must show
	}{
		{in: "65536", want: 64 << 10},
		{in: "64KiB", want: 64 << 10},
		{in: "1 MiB", want: 1 << 20},
		{in: "0.5MiB", want: 512 << 10},
		{in: "1GiB", want: 1 << 30},
		{in: "64KB", wantErr: `"64KB" is not a size (use 64KiB)`},
		{in: "10GB", wantErr: `"10GB" is not a size (use 10GiB)`},
		{in: "1M", wantErr: `"1M" is not a size (use 1MiB)`},
		{in: "1.5", wantErr: `"1.5" is not a whole number of bytes`},
		{in: "abc", wantErr: `"abc" is not a size`},
		{in: "5 furlongs", wantErr: `unknown unit "furlongs"`},
	}
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			n, err := size.Parse(c.in)
			if c.wantErr != "" {
				require.ErrorContains(t, err, c.wantErr)
			} else {
				require.NoError(t, err)
				require.Equal(t, c.want, n)
			}

			o := &exportFlags{listen: "127.0.0.1:0", files: multiFlag{img}, sizes: multiFlag{c.in},
				volatileCache: c.in, logLevel: "info", shutdownTimeout: time.Second, maxConns: 1, tornPercent: 50}
			cfg, err := o.config()
			if c.wantErr != "" {
				require.ErrorContains(t, err, c.wantErr, "dst export")
			} else {
				require.NoError(t, err, "dst export")
				require.Equal(t, c.want, cfg.Exports[0].Size, "dst export --size")
				require.Equal(t, c.want, cfg.Exports[0].Volatile.MaxBytes, "dst export --volatile-cache")
			}

			conf := fmt.Sprintf("region_size: %s\nstorage: {layout: mirror, members: [file:/a, file:/b]}\n", c.in)
			cf, err := config.Parse("storage.yaml", []byte(conf))
			if c.wantErr != "" {
				require.ErrorContains(t, err, c.wantErr, "config")
			} else {
				require.NoError(t, err, "config")
				require.Equal(t, c.want, cf.RegionSize, "config region_size")
			}

			sc := fmt.Sprintf("name: t\nduration: 1m\ntopology:\n  nodes: [{name: a, size: 2MiB}]\n  storage: a\n"+
				"workload: {filesystems: [ext4], write_budget: %s}\n", c.in)
			s, err := scenario.Parse("t.yaml", []byte(sc))
			if c.wantErr != "" {
				require.ErrorContains(t, err, c.wantErr, "scenario")
			} else {
				require.NoError(t, err, "scenario")
				require.Equal(t, c.want, s.Workload.WriteBudget, "scenario write_budget")
			}
		})
	}
}
