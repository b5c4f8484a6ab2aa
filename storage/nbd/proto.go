// Package nbd implements the Network Block Device protocol as described in
// doc/proto.md of the NetworkBlockDevice/nbd project: the fixed-newstyle
// handshake with its options, the transmission phase with simple and
// structured replies, extended headers (64-bit lengths, negotiated only
// when the client asks), the base:allocation meta context, a concurrent
// Server and a pipelined Client.
//
// Durability is the backend's: a reply to a write with FUA, or to a FLUSH,
// is sent only after the backend's WriteAt or Flush returned, and neither
// the header format nor the reply type changes what was made durable.
//
// The package knows nothing of layouts or engines. A Server serves Backends;
// a Client talks to any conforming server (nbdkit, qemu-nbd, nbd-server,
// another dst).
//
// Wire constants that github.com/pojntfx/go-nbd defines correctly are taken
// from its protocol package; the rest (FLUSH, TRIM, WRITE_ZEROES, CACHE,
// structured replies, STARTTLS, ...) are defined here.
package nbd

import (
	"fmt"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// Magic numbers of the handshake and transmission phases. These, the
// sizes below and the header codecs of wire.go are the one definition of
// the wire format in dst: the client, the server and the fault proxy
// (storage/nbd/nbdproxy) all parse with them.
const (
	MagicNBD             = protocol.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC"
	MagicOption          = protocol.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	MagicOptionReply     = protocol.NEGOTIATION_MAGIC_REPLY
	MagicRequest         = protocol.TRANSMISSION_MAGIC_REQUEST
	MagicSimpleReply     = protocol.TRANSMISSION_MAGIC_REPLY
	MagicStructuredReply = uint32(0x668e33ef)
	// MagicExtendedRequest and MagicExtendedReply start every request and
	// reply once extended headers are negotiated (OptExtendedHeaders).
	MagicExtendedRequest = uint32(0x21e41c71)
	MagicExtendedReply   = uint32(0x6e8a278c)
	// MagicOldstyle follows NBDMAGIC in an oldstyle greeting (instead of
	// IHAVEOPT); dst does not speak oldstyle but the proxy passes it on.
	MagicOldstyle = uint64(0x00420281861253)
)

// Sizes of fixed wire structures, in bytes.
const (
	RequestHeaderBytes    = 28
	SimpleReplyBytes      = 16
	StructuredReplyBytes  = 20
	ExtendedRequestBytes  = 32 // extended headers: the request header
	ExtendedReplyBytes    = 32 // extended headers: every reply chunk header
	OptionHeaderBytes     = 16
	OptionReplyBytes      = 20
	ExportNameReplyBytes  = 10  // size + transmission flags
	ExportNameZeroesBytes = 124 // padding unless NO_ZEROES was agreed
	// OldstyleRestBytes follow the 16-byte oldstyle greeting: size, flags,
	// zeroes.
	OldstyleRestBytes = 8 + 4 + 124
	// maxStringBytes bounds export names, descriptions and error messages
	// (the protocol says they MUST be no longer than 4096 bytes).
	maxStringBytes = 4096
	// maxOptionBytes bounds the payload of an option this side parses;
	// longer payloads of unknown options are skipped without allocating.
	maxOptionBytes = 64 << 10
)

// Handshake flags sent by the server.
const (
	HandshakeFixedNewstyle = uint16(1 << 0)
	HandshakeNoZeroes      = uint16(1 << 1)
)

// Client flags sent by the client after the server's greeting.
const (
	ClientFixedNewstyle = uint32(1 << 0)
	ClientNoZeroes      = uint32(1 << 1)
	clientKnownFlags    = ClientFixedNewstyle | ClientNoZeroes
)

// Option is an option code of the handshake phase.
type Option uint32

// Options of the fixed-newstyle handshake.
const (
	OptExportName      Option = 1
	OptAbort           Option = 2
	OptList            Option = 3
	OptPeekExport      Option = 4 // withdrawn
	OptStartTLS        Option = 5
	OptInfo            Option = Option(protocol.NEGOTIATION_ID_OPTION_INFO)
	OptGo              Option = Option(protocol.NEGOTIATION_ID_OPTION_GO)
	OptStructuredReply Option = 8
	OptListMetaContext Option = 9
	OptSetMetaContext  Option = 10
	OptExtendedHeaders Option = 11
)

func (o Option) String() string {
	switch o {
	case OptExportName:
		return "EXPORT_NAME"
	case OptAbort:
		return "ABORT"
	case OptList:
		return "LIST"
	case OptPeekExport:
		return "PEEK_EXPORT"
	case OptStartTLS:
		return "STARTTLS"
	case OptInfo:
		return "INFO"
	case OptGo:
		return "GO"
	case OptStructuredReply:
		return "STRUCTURED_REPLY"
	case OptListMetaContext:
		return "LIST_META_CONTEXT"
	case OptSetMetaContext:
		return "SET_META_CONTEXT"
	case OptExtendedHeaders:
		return "EXTENDED_HEADERS"
	case OptFence:
		return "DST_FENCE"
	}
	return fmt.Sprintf("OPT(%d)", uint32(o))
}

// ReplyType is the type of an option reply.
type ReplyType uint32

const repError = ReplyType(1 << 31)

// Option reply types. Types with the high bit set are errors.
const (
	RepAck             ReplyType = ReplyType(protocol.NEGOTIATION_TYPE_REPLY_ACK)
	RepServer          ReplyType = ReplyType(protocol.NEGOTIATION_TYPE_REPLY_SERVER)
	RepInfo            ReplyType = ReplyType(protocol.NEGOTIATION_TYPE_REPLY_INFO)
	RepMetaContext     ReplyType = 4
	RepErrUnsup        ReplyType = ReplyType(protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED)
	RepErrPolicy       ReplyType = repError | 2
	RepErrInvalid      ReplyType = repError | 3
	RepErrPlatform     ReplyType = repError | 4
	RepErrTLSReqd      ReplyType = repError | 5
	RepErrUnknown      ReplyType = ReplyType(protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN)
	RepErrShutdown     ReplyType = repError | 7
	RepErrBlockSizeReq ReplyType = repError | 8
	RepErrTooBig       ReplyType = repError | 9
	// RepErrExtHeaderReqd refuses STRUCTURED_REPLY once extended headers
	// were negotiated (they take precedence).
	RepErrExtHeaderReqd ReplyType = repError | 10
)

// IsError reports whether the reply type is an error.
func (r ReplyType) IsError() bool { return r&repError != 0 }

func (r ReplyType) String() string {
	switch r {
	case RepAck:
		return "ACK"
	case RepServer:
		return "SERVER"
	case RepInfo:
		return "INFO"
	case RepMetaContext:
		return "META_CONTEXT"
	case RepErrUnsup:
		return "ERR_UNSUP"
	case RepErrPolicy:
		return "ERR_POLICY"
	case RepErrInvalid:
		return "ERR_INVALID"
	case RepErrPlatform:
		return "ERR_PLATFORM"
	case RepErrTLSReqd:
		return "ERR_TLS_REQD"
	case RepErrUnknown:
		return "ERR_UNKNOWN"
	case RepErrShutdown:
		return "ERR_SHUTDOWN"
	case RepErrBlockSizeReq:
		return "ERR_BLOCK_SIZE_REQD"
	case RepErrTooBig:
		return "ERR_TOO_BIG"
	case RepErrExtHeaderReqd:
		return "ERR_EXT_HEADER_REQD"
	}
	return fmt.Sprintf("REP(%#x)", uint32(r))
}

// InfoType is the type of an NBD_REP_INFO payload.
type InfoType uint16

// Information types of NBD_OPT_INFO and NBD_OPT_GO.
const (
	InfoExport      InfoType = InfoType(protocol.NEGOTIATION_TYPE_INFO_EXPORT)
	InfoName        InfoType = InfoType(protocol.NEGOTIATION_TYPE_INFO_NAME)
	InfoDescription InfoType = InfoType(protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION)
	InfoBlockSize   InfoType = InfoType(protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE)
)

func (t InfoType) String() string {
	switch t {
	case InfoExport:
		return "EXPORT"
	case InfoName:
		return "NAME"
	case InfoDescription:
		return "DESCRIPTION"
	case InfoBlockSize:
		return "BLOCK_SIZE"
	}
	return fmt.Sprintf("INFO(%d)", uint16(t))
}

// TransmissionFlags describe an export to the client.
type TransmissionFlags uint16

// Transmission flags.
const (
	FlagHasFlags      TransmissionFlags = TransmissionFlags(protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS)
	FlagReadOnly      TransmissionFlags = 1 << 1
	FlagSendFlush     TransmissionFlags = 1 << 2
	FlagSendFUA       TransmissionFlags = 1 << 3
	FlagRotational    TransmissionFlags = 1 << 4
	FlagSendTrim      TransmissionFlags = 1 << 5
	FlagSendWriteZero TransmissionFlags = 1 << 6
	FlagSendDF        TransmissionFlags = 1 << 7
	FlagCanMultiConn  TransmissionFlags = TransmissionFlags(protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN)
	FlagSendResize    TransmissionFlags = 1 << 9
	FlagSendCache     TransmissionFlags = 1 << 10
	FlagSendFastZero  TransmissionFlags = 1 << 11
)

var transmissionFlagNames = [...]string{
	"HAS_FLAGS", "READ_ONLY", "SEND_FLUSH", "SEND_FUA", "ROTATIONAL", "SEND_TRIM",
	"SEND_WRITE_ZEROES", "SEND_DF", "CAN_MULTI_CONN", "SEND_RESIZE", "SEND_CACHE",
	"SEND_FAST_ZERO",
}

func (f TransmissionFlags) String() string { return flagString(uint64(f), transmissionFlagNames[:]) }

// Command is the type of a transmission request.
type Command uint16

// Transmission commands.
const (
	CmdRead        Command = Command(protocol.TRANSMISSION_TYPE_REQUEST_READ)
	CmdWrite       Command = Command(protocol.TRANSMISSION_TYPE_REQUEST_WRITE)
	CmdDisc        Command = Command(protocol.TRANSMISSION_TYPE_REQUEST_DISC)
	CmdFlush       Command = 3
	CmdTrim        Command = 4
	CmdCache       Command = 5
	CmdWriteZeroes Command = 6
	CmdBlockStatus Command = 7
	CmdResize      Command = 8
)

// IsWrite reports whether c changes the export's bytes: WRITE, TRIM and
// WRITE_ZEROES (what a read-only export refuses, what a node orders by
// range and what a mirror sends to every replica and marks in its log).
func (c Command) IsWrite() bool {
	return c == CmdWrite || c == CmdTrim || c == CmdWriteZeroes
}

func (c Command) String() string {
	switch c {
	case CmdRead:
		return "READ"
	case CmdWrite:
		return "WRITE"
	case CmdDisc:
		return "DISC"
	case CmdFlush:
		return "FLUSH"
	case CmdTrim:
		return "TRIM"
	case CmdCache:
		return "CACHE"
	case CmdWriteZeroes:
		return "WRITE_ZEROES"
	case CmdBlockStatus:
		return "BLOCK_STATUS"
	case CmdResize:
		return "RESIZE"
	}
	return fmt.Sprintf("CMD(%d)", uint16(c))
}

// CmdFlags modify a transmission request.
type CmdFlags uint16

// Command flags.
const (
	CmdFlagFUA      CmdFlags = 1 << 0
	CmdFlagNoHole   CmdFlags = 1 << 1
	CmdFlagDF       CmdFlags = 1 << 2
	CmdFlagReqOne   CmdFlags = 1 << 3
	CmdFlagFastZero CmdFlags = 1 << 4
	// CmdFlagPayloadLen (extended headers only): the length is that of a
	// payload following the header, not the range the command affects.
	// Every extended WRITE carries it.
	CmdFlagPayloadLen CmdFlags = 1 << 5
)

var cmdFlagNames = [...]string{"FUA", "NO_HOLE", "DF", "REQ_ONE", "FAST_ZERO", "PAYLOAD_LEN"}

func (f CmdFlags) String() string { return flagString(uint64(f), cmdFlagNames[:]) }

// Structured reply chunk types and flags.
const (
	ChunkFlagDone   = uint16(1 << 0)
	ChunkNone       = uint16(0)
	ChunkOffsetData = uint16(1)
	ChunkOffsetHole = uint16(2)
	// ChunkBlockStatusExt (extended headers only) is a block status
	// answer with 64-bit descriptor lengths.
	ChunkBlockStatusExt = uint16(6)
	ChunkError          = uint16(1<<15 | 1)
	ChunkErrorOffset    = uint16(1<<15 | 2)
)

func flagString(v uint64, names []string) string {
	if v == 0 {
		return "0"
	}
	s := ""
	for i, n := range names {
		if v&(1<<i) != 0 {
			if s != "" {
				s += "|"
			}
			s += n
			v &^= 1 << i
		}
	}
	if v != 0 {
		if s != "" {
			s += "|"
		}
		s += fmt.Sprintf("%#x", v)
	}
	return s
}
