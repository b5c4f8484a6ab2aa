package nbd_test

import (
	"context"
	"net"
	"testing"

	"github.com/stretchr/testify/require"

	"dst/storage/nbd"
	"dst/storage/nbd/nbdtest"
	"dst/storage/node"
)

// With ClientOptions.BlockStatus the connection carries structured
// replies: the whole conformance run passes over them against dst,
// nbdkit, qemu-nbd (which answers reads of holes with OFFSET_HOLE chunks)
// and nbd-server, and block status of a sparse image shows the data
// written and holes elsewhere, where the server offers base:allocation.
func TestClientStructuredAndBlockStatus(t *testing.T) {
	type peer struct {
		name, network, addr, export string
	}
	peers := []func(t *testing.T) peer{
		func(t *testing.T) peer {
			f, err := node.OpenFile(nbdtest.File(t, peerSize), node.FileOptions{})
			require.NoError(t, err)
			t.Cleanup(func() { f.Close() })
			srv, err := nbd.NewServer(nbd.ServerOptions{Exports: []*nbd.Export{{Name: "f", Size: peerSize, Flags: f.Flags(), Backend: f}}})
			require.NoError(t, err)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			go srv.Serve(context.Background(), ln)
			t.Cleanup(func() { srv.Shutdown(context.Background()) })
			return peer{"dst", "tcp", ln.Addr().String(), "f"}
		},
	}
	for _, start := range []func(testing.TB, int64) *nbdtest.Peer{nbdtest.Nbdkit, nbdtest.QemuNBD, nbdtest.NBDServer} {
		peers = append(peers, func(t *testing.T) peer {
			p := start(t, peerSize)
			return peer{p.Name, p.Network, p.Addr, p.Export}
		})
	}
	for _, start := range peers {
		for _, extended := range []bool{false, true} {
			t.Run(map[bool]string{false: "compact", true: "extended"}[extended], func(t *testing.T) {
				p := start(t) // a fresh image: the run leaves data behind
				structuredPeer(t, p.name, p.network, p.addr, p.export, extended)
			})
		}
	}
}

// structuredPeer runs TestClientStructuredAndBlockStatus against one peer,
// asking for extended headers too if extended (only dst has them: the NBD
// tools in Debian 12 predate them, so the others must fall back to
// compact headers unchanged).
func structuredPeer(t *testing.T, name, network, addr, export string, extended bool) {
	t.Logf("peer %s", name)
	ctx := context.Background()
	c, err := nbd.Dial(ctx, network, addr, nbd.ClientOptions{ExportName: export, BlockStatus: true, ExtendedHeaders: extended})
	require.NoError(t, err)
	defer c.Close()
	info := c.Info()
	t.Logf("structured %v, extended %v, base:allocation %v (id %d)", info.Structured, info.Extended, info.Allocation, info.AllocationID)
	if name != "nbd-server" {
		require.True(t, info.Structured)
		require.True(t, info.Allocation)
	}
	require.Equal(t, extended && name == "dst", info.Extended)

	// Data at 1 MiB, holes around it (the image is sparse).
	data := make([]byte, 256<<10)
	for i := range data {
		data[i] = byte(i*7) | 1
	}
	require.NoError(t, c.WriteAt(ctx, data, 1<<20, 0))
	require.NoError(t, c.Flush(ctx))
	got := make([]byte, 2<<20)
	require.NoError(t, c.ReadAt(ctx, got, 0))
	require.Equal(t, make([]byte, 1<<20), got[:1<<20], "a hole reads as zeroes")
	require.Equal(t, data, got[1<<20:1<<20+len(data)])

	// conformance expects a device of zeroes.
	defer func() { require.NoError(t, c.WriteAt(ctx, make([]byte, len(data)), 1<<20, 0)); conformance(t, c) }()
	if !info.Allocation {
		_, err := c.BlockStatus(ctx, 0, 4096, make([]nbd.Extent, 0, 1))
		require.ErrorIs(t, err, nbd.ErrUnsupported)
		return
	}
	var exts []nbd.Extent
	for off := int64(0); off < 4<<20; {
		e, err := c.BlockStatus(ctx, off, uint64(4<<20-off), make([]nbd.Extent, 0, 64))
		require.NoError(t, err)
		for _, x := range e {
			require.Positive(t, x.Length)
			off += x.Length
		}
		exts = append(exts, e...)
	}
	at := int64(0)
	sawHole := false
	for _, x := range exts {
		overlapsData := at < 1<<20+int64(len(data)) && at+x.Length > 1<<20
		if overlapsData {
			require.Zero(t, x.Flags&nbd.StateZero, "written data at %d+%d is not zero", at, x.Length)
		}
		if x.Flags&nbd.StateHole != 0 {
			sawHole = true
		}
		at += x.Length
	}
	require.Equal(t, int64(4<<20), at, "descriptors cover the range once, in order")
	require.True(t, sawHole, "the sparse image shows a hole: %v", exts)

	one, err := c.BlockStatus(ctx, 0, 4<<20, make([]nbd.Extent, 0, 64))
	require.NoError(t, err)
	require.NotEmpty(t, one)
}
