// Server conformance tests: a hand-driven raw client speaks the wire format
// byte by byte to a loopback Server and checks every answer against the
// protocol document — options, bad input, errors and shutdown.
package nbd_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	. "dst/storage/nbd"

	"dst/internal/testkit"
	"dst/storage/node"
)

var be = binary.BigEndian

// raw is a client that writes and reads protocol bytes directly.
type raw struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialRaw(t *testing.T, addr string, clientFlags uint32) *raw {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	r := &raw{t: t, conn: conn, r: bufio.NewReader(conn)}
	g := r.read(18)
	require.Equal(t, MagicNBD, be.Uint64(g[0:]))
	require.Equal(t, MagicOption, be.Uint64(g[8:]))
	require.Equal(t, HandshakeFixedNewstyle|HandshakeNoZeroes, be.Uint16(g[16:]))
	r.write(be.AppendUint32(nil, clientFlags))
	return r
}

func (r *raw) read(n int) []byte {
	r.t.Helper()
	b := make([]byte, n)
	_, err := io.ReadFull(r.r, b)
	require.NoError(r.t, err)
	return b
}

func (r *raw) write(b []byte) {
	r.t.Helper()
	_, err := r.conn.Write(b)
	require.NoError(r.t, err)
}

func (r *raw) option(opt Option, data []byte) {
	b := be.AppendUint64(nil, MagicOption)
	b = be.AppendUint32(b, uint32(opt))
	b = be.AppendUint32(b, uint32(len(data)))
	r.write(append(b, data...))
}

func (r *raw) reply(opt Option) (ReplyType, []byte) {
	r.t.Helper()
	h := r.read(OptionReplyBytes)
	require.Equal(r.t, MagicOptionReply, be.Uint64(h))
	require.Equal(r.t, opt, Option(be.Uint32(h[8:])))
	return ReplyType(be.Uint32(h[12:])), r.read(int(be.Uint32(h[16:])))
}

func goData(name string, infos ...InfoType) []byte {
	b := be.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = be.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = be.AppendUint16(b, uint16(i))
	}
	return b
}

// goExport sends OPT_GO and collects the INFO replies up to the ACK.
func (r *raw) goExport(opt Option, name string, infos ...InfoType) (map[InfoType][]byte, ReplyType) {
	r.t.Helper()
	r.option(opt, goData(name, infos...))
	got := map[InfoType][]byte{}
	for {
		typ, p := r.reply(opt)
		if typ != RepInfo {
			return got, typ
		}
		got[InfoType(be.Uint16(p))] = p[2:]
	}
}

func (r *raw) request(cmd Command, flags CmdFlags, cookie, off uint64, length uint32, payload []byte) {
	b := make([]byte, RequestHeaderBytes)
	EncodeRequest(b, &Request{Cmd: cmd, Flags: flags, Cookie: cookie, Offset: off, Length: uint64(length)})
	r.write(append(b, payload...))
}

func (r *raw) simpleReply() (Errno, uint64) {
	r.t.Helper()
	h := r.read(SimpleReplyBytes)
	var rep Reply
	require.NoError(r.t, DecodeReply(h, &rep))
	require.False(r.t, rep.Structured)
	return rep.Errno, rep.Cookie
}

// expectClosed checks that the server closed the connection.
func (r *raw) expectClosed() {
	r.t.Helper()
	_, err := r.r.ReadByte()
	require.Error(r.t, err)
}

func TestHandshakeGoInfoFlags(t *testing.T) {
	_, addr := singleExport(t, 1<<20)
	r := dialRaw(t, addr, ClientFixedNewstyle|ClientNoZeroes)
	info, typ := r.goExport(OptGo, "mem", InfoBlockSize, InfoName, InfoDescription)
	require.Equal(t, RepAck, typ)
	exp := info[InfoExport]
	require.Len(t, exp, 10)
	require.Equal(t, uint64(1<<20), be.Uint64(exp))
	flags := TransmissionFlags(be.Uint16(exp[8:]))
	require.Equal(t, node.MemoryFlags|FlagHasFlags, flags, "flags %v", flags)
	bs := info[InfoBlockSize]
	require.Equal(t, []uint32{1, 4096, DefaultMaxPayload}, []uint32{be.Uint32(bs), be.Uint32(bs[4:]), be.Uint32(bs[8:])})
	require.Equal(t, "mem", string(info[InfoName]))
	r.request(CmdFlush, 0, 7, 0, 0, nil)
	errno, cookie := r.simpleReply()
	require.Zero(t, errno)
	require.Equal(t, uint64(7), cookie)
}

func TestHandshakeOptions(t *testing.T) {
	m := node.NewMemory(4096)
	_, addr := startServer(t, ServerOptions{Exports: []*Export{
		{Name: "a", Size: 4096, Backend: m, Description: "first"},
		{Name: "b", Size: 8192, Backend: m},
	}})
	r := dialRaw(t, addr, ClientFixedNewstyle)

	// Unknown options are refused and negotiation goes on.
	r.option(Option(99), []byte("xyz"))
	typ, _ := r.reply(Option(99))
	require.Equal(t, RepErrUnsup, typ)
	r.option(OptStartTLS, nil)
	typ, _ = r.reply(OptStartTLS)
	require.Equal(t, RepErrUnsup, typ, "STARTTLS without TLS configured")

	r.option(OptList, nil)
	var names []string
	for {
		typ, p := r.reply(OptList)
		if typ == RepAck {
			break
		}
		require.Equal(t, RepServer, typ)
		names = append(names, string(p[4:4+be.Uint32(p)]))
	}
	require.Equal(t, []string{"a", "b"}, names)

	// The default name is ambiguous with two exports.
	_, typ = r.goExport(OptInfo, "")
	require.Equal(t, RepErrUnknown, typ)
	// INFO for b, then GO for an unknown name must not serve b.
	info, typ := r.goExport(OptInfo, "b", InfoDescription)
	require.Equal(t, RepAck, typ)
	require.Equal(t, uint64(8192), be.Uint64(info[InfoExport]))
	_, typ = r.goExport(OptGo, "nope")
	require.Equal(t, RepErrUnknown, typ)
	// Malformed GO: count does not match length.
	r.option(OptGo, append(goData("a"), 0, 1))
	typ, _ = r.reply(OptGo)
	require.Equal(t, RepErrInvalid, typ)

	r.option(OptStructuredReply, nil)
	typ, _ = r.reply(OptStructuredReply)
	require.Equal(t, RepAck, typ)
	info, typ = r.goExport(OptGo, "a", InfoDescription)
	require.Equal(t, RepAck, typ)
	require.Equal(t, "first", string(info[InfoDescription]))

	// Structured read: one OFFSET_DATA chunk with DONE.
	require.NoError(t, m.WriteAt(context.Background(), []byte("hello"), 100, 0))
	r.request(CmdRead, 0, 42, 100, 5, nil)
	h := r.read(StructuredReplyBytes)
	var rep Reply
	require.NoError(t, DecodeReply(h, &rep))
	require.True(t, rep.Structured)
	require.Equal(t, ChunkFlagDone, rep.Flags)
	require.Equal(t, ChunkOffsetData, rep.Type)
	require.Equal(t, uint64(13), rep.Length)
	p := r.read(13)
	require.Equal(t, uint64(100), be.Uint64(p))
	require.Equal(t, "hello", string(p[8:]))
	// A structured read error is an error chunk, never a simple reply.
	r.request(CmdRead, 0, 43, 4000, 200, nil)
	require.NoError(t, DecodeReply(r.read(StructuredReplyBytes), &rep))
	require.Equal(t, ChunkError, rep.Type)
	require.Equal(t, EINVAL, Errno(be.Uint32(r.read(int(rep.Length)))))
	r.request(CmdDisc, 0, 0, 0, 0, nil)
	r.expectClosed()
}

func TestHandshakeExportNameLegacy(t *testing.T) {
	_, addr := singleExport(t, 65536)
	r := dialRaw(t, addr, ClientFixedNewstyle)
	r.option(OptExportName, []byte("mem"))
	p := r.read(ExportNameReplyBytes + ExportNameZeroesBytes)
	require.Equal(t, uint64(65536), be.Uint64(p))
	require.Equal(t, make([]byte, ExportNameZeroesBytes), p[ExportNameReplyBytes:])
	r.request(CmdWrite, 0, 1, 0, 3, []byte("abc"))
	errno, _ := r.simpleReply()
	require.Zero(t, errno)

	// Unknown export with EXPORT_NAME: no way to say so but closing.
	r2 := dialRaw(t, addr, ClientFixedNewstyle|ClientNoZeroes)
	r2.option(OptExportName, []byte("other"))
	r2.expectClosed()
}

func TestHandshakeRejects(t *testing.T) {
	_, addr := singleExport(t, 4096)
	// Unknown client flags end the connection.
	dialRaw(t, addr, 1<<7).expectClosed()
	// A bad option magic ends the connection.
	r := dialRaw(t, addr, ClientFixedNewstyle)
	r.write(make([]byte, 16))
	r.expectClosed()
	// A huge unknown option is skipped and refused without allocation.
	r = dialRaw(t, addr, ClientFixedNewstyle)
	b := be.AppendUint64(nil, MagicOption)
	b = be.AppendUint32(b, 1000)
	b = be.AppendUint32(b, 1<<20)
	r.write(append(b, make([]byte, 1<<20)...))
	typ, _ := r.reply(Option(1000))
	require.Equal(t, RepErrTooBig, typ)
	// ABORT is acknowledged and the connection closed.
	r.option(OptAbort, nil)
	typ, _ = r.reply(OptAbort)
	require.Equal(t, RepAck, typ)
	r.expectClosed()
}

func TestTransmissionBadInput(t *testing.T) {
	m := node.NewMemory(1 << 16)
	_, addr := startServer(t, ServerOptions{MaxPayload: 1 << 20, Exports: []*Export{
		{Name: "x", Size: 1 << 16, Flags: FlagSendFlush | FlagSendTrim, MinBlock: 512, Backend: m}}})
	r := dialRaw(t, addr, ClientFixedNewstyle|ClientNoZeroes)
	_, typ := r.goExport(OptGo, "")
	require.Equal(t, RepAck, typ)

	cases := []struct {
		name    string
		cmd     Command
		off     uint64
		length  uint32
		payload bool
		want    Errno
	}{
		{"read beyond end", CmdRead, 1 << 16, 512, false, EINVAL},
		{"read wrapping", CmdRead, ^uint64(0) - 10, 512, false, EINVAL},
		{"write beyond end", CmdWrite, 1<<16 - 512, 1024, true, ENOSPC},
		{"misaligned offset", CmdRead, 100, 512, false, EINVAL},
		{"misaligned length", CmdWrite, 0, 100, true, EINVAL},
		{"write zeroes not advertised", CmdWriteZeroes, 0, 512, false, EINVAL},
		{"cache not advertised", CmdCache, 0, 512, false, EINVAL},
		{"unknown command", Command(77), 0, 0, false, EINVAL},
		{"block status not negotiated", CmdBlockStatus, 0, 512, false, EINVAL},
		{"read larger than max payload", CmdRead, 0, 2 << 20, false, EINVAL},
		{"good trim", CmdTrim, 0, 512, false, 0},
		{"good write", CmdWrite, 512, 512, true, 0},
	}
	for i, c := range cases {
		var p []byte
		if c.payload {
			p = make([]byte, c.length)
		}
		r.request(c.cmd, 0, uint64(i), c.off, c.length, p)
		errno, cookie := r.simpleReply()
		require.Equal(t, c.want, errno, c.name)
		require.Equal(t, uint64(i), cookie, c.name)
	}

	// A backend error is EIO and the connection stays up.
	m.SetFail(errors.New("disk on fire"))
	r.request(CmdRead, 0, 100, 0, 512, nil)
	errno, _ := r.simpleReply()
	require.Equal(t, EIO, errno)
	r.request(CmdWrite, 0, 101, 0, 512, make([]byte, 512))
	errno, _ = r.simpleReply()
	require.Equal(t, EIO, errno)
	m.SetFail(ENOSPC)
	r.request(CmdWrite, 0, 102, 0, 512, make([]byte, 512))
	errno, _ = r.simpleReply()
	require.Equal(t, ENOSPC, errno)
	// Operating system errors map in every server (ErrnoOf), whoever built
	// it: dst export, dst serve and the kernel attach path alike.
	m.SetFail(fmt.Errorf("backend: %w", &os.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC}))
	r.request(CmdWrite, 0, 102, 0, 512, make([]byte, 512))
	errno, _ = r.simpleReply()
	require.Equal(t, ENOSPC, errno, "a wrapped ENOSPC")
	m.SetFail(syscall.EROFS)
	r.request(CmdWrite, 0, 102, 0, 512, make([]byte, 512))
	errno, _ = r.simpleReply()
	require.Equal(t, EPERM, errno, "EROFS")
	m.SetFail(nil)
	r.request(CmdRead, 0, 103, 0, 512, nil)
	errno, _ = r.simpleReply()
	require.Zero(t, errno)
	r.read(512)

	// An oversize write payload cannot be skipped safely: disconnect.
	r.request(CmdWrite, 0, 104, 0, 2<<20, nil)
	r.expectClosed()

	// Garbage magic: disconnect.
	r = dialRaw(t, addr, ClientFixedNewstyle|ClientNoZeroes)
	_, typ = r.goExport(OptGo, "")
	require.Equal(t, RepAck, typ)
	r.write(make([]byte, RequestHeaderBytes))
	r.expectClosed()
}

func TestReadOnlyAccess(t *testing.T) {
	m := node.NewMemory(4096)
	_, addr := startServer(t, ServerOptions{
		Exports:   []*Export{{Name: "x", Size: 4096, Flags: node.MemoryFlags, Backend: m}},
		Authorize: func(*Export, Peer) (Access, error) { return AccessReadOnly, nil },
	})
	c := dial(t, addr, ClientOptions{})
	require.NotZero(t, c.Info().Flags&FlagReadOnly)
	require.Zero(t, c.Info().Flags&FlagSendTrim, "trim is not offered to read-only peers")
	require.ErrorIs(t, c.WriteAt(testkit.Context(t, 30*time.Second), []byte{1}, 0, 0), ErrUnsupported)

	r := dialRaw(t, addr, ClientFixedNewstyle|ClientNoZeroes)
	_, typ := r.goExport(OptGo, "x")
	require.Equal(t, RepAck, typ)
	r.request(CmdWrite, 0, 1, 0, 4, []byte("abcd"))
	errno, _ := r.simpleReply()
	require.Equal(t, EPERM, errno)
	r.request(CmdRead, 0, 2, 0, 4, nil)
	errno, _ = r.simpleReply()
	require.Zero(t, errno)
	require.Equal(t, make([]byte, 4), r.read(4))
}

func TestDeniedPeer(t *testing.T) {
	_, addr := startServer(t, ServerOptions{
		Exports: []*Export{{Name: "x", Size: 4096, Backend: node.NewMemory(4096)}},
		Authorize: func(e *Export, p Peer) (Access, error) {
			return AccessDenied, errors.New("peer not in the allow list")
		},
	})
	r := dialRaw(t, addr, ClientFixedNewstyle)
	r.option(OptGo, goData("x"))
	typ, msg := r.reply(OptGo)
	require.Equal(t, RepErrPolicy, typ)
	require.Equal(t, "peer not in the allow list", string(msg))

	_, err := Dial(testkit.Context(t, 30*time.Second), "tcp", addr, ClientOptions{})
	var oe *OptionError
	require.ErrorAs(t, err, &oe)
	require.Equal(t, RepErrPolicy, oe.Reply)
}

func TestShutdownDrains(t *testing.T) {
	m := node.NewMemory(4096)
	m.Block = make(chan struct{})
	m.Entered = make(chan struct{}, 1)
	srv, addr := startServer(t, ServerOptions{Exports: []*Export{{Name: "x", Size: 4096, Flags: node.MemoryFlags, Backend: m}}})
	r := dialRaw(t, addr, ClientFixedNewstyle|ClientNoZeroes)
	_, typ := r.goExport(OptGo, "x")
	require.Equal(t, RepAck, typ)
	r.request(CmdWrite, 0, 1, 0, 4, []byte("abcd")) // blocks in the backend
	<-m.Entered

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- srv.Shutdown(ctx)
	}()
	// New requests are answered ESHUTDOWN while the old one drains. The
	// shutdown may not have reached the connection yet: retry until it has.
	for i := uint64(2); ; i++ {
		r.request(CmdFlush, 0, i, 0, 0, nil)
		errno, cookie := r.simpleReply()
		require.Equal(t, i, cookie)
		if errno == ESHUTDOWN {
			break
		}
		require.Zero(t, errno)
	}
	close(m.Block)
	errno, cookie := r.simpleReply()
	require.Zero(t, errno)
	require.Equal(t, uint64(1), cookie)
	require.NoError(t, <-shut)
	r.expectClosed()
	require.Equal(t, "abcd", string(m.Bytes(0, 4)))
}

func TestNewServerValidates(t *testing.T) {
	m := node.NewMemory(1)
	for name, opts := range map[string]ServerOptions{
		"no exports":     {},
		"nil backend":    {Exports: []*Export{{Name: "a"}}},
		"duplicate name": {Exports: []*Export{{Name: "a", Backend: m}, {Name: "a", Backend: m}}},
		"negative size":  {Exports: []*Export{{Name: "a", Size: -1, Backend: m}}},
		"odd min block":  {Exports: []*Export{{Name: "a", Backend: m, MinBlock: 3}}},
		"tls required":   {Exports: []*Export{{Name: "a", Backend: m}}, TLSRequired: true},
	} {
		_, err := NewServer(opts)
		require.Error(t, err, name)
	}
}
