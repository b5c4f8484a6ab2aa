package nbd_test

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	. "dst/storage/nbd"

	"dst/storage/node"
)

// hugeSize is beyond 32 bits, so only extended headers can name a range
// of most of it in one request.
const hugeSize = 12 << 30

// hugeBackend is an export of hugeSize bytes that holds nothing: it reads
// zeroes, keeps the last write in memory, records the ranges trimmed and
// zeroed, and reports data in the first GiB and a hole after it.
type hugeBackend struct {
	mu      sync.Mutex
	last    []byte
	lastOff int64
	ranges  [][2]int64 // trims and zeroes, in order
}

func (b *hugeBackend) ReadAt(_ context.Context, p []byte, off int64) error {
	clear(p)
	b.mu.Lock()
	defer b.mu.Unlock()
	if off == b.lastOff {
		copy(p, b.last)
	}
	return nil
}

func (b *hugeBackend) WriteAt(_ context.Context, p []byte, off int64, _ CmdFlags) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.last, b.lastOff = append([]byte(nil), p...), off
	return nil
}

func (b *hugeBackend) Flush(context.Context) error { return nil }

func (b *hugeBackend) record(off, length int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ranges = append(b.ranges, [2]int64{off, length})
	return nil
}

func (b *hugeBackend) Trim(_ context.Context, off, length int64, _ CmdFlags) error {
	return b.record(off, length)
}

func (b *hugeBackend) WriteZeroes(_ context.Context, off, length int64, _ CmdFlags) error {
	return b.record(off, length)
}

func (b *hugeBackend) Cache(context.Context, int64, int64) error { return nil }

func (b *hugeBackend) BlockStatus(_ context.Context, off, length int64, dst []Extent) ([]Extent, error) {
	const data = 1 << 30
	if off < data {
		n := min(data-off, length)
		dst = append(dst, Extent{Length: n})
		off, length = off+n, length-n
	}
	if length > 0 && len(dst) < cap(dst) {
		dst = append(dst, Extent{Length: length, Flags: StateHole | StateZero})
	}
	return dst, nil
}

func (b *hugeBackend) taken() [][2]int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([][2]int64(nil), b.ranges...)
}

func startHuge(t *testing.T) (*hugeBackend, string) {
	b := &hugeBackend{lastOff: -1}
	_, addr := startServer(t, ServerOptions{Exports: []*Export{
		{Name: "sparse", Size: hugeSize, Flags: node.MemoryFlags, Backend: b},
	}})
	return b, addr
}

// extRequest sends one extended request header and its payload.
func (r *raw) extRequest(cmd Command, flags CmdFlags, cookie, off, length uint64, payload []byte) {
	b := make([]byte, ExtendedRequestBytes)
	EncodeExtendedRequest(b, &Request{Cmd: cmd, Flags: flags, Cookie: cookie, Offset: off, Length: length})
	r.write(append(b, payload...))
}

// extReply reads one extended reply chunk: its header and payload.
func (r *raw) extReply() (Reply, []byte) {
	r.t.Helper()
	h := r.read(ExtendedReplyBytes)
	var rep Reply
	require.NoError(r.t, DecodeReply(h, &rep))
	require.True(r.t, rep.Extended, "every reply is an extended chunk once negotiated")
	require.LessOrEqual(r.t, rep.Length, uint64(64<<20))
	return rep, r.read(int(rep.Length))
}

// closed reports whether the server ended the connection.
func (r *raw) closed() bool {
	_ = r.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := r.r.ReadByte()
	return errors.Is(err, io.EOF)
}

// dialExtended negotiates extended headers and base:allocation.
func dialExtended(t *testing.T, addr string) *raw {
	r := dialRaw(t, addr, ClientFixedNewstyle|ClientNoZeroes)
	r.option(OptExtendedHeaders, nil)
	typ, _ := r.reply(OptExtendedHeaders)
	require.Equal(t, RepAck, typ)
	_, typ = r.metaReplies(OptSetMetaContext, EncodeMetaQuery("sparse", BaseAllocation))
	require.Equal(t, RepAck, typ, "extended headers imply structured replies: meta contexts may follow")
	info, typ := r.goExport(OptGo, "sparse")
	require.Equal(t, RepAck, typ)
	flags := TransmissionFlags(be.Uint16(info[InfoExport][8:]))
	require.NotZero(t, flags&FlagSendDF, "DF is offered with extended headers")
	return r
}

// Per the NBD protocol document: EXTENDED_HEADERS takes no data, takes
// precedence over STRUCTURED_REPLY (refused after it), is forgotten by
// STARTTLS, and forbids EXPORT_NAME.
func TestExtendedHeadersNegotiation(t *testing.T) {
	_, addr := startHuge(t)
	r := dialRaw(t, addr, ClientFixedNewstyle|ClientNoZeroes)
	r.option(OptExtendedHeaders, []byte{1})
	typ, _ := r.reply(OptExtendedHeaders)
	require.Equal(t, RepErrInvalid, typ, "the option takes no data")
	r.option(OptExtendedHeaders, nil)
	typ, _ = r.reply(OptExtendedHeaders)
	require.Equal(t, RepAck, typ)
	r.option(OptStructuredReply, nil)
	typ, _ = r.reply(OptStructuredReply)
	require.Equal(t, RepErrExtHeaderReqd, typ, "no downgrade to structured replies")
	r.option(OptExportName, []byte("sparse"))
	require.True(t, r.closed(), "EXPORT_NAME after extended headers ends the session")

	// Without the option, nothing changes: compact requests, simple
	// replies.
	r = dialRaw(t, addr, ClientFixedNewstyle|ClientNoZeroes)
	_, typ = r.goExport(OptGo, "sparse")
	require.Equal(t, RepAck, typ)
	r.request(CmdFlush, 0, 7, 0, 0, nil)
	errno, cookie := r.simpleReply()
	require.Zero(t, errno)
	require.Equal(t, uint64(7), cookie)
}

// Hand-written transmission cases: 32-byte headers both ways, the reply
// naming the request's offset, PAYLOAD_LEN on writes only, 64-bit effect
// lengths, and BLOCK_STATUS_EXT descriptors beyond 32 bits.
func TestExtendedHeadersTransmission(t *testing.T) {
	b, addr := startHuge(t)
	r := dialExtended(t, addr)

	// A write with PAYLOAD_LEN: its reply is a NONE chunk, offset echoed.
	r.extRequest(CmdWrite, CmdFlagPayloadLen|CmdFlagFUA, 1, 8<<30, 5, []byte("hello"))
	rep, p := r.extReply()
	require.Equal(t, Reply{Structured: true, Extended: true, Flags: ChunkFlagDone, Type: ChunkNone, Cookie: 1, Offset: 8 << 30}, rep)
	require.Empty(t, p)

	// A read: one OFFSET_DATA chunk whose payload offset is the data's.
	r.extRequest(CmdRead, 0, 2, 8<<30, 5, nil)
	rep, p = r.extReply()
	require.Equal(t, ChunkOffsetData, rep.Type)
	require.Equal(t, uint64(8<<30), rep.Offset)
	require.Equal(t, uint64(8<<30), be.Uint64(p))
	require.Equal(t, "hello", string(p[8:]))

	// TRIM and WRITE_ZEROES of more than 4 GiB in one request.
	r.extRequest(CmdTrim, 0, 3, 1<<30, 6<<30, nil)
	rep, _ = r.extReply()
	require.Equal(t, ChunkNone, rep.Type)
	r.extRequest(CmdWriteZeroes, 0, 4, 0, hugeSize, nil)
	rep, _ = r.extReply()
	require.Equal(t, ChunkNone, rep.Type)
	require.Equal(t, [][2]int64{{1 << 30, 6 << 30}, {0, hugeSize}}, b.taken())

	// Past the end, by a 64-bit length: EINVAL as an error chunk.
	r.extRequest(CmdTrim, 0, 5, 1<<30, hugeSize, nil)
	rep, p = r.extReply()
	require.Equal(t, ChunkError, rep.Type)
	require.Equal(t, EINVAL, Errno(be.Uint32(p)))

	// BLOCK_STATUS of the whole export: BLOCK_STATUS_EXT, the hole's
	// descriptor 11 GiB long, the count filled in.
	r.extRequest(CmdBlockStatus, 0, 6, 0, hugeSize, nil)
	rep, p = r.extReply()
	require.Equal(t, ChunkBlockStatusExt, rep.Type)
	require.Equal(t, uint64(8+2*16), rep.Length)
	require.Equal(t, uint32(2), be.Uint32(p[4:]), "descriptor count")
	require.Equal(t, uint64(1<<30), be.Uint64(p[8:]))
	require.Equal(t, uint64(0), be.Uint64(p[16:]))
	require.Equal(t, uint64(11<<30), be.Uint64(p[24:]))
	require.Equal(t, uint64(StateHole|StateZero), be.Uint64(p[32:]))

	// A payload on a command that takes none is skipped and refused; the
	// stream stays in sync.
	r.extRequest(CmdFlush, CmdFlagPayloadLen, 7, 0, 3, []byte("xyz"))
	rep, p = r.extReply()
	require.Equal(t, ChunkError, rep.Type)
	require.Equal(t, EINVAL, Errno(be.Uint32(p)))
	r.extRequest(CmdFlush, 0, 8, 0, 0, nil)
	rep, _ = r.extReply()
	require.Equal(t, ChunkNone, rep.Type)
	require.Equal(t, uint64(8), rep.Cookie)

	// A WRITE without PAYLOAD_LEN cannot be framed: the connection ends.
	r.extRequest(CmdWrite, 0, 9, 0, 5, []byte("hello"))
	require.True(t, r.closed())

	// So does a compact request where extended ones were agreed.
	// (Two of them: the server reads 32 bytes before it looks.)
	r = dialExtended(t, addr)
	r.request(CmdFlush, 0, 10, 0, 0, nil)
	r.request(CmdFlush, 0, 11, 0, 0, nil)
	require.True(t, r.closed())
}

// The dst client with ExtendedHeaders against the dst server: 64-bit
// TRIM, WRITE_ZEROES and BLOCK_STATUS in one request each, where compact
// headers refuse them.
func TestClientExtendedHeaders(t *testing.T) {
	b, addr := startHuge(t)
	ctx := context.Background()
	c, err := Dial(ctx, "tcp", addr, ClientOptions{ExportName: "sparse", BlockStatus: true, ExtendedHeaders: true})
	require.NoError(t, err)
	defer c.Close()
	require.True(t, c.Info().Extended)
	require.NoError(t, c.Trim(ctx, 1<<30, 6<<30, 0))
	require.NoError(t, c.WriteZeroes(ctx, 0, hugeSize, 0))
	require.Equal(t, [][2]int64{{1 << 30, 6 << 30}, {0, hugeSize}}, b.taken())
	exts, err := c.BlockStatus(ctx, 0, hugeSize, make([]Extent, 0, 8))
	require.NoError(t, err)
	require.Equal(t, []Extent{{Length: 1 << 30}, {Length: 11 << 30, Flags: StateHole | StateZero}}, exts)
	require.NoError(t, c.WriteAt(ctx, []byte("hello"), 9<<30, CmdFlagFUA))
	got := make([]byte, 5)
	require.NoError(t, c.ReadAt(ctx, got, 9<<30))
	require.Equal(t, "hello", string(got))
	require.ErrorIs(t, c.Trim(ctx, 1<<30, hugeSize, 0), EINVAL, "past the end")

	compact, err := Dial(ctx, "tcp", addr, ClientOptions{ExportName: "sparse", BlockStatus: true})
	require.NoError(t, err)
	defer compact.Close()
	require.False(t, compact.Info().Extended)
	require.ErrorIs(t, compact.Trim(ctx, 0, 6<<30, 0), ErrTooLarge)
	exts, err = compact.BlockStatus(ctx, 0, 1<<32-4096, make([]Extent, 0, 8))
	require.NoError(t, err)
	require.Equal(t, []Extent{{Length: 1 << 30}, {Length: 3<<30 - 4096, Flags: StateHole | StateZero}}, exts)
}
