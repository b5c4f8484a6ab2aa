// The fallbacks of File that a healthy ext4 never takes — no hole
// punching, no ZERO_RANGE, no RWF_DSYNC — still keep the contracts (zeroes
// written in chunks, FAST_ZERO refused with ENOTSUP, TRIM a harmless no-op,
// FUA durable through fdatasync), checked by switching the probes off.
package node

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"dst/storage/nbd"
)

func openFilled(t *testing.T, size int) *File {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	require.NoError(t, os.WriteFile(p, bytes.Repeat([]byte{0xee}, size), 0o644))
	f, err := OpenFile(p, FileOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

func TestFileSlowPaths(t *testing.T) {
	ctx := context.Background()
	const size = 4 << 20
	f := openFilled(t, size)
	f.noPunch.Store(true)
	f.noZeroRange.Store(true)
	f.noDSync.Store(true)

	// 2.5 MiB from an odd offset: three chunks of the shared zero buffer.
	off, n := int64(123), int64(5<<19)
	require.NoError(t, f.WriteZeroes(ctx, off, n, 0))
	got := make([]byte, size)
	require.NoError(t, f.ReadAt(ctx, got, 0))
	require.Equal(t, bytes.Repeat([]byte{0xee}, int(off)), got[:off])
	require.Equal(t, make([]byte, n), got[off:off+n])
	require.Equal(t, bytes.Repeat([]byte{0xee}, int(size-off-n)), got[off+n:])
	require.Equal(t, make([]byte, len(zeroes)), zeroes[:], "the shared zero buffer stays zero")

	err := f.WriteZeroes(ctx, 3<<20, 4096, nbd.CmdFlagFastZero)
	require.ErrorIs(t, err, nbd.ENOTSUP, "FAST_ZERO refuses the slow path")
	require.NoError(t, f.ReadAt(ctx, got[:4096], 3<<20))
	require.Equal(t, bytes.Repeat([]byte{0xee}, 4096), got[:4096], "a refused FAST_ZERO touches nothing")

	require.NoError(t, f.Trim(ctx, 0, 4096, nbd.CmdFlagFUA), "trim without support succeeds")
	require.NoError(t, f.WriteAt(ctx, []byte("durable"), 10, nbd.CmdFlagFUA), "FUA through fdatasync")
	require.NoError(t, f.ReadAt(ctx, got[:7], 10))
	require.Equal(t, "durable", string(got[:7]))

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	err = f.WriteZeroes(cancelled, 0, 4096, nbd.CmdFlagNoHole)
	require.ErrorIs(t, err, context.Canceled, "the slow path stops when the server does")
}

func TestFileFlagsWithoutPunch(t *testing.T) {
	f := openFilled(t, 4096)
	f.noPunch.Store(true)
	require.Zero(t, f.Flags()&nbd.FlagSendFastZero, "no fast zero where nothing is fast")
}

func TestFileFUAUsesRWFDSync(t *testing.T) {
	f := openFilled(t, 4096)
	require.NoError(t, f.WriteAt(context.Background(), []byte("fua"), 0, nbd.CmdFlagFUA))
	require.False(t, f.noDSync.Load(), "pwritev2(RWF_DSYNC) works on this kernel (Linux >= 4.7)")
}
