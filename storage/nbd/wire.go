package nbd

import (
	"encoding/binary"
	"fmt"
)

var be = binary.BigEndian

// Request is the header of a transmission request. For CmdWrite, Length
// bytes of payload follow the header on the wire. Length has 64 bits with
// extended headers, 32 without.
type Request struct {
	Flags  CmdFlags
	Cmd    Command
	Cookie uint64
	Offset uint64
	Length uint64
}

// EncodeRequest writes r as a compact request into b, which must hold at
// least 28 bytes; r.Length must fit in 32 bits.
func EncodeRequest(b []byte, r *Request) {
	_ = b[RequestHeaderBytes-1]
	be.PutUint32(b[0:], MagicRequest)
	be.PutUint16(b[4:], uint16(r.Flags))
	be.PutUint16(b[6:], uint16(r.Cmd))
	be.PutUint64(b[8:], r.Cookie)
	be.PutUint64(b[16:], r.Offset)
	be.PutUint32(b[24:], uint32(r.Length))
}

// EncodeExtendedRequest writes r as an extended request (extended
// headers) into b, which must hold at least 32 bytes. The caller sets
// CmdFlagPayloadLen for a write.
func EncodeExtendedRequest(b []byte, r *Request) {
	_ = b[ExtendedRequestBytes-1]
	be.PutUint32(b[0:], MagicExtendedRequest)
	be.PutUint16(b[4:], uint16(r.Flags))
	be.PutUint16(b[6:], uint16(r.Cmd))
	be.PutUint64(b[8:], r.Cookie)
	be.PutUint64(b[16:], r.Offset)
	be.PutUint64(b[24:], r.Length)
}

// DecodeRequest parses a 28-byte compact request header. It fails,
// wrapping ErrProtocol, only on a bad magic; the meaning of the fields is
// checked by the server.
func DecodeRequest(b []byte, r *Request) error {
	_ = b[RequestHeaderBytes-1]
	if m := be.Uint32(b[0:]); m != MagicRequest {
		return fmt.Errorf("%w: request magic %#08x, want %#08x", ErrProtocol, m, MagicRequest)
	}
	r.Flags = CmdFlags(be.Uint16(b[4:]))
	r.Cmd = Command(be.Uint16(b[6:]))
	r.Cookie = be.Uint64(b[8:])
	r.Offset = be.Uint64(b[16:])
	r.Length = uint64(be.Uint32(b[24:]))
	return nil
}

// DecodeExtendedRequest parses a 32-byte extended request header, failing
// (wrapping ErrProtocol) only on a bad magic, such as a compact request
// where extended ones were agreed.
func DecodeExtendedRequest(b []byte, r *Request) error {
	_ = b[ExtendedRequestBytes-1]
	if m := be.Uint32(b[0:]); m != MagicExtendedRequest {
		return fmt.Errorf("%w: request magic %#08x, want %#08x (extended headers were negotiated)", ErrProtocol, m, MagicExtendedRequest)
	}
	r.Flags = CmdFlags(be.Uint16(b[4:]))
	r.Cmd = Command(be.Uint16(b[6:]))
	r.Cookie = be.Uint64(b[8:])
	r.Offset = be.Uint64(b[16:])
	r.Length = be.Uint64(b[24:])
	return nil
}

// encodeSimpleReply writes a 16-byte simple reply header.
func encodeSimpleReply(b []byte, errno Errno, cookie uint64) {
	_ = b[SimpleReplyBytes-1]
	be.PutUint32(b[0:], MagicSimpleReply)
	be.PutUint32(b[4:], uint32(errno))
	be.PutUint64(b[8:], cookie)
}

// encodeChunk writes a 20-byte structured reply chunk header.
func encodeChunk(b []byte, flags, typ uint16, cookie uint64, length uint32) {
	_ = b[StructuredReplyBytes-1]
	be.PutUint32(b[0:], MagicStructuredReply)
	be.PutUint16(b[4:], flags)
	be.PutUint16(b[6:], typ)
	be.PutUint64(b[8:], cookie)
	be.PutUint32(b[16:], length)
}

// encodeExtendedChunk writes a 32-byte extended reply chunk header; off
// is the request's offset.
func encodeExtendedChunk(b []byte, flags, typ uint16, cookie, off, length uint64) {
	_ = b[ExtendedReplyBytes-1]
	be.PutUint32(b[0:], MagicExtendedReply)
	be.PutUint16(b[4:], flags)
	be.PutUint16(b[6:], typ)
	be.PutUint64(b[8:], cookie)
	be.PutUint64(b[16:], off)
	be.PutUint64(b[24:], length)
}

// Reply is a decoded reply header: a simple reply, or one chunk of a
// structured or extended reply.
type Reply struct {
	Structured bool   // a chunk: structured or extended
	Extended   bool   // an extended chunk
	Errno      Errno  // simple replies only
	Flags      uint16 // chunks only
	Type       uint16 // chunks only
	Cookie     uint64
	Offset     uint64 // extended only: the request's offset
	Length     uint64 // chunks only: payload length of the chunk
}

// decodeReplyMagic reports how many header bytes follow the 4-byte magic.
func decodeReplyMagic(b []byte) (rest int, structured bool, err error) {
	switch m := be.Uint32(b); m {
	case MagicSimpleReply:
		return SimpleReplyBytes - 4, false, nil
	case MagicStructuredReply:
		return StructuredReplyBytes - 4, true, nil
	case MagicExtendedReply:
		return ExtendedReplyBytes - 4, true, nil
	default:
		return 0, false, fmt.Errorf("%w: reply magic %#08x", ErrProtocol, m)
	}
}

// DecodeReply parses a reply header: 16 bytes for a simple reply, 20 for a
// structured chunk, 32 for an extended one (decodeReplyMagic tells which
// from the first 4 bytes).
func DecodeReply(b []byte, r *Reply) error {
	rest, structured, err := decodeReplyMagic(b)
	if err != nil {
		return err
	}
	if len(b) < 4+rest {
		return fmt.Errorf("%w: short reply header (%d bytes)", ErrProtocol, len(b))
	}
	*r = Reply{Structured: structured, Cookie: be.Uint64(b[8:])}
	switch {
	case !structured:
		r.Errno = Errno(be.Uint32(b[4:]))
		return nil
	case rest == ExtendedReplyBytes-4:
		r.Extended = true
		r.Offset = be.Uint64(b[16:])
		r.Length = be.Uint64(b[24:])
	default:
		r.Length = uint64(be.Uint32(b[16:]))
	}
	r.Flags = be.Uint16(b[4:])
	r.Type = be.Uint16(b[6:])
	return nil
}
