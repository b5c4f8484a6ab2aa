package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"time"
)

// ExportInfo is what the handshake learned about an export.
type ExportInfo struct {
	Name  string
	Size  int64
	Flags TransmissionFlags
	// MinBlock, PreferredBlock and MaxBlock are the server's block size
	// constraints; servers that send none get 1, 4096 and 32 MiB.
	MinBlock, PreferredBlock, MaxBlock uint32
	// Fenced: the server acknowledged ClientOptions.Fence (OptFence); false
	// when none was asked or the server does not know the option.
	Fenced bool
	// BootID is the boot id of the server's machine, sent with the
	// OptFence acknowledgement; empty if unknown.
	BootID string
	// Structured: structured replies were negotiated
	// (ClientOptions.BlockStatus or ExtendedHeaders).
	Structured bool
	// Extended: extended headers were negotiated
	// (ClientOptions.ExtendedHeaders).
	Extended bool
	// Allocation: base:allocation was negotiated (Client.BlockStatus
	// needs it), with the server's id AllocationID (any value, 0
	// included: qemu-nbd uses 0).
	Allocation   bool
	AllocationID uint32
}

// Negotiate runs the client side of the fixed-newstyle handshake on conn:
// STARTTLS when opts.TLS is set, OptFence when opts.Fence is, then
// NBD_OPT_GO for opts.ExportName (NBD_OPT_EXPORT_NAME with servers that do
// not know GO). Unless opts.BlockStatus is set it asks for neither
// structured replies nor extended headers, so the transmission phase is
// the simple one every NBD client speaks, the Linux driver included. It returns what it learned and the
// connection to transmit on (conn, or the TLS connection over it), left
// at the start of the transmission phase with nothing read beyond the
// handshake: NewClient starts its receiver there, the kernel attach path
// hands the socket to the driver. The handshake is bounded by ctx and
// opts.HandshakeTimeout; on error the caller still owns conn.
func Negotiate(ctx context.Context, conn net.Conn, opts ClientOptions) (ExportInfo, net.Conn, error) {
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = DefaultHandshakeTimeout
	}
	deadline := time.Now().Add(opts.HandshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	h := &clientHandshake{conn: conn, r: bufio.NewReaderSize(conn, readBufferBytes)}
	info, err := h.run(opts)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err == nil && h.r.Buffered() > 0 {
		err = fmt.Errorf("%w: server sent %d bytes after the handshake, before any request", ErrProtocol, h.r.Buffered())
	}
	if err != nil {
		return info, nil, fmt.Errorf("nbd: handshake with %v for export %q: %w", conn.RemoteAddr(), opts.ExportName, err)
	}
	_ = conn.SetDeadline(time.Time{})
	if info.MaxBlock > DefaultMaxPayload {
		info.MaxBlock = DefaultMaxPayload
	}
	return info, h.conn, nil
}

// run is the handshake's sequence of options.
func (h *clientHandshake) run(opts ClientOptions) (ExportInfo, error) {
	if err := h.greet(); err != nil {
		return ExportInfo{}, err
	}
	if opts.TLS != nil {
		if err := h.startTLS(opts.TLS); err != nil {
			return ExportInfo{}, err
		}
	}
	fenced, boot := false, ""
	if opts.Fence != nil {
		var err error
		if fenced, boot, err = h.fence(*opts.Fence); err != nil {
			return ExportInfo{}, err
		}
	}
	var structured, extended, alloc bool
	var id uint32
	if opts.ExtendedHeaders {
		var err error
		if extended, err = h.ack(OptExtendedHeaders); err != nil {
			return ExportInfo{}, err
		}
		structured = extended
	}
	if opts.BlockStatus {
		var err error
		if structured, alloc, id, err = h.blockStatus(opts.ExportName, structured); err != nil {
			return ExportInfo{}, err
		}
	}
	h.extended = extended
	info, err := h.goExport(opts.ExportName)
	info.Fenced, info.BootID = fenced, boot
	info.Structured, info.Extended, info.Allocation, info.AllocationID = structured, extended, alloc, id
	return info, err
}

// ack sends opt, which takes no data, and reports whether the server
// acknowledged it; a server that refuses or does not know it is no error.
func (h *clientHandshake) ack(opt Option) (bool, error) {
	if err := h.send(opt, nil); err != nil {
		return false, err
	}
	typ, _, err := h.recv(opt)
	if _, ok := err.(*OptionError); ok {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if typ != RepAck {
		return false, fmt.Errorf("%w: %v answered with %v", ErrProtocol, opt, typ)
	}
	return true, nil
}

// blockStatus asks for structured replies, unless extended headers gave
// them already (structured), and then for base:allocation on export; a
// server that knows neither, or has no such context, is no error
// (structured or alloc false).
func (h *clientHandshake) blockStatus(export string, structured bool) (_, alloc bool, id uint32, err error) {
	if !structured {
		if structured, err = h.ack(OptStructuredReply); err != nil || !structured {
			return false, false, 0, err
		}
	}
	if err := h.send(OptSetMetaContext, EncodeMetaQuery(export, BaseAllocation)); err != nil {
		return true, false, 0, err
	}
	for {
		typ, p, err := h.recv(OptSetMetaContext)
		if _, ok := err.(*OptionError); ok {
			return true, false, 0, nil // no meta contexts here
		}
		if err != nil {
			return true, false, 0, err
		}
		switch {
		case typ == RepAck:
			return true, alloc, id, nil
		case typ == RepMetaContext && len(p) >= 4 && string(p[4:]) == BaseAllocation:
			alloc, id = true, be.Uint32(p)
		case typ == RepMetaContext:
			// another context: not asked for, ignored
		default:
			return true, false, 0, fmt.Errorf("%w: SET_META_CONTEXT answered with %v", ErrProtocol, typ)
		}
	}
}

// clientHandshake is the client side of the fixed-newstyle handshake.
type clientHandshake struct {
	conn     net.Conn
	r        *bufio.Reader
	noZeroes bool
	extended bool // extended headers were acknowledged: GO only
	hdr      [OptionReplyBytes]byte
}

func (h *clientHandshake) greet() error {
	b := h.hdr[:18]
	if _, err := io.ReadFull(h.r, b); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if m := be.Uint64(b[0:]); m != MagicNBD {
		return fmt.Errorf("%w: greeting magic %#x", ErrProtocol, m)
	}
	if m := be.Uint64(b[8:]); m != MagicOption {
		return fmt.Errorf("%w: server speaks oldstyle or unknown handshake (magic %#x)", ErrProtocol, m)
	}
	flags := be.Uint16(b[16:])
	if flags&HandshakeFixedNewstyle == 0 {
		return fmt.Errorf("%w: server does not speak fixed newstyle", ErrProtocol)
	}
	cf := ClientFixedNewstyle
	if flags&HandshakeNoZeroes != 0 {
		cf |= ClientNoZeroes
		h.noZeroes = true
	}
	be.PutUint32(b[:4], cf)
	if _, err := h.conn.Write(b[:4]); err != nil {
		return fmt.Errorf("send client flags: %w", err)
	}
	return nil
}

func (h *clientHandshake) send(opt Option, data []byte) error {
	b := h.hdr[:OptionHeaderBytes]
	be.PutUint64(b[0:], MagicOption)
	be.PutUint32(b[8:], uint32(opt))
	be.PutUint32(b[12:], uint32(len(data)))
	// No empty buffer: on a synchronous connection (net.Pipe) an empty
	// write waits for a read the peer never makes.
	bufs := net.Buffers{b}
	if len(data) > 0 {
		bufs = append(bufs, data)
	}
	if _, err := bufs.WriteTo(h.conn); err != nil {
		return fmt.Errorf("send option %v: %w", opt, err)
	}
	return nil
}

// recv reads one option reply to opt.
func (h *clientHandshake) recv(opt Option) (ReplyType, []byte, error) {
	b := h.hdr[:OptionReplyBytes]
	if _, err := io.ReadFull(h.r, b); err != nil {
		return 0, nil, fmt.Errorf("read reply to %v: %w", opt, err)
	}
	if m := be.Uint64(b[0:]); m != MagicOptionReply {
		return 0, nil, fmt.Errorf("%w: option reply magic %#x", ErrProtocol, m)
	}
	if o := Option(be.Uint32(b[8:])); o != opt {
		return 0, nil, fmt.Errorf("%w: reply to option %v while %v was asked", ErrProtocol, o, opt)
	}
	typ := ReplyType(be.Uint32(b[12:]))
	n := be.Uint32(b[16:])
	if n > maxOptionBytes {
		return 0, nil, fmt.Errorf("%w: option reply of %d bytes", ErrProtocol, n)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(h.r, data); err != nil {
		return 0, nil, fmt.Errorf("read reply to %v: %w", opt, err)
	}
	if typ.IsError() {
		msg := string(data)
		if len(msg) > maxStringBytes {
			msg = msg[:maxStringBytes]
		}
		return typ, nil, &OptionError{Option: opt, Reply: typ, Message: msg}
	}
	return typ, data, nil
}

func (h *clientHandshake) startTLS(cfg *tls.Config) error {
	if err := h.send(OptStartTLS, nil); err != nil {
		return err
	}
	typ, _, err := h.recv(OptStartTLS)
	if err != nil {
		return err
	}
	if typ != RepAck {
		return fmt.Errorf("%w: STARTTLS answered with %v", ErrProtocol, typ)
	}
	if h.r.Buffered() > 0 {
		return fmt.Errorf("%w: server sent data before the TLS handshake", ErrProtocol)
	}
	tc := tls.Client(h.conn, cfg)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	h.conn = tc
	h.r = bufio.NewReaderSize(tc, readBufferBytes)
	return nil
}

// fence sends OptFence; a server that does not know it answers
// ERR_UNSUP, which is no error (fenced=false).
func (h *clientHandshake) fence(f Fence) (fenced bool, boot string, err error) {
	var data [16]byte
	be.PutUint64(data[:], f.Session)
	be.PutUint64(data[8:], f.Generation)
	if err := h.send(OptFence, data[:]); err != nil {
		return false, "", err
	}
	typ, p, err := h.recv(OptFence)
	if oe, ok := err.(*OptionError); ok && oe.Reply == RepErrUnsup {
		return false, "", nil
	}
	if err != nil {
		return false, "", err
	}
	if typ != RepAck || len(p) > maxBootIDBytes {
		return false, "", fmt.Errorf("%w: unexpected reply %v (%d bytes) to DST_FENCE", ErrProtocol, typ, len(p))
	}
	return true, string(p), nil
}

// goExport asks for the export with NBD_OPT_GO (falling back to
// NBD_OPT_EXPORT_NAME for servers that do not know GO).
func (h *clientHandshake) goExport(name string) (ExportInfo, error) {
	info := ExportInfo{Name: name, MinBlock: 1, PreferredBlock: 4096, MaxBlock: DefaultMaxPayload}
	data := make([]byte, 0, 4+len(name)+2+2)
	data = be.AppendUint32(data, uint32(len(name)))
	data = append(data, name...)
	data = be.AppendUint16(data, 1)
	data = be.AppendUint16(data, uint16(InfoBlockSize))
	if err := h.send(OptGo, data); err != nil {
		return info, err
	}
	gotExport := false
	for {
		typ, p, err := h.recv(OptGo)
		if oe, ok := err.(*OptionError); ok && oe.Reply == RepErrUnsup && !h.extended {
			return h.exportName(name)
		}
		if err != nil {
			return info, err
		}
		switch typ {
		case RepAck:
			if !gotExport {
				return info, fmt.Errorf("%w: GO acknowledged without NBD_INFO_EXPORT", ErrProtocol)
			}
			return info, nil
		case RepInfo:
			if len(p) < 2 {
				return info, fmt.Errorf("%w: empty NBD_REP_INFO", ErrProtocol)
			}
			switch InfoType(be.Uint16(p)) {
			case InfoExport:
				if len(p) != 12 {
					return info, fmt.Errorf("%w: NBD_INFO_EXPORT of %d bytes", ErrProtocol, len(p))
				}
				info.Size = int64(be.Uint64(p[2:]))
				info.Flags = TransmissionFlags(be.Uint16(p[10:]))
				gotExport = true
			case InfoBlockSize:
				if len(p) != 14 {
					return info, fmt.Errorf("%w: NBD_INFO_BLOCK_SIZE of %d bytes", ErrProtocol, len(p))
				}
				info.MinBlock, info.PreferredBlock, info.MaxBlock = be.Uint32(p[2:]), be.Uint32(p[6:]), be.Uint32(p[10:])
				if info.MinBlock == 0 || info.MinBlock&(info.MinBlock-1) != 0 || info.MaxBlock < info.MinBlock {
					return info, fmt.Errorf("%w: impossible block sizes %d/%d/%d", ErrProtocol, info.MinBlock, info.PreferredBlock, info.MaxBlock)
				}
			}
		default:
			return info, fmt.Errorf("%w: unexpected reply %v to GO", ErrProtocol, typ)
		}
	}
}

func (h *clientHandshake) exportName(name string) (ExportInfo, error) {
	info := ExportInfo{Name: name, MinBlock: 1, PreferredBlock: 4096, MaxBlock: DefaultMaxPayload}
	if err := h.send(OptExportName, []byte(name)); err != nil {
		return info, err
	}
	n := ExportNameReplyBytes
	if !h.noZeroes {
		n += ExportNameZeroesBytes
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(h.r, b); err != nil {
		return info, fmt.Errorf("read EXPORT_NAME reply (unknown export %q?): %w", name, err)
	}
	info.Size = int64(be.Uint64(b))
	info.Flags = TransmissionFlags(be.Uint16(b[8:]))
	return info, nil
}
