// Steady-state allocation tests and benchmarks: a read and a write through
// the pipelined client, the loopback connection and the concurrent server
// (both sides in this process) must allocate nothing once warmed up.
package nbd_test

import (
	"context"
	"net"
	"testing"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	. "dst/storage/nbd"

	"dst/storage/nbd/nbdtest"
	"dst/storage/node"
	"dst/storage/node/nodetest"
)

func benchPair(tb testing.TB, size int) *Client {
	_, addr := singleExport(tb, size)
	return dial(tb, addr, ClientOptions{})
}

// benchPairInPlace is benchPair over a backend with the in-place path.
func benchPairInPlace(tb testing.TB, size int) *Client {
	m := nodetest.NewNowait(size)
	_, addr := startServer(tb, ServerOptions{Exports: []*Export{{Name: "mem", Size: int64(size), Flags: node.MemoryFlags, Backend: m}}})
	return dial(tb, addr, ClientOptions{})
}

func TestSteadyStateAllocatesNothing(t *testing.T) {
	testkit.SkipUnderRace(t)
	t.Run("workers", func(t *testing.T) { allocsPerRequest(t, benchPair(t, 1<<20)) })
	t.Run("in place", func(t *testing.T) { allocsPerRequest(t, benchPairInPlace(t, 1<<20)) })
}

func allocsPerRequest(t *testing.T, c *Client) {
	ctx := context.Background()
	buf := make([]byte, 4096)
	big := make([]byte, 256<<10)
	for _, tc := range []struct {
		name string
		op   func() error
	}{
		{"read 4k", func() error { return c.ReadAt(ctx, buf, 8192) }},
		{"write 4k", func() error { return c.WriteAt(ctx, buf, 8192, 0) }},
		{"write 4k fua", func() error { return c.WriteAt(ctx, buf, 4096, CmdFlagFUA) }},
		{"read 256k", func() error { return c.ReadAt(ctx, big, 0) }},
		{"write 256k", func() error { return c.WriteAt(ctx, big, 0, 0) }},
		{"flush", func() error { return c.Flush(ctx) }},
	} {
		for range 100 { // warm the pools and the connection's buffers
			require.NoError(t, tc.op(), tc.name)
		}
		var err error
		allocs := testing.AllocsPerRun(500, func() {
			if e := tc.op(); e != nil {
				err = e
			}
		})
		require.NoError(t, err)
		require.Zero(t, allocs, "%s allocates %.2f times per request", tc.name, allocs)
	}
}

func benchOp(b *testing.B, size int, parallel int, write bool) {
	c := benchPair(b, 64<<20)
	ctx := context.Background()
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.SetParallelism(parallel)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, size)
		off := int64(0)
		for pb.Next() {
			var err error
			if write {
				err = c.WriteAt(ctx, buf, off, 0)
			} else {
				err = c.ReadAt(ctx, buf, off)
			}
			if err != nil {
				b.Fatal(err)
			}
			off = (off + int64(size)) % (64<<20 - int64(size))
		}
	})
}

func BenchmarkRead4KQD1(b *testing.B)   { benchOp(b, 4096, 1, false) }
func BenchmarkRead4KQD32(b *testing.B)  { benchOp(b, 4096, 16, false) }
func BenchmarkWrite4KQD32(b *testing.B) { benchOp(b, 4096, 16, true) }
func BenchmarkRead1MQD8(b *testing.B)   { benchOp(b, 1<<20, 4, false) }
func BenchmarkWrite1MQD8(b *testing.B)  { benchOp(b, 1<<20, 4, true) }

// BenchmarkTCPPingPong4K is the floor for a QD1 request: one 4 KiB message
// each way over loopback TCP, nothing else.
func BenchmarkTCPPingPong4K(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 4096)
		for {
			if _, err := readFull(c, buf[:32]); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(b, err)
	defer c.Close()
	req, buf := make([]byte, 32), make([]byte, 4096)
	b.SetBytes(4096)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := readFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
}

func readFull(c net.Conn, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := c.Read(p[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// TestSparseReadAllocatesNothing: a large structured read of a file with
// holes (block status asked, chunks laid out) allocates nothing once
// warmed up, nor does a block status request.
func TestSparseReadAllocatesNothing(t *testing.T) {
	testkit.SkipUnderRace(t)
	const size = 8 << 20
	f, err := node.OpenFile(nbdtest.File(t, size), node.FileOptions{})
	require.NoError(t, err)
	defer f.Close()
	ctx := context.Background()
	require.NoError(t, f.WriteAt(ctx, make([]byte, 64<<10), 1<<20, 0)) // data at 1 MiB, holes around it
	require.NoError(t, f.WriteAt(ctx, []byte{1}, 1<<20, 0))
	_, addr := startServer(t, ServerOptions{Exports: []*Export{{Name: "f", Size: size, Flags: f.Flags(), Backend: f}}})
	c := dial(t, addr, ClientOptions{ExportName: "f", BlockStatus: true})
	buf := make([]byte, 1<<20)
	exts := make([]Extent, 0, 16)
	for _, tc := range []struct {
		name string
		op   func() error
	}{
		{"read data and holes", func() error { return c.ReadAt(ctx, buf, 512<<10) }},
		{"read a hole", func() error { return c.ReadAt(ctx, buf, 4<<20) }},
		{"block status", func() error { _, err := c.BlockStatus(ctx, 0, size, exts[:0]); return err }},
	} {
		for range 50 {
			require.NoError(t, tc.op(), tc.name)
		}
		var err error
		allocs := testing.AllocsPerRun(200, func() {
			if e := tc.op(); e != nil {
				err = e
			}
		})
		require.NoError(t, err)
		require.Zero(t, allocs, "%s allocates %.2f times per request", tc.name, allocs)
	}
}
