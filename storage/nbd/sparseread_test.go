package nbd_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	. "dst/storage/nbd"

	"dst/storage/nbd/nbdtest"
	"dst/storage/node"
)

// sparseReads is sparseBackend with cheap block status (SparseReadBackend)
// whose reads fail with EIO where they touch failAt (if not negative).
type sparseReads struct {
	*sparseBackend
	failAt int64
}

func (b *sparseReads) SparseReads() bool { return true }

func (b *sparseReads) ReadAt(ctx context.Context, p []byte, off int64) error {
	if b.failAt >= off && b.failAt < off+int64(len(p)) {
		return fmt.Errorf("bad sector: %w", EIO)
	}
	return b.sparseBackend.ReadAt(ctx, p, off)
}

// Data 256 KiB, hole 512 KiB, data 256 KiB, hole to the end (4 MiB).
func startSparseReads(t *testing.T, failAt int64) (string, []byte) {
	const size = 4 << 20
	b := &sparseReads{sparseBackend: &sparseBackend{Memory: node.NewMemory(size), runs: []int64{256 << 10, 512 << 10, 256 << 10, 3 << 20}}, failAt: -1}
	img := make([]byte, size)
	for _, r := range [][2]int{{0, 256 << 10}, {768 << 10, 1 << 20}} {
		for i := r[0]; i < r[1]; i++ {
			img[i] = byte(i*13) | 1
		}
		require.NoError(t, b.Memory.WriteAt(context.Background(), img[r[0]:r[1]], int64(r[0]), 0))
	}
	b.failAt = failAt
	_, addr := startServer(t, ServerOptions{Exports: []*Export{
		{Name: "sparse", Size: size, Flags: node.MemoryFlags, Backend: b},
	}})
	return addr, img
}

// chunk is one reply chunk as the wire carried it.
type chunk struct {
	flags, typ uint16
	off        uint64 // OFFSET_DATA, OFFSET_HOLE, ERROR_OFFSET
	n          int    // bytes of data or hole
	errno      Errno
}

// readChunks reads the chunks of one reply (up to DONE), checking each
// data chunk's bytes against img.
func (r *raw) readChunks(extended bool, img []byte) []chunk {
	r.t.Helper()
	var got []chunk
	for {
		var p []byte
		var rep Reply
		if extended {
			rep, p = r.extReply()
		} else {
			h := r.read(StructuredReplyBytes)
			require.NoError(r.t, DecodeReply(h, &rep))
			p = r.read(int(rep.Length))
		}
		c := chunk{flags: rep.Flags, typ: rep.Type}
		switch rep.Type {
		case ChunkOffsetData:
			c.off, c.n = be.Uint64(p), len(p)-8
			require.True(r.t, bytes.Equal(img[c.off:c.off+uint64(c.n)], p[8:]), "data chunk at %d", c.off)
		case ChunkOffsetHole:
			c.off, c.n = be.Uint64(p), int(be.Uint32(p[8:]))
		case ChunkErrorOffset:
			c.errno, c.off = Errno(be.Uint32(p)), be.Uint64(p[6+int(be.Uint16(p[4:])):])
		case ChunkError:
			c.errno = Errno(be.Uint32(p))
		}
		got = append(got, c)
		if rep.Flags&ChunkFlagDone != 0 {
			return got
		}
	}
}

// Per the NBD protocol document: holes of a structured read answered as
// OFFSET_HOLE chunks (where the backend knows, cheaply), DF honoured (one
// chunk), ERROR_OFFSET for a piece that failed after the ones before it
// went out; compact and extended headers alike.
func TestSparseReadReplies(t *testing.T) {
	const done = ChunkFlagDone
	for _, extended := range []bool{false, true} {
		t.Run(fmt.Sprint("extended=", extended), func(t *testing.T) {
			addr, img := startSparseReads(t, -1)
			r := dialRaw(t, addr, ClientFixedNewstyle|ClientNoZeroes)
			opt := OptStructuredReply
			if extended {
				opt = OptExtendedHeaders
			}
			r.option(opt, nil)
			typ, _ := r.reply(opt)
			require.Equal(t, RepAck, typ)
			_, typ = r.goExport(OptGo, "sparse")
			require.Equal(t, RepAck, typ)
			read := func(flags CmdFlags, off, n uint64) []chunk {
				if extended {
					r.extRequest(CmdRead, flags, 1, off, n, nil)
				} else {
					r.request(CmdRead, flags, 1, off, uint32(n), nil)
				}
				return r.readChunks(extended, img)
			}
			require.Equal(t, []chunk{
				{0, ChunkOffsetData, 0, 256 << 10, 0},
				{0, ChunkOffsetHole, 256 << 10, 512 << 10, 0},
				{done, ChunkOffsetData, 768 << 10, 256 << 10, 0},
			}, read(0, 0, 1<<20), "data, hole, data")
			require.Equal(t, []chunk{{done, ChunkOffsetHole, 1 << 20, 1 << 20, 0}}, read(0, 1<<20, 1<<20), "all hole")
			require.Equal(t, []chunk{{done, ChunkOffsetHole, 1 << 20, 1 << 20, 0}}, read(CmdFlagDF, 1<<20, 1<<20), "DF: one hole chunk")
			require.Equal(t, []chunk{{done, ChunkOffsetData, 0, 1 << 20, 0}}, read(CmdFlagDF, 0, 1<<20), "DF: one data chunk")
			require.Equal(t, []chunk{{done, ChunkOffsetData, 256 << 10, 64 << 10, 0}}, read(0, 256<<10, 64<<10), "64 KiB: read whole")
			require.Equal(t, []chunk{{done, ChunkOffsetData, 0, 256 << 10, 0}}, read(0, 0, 256<<10), "all data")
		})
	}

	t.Run("error-offset", func(t *testing.T) {
		addr, img := startSparseReads(t, 800<<10)
		r := dialRaw(t, addr, ClientFixedNewstyle|ClientNoZeroes)
		r.option(OptStructuredReply, nil)
		typ, _ := r.reply(OptStructuredReply)
		require.Equal(t, RepAck, typ)
		_, typ = r.goExport(OptGo, "sparse")
		require.Equal(t, RepAck, typ)
		r.request(CmdRead, 0, 1, 0, 2<<20, nil)
		require.Equal(t, []chunk{
			{0, ChunkOffsetData, 0, 256 << 10, 0},
			{0, ChunkOffsetHole, 256 << 10, 512 << 10, 0},
			{done, ChunkErrorOffset, 768 << 10, 0, EIO},
		}, r.readChunks(false, img), "the pieces before the failed one, then ERROR_OFFSET at it")
		r.request(CmdRead, CmdFlagDF, 2, 0, 2<<20, nil)
		require.Equal(t, []chunk{{done, ChunkError, 0, 0, EIO}}, r.readChunks(false, img), "DF: read whole, a plain error")
	})

	t.Run("simple", func(t *testing.T) {
		addr, img := startSparseReads(t, -1)
		r := dialRaw(t, addr, ClientFixedNewstyle|ClientNoZeroes)
		_, typ := r.goExport(OptGo, "sparse")
		require.Equal(t, RepAck, typ)
		r.request(CmdRead, 0, 1, 0, 1<<20, nil)
		errno, _ := r.simpleReply()
		require.Zero(t, errno)
		require.Equal(t, img[:1<<20], r.read(1<<20), "without structured replies: the bytes")
	})
}

// The client takes sparse replies: the bytes read equal the image, a
// failed piece fails the read and names the offset.
func TestClientSparseReads(t *testing.T) {
	ctx := context.Background()
	for _, extended := range []bool{false, true} {
		addr, img := startSparseReads(t, -1)
		c, err := Dial(ctx, "tcp", addr, ClientOptions{ExportName: "sparse", BlockStatus: true, ExtendedHeaders: extended})
		require.NoError(t, err)
		got := bytes.Repeat([]byte{0xee}, 4<<20)
		require.NoError(t, c.ReadAt(ctx, got, 0))
		require.True(t, bytes.Equal(img, got), "extended=%v", extended)
		c.Close()
	}
	addr, _ := startSparseReads(t, 800<<10)
	c, err := Dial(ctx, "tcp", addr, ClientOptions{ExportName: "sparse", BlockStatus: true})
	require.NoError(t, err)
	defer c.Close()
	err = c.ReadAt(ctx, make([]byte, 2<<20), 0)
	require.ErrorIs(t, err, EIO)
	require.ErrorContains(t, err, "at 786432")
}

// countingConn counts the bytes a connection received.
type countingConn struct {
	net.Conn
	n atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// dense is a file whose block status is not cheap: reads are sent whole.
type dense struct{ *node.File }

func (dense) SparseReads() bool { return false }

// BenchmarkSparseRead reads a 1 GiB file holding 64 MiB of data (16 runs
// of 4 MiB) in 1 MiB reads over structured replies, with hole replies
// (sparse) and without (dense): time and bytes received per pass.
func BenchmarkSparseRead(b *testing.B) {
	const size, run = 1 << 30, 4 << 20
	f, err := node.OpenFile(nbdtest.File(b, size), node.FileOptions{})
	require.NoError(b, err)
	defer f.Close()
	p := bytes.Repeat([]byte{0x5a}, run)
	for i := range int64(16) {
		require.NoError(b, f.WriteAt(context.Background(), p, i*(size/16), 0))
	}
	for _, c := range []struct {
		name    string
		backend Backend
	}{{"sparse", f}, {"dense", dense{f}}} {
		b.Run(c.name, func(b *testing.B) {
			_, addr := startServer(b, ServerOptions{Exports: []*Export{{Name: "f", Size: size, Flags: f.Flags(), Backend: c.backend}}})
			ctx := context.Background()
			raw, err := net.Dial("tcp", addr)
			require.NoError(b, err)
			conn := &countingConn{Conn: raw}
			cl, err := NewClient(ctx, conn, ClientOptions{ExportName: "f", BlockStatus: true})
			require.NoError(b, err)
			defer cl.Close()
			buf := make([]byte, 1<<20)
			b.SetBytes(size)
			start := conn.n.Load()
			for b.Loop() {
				for off := int64(0); off < size; off += int64(len(buf)) {
					if err := cl.ReadAt(ctx, buf, off); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(conn.n.Load()-start)/float64(b.N)/(1<<20), "MiB-received/op")
		})
	}
}
