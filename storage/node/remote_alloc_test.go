// The request path of a remote node allocates nothing in the steady
// state — reads, writes (with FUA), flushes, trims, through the waiter
// pool, the range table and the pipelined client to an in-process server —
// measured with testing.AllocsPerRun in a run without -race.
package node_test

import (
	"context"
	"testing"

	"dst/internal/testkit"
	"dst/storage/nbd"
	"dst/storage/node"
)

func TestRemoteSteadyStateAllocatesNothing(t *testing.T) {
	testkit.SkipUnderRace(t)
	_, p := startMemory(t, 1<<20)
	r := newRemote(t, p.url(), node.RemoteOptions{PingInterval: -1})
	ready(t, r)
	ctx := context.Background()
	buf := make([]byte, 4096)
	big := make([]byte, 256<<10)
	for _, tc := range []struct {
		name string
		op   func() error
	}{
		{"read 4k", func() error { return r.ReadAt(ctx, buf, 8192) }},
		{"write 4k", func() error { return r.WriteAt(ctx, buf, 8192, 0) }},
		{"write 4k fua", func() error { return r.WriteAt(ctx, buf, 4096, nbd.CmdFlagFUA) }},
		{"read 256k", func() error { return r.ReadAt(ctx, big, 0) }},
		{"write 256k", func() error { return r.WriteAt(ctx, big, 0, 0) }},
		{"flush", func() error { return r.Flush(ctx) }},
		{"trim", func() error { return r.Trim(ctx, 0, 4096, 0) }},
		{"write zeroes", func() error { return r.WriteZeroes(ctx, 0, 4096, 0) }},
	} {
		testkit.NoAllocs(t, tc.name, 100, 500, tc.op) // warm the pools and the connection's buffers
	}
}

func BenchmarkRemoteWrite4K(b *testing.B) {
	_, p := startMemory(b, 64<<20)
	r := newRemote(b, p.url(), node.RemoteOptions{PingInterval: -1})
	ready(b, r)
	ctx := context.Background()
	b.SetBytes(4096)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 4096)
		off := int64(0)
		for pb.Next() {
			if err := r.WriteAt(ctx, buf, off, 0); err != nil {
				b.Fatal(err)
			}
			off = (off + 4096) % (64 << 20)
		}
	})
}
