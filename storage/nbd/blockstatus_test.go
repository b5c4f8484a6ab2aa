package nbd_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	. "dst/storage/nbd"

	"dst/storage/node"
)

// sparseBackend is a memory backend that reports a fixed allocation map
// (runs of the given lengths, alternating data and hole from data).
type sparseBackend struct {
	*node.Memory
	runs []int64
}

func (b *sparseBackend) BlockStatus(_ context.Context, off, length int64, dst []Extent) ([]Extent, error) {
	end, at := off+length, int64(0)
	for i, n := range b.runs {
		lo, hi := max(at, off), min(at+n, end)
		at += n
		if hi <= lo {
			continue
		}
		if len(dst) == cap(dst) {
			break
		}
		var flags uint32
		if i%2 == 1 {
			flags = StateHole | StateZero
		}
		dst = append(dst, Extent{Length: hi - lo, Flags: flags})
	}
	return dst, nil
}

// metaReplies sends a meta context option and returns the contexts it
// named (id and name) and the final reply type.
func (r *raw) metaReplies(opt Option, data []byte) (map[string]uint32, ReplyType) {
	r.t.Helper()
	r.option(opt, data)
	got := map[string]uint32{}
	for {
		typ, p := r.reply(opt)
		if typ != RepMetaContext {
			return got, typ
		}
		got[string(p[4:])] = be.Uint32(p)
	}
}

// blockStatusReply reads one structured reply chunk and, for a block
// status chunk, its descriptors.
func (r *raw) blockStatusReply() (typ uint16, flags uint16, ctxID uint32, exts []Extent, errno Errno) {
	r.t.Helper()
	h := r.read(StructuredReplyBytes)
	require.Equal(r.t, MagicStructuredReply, be.Uint32(h))
	flags, typ = be.Uint16(h[4:]), be.Uint16(h[6:])
	p := r.read(int(be.Uint32(h[16:])))
	switch typ {
	case ChunkBlockStatus:
		require.Zero(r.t, (len(p)-4)%8, "descriptors are 8 bytes each")
		ctxID = be.Uint32(p)
		for d := p[4:]; len(d) > 0; d = d[8:] {
			exts = append(exts, Extent{Length: int64(be.Uint32(d)), Flags: be.Uint32(d[4:])})
		}
	case ChunkError:
		errno = Errno(be.Uint32(p))
	}
	return typ, flags, ctxID, exts, errno
}

// dialAllocation negotiates structured replies and base:allocation on
// export "sparse", then goes to export.
func dialAllocation(t *testing.T, addr, export string) *raw {
	r := dialRaw(t, addr, ClientFixedNewstyle|ClientNoZeroes)
	r.option(OptStructuredReply, nil)
	typ, _ := r.reply(OptStructuredReply)
	require.Equal(t, RepAck, typ)
	_, typ = r.metaReplies(OptSetMetaContext, EncodeMetaQuery("sparse", BaseAllocation))
	require.Equal(t, RepAck, typ)
	_, typ = r.goExport(OptGo, export)
	require.Equal(t, RepAck, typ)
	return r
}

func startSparse(t *testing.T, size int, runs ...int64) string {
	b := &sparseBackend{Memory: node.NewMemory(size), runs: runs}
	_, addr := startServer(t, ServerOptions{Exports: []*Export{
		{Name: "sparse", Size: int64(size), Flags: node.MemoryFlags, Backend: b},
		{Name: "plain", Size: int64(size), Flags: node.MemoryFlags, Backend: node.NewMemory(size)},
	}})
	return addr
}

// Per the NBD protocol document: LIST answers queries by name or by
// namespace (and an empty list with every context), SET needs structured
// replies and a known export, and its choice holds for that export only.
func TestMetaContextNegotiation(t *testing.T) {
	addr := startSparse(t, 1<<20, 1<<20)
	r := dialRaw(t, addr, ClientFixedNewstyle|ClientNoZeroes)

	got, typ := r.metaReplies(OptListMetaContext, EncodeMetaQuery("sparse"))
	require.Equal(t, RepAck, typ)
	require.Equal(t, map[string]uint32{BaseAllocation: 0}, got, "an empty query list lists everything")
	got, _ = r.metaReplies(OptListMetaContext, EncodeMetaQuery("sparse", "base:"))
	require.Contains(t, got, BaseAllocation, "a namespace lists its contexts")
	got, typ = r.metaReplies(OptListMetaContext, EncodeMetaQuery("sparse", "qemu:dirty-bitmap:x", "x-other:thing"))
	require.Equal(t, RepAck, typ)
	require.Empty(t, got, "unknown contexts are not listed")

	_, typ = r.metaReplies(OptSetMetaContext, EncodeMetaQuery("sparse", BaseAllocation))
	require.Equal(t, RepErrInvalid, typ, "SET without structured replies")
	_, typ = r.metaReplies(OptListMetaContext, EncodeMetaQuery("nope", BaseAllocation))
	require.Equal(t, RepErrUnknown, typ, "unknown export")
	_, typ = r.metaReplies(OptListMetaContext, []byte{0, 0, 0, 9, 'x'})
	require.Equal(t, RepErrInvalid, typ, "truncated payload")
	_, typ = r.metaReplies(OptListMetaContext, EncodeMetaQuery("sparse", "nonamespace"))
	require.Equal(t, RepErrInvalid, typ, "a query without a namespace")
	_, typ = r.metaReplies(OptListMetaContext, append(EncodeMetaQuery("sparse"), 0))
	require.Equal(t, RepErrInvalid, typ, "trailing bytes")

	r.option(OptStructuredReply, nil)
	typ, _ = r.reply(OptStructuredReply)
	require.Equal(t, RepAck, typ)
	got, typ = r.metaReplies(OptSetMetaContext, EncodeMetaQuery("sparse", "base:", BaseAllocation))
	require.Equal(t, RepAck, typ)
	require.Len(t, got, 1)
	require.NotZero(t, got[BaseAllocation], "SET gives the context an id")
	id := got[BaseAllocation]

	info, typ := r.goExport(OptGo, "sparse")
	require.Equal(t, RepAck, typ)
	require.NotZero(t, TransmissionFlags(be.Uint16(info[InfoExport][8:]))&FlagSendDF, "DF with structured replies")
	r.request(CmdBlockStatus, 0, 1, 0, 1<<20, nil)
	ctype, cflags, cid, exts, _ := r.blockStatusReply()
	require.Equal(t, ChunkBlockStatus, ctype)
	require.Equal(t, ChunkFlagDone, cflags)
	require.Equal(t, id, cid)
	require.Equal(t, []Extent{{Length: 1 << 20}}, exts)
}

// The choice is for the export SET named: GO to another one leaves block
// status unavailable there (EINVAL), as without structured replies.
func TestBlockStatusNeedsTheContext(t *testing.T) {
	addr := startSparse(t, 1<<20, 1<<20)
	r := dialAllocation(t, addr, "plain")
	r.request(CmdBlockStatus, 0, 7, 0, 4096, nil)
	ctype, _, _, _, errno := r.blockStatusReply()
	require.Equal(t, ChunkError, ctype)
	require.Equal(t, EINVAL, errno)

	plain := dialRaw(t, addr, ClientFixedNewstyle|ClientNoZeroes)
	info, typ := plain.goExport(OptGo, "sparse")
	require.Equal(t, RepAck, typ)
	require.Zero(t, TransmissionFlags(be.Uint16(info[InfoExport][8:]))&FlagSendDF, "no DF without structured replies")
	plain.request(CmdBlockStatus, 0, 8, 0, 4096, nil)
	errno, cookie := plain.simpleReply()
	require.Equal(t, EINVAL, errno, "no structured replies: no block status")
	require.Equal(t, uint64(8), cookie)
}

// Descriptors cover the range in order from its start, merged where
// neighbours agree, one only with REQ_ONE, never past the range, at most
// MaxExtents per reply; a range past the end and an empty one get EINVAL.
func TestBlockStatusDescriptors(t *testing.T) {
	runs := []int64{4096, 8192, 4096, 1 << 20}
	size := 0
	for _, n := range runs {
		size += int(n)
	}
	many := make([]int64, 2*MaxExtents+10)
	for i := range many {
		many[i] = 512
	}
	cases := []struct {
		name     string
		runs     []int64
		size     int
		off      uint64
		length   uint32
		flags    CmdFlags
		want     []Extent
		wantN    int
		wantErrn Errno
	}{
		{name: "whole", runs: runs, size: size, off: 0, length: uint32(size),
			want: []Extent{{4096, 0}, {8192, 3}, {4096, 0}, {1 << 20, 3}}},
		{name: "inside a run", runs: runs, size: size, off: 5000, length: 100, want: []Extent{{100, 3}}},
		{name: "across runs", runs: runs, size: size, off: 4000, length: 8392, want: []Extent{{96, 0}, {8192, 3}, {104, 0}}},
		{name: "req one", runs: runs, size: size, off: 0, length: uint32(size), flags: CmdFlagReqOne, want: []Extent{{4096, 0}}},
		{name: "bounded", runs: many, size: len(many) * 512, off: 0, length: uint32(len(many) * 512), wantN: MaxExtents},
		{name: "past the end", runs: runs, size: size, off: uint64(size) - 10, length: 11, wantErrn: EINVAL},
		{name: "empty", runs: runs, size: size, off: 0, length: 0, wantErrn: EINVAL},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			addr := startSparse(t, c.size, c.runs...)
			r := dialAllocation(t, addr, "sparse")
			r.request(CmdBlockStatus, c.flags, 3, c.off, c.length, nil)
			ctype, _, _, exts, errno := r.blockStatusReply()
			if c.wantErrn != 0 {
				require.Equal(t, ChunkError, ctype)
				require.Equal(t, c.wantErrn, errno)
				return
			}
			require.Equal(t, ChunkBlockStatus, ctype)
			if c.want != nil {
				require.Equal(t, c.want, exts)
				return
			}
			require.Len(t, exts, c.wantN)
			var total int64
			for _, x := range exts {
				total += x.Length
			}
			require.LessOrEqual(t, total, int64(c.length))
		})
	}
}
