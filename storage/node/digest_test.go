package node_test

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"dst/storage/nbd"
	"dst/storage/node"
)

// Every read of a digest node, at any offset and length, returns the
// CRC-32C of each 4 KiB block of the node below, the last partial block
// hashed as it is; writes are refused.
func TestDigests(t *testing.T) {
	ctx := context.Background()
	const size = 10*node.DigestBlock + 1234
	m := node.NewMemory(size)
	rng := rand.New(rand.NewPCG(3, 4))
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	require.NoError(t, m.WriteAt(ctx, data, 0, 0))
	d := node.NewDigests(m)
	require.Equal(t, int64(11*node.DigestSize), d.Size())
	want := make([]byte, d.Size())
	for k := range 11 {
		blk := data[k*node.DigestBlock : min((k+1)*node.DigestBlock, size)]
		binary.BigEndian.PutUint32(want[k*4:], node.Digest(blk))
	}
	for range 200 {
		off := rng.Int64N(d.Size())
		n := rng.Int64N(d.Size()-off) + 1
		got := make([]byte, n)
		require.NoError(t, d.ReadAt(ctx, got, off))
		require.Equal(t, want[off:off+n], got, "read %d at %d", n, off)
	}
	require.ErrorIs(t, d.ReadAt(ctx, make([]byte, 5), d.Size()-4), nbd.EINVAL)
	require.ErrorIs(t, d.WriteAt(ctx, []byte{1}, 0, 0), nbd.EPERM)
	require.NotZero(t, d.Flags()&nbd.FlagReadOnly)
}

func TestDigestURL(t *testing.T) {
	for in, want := range map[string]string{
		"nbd://127.0.0.1:10809/disk":        "nbd://127.0.0.1:10809/disk:crc32c",
		"nbd://127.0.0.1:10809":             "nbd://127.0.0.1:10809/:crc32c",
		"nbds://[::1]:7/a%20b":              "nbds://[::1]:7/a%20b:crc32c",
		"nbd+unix:///disk?socket=/tmp/sock": "nbd+unix:///disk:crc32c?socket=%2Ftmp%2Fsock",
	} {
		got, ok := node.DigestURL(in)
		require.True(t, ok, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"file:/tmp/a.img", "/tmp/a.img", "memory:1MiB"} {
		_, ok := node.DigestURL(in)
		require.False(t, ok, in)
	}
}
