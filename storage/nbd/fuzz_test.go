// Fuzz targets for every parser of bytes from the network: request and
// reply headers, the server's option negotiation and transmission phase fed
// with arbitrary client bytes, and the client fed with arbitrary server
// bytes. None may panic, hang, or allocate from a length it did not check.
package nbd

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// zeroBackend reads zeroes and accepts everything.
type zeroBackend struct{}

func (zeroBackend) ReadAt(_ context.Context, p []byte, _ int64) error         { clear(p); return nil }
func (zeroBackend) WriteAt(context.Context, []byte, int64, CmdFlags) error    { return nil }
func (zeroBackend) Flush(context.Context) error                               { return nil }
func (zeroBackend) Trim(context.Context, int64, int64, CmdFlags) error        { return nil }
func (zeroBackend) WriteZeroes(context.Context, int64, int64, CmdFlags) error { return nil }
func (zeroBackend) Cache(context.Context, int64, int64) error                 { return nil }

func FuzzDecodeRequest(f *testing.F) {
	b := make([]byte, RequestHeaderBytes)
	EncodeRequest(b, &Request{Cmd: CmdWrite, Flags: CmdFlagFUA, Cookie: 7, Offset: 4096, Length: 512})
	f.Add(b)
	f.Add(make([]byte, RequestHeaderBytes))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < RequestHeaderBytes {
			return
		}
		var r Request
		if DecodeRequest(b, &r) != nil {
			return
		}
		out := make([]byte, RequestHeaderBytes)
		EncodeRequest(out, &r)
		if string(out) != string(b[:RequestHeaderBytes]) {
			t.Fatalf("round trip: %x -> %+v -> %x", b[:RequestHeaderBytes], r, out)
		}
	})
}

func FuzzDecodeReply(f *testing.F) {
	b := make([]byte, StructuredReplyBytes)
	encodeChunk(b, ChunkFlagDone, ChunkOffsetData, 9, 8)
	f.Add(b)
	encodeSimpleReply(b, EIO, 3)
	f.Add(b[:SimpleReplyBytes])
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < 4 {
			return
		}
		var r Reply
		_ = DecodeReply(b, &r)
	})
}

// pipeServer runs ServeConn on one end of a pipe, writes input into the
// other end as a client would, drains everything the server says, and waits
// for the server to finish.
func pipeServer(t *testing.T, opts ServerOptions, input []byte) {
	srv, err := NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	sc, cc := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.ServeConn(context.Background(), sc)
	}()
	go func() { _, _ = io.Copy(io.Discard, cc) }()
	_ = cc.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, _ = cc.Write(input)
	cc.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not finish after the client closed")
	}
}

func fuzzExports() []*Export {
	return []*Export{
		{Name: "a", Size: 1 << 20, Flags: FlagSendFlush | FlagSendTrim | FlagSendWriteZero | FlagSendCache, Backend: zeroBackend{}},
		{Name: "b", Size: 4096, MinBlock: 512, Backend: zeroBackend{}},
	}
}

// clientPrologue is what a client sends to reach transmission on "a".
func clientPrologue(structured bool) []byte { return prologue(structured, false) }

// prologue is clientPrologue, with extended headers instead of structured
// replies if extended.
func prologue(structured, extended bool) []byte {
	b := be.AppendUint32(nil, ClientFixedNewstyle|ClientNoZeroes)
	opt := func(o Option, data []byte) {
		b = be.AppendUint64(b, MagicOption)
		b = be.AppendUint32(b, uint32(o))
		b = be.AppendUint32(b, uint32(len(data)))
		b = append(b, data...)
	}
	switch {
	case extended:
		opt(OptExtendedHeaders, nil)
		opt(OptSetMetaContext, EncodeMetaQuery("a", BaseAllocation))
	case structured:
		opt(OptStructuredReply, nil)
		opt(OptSetMetaContext, EncodeMetaQuery("a", BaseAllocation))
	}
	opt(OptGo, []byte{0, 0, 0, 1, 'a', 0, 1, 0, 3})
	return b
}

// FuzzParseMetaQuery: the meta context payload parser accepts what it
// can re-encode byte for byte and refuses the rest, without panicking or
// allocating from an unchecked count.
func FuzzParseMetaQuery(f *testing.F) {
	f.Add(EncodeMetaQuery("a", BaseAllocation))
	f.Add(EncodeMetaQuery("", "base:", "qemu:dirty-bitmap:x"))
	f.Add([]byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		q, err := parseMetaQuery(data)
		if err != nil {
			return
		}
		if got := EncodeMetaQuery(q.export, q.queries...); string(got) != string(data) {
			t.Fatalf("parsed %+v from %x, which encodes as %x", q, data, got)
		}
	})
}

func FuzzServerHandshake(f *testing.F) {
	f.Add(clientPrologue(false))
	f.Add(clientPrologue(true))
	f.Add([]byte{0, 0, 0, 1, 'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 3, 0, 0, 0, 0})
	f.Add([]byte{0, 0, 0, 1, 'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 1, 0, 0, 0, 1, 'b'})
	f.Fuzz(func(t *testing.T, input []byte) {
		pipeServer(t, ServerOptions{Exports: fuzzExports(), MaxInFlight: 4, BufferBytes: 64 << 20,
			HandshakeTimeout: 5 * time.Second}, input)
	})
}

func FuzzServerTransmission(f *testing.F) {
	req := func(cmd Command, flags CmdFlags, off uint64, length uint32, payload bool) []byte {
		b := make([]byte, RequestHeaderBytes)
		EncodeRequest(b, &Request{Cmd: cmd, Flags: flags, Cookie: 1, Offset: off, Length: uint64(length)})
		if payload {
			b = append(b, make([]byte, length)...)
		}
		return b
	}
	f.Add(false, req(CmdRead, 0, 0, 4096, false))
	f.Add(true, append(req(CmdWrite, CmdFlagFUA, 512, 1024, true), req(CmdFlush, 0, 0, 0, false)...))
	f.Add(false, req(CmdTrim, 0, 1<<20-512, 1024, false))
	f.Add(true, req(CmdWriteZeroes, CmdFlagFastZero, 0, 4096, false))
	f.Add(false, req(Command(99), 0, 0, 0, false))
	f.Add(true, append(req(CmdBlockStatus, CmdFlagReqOne, 0, 1<<20, false), req(CmdBlockStatus, 0, 4096, 0, false)...))
	f.Fuzz(func(t *testing.T, structured bool, input []byte) {
		pipeServer(t, ServerOptions{Exports: fuzzExports(), MaxInFlight: 4, MaxPayload: 1 << 20, BufferBytes: 64 << 20},
			append(clientPrologue(structured), input...))
	})
}

// FuzzServerExtended is FuzzServerTransmission on a connection with
// extended headers: 32-byte requests with 64-bit lengths, PAYLOAD_LEN on
// any command.
func FuzzServerExtended(f *testing.F) {
	req := func(cmd Command, flags CmdFlags, off, length uint64, payload int) []byte {
		b := make([]byte, ExtendedRequestBytes)
		EncodeExtendedRequest(b, &Request{Cmd: cmd, Flags: flags, Cookie: 1, Offset: off, Length: length})
		return append(b, make([]byte, payload)...)
	}
	f.Add(req(CmdRead, 0, 0, 4096, 0))
	f.Add(append(req(CmdWrite, CmdFlagPayloadLen|CmdFlagFUA, 512, 1024, 1024), req(CmdFlush, 0, 0, 0, 0)...))
	f.Add(req(CmdWrite, 0, 0, 512, 512))
	f.Add(append(req(CmdFlush, CmdFlagPayloadLen, 0, 16, 16), req(CmdTrim, 0, 0, 1<<40, 0)...))
	f.Add(append(req(CmdBlockStatus, CmdFlagReqOne, 0, 1<<20, 0), req(CmdBlockStatus, 0, 4096, 1<<33, 0)...))
	f.Add(req(CmdWriteZeroes, CmdFlagPayloadLen, 0, 1<<30, 0))
	f.Fuzz(func(t *testing.T, input []byte) {
		pipeServer(t, ServerOptions{Exports: fuzzExports(), MaxInFlight: 4, MaxPayload: 1 << 20, BufferBytes: 64 << 20},
			append(prologue(true, true), input...))
	})
}

// FuzzClient plays a server that sends arbitrary bytes after a valid
// greeting; the client must fail cleanly, never panic or hang.
func FuzzClient(f *testing.F) {
	greeting := be.AppendUint64(nil, MagicNBD)
	greeting = be.AppendUint64(greeting, MagicOption)
	greeting = be.AppendUint16(greeting, HandshakeFixedNewstyle|HandshakeNoZeroes)
	info := func(payload []byte) []byte {
		b := be.AppendUint64(nil, MagicOptionReply)
		b = be.AppendUint32(b, uint32(OptGo))
		b = be.AppendUint32(b, uint32(RepInfo))
		b = be.AppendUint32(b, uint32(len(payload)))
		return append(b, payload...)
	}
	exp := be.AppendUint16(nil, uint16(InfoExport))
	exp = be.AppendUint64(exp, 1<<20)
	exp = be.AppendUint16(exp, uint16(FlagHasFlags|FlagSendFlush))
	ack := be.AppendUint64(nil, MagicOptionReply)
	ack = be.AppendUint32(ack, uint32(OptGo))
	ack = be.AppendUint32(ack, uint32(RepAck))
	ack = be.AppendUint32(ack, 0)
	good := append(info(exp), ack...)
	reply := make([]byte, SimpleReplyBytes)
	encodeSimpleReply(reply, 0, 0)
	f.Add(good)
	f.Add(append(append([]byte{}, good...), reply...))
	f.Add(info([]byte{0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}))
	f.Fuzz(func(t *testing.T, input []byte) {
		fuzzClient(greeting, input, ClientOptions{MaxInFlight: 2}, func(ctx context.Context, c *Client) {
			_ = c.ReadAt(ctx, make([]byte, 512), 0)
			_ = c.Flush(ctx)
		})
	})
}

// fuzzClient plays a server that sends greeting and then input (reading
// and dropping whatever the client sends), and runs use on a client that
// got through the handshake.
func fuzzClient(greeting, input []byte, opts ClientOptions, use func(context.Context, *Client)) {
	sc, cc := net.Pipe()
	defer sc.Close()
	go func() {
		_, _ = sc.Write(greeting)
		go func() { _, _ = io.Copy(io.Discard, sc) }()
		_, _ = sc.Write(input)
		sc.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := NewClient(ctx, cc, opts)
	if err != nil {
		cc.Close()
		return
	}
	use(ctx, c)
	c.Close()
}

// chunkedGreeting is what a server sends a client that asks for opt
// (STRUCTURED_REPLY or EXTENDED_HEADERS) and base:allocation (context id
// 1) and then GO: the acknowledgements and a 1 MiB export.
func chunkedGreeting(opt Option) []byte {
	optReply := func(opt Option, typ ReplyType, payload []byte) []byte {
		b := be.AppendUint64(nil, MagicOptionReply)
		b = be.AppendUint32(b, uint32(opt))
		b = be.AppendUint32(b, uint32(typ))
		b = be.AppendUint32(b, uint32(len(payload)))
		return append(b, payload...)
	}
	greeting := be.AppendUint64(nil, MagicNBD)
	greeting = be.AppendUint64(greeting, MagicOption)
	greeting = be.AppendUint16(greeting, HandshakeFixedNewstyle|HandshakeNoZeroes)
	greeting = append(greeting, optReply(opt, RepAck, nil)...)
	greeting = append(greeting, optReply(OptSetMetaContext, RepMetaContext, append([]byte{0, 0, 0, 1}, BaseAllocation...))...)
	greeting = append(greeting, optReply(OptSetMetaContext, RepAck, nil)...)
	exp := be.AppendUint16(nil, uint16(InfoExport))
	exp = be.AppendUint64(exp, 1<<20)
	exp = be.AppendUint16(exp, uint16(FlagHasFlags|FlagSendFlush))
	greeting = append(greeting, optReply(OptGo, RepInfo, exp)...)
	return append(greeting, optReply(OptGo, RepAck, nil)...)
}

// chunkedUse reads 512 bytes into a larger buffer and asks for block
// status into room for 4 descriptors: the client must stay within both.
func chunkedUse(t *testing.T) func(context.Context, *Client) {
	return func(ctx context.Context, c *Client) {
		buf := make([]byte, 512, 1024)
		_ = c.ReadAt(ctx, buf, 0)
		if tail := buf[512:1024]; !bytes.Equal(tail, make([]byte, 512)) {
			t.Fatalf("the client wrote past the read buffer")
		}
		exts, _ := c.BlockStatus(ctx, 0, 1<<20, make([]Extent, 0, 4))
		if len(exts) > 4 {
			t.Fatalf("%d descriptors in room for 4", len(exts))
		}
	}
}

// FuzzClientStructured is FuzzClient on a connection that negotiated
// structured replies and base:allocation: arbitrary chunks (data, holes,
// errors, block status, unknown types) after a valid handshake must fail
// cleanly or fill the read, never panic, hang or write outside the
// caller's buffer.
func FuzzClientStructured(f *testing.F) {
	greeting := chunkedGreeting(OptStructuredReply)
	chunk := func(flags, typ uint16, cookie uint64, payload []byte) []byte {
		b := make([]byte, StructuredReplyBytes)
		encodeChunk(b, flags, typ, cookie, uint32(len(payload)))
		return append(b, payload...)
	}
	// The client's first request has cookie 0 (slot 0, generation 0).
	data := chunk(0, ChunkOffsetData, 0, append(be.AppendUint64(nil, 256), make([]byte, 256)...))
	hole := chunk(ChunkFlagDone, ChunkOffsetHole, 0, be.AppendUint32(be.AppendUint64(nil, 0), 256))
	f.Add(append(data, hole...))
	f.Add(chunk(ChunkFlagDone, ChunkError, 0, []byte{0, 0, 0, 5, 0, 2, 'h', 'i'}))
	f.Add(chunk(ChunkFlagDone, 77, 0, []byte{1, 2, 3}))
	f.Add(chunk(ChunkFlagDone, ChunkBlockStatus, 0, []byte{0, 0, 0, 1, 0, 0, 2, 0, 0, 0, 0, 3}))
	f.Fuzz(func(t *testing.T, input []byte) {
		fuzzClient(greeting, input, ClientOptions{MaxInFlight: 2, BlockStatus: true}, chunkedUse(t))
	})
}

// FuzzClientExtended is FuzzClientStructured on a connection with extended
// headers: every reply a 32-byte chunk header naming the request's offset,
// block status in 64-bit descriptors.
func FuzzClientExtended(f *testing.F) {
	greeting := chunkedGreeting(OptExtendedHeaders)
	chunk := func(flags, typ uint16, cookie, off uint64, payload []byte) []byte {
		b := make([]byte, ExtendedReplyBytes)
		encodeExtendedChunk(b, flags, typ, cookie, off, uint64(len(payload)))
		return append(b, payload...)
	}
	// The client's first request has cookie 0 (slot 0, generation 0).
	data := chunk(0, ChunkOffsetData, 0, 0, append(be.AppendUint64(nil, 256), make([]byte, 256)...))
	hole := chunk(ChunkFlagDone, ChunkOffsetHole, 0, 0, be.AppendUint32(be.AppendUint64(nil, 0), 256))
	f.Add(append(data, hole...))
	f.Add(chunk(ChunkFlagDone, ChunkError, 0, 0, []byte{0, 0, 0, 5, 0, 2, 'h', 'i'}))
	f.Add(chunk(ChunkFlagDone, ChunkNone, 0, 7, nil))
	bs := []byte{0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3}
	f.Add(append(chunk(ChunkFlagDone, ChunkOffsetData, 0, 0, append(be.AppendUint64(nil, 0), make([]byte, 512)...)),
		chunk(ChunkFlagDone, ChunkBlockStatusExt, 1, 0, bs)...))
	f.Fuzz(func(t *testing.T, input []byte) {
		fuzzClient(greeting, input, ClientOptions{MaxInFlight: 2, BlockStatus: true, ExtendedHeaders: true}, chunkedUse(t))
	})
}
