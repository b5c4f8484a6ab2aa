package nbd

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
)

// errAbort ends a handshake the client chose to end (NBD_OPT_ABORT or a
// close during negotiation); it is not worth a warning.
var errAbort = errors.New("nbd: client aborted the handshake")

// session is the server side of one connection during the handshake.
type session struct {
	srv        *Server
	sc         *serverConn
	conn       net.Conn
	r          *bufio.Reader
	peer       Peer
	fixed      bool // client speaks fixed newstyle
	noZeroes   bool
	structured bool
	extended   bool          // extended headers (implies structured)
	meta       metaSelection // what SET_META_CONTEXT chose
	buf        [OptionReplyBytes + 16]byte
}

// negotiation is the result of a successful handshake.
type negotiation struct {
	export     *Export
	access     Access
	structured bool
	extended   bool
	// allocation: the client selected base:allocation for this export.
	allocation bool
	conn       net.Conn // the connection, possibly wrapped in TLS
	r          *bufio.Reader
}

// handshake runs the server side of the fixed-newstyle handshake.
func (s *session) handshake() (*negotiation, error) {
	b := s.buf[:18]
	be.PutUint64(b[0:], MagicNBD)
	be.PutUint64(b[8:], MagicOption)
	be.PutUint16(b[16:], HandshakeFixedNewstyle|HandshakeNoZeroes)
	if _, err := s.conn.Write(b); err != nil {
		return nil, fmt.Errorf("send greeting: %w", err)
	}
	if _, err := io.ReadFull(s.r, s.buf[:4]); err != nil {
		return nil, fmt.Errorf("read client flags: %w", eofAbort(err))
	}
	flags := be.Uint32(s.buf[:4])
	if flags&^clientKnownFlags != 0 {
		return nil, fmt.Errorf("%w: unknown client flags %#x", ErrProtocol, flags)
	}
	s.fixed = flags&ClientFixedNewstyle != 0
	s.noZeroes = flags&ClientNoZeroes != 0
	for {
		n, err := s.option()
		if err != nil || n != nil {
			return n, err
		}
	}
}

func eofAbort(err error) error {
	if errors.Is(err, io.EOF) {
		return errAbort
	}
	return err
}

// option reads and answers one option. It returns a negotiation when the
// client moves to the transmission phase.
func (s *session) option() (*negotiation, error) {
	h := s.buf[:OptionHeaderBytes]
	if _, err := io.ReadFull(s.r, h); err != nil {
		return nil, fmt.Errorf("read option: %w", eofAbort(err))
	}
	if m := be.Uint64(h[0:]); m != MagicOption {
		return nil, fmt.Errorf("%w: option magic %#x", ErrProtocol, m)
	}
	opt := Option(be.Uint32(h[8:]))
	length := be.Uint32(h[12:])

	tlsReqd := s.srv.opts.TLSRequired && s.peer.TLS == nil
	if opt == OptExportName {
		data, err := s.readOption(length, maxStringBytes)
		if err != nil {
			return nil, err
		}
		if tlsReqd {
			return nil, fmt.Errorf("client asked for export %q without TLS, which is required", data)
		}
		if s.extended {
			// It cannot be answered with an error; the client must use GO.
			return nil, fmt.Errorf("%w: EXPORT_NAME after extended headers were negotiated", ErrProtocol)
		}
		return s.exportName(string(data))
	}
	if !s.fixed {
		return nil, fmt.Errorf("%w: option %v from a client without fixed newstyle", ErrProtocol, opt)
	}
	if length > maxOptionBytes {
		// Not parsed: skip it without allocating, and say so.
		if _, err := io.CopyN(io.Discard, s.r, int64(length)); err != nil {
			return nil, fmt.Errorf("skip option %v: %w", opt, eofAbort(err))
		}
		return nil, s.replyErr(opt, RepErrTooBig, "option payload too large")
	}
	data, err := s.readOption(length, maxOptionBytes)
	if err != nil {
		return nil, err
	}
	if tlsReqd && opt != OptStartTLS && opt != OptAbort {
		return nil, s.replyErr(opt, RepErrTLSReqd, "TLS is required: send STARTTLS first")
	}
	switch opt {
	case OptAbort:
		_ = s.reply(opt, RepAck, nil)
		return nil, errAbort
	case OptList:
		return nil, s.list(data)
	case OptStartTLS:
		return nil, s.startTLS(data)
	case OptInfo, OptGo:
		return s.infoGo(opt, data)
	case OptFence:
		if len(data) != 16 {
			return nil, s.replyErr(opt, RepErrInvalid, "FENCE takes a session and a generation, 8 bytes each")
		}
		if s.sc.fence.set {
			return nil, s.replyErr(opt, RepErrInvalid, "FENCE was already sent on this connection")
		}
		f := Fence{Session: be.Uint64(data), Generation: be.Uint64(data[8:])}
		if err := s.srv.fenceOlder(s.sc, f); err != nil {
			return nil, s.replyErr(opt, RepErrInvalid, err.Error())
		}
		return nil, s.reply(opt, RepAck, []byte(s.srv.bootID))
	case OptListMetaContext, OptSetMetaContext:
		return nil, s.metaContext(opt, data)
	case OptStructuredReply:
		if len(data) != 0 {
			return nil, s.replyErr(opt, RepErrInvalid, "STRUCTURED_REPLY takes no data")
		}
		if s.extended {
			return nil, s.replyErr(opt, RepErrExtHeaderReqd, "extended headers are negotiated already and take precedence")
		}
		s.structured = true
		return nil, s.reply(opt, RepAck, nil)
	case OptExtendedHeaders:
		if len(data) != 0 {
			return nil, s.replyErr(opt, RepErrInvalid, "EXTENDED_HEADERS takes no data")
		}
		s.extended, s.structured = true, true
		return nil, s.reply(opt, RepAck, nil)
	default:
		return nil, s.replyErr(opt, RepErrUnsup, "")
	}
}

// readOption reads an option payload of length bytes, at most max.
func (s *session) readOption(length, max uint32) ([]byte, error) {
	if length > max {
		return nil, fmt.Errorf("%w: option payload of %d bytes (limit %d)", ErrProtocol, length, max)
	}
	data := make([]byte, length)
	if _, err := io.ReadFull(s.r, data); err != nil {
		return nil, fmt.Errorf("read option payload: %w", eofAbort(err))
	}
	return data, nil
}

func (s *session) reply(opt Option, typ ReplyType, data []byte) error {
	b := s.buf[:OptionReplyBytes]
	be.PutUint64(b[0:], MagicOptionReply)
	be.PutUint32(b[8:], uint32(opt))
	be.PutUint32(b[12:], uint32(typ))
	be.PutUint32(b[16:], uint32(len(data)))
	// No empty buffer: on a synchronous connection (net.Pipe) an empty
	// write waits for a read the peer never makes.
	bufs := net.Buffers{b}
	if len(data) > 0 {
		bufs = append(bufs, data)
	}
	if _, err := bufs.WriteTo(s.conn); err != nil {
		return fmt.Errorf("reply to option %v: %w", opt, err)
	}
	return nil
}

func (s *session) replyErr(opt Option, typ ReplyType, msg string) error {
	if len(msg) > maxStringBytes {
		msg = msg[:maxStringBytes]
	}
	s.srv.log.Debug("option refused", "peer", s.peer.Addr, "option", opt, "reply", typ, "reason", msg)
	return s.reply(opt, typ, []byte(msg))
}

// lookup finds the export a client names; the empty name selects a lone
// export.
func (s *session) lookup(name string) *Export {
	exps := s.srv.opts.Exports
	if name == "" {
		var lone *Export
		shown := 0
		for _, e := range exps {
			if !e.Hidden {
				lone = e
				shown++
			}
		}
		if shown == 1 {
			return lone
		}
	}
	for _, e := range exps {
		if e.Name == name {
			return e
		}
	}
	return nil
}

func (s *session) authorize(e *Export) (Access, error) {
	if s.srv.opts.Authorize == nil {
		return AccessReadWrite, nil
	}
	return s.srv.opts.Authorize(e, s.peer)
}

func (s *session) list(data []byte) error {
	if len(data) != 0 {
		return s.replyErr(OptList, RepErrInvalid, "LIST takes no data")
	}
	for _, e := range s.srv.opts.Exports {
		if a, _ := s.authorize(e); a == AccessDenied || e.Hidden {
			continue
		}
		p := make([]byte, 4+len(e.Name))
		be.PutUint32(p, uint32(len(e.Name)))
		copy(p[4:], e.Name)
		if err := s.reply(OptList, RepServer, p); err != nil {
			return err
		}
	}
	return s.reply(OptList, RepAck, nil)
}

func (s *session) startTLS(data []byte) error {
	switch {
	case len(data) != 0:
		return s.replyErr(OptStartTLS, RepErrInvalid, "STARTTLS takes no data")
	case s.srv.opts.TLS == nil:
		return s.replyErr(OptStartTLS, RepErrUnsup, "this server has no TLS configured")
	case s.peer.TLS != nil:
		return s.replyErr(OptStartTLS, RepErrInvalid, "TLS is already active")
	}
	if err := s.reply(OptStartTLS, RepAck, nil); err != nil {
		return err
	}
	if s.r.Buffered() > 0 {
		return fmt.Errorf("%w: client sent data before the TLS handshake", ErrProtocol)
	}
	tc := tls.Server(s.conn, s.srv.opts.TLS)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	st := tc.ConnectionState()
	s.conn = tc
	s.r = bufio.NewReaderSize(tc, readBufferBytes)
	// What was chosen in the clear does not count.
	s.meta, s.structured, s.extended = metaSelection{}, false, false
	s.peer.TLS = &st
	return nil
}

// exportName answers the legacy NBD_OPT_EXPORT_NAME: there is no way to
// send an error, so an unknown or refused export closes the connection.
func (s *session) exportName(name string) (*negotiation, error) {
	e := s.lookup(name)
	if e == nil {
		return nil, fmt.Errorf("client asked for unknown export %q", name)
	}
	access, err := s.authorize(e)
	if err != nil || access == AccessDenied {
		return nil, fmt.Errorf("peer refused for export %q: %v", name, err)
	}
	n := ExportNameReplyBytes
	if !s.noZeroes {
		n += ExportNameZeroesBytes
	}
	b := make([]byte, n)
	be.PutUint64(b[0:], uint64(e.Size))
	be.PutUint16(b[8:], uint16(s.srv.flagsFor(e, access)))
	if _, err := s.conn.Write(b); err != nil {
		return nil, fmt.Errorf("reply to EXPORT_NAME: %w", err)
	}
	return &negotiation{export: e, access: access, conn: s.conn, r: s.r}, nil
}

// infoGo answers NBD_OPT_INFO and NBD_OPT_GO. Each call looks the export up
// afresh: a GO for an unknown name never serves an export an earlier INFO
// found.
func (s *session) infoGo(opt Option, data []byte) (*negotiation, error) {
	if len(data) < 6 {
		return nil, s.replyErr(opt, RepErrInvalid, "truncated request")
	}
	nameLen := be.Uint32(data)
	if uint64(nameLen) > uint64(len(data)-6) || nameLen > maxStringBytes {
		return nil, s.replyErr(opt, RepErrInvalid, "name length out of bounds")
	}
	name := string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	nreq := int(be.Uint16(rest))
	if len(rest) != 2+2*nreq {
		return nil, s.replyErr(opt, RepErrInvalid, "information request count does not match the length")
	}
	var wantName, wantDesc bool
	for i := 0; i < nreq; i++ {
		switch InfoType(be.Uint16(rest[2+2*i:])) {
		case InfoName:
			wantName = true
		case InfoDescription:
			wantDesc = true
		}
	}
	e := s.lookup(name)
	if e == nil {
		return nil, s.replyErr(opt, RepErrUnknown, fmt.Sprintf("no export named %q", name))
	}
	access, err := s.authorize(e)
	if access == AccessDenied {
		msg := "access denied"
		if err != nil {
			msg = err.Error()
		}
		return nil, s.replyErr(opt, RepErrPolicy, msg)
	}

	info := make([]byte, 0, 64+len(e.Name)+len(e.Description))
	info = be.AppendUint16(info, uint16(InfoExport))
	info = be.AppendUint64(info, uint64(e.Size))
	flags := s.srv.flagsFor(e, access)
	if s.structured {
		// DF (do not fragment) is honoured: a read with it is answered
		// in one chunk (see SparseReadBackend).
		flags |= FlagSendDF
	}
	info = be.AppendUint16(info, uint16(flags))
	if err := s.reply(opt, RepInfo, info); err != nil {
		return nil, err
	}
	// Block sizes are sent whether or not the client asked: the protocol
	// allows it, and clients that did not ask must still honour them.
	minB, prefB, maxB := s.srv.blockSizes(e)
	info = be.AppendUint16(info[:0], uint16(InfoBlockSize))
	info = be.AppendUint32(info, minB)
	info = be.AppendUint32(info, prefB)
	info = be.AppendUint32(info, maxB)
	if err := s.reply(opt, RepInfo, info); err != nil {
		return nil, err
	}
	if wantName {
		info = be.AppendUint16(info[:0], uint16(InfoName))
		info = append(info, e.Name...)
		if err := s.reply(opt, RepInfo, info); err != nil {
			return nil, err
		}
	}
	if wantDesc && e.Description != "" {
		info = be.AppendUint16(info[:0], uint16(InfoDescription))
		info = append(info, e.Description...)
		if err := s.reply(opt, RepInfo, info); err != nil {
			return nil, err
		}
	}
	if err := s.reply(opt, RepAck, nil); err != nil {
		return nil, err
	}
	if opt == OptInfo {
		return nil, nil
	}
	return &negotiation{export: e, access: access, structured: s.structured, extended: s.extended,
		allocation: s.structured && s.meta.allocation && s.meta.export == e, conn: s.conn, r: s.r}, nil
}
