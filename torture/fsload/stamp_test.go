// Stamps are a pure function of (seed, id, gen, offset) that any slice of a
// file regenerates identically, and a block's header decodes back to its
// writer; proved by filling whole ranges and random sub-ranges and comparing.
package fsload

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestStampRandomAccess(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	whole := make([]byte, 5*BlockSize+123)
	FillStamp(whole, 7, 42, 3, 0)
	for range 200 {
		off := rng.Int64N(int64(len(whole)))
		n := 1 + rng.Int64N(int64(len(whole))-off)
		part := make([]byte, n)
		FillStamp(part, 7, 42, 3, off)
		require.Equal(t, whole[off:off+n], part, "seed 7 id 42 gen 3 off %d len %d", off, n)
	}
}

func TestStampHeader(t *testing.T) {
	b := make([]byte, 3*BlockSize)
	FillStamp(b, 0xfeed, 9, 4, 8*BlockSize)
	for i := range 3 {
		st, ok := DecodeStamp(b[i*BlockSize:])
		require.True(t, ok)
		require.Equal(t, Stamp{Seed: 0xfeed, ID: 9, Gen: 4, Offset: int64(8+i) * BlockSize}, st)
	}
	_, ok := DecodeStamp(b[1:])
	require.False(t, ok, "a header is recognised only at a block start")
}

func TestStampsDiffer(t *testing.T) {
	base := make([]byte, BlockSize)
	FillStamp(base, 1, 1, 1, 0)
	for _, v := range []struct {
		seed, id uint64
		gen      uint32
		off      int64
	}{{2, 1, 1, 0}, {1, 2, 1, 0}, {1, 1, 2, 0}, {1, 1, 1, BlockSize}} {
		o := make([]byte, BlockSize)
		FillStamp(o, v.seed, v.id, v.gen, v.off)
		require.NotEqual(t, base[HeaderSize:], o[HeaderSize:], "%+v", v)
	}
	zero := make([]byte, 100)
	FillStamp(zero, 1, 1, 0, 0)
	require.Equal(t, make([]byte, 100), zero, "generation 0 is zeros")
}

func TestDescribeFound(t *testing.T) {
	blk := make([]byte, BlockSize)
	FillStamp(blk, 5, 6, 7, 2*BlockSize)
	require.Contains(t, describeFound(blk[100:116], blk, 2*BlockSize+100), "file 6 gen 7 seed 0x5 block at 8192; bytes match")
	bad := append([]byte(nil), blk[100:116]...)
	bad[0] ^= 0xff
	require.Contains(t, describeFound(bad, blk, 2*BlockSize+100), "do not match")
	require.Contains(t, describeFound(make([]byte, 16), make([]byte, HeaderSize), 100), "zeros")
}
