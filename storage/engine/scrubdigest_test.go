package engine

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/export"
	"dst/storage/nbd"
	"dst/storage/node"
	"dst/storage/spec"
)

// serveMemory serves m over NBD on loopback until the test ends: as dst
// export does (with its digest export), or as a foreign server does
// (nbd.Server alone: no digests). It returns the member URL.
func serveMemory(t *testing.T, m *node.Memory, dst bool) string {
	return serveMemoryAs(t, m, dst, false)
}

// serveMemoryAs is serveMemory; ignoreNames makes the foreign server
// answer the digest export's name with the data (as nbdkit's file plugin
// answers any name).
func serveMemoryAs(t *testing.T, m *node.Memory, dst, ignoreNames bool) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var ln net.Listener
	if dst {
		srv, err := export.New(export.Config{Listen: "127.0.0.1:0", Exports: []export.ExportConfig{{Name: "d", Node: kept{m}}}})
		require.NoError(t, err)
		ln, err = srv.Listen(ctx)
		require.NoError(t, err)
		go func() { done <- srv.Serve(ctx, ln) }()
		t.Cleanup(func() { cancel(); <-done; srv.Close() })
	} else {
		exps := []*nbd.Export{{Name: "d", Size: m.Size(), Flags: m.Flags(), Backend: m}}
		if ignoreNames {
			exps = append(exps, &nbd.Export{Name: "d" + node.DigestSuffix, Size: m.Size(), Flags: m.Flags(), Backend: m})
		}
		srv, err := nbd.NewServer(nbd.ServerOptions{Exports: exps})
		require.NoError(t, err)
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		go func() { done <- srv.Serve(ctx, ln) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	return fmt.Sprintf("nbd://%s/d", ln.Addr())
}

// A scrub of a mirror of two dst exports compares by the digests the
// nodes compute: a clean storage sends 4 bytes per 4 KiB and no data; a
// flipped bit makes its region (only) be read, found exactly and
// repaired. With a foreign server as one replica every region is read.
func TestScrubByDigests(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	const raw = 4 << 20
	opts := node.OpenOptions{ConnectTimeout: time.Second}
	open := func(ctx context.Context, u string) (node.Node, error) { return node.Open(ctx, u, opts) }
	for _, tc := range []struct {
		name                 string
		foreign, ignoreNames bool
	}{{"dst exports", false, false}, {"a foreign server", true, false}, {"foreign servers that ignore export names", true, true}} {
		foreign := tc.foreign
		t.Run(tc.name, func(t *testing.T) {
			a, b := node.NewMemory(raw), node.NewMemory(raw)
			// Name-ignoring servers serve both replicas: the bytes they
			// give under the digest name are the same on both.
			ua := serveMemory(t, a, true)
			if tc.ignoreNames {
				ua = serveMemoryAs(t, a, false, true)
			}
			tree := spec.Mirror(spec.Member(ua), spec.Member(serveMemoryAs(t, b, !foreign, tc.ignoreNames)))
			s, err := Assemble(ctx, tree, AssembleOptions{Open: open, OpenDigests: open, RegionSize: 256 << 10})
			require.NoError(t, err)
			defer s.Close(ctx)
			e := s.Engine()
			p := make([]byte, e.Size())
			rng := rand.New(rand.NewPCG(5, 6))
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			require.NoError(t, e.WriteAt(ctx, p, 0, nbd.CmdFlagFUA))

			res, err := e.Scrub(ctx, ScrubOptions{})
			require.NoError(t, err)
			require.Zero(t, res.MismatchCount)
			require.Equal(t, 2*e.Size(), res.BytesRead)
			if foreign {
				require.Zero(t, res.DigestedBytes, "a foreign replica is read")
				// Even where the bytes a name-ignoring server gives for
				// "digests" are the same on both replicas, a difference
				// is found: the data is compared.
				flipBit(t, b, int(s.DataOffset(1)+3<<20), 0x01)
				res, err = e.Scrub(ctx, ScrubOptions{})
				require.NoError(t, err)
				require.Equal(t, 1, res.MismatchCount)
				require.Zero(t, res.DigestedBytes)
				return
			}
			require.Equal(t, res.BytesRead, res.DigestedBytes, "every region compared by digests")
			require.Equal(t, res.BytesRead/1024, res.DigestBytes, "4 bytes for each 4 KiB")

			at := s.DataOffset(1) + 300000
			flipBit(t, b, int(at), 0x04)
			res, err = e.Scrub(ctx, ScrubOptions{Repair: true})
			require.NoError(t, err)
			require.Equal(t, []ScrubMismatch{{Mirror: 0, Child: 1, Source: 0, Members: []int{1}, Offset: 299008, Length: 4096, Repaired: true}},
				res.Mismatches)
			require.Equal(t, res.BytesRead-2*(256<<10), res.DigestedBytes, "only the region with the flip is read")
			res, err = e.Scrub(ctx, ScrubOptions{})
			require.NoError(t, err)
			require.Zero(t, res.MismatchCount, "repaired")
			require.Equal(t, res.BytesRead, res.DigestedBytes)
		})
	}
}
