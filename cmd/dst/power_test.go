package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/nbd"
)

// dialExport connects an NBD client to a dst export and asks its boot id.
func dialExport(t *testing.T, addr string) (*nbd.Client, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := nbd.Dial(ctx, "tcp", addr, nbd.ClientOptions{Fence: &nbd.Fence{Session: uint64(time.Now().UnixNano()), Generation: 1}})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c, c.Info().BootID
}

// TestExportPowerCutLosesOnlyUnflushedWrites runs dst export with a
// volatile cache: a write flushed (or FUA) survives SIGPWR, one that was
// not is lost; SIGUSR1 (a crash of the process alone) keeps everything;
// the restarted node reports the boot id it is given.
func TestExportPowerCutLosesOnlyUnflushedWrites(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	img := testkit.Image(t, "disk.img", 1<<20)
	flags := []string{"--volatile-cache", "1MiB", "--boot-id", "boot-1"}
	p := startExport(t, "127.0.0.1:0", img, flags...)
	c, boot := dialExport(t, p.addrs[0])
	require.Equal(t, "boot-1", boot)
	flushed, fua, lost := bytes.Repeat([]byte{1}, 8192), bytes.Repeat([]byte{2}, 4096), bytes.Repeat([]byte{3}, 4096)
	require.NoError(t, c.WriteAt(ctx, flushed, 0, 0))
	require.NoError(t, c.Flush(ctx))
	require.NoError(t, c.WriteAt(ctx, fua, 65536, nbd.CmdFlagFUA))
	require.NoError(t, c.WriteAt(ctx, lost, 131072, 0))
	got := make([]byte, 4096)
	require.NoError(t, c.ReadAt(ctx, got, 131072))
	require.Equal(t, lost, got, "the node reads its cache")
	require.Equal(t, exitMachineLost, p.stop(t, syscall.SIGPWR))

	data, err := os.ReadFile(img)
	require.NoError(t, err)
	require.Equal(t, flushed, data[:8192])
	require.Equal(t, fua, data[65536:65536+4096])
	require.Equal(t, make([]byte, 4096), data[131072:131072+4096], "the unflushed write is lost")

	p = startExport(t, "127.0.0.1:0", img, "--volatile-cache", "1MiB", "--boot-id", "boot-2")
	c, boot = dialExport(t, p.addrs[0])
	require.Equal(t, "boot-2", boot)
	require.NoError(t, c.WriteAt(ctx, lost, 131072, 0))
	require.Equal(t, exitMachineLost, p.stop(t, syscall.SIGUSR1))
	data, err = os.ReadFile(img)
	require.NoError(t, err)
	require.Equal(t, lost, data[131072:131072+4096], "a crash of the process alone keeps the cache")
}

// TestExportMediaFaultsReload injects a latent read error from a rules
// file, and heals it with SIGHUP after the file is emptied.
func TestExportMediaFaultsReload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	img := testkit.Image(t, "disk.img", 1<<20)
	rules := filepath.Join(t.TempDir(), "faults.json")
	require.NoError(t, os.WriteFile(rules, []byte(`{"rules": [{"op": "read", "offset": 4096, "length": 512, "action": "eio"}]}`), 0o644))
	p := startExport(t, "127.0.0.1:0", img, "--faults", rules)
	c, _ := dialExport(t, p.addrs[0])
	buf := make([]byte, 4096)
	require.NoError(t, c.ReadAt(ctx, buf, 0))
	require.ErrorIs(t, c.ReadAt(ctx, buf, 4096), nbd.EIO)
	require.NoError(t, os.WriteFile(rules, nil, 0o644))
	require.NoError(t, p.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool { return c.ReadAt(ctx, buf, 4096) == nil }, 10*time.Second, 20*time.Millisecond)

	code, _, errOut := runDst(t, "export", "--file", img, "--faults", filepath.Join(t.TempDir(), "none.json"))
	require.Equal(t, exitRuntime, code)
	require.Contains(t, errOut, "none.json")
	code, _, errOut = runDst(t, "export", "--file", img, "--torn-percent", "120")
	require.Equal(t, exitUsage, code)
	require.Contains(t, errOut, "--torn-percent 120")
}
