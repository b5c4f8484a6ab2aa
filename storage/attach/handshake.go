package attach

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/pojntfx/go-nbd/pkg/protocol"

	"dst/storage/nbd"
)

// handshakeTimeout bounds Handshake when ctx has no earlier deadline.
const handshakeTimeout = 30 * time.Second

// maxReplyBytes bounds an option reply's payload this side reads.
const maxReplyBytes = 64 << 10

// ErrHandshake means the server broke the NBD handshake protocol.
var ErrHandshake = errors.New("nbd handshake")

// Handshake runs the client side of the fixed-newstyle NBD handshake on
// conn, selecting export name with NBD_OPT_GO, and leaves conn at the
// start of the transmission phase, with nothing read beyond the
// handshake: the kernel driver takes the socket over from there. It asks
// for no structured replies and no extended headers, which the driver
// does not speak. (nbd.Client keeps its handshake internal and starts a
// reader on the connection, so the kernel path cannot use it.)
func Handshake(ctx context.Context, conn net.Conn, name string) (nbd.ExportInfo, error) {
	info := nbd.ExportInfo{Name: name, MinBlock: 1, PreferredBlock: 4096, MaxBlock: nbd.DefaultMaxPayload}
	deadline := time.Now().Add(handshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	err := handshake(conn, name, &info)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	_ = conn.SetDeadline(time.Time{})
	if err != nil {
		return info, fmt.Errorf("nbd handshake for export %q: %w", name, err)
	}
	return info, nil
}

func handshake(conn net.Conn, name string, info *nbd.ExportInfo) error {
	be := binary.BigEndian
	var greet [18]byte
	if _, err := io.ReadFull(conn, greet[:]); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	switch {
	case be.Uint64(greet[0:]) != protocol.NEGOTIATION_MAGIC_OLDSTYLE:
		return fmt.Errorf("%w: greeting magic %#x", ErrHandshake, be.Uint64(greet[0:]))
	case be.Uint64(greet[8:]) != protocol.NEGOTIATION_MAGIC_OPTION:
		return fmt.Errorf("%w: server speaks oldstyle or an unknown handshake", ErrHandshake)
	case be.Uint16(greet[16:])&protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE == 0:
		return fmt.Errorf("%w: server does not speak fixed newstyle", ErrHandshake)
	}
	// Client flags: fixed newstyle only. Without NO_ZEROES the reply to
	// the NBD_OPT_EXPORT_NAME fallback is padded, which is read below.
	msg := be.AppendUint32(nil, uint32(protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE))
	// NBD_OPT_GO: name length, name, no information requests.
	msg = be.AppendUint64(msg, protocol.NEGOTIATION_MAGIC_OPTION)
	msg = be.AppendUint32(msg, uint32(nbd.OptGo))
	msg = be.AppendUint32(msg, uint32(4+len(name)+2))
	msg = be.AppendUint32(msg, uint32(len(name)))
	msg = append(msg, name...)
	msg = be.AppendUint16(msg, 0)
	if _, err := conn.Write(msg); err != nil {
		return fmt.Errorf("send NBD_OPT_GO: %w", err)
	}
	gotExport := false
	for {
		var hdr [20]byte
		if _, err := io.ReadFull(conn, hdr[:]); err != nil {
			return fmt.Errorf("read reply to NBD_OPT_GO: %w", err)
		}
		if m := be.Uint64(hdr[0:]); m != protocol.NEGOTIATION_MAGIC_REPLY {
			return fmt.Errorf("%w: option reply magic %#x", ErrHandshake, m)
		}
		if o := nbd.Option(be.Uint32(hdr[8:])); o != nbd.OptGo {
			return fmt.Errorf("%w: reply to option %v while GO was asked", ErrHandshake, o)
		}
		typ := nbd.ReplyType(be.Uint32(hdr[12:]))
		n := be.Uint32(hdr[16:])
		if n > maxReplyBytes {
			return fmt.Errorf("%w: option reply of %d bytes", ErrHandshake, n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(conn, data); err != nil {
			return fmt.Errorf("read reply to NBD_OPT_GO: %w", err)
		}
		switch {
		case typ == nbd.RepErrUnsup:
			return exportName(conn, name, info)
		case typ.IsError():
			return &nbd.OptionError{Option: nbd.OptGo, Reply: typ, Message: string(data[:min(len(data), 4096)])}
		case typ == nbd.RepAck:
			if !gotExport {
				return fmt.Errorf("%w: GO acknowledged without NBD_INFO_EXPORT", ErrHandshake)
			}
			return nil
		case typ == nbd.RepInfo:
			if len(data) >= 2 && nbd.InfoType(be.Uint16(data)) == nbd.InfoExport {
				if len(data) != 12 {
					return fmt.Errorf("%w: NBD_INFO_EXPORT of %d bytes", ErrHandshake, len(data))
				}
				info.Size = int64(be.Uint64(data[2:]))
				info.Flags = nbd.TransmissionFlags(be.Uint16(data[10:]))
				gotExport = true
			}
		default:
			return fmt.Errorf("%w: unexpected reply %v to GO", ErrHandshake, typ)
		}
	}
}

// exportName selects the export with NBD_OPT_EXPORT_NAME, for servers
// that do not know NBD_OPT_GO.
func exportName(conn net.Conn, name string, info *nbd.ExportInfo) error {
	be := binary.BigEndian
	msg := be.AppendUint64(nil, protocol.NEGOTIATION_MAGIC_OPTION)
	msg = be.AppendUint32(msg, uint32(nbd.OptExportName))
	msg = be.AppendUint32(msg, uint32(len(name)))
	msg = append(msg, name...)
	if _, err := conn.Write(msg); err != nil {
		return fmt.Errorf("send NBD_OPT_EXPORT_NAME: %w", err)
	}
	var reply [8 + 2 + 124]byte
	if _, err := io.ReadFull(conn, reply[:]); err != nil {
		return fmt.Errorf("read NBD_OPT_EXPORT_NAME reply (unknown export %q?): %w", name, err)
	}
	info.Size = int64(be.Uint64(reply[0:]))
	info.Flags = nbd.TransmissionFlags(be.Uint16(reply[8:]))
	return nil
}
