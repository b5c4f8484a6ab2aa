// Client tests: the pipelined client runs one conformance workload —
// concurrent unaligned writes, reads verified byte by byte, flush, trim and
// write-zeroes — against the dst server and against nbdkit, qemu-nbd and
// nbd-server, and its failure handling is checked on a server that dies.
package nbd_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"dst/storage/nbd"
	"dst/storage/nbd/nbdtest"
	"dst/storage/node"
)

const peerSize = 16 << 20

// conformance drives c with a seeded workload and checks every byte.
func conformance(t *testing.T, c *nbd.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	info := c.Info()
	require.Equal(t, int64(peerSize), info.Size)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d, flags %v, blocks %d/%d/%d", seed, info.Flags, info.MinBlock, info.PreferredBlock, info.MaxBlock)
	rng := rand.New(rand.NewPCG(seed, 1))
	model := make([]byte, peerSize)
	align := int64(info.MinBlock)

	// Non-overlapping writes in parallel: 64 slots of 256 KiB, each written
	// at an unaligned (where allowed) offset inside its slot.
	const slot = 256 << 10
	g, gctx := errgroup.WithContext(ctx)
	for i := range peerSize / slot {
		off := int64(i*slot) + rng.Int64N(4096)/align*align
		n := (1 + rng.Int64N(slot-4096)) / align * align
		if n == 0 {
			n = align
		}
		p := make([]byte, n)
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		copy(model[off:], p)
		g.Go(func() error { return c.WriteAt(gctx, p, off, 0) })
	}
	require.NoError(t, g.Wait())
	if info.Flags&nbd.FlagSendFlush != 0 {
		require.NoError(t, c.Flush(ctx))
	}
	// A FUA write, and one 8 MiB request.
	if info.Flags&nbd.FlagSendFUA != 0 {
		p := bytes.Repeat([]byte{0xfa}, 8192)
		copy(model[8192:], p)
		require.NoError(t, c.WriteAt(ctx, p, 8192, nbd.CmdFlagFUA))
	}
	big := make([]byte, min(8<<20, int(info.MaxBlock)))
	require.NoError(t, c.ReadAt(ctx, big, 1<<20))
	require.True(t, bytes.Equal(model[1<<20:1<<20+len(big)], big), "8 MiB read differs")

	// Concurrent reads of random ranges, each compared with the model.
	g, gctx = errgroup.WithContext(ctx)
	for range 256 {
		off := rng.Int64N(peerSize-70000) / align * align
		n := (1 + rng.Int64N(65536)) / align * align
		if n == 0 {
			n = align
		}
		g.Go(func() error {
			p := make([]byte, n)
			if err := c.ReadAt(gctx, p, off); err != nil {
				return err
			}
			if !bytes.Equal(p, model[off:off+n]) {
				return errors.New("read differs from what was written")
			}
			return nil
		})
	}
	require.NoError(t, g.Wait())

	zero := make([]byte, 65536)
	if info.Flags&nbd.FlagSendWriteZero != 0 {
		require.NoError(t, c.WriteZeroes(ctx, 65536, 65536, 0))
		got := make([]byte, 65536)
		require.NoError(t, c.ReadAt(ctx, got, 65536))
		require.Equal(t, zero, got, "write zeroes did not read back as zeroes")
	}
	if info.Flags&nbd.FlagSendTrim != 0 {
		require.NoError(t, c.Trim(ctx, 1<<20, 65536, 0))
	}
	// Out of range is refused by the server (or by its client checks) and
	// the connection stays usable.
	err := c.ReadAt(ctx, make([]byte, 4096), peerSize)
	require.Error(t, err)
	require.NoError(t, c.ReadAt(ctx, make([]byte, 4096), 0))
}

func TestClientAgainstDst(t *testing.T) {
	m := node.NewMemory(peerSize)
	srv, err := nbd.NewServer(nbd.ServerOptions{Exports: []*nbd.Export{{Name: "mem", Size: peerSize,
		Flags: nbd.FlagSendFlush | nbd.FlagSendFUA | nbd.FlagSendTrim | nbd.FlagSendWriteZero | nbd.FlagCanMultiConn, Backend: m}}})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(context.Background(), ln)
	defer srv.Shutdown(context.Background())
	c, err := nbd.Dial(context.Background(), "tcp", ln.Addr().String(), nbd.ClientOptions{})
	require.NoError(t, err)
	defer c.Close()
	conformance(t, c)
}

func TestClientAgainstPeers(t *testing.T) {
	for _, start := range []func(testing.TB, int64) *nbdtest.Peer{nbdtest.Nbdkit, nbdtest.QemuNBD, nbdtest.NBDServer} {
		t.Run("", func(t *testing.T) {
			p := start(t, peerSize)
			t.Logf("peer %s", p.Name)
			c, err := nbd.Dial(context.Background(), p.Network, p.Addr, nbd.ClientOptions{ExportName: p.Export})
			require.NoError(t, err)
			defer c.Close()
			conformance(t, c)
		})
	}
}

// A server that goes away fails everything in flight with ErrClosed, and
// later requests fail at once.
func TestClientServerDies(t *testing.T) {
	p := nbdtest.Nbdkit(t, peerSize)
	conn, err := net.Dial(p.Network, p.Addr)
	require.NoError(t, err)
	c, err := nbd.NewClient(context.Background(), conn, nbd.ClientOptions{})
	require.NoError(t, err)
	defer c.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Go(func() { errs <- c.ReadAt(context.Background(), make([]byte, 4096), int64(i)*4096) })
	}
	conn.Close() // the network drops under the client
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			require.ErrorIs(t, err, nbd.ErrClosed)
		}
	}
	<-c.Done()
	require.ErrorIs(t, c.ReadAt(context.Background(), make([]byte, 1), 0), nbd.ErrClosed)
}

// A request whose context ends is abandoned by closing the connection:
// the caller's buffer is never written after the call returned.
func TestClientContextAbandons(t *testing.T) {
	m := node.NewMemory(4096)
	block := make(chan struct{})
	srv, err := nbd.NewServer(nbd.ServerOptions{Exports: []*nbd.Export{{Size: 4096, Backend: slowBackend{m, block}}}})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(context.Background(), ln)
	defer func() { close(block); srv.Shutdown(context.Background()) }()
	c, err := nbd.Dial(context.Background(), "tcp", ln.Addr().String(), nbd.ClientOptions{})
	require.NoError(t, err)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, c.ReadAt(ctx, make([]byte, 512), 0), context.DeadlineExceeded)
	<-c.Done()
}

type slowBackend struct {
	*node.Memory
	block chan struct{}
}

func (s slowBackend) ReadAt(ctx context.Context, p []byte, off int64) error {
	<-s.block
	return s.Memory.ReadAt(ctx, p, off)
}

// TestNegotiate: the handshake alone, as the kernel attach path uses it —
// an unknown export is refused with the server's reply, a known one leaves
// the connection at the start of transmission, so a raw request written
// next (as the driver would) is answered.
func TestNegotiate(t *testing.T) {
	mem := node.NewMemory(1 << 20)
	require.NoError(t, mem.WriteAt(context.Background(), []byte("negotiated"), 4096, 0))
	srv, err := nbd.NewServer(nbd.ServerOptions{Exports: []*nbd.Export{
		{Name: "a", Size: mem.Size(), Flags: mem.Flags(), Backend: mem},
		{Name: "b", Size: mem.Size(), Flags: mem.Flags(), Backend: mem},
	}})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	client, server := net.Pipe()
	go func() { _ = srv.ServeConn(ctx, server) }()
	_, _, err = nbd.Negotiate(ctx, client, nbd.ClientOptions{ExportName: "nope"})
	var oe *nbd.OptionError
	require.ErrorAs(t, err, &oe)
	require.Equal(t, nbd.RepErrUnknown, oe.Reply)
	require.ErrorContains(t, err, `export "nope"`)
	client.Close()

	client, server = net.Pipe()
	defer client.Close()
	go func() { _ = srv.ServeConn(ctx, server) }()
	info, conn, err := nbd.Negotiate(ctx, client, nbd.ClientOptions{ExportName: "b"})
	require.NoError(t, err)
	require.Equal(t, client, conn, "no TLS: the same connection")
	require.Equal(t, int64(1<<20), info.Size)
	require.NotZero(t, info.Flags&nbd.FlagSendFlush)
	var hdr [28]byte
	nbd.EncodeRequest(hdr[:], &nbd.Request{Cmd: nbd.CmdRead, Cookie: 7, Offset: 4096, Length: 10})
	go func() { _, _ = conn.Write(hdr[:]) }()
	reply := make([]byte, 16+10)
	_, err = io.ReadFull(conn, reply)
	require.NoError(t, err)
	require.Equal(t, uint32(0x67446698), binary.BigEndian.Uint32(reply), "simple reply magic")
	require.Zero(t, binary.BigEndian.Uint32(reply[4:]), "errno")
	require.Equal(t, uint64(7), binary.BigEndian.Uint64(reply[8:]), "cookie")
	require.Equal(t, "negotiated", string(reply[16:]))
}
