package nbd

// Internals the external tests (package nbd_test) speak on the wire.
const (
	MagicNBD               = magicNBD
	MagicOption            = magicOption
	MagicOptionReply       = magicOptionReply
	HandshakeFixedNewstyle = handshakeFixedNewstyle
	HandshakeNoZeroes      = handshakeNoZeroes
	ClientFixedNewstyle    = clientFixedNewstyle
	ClientNoZeroes         = clientNoZeroes
	OptionReplyBytes       = optionReplyBytes
	RequestHeaderBytes     = requestHeaderBytes
	SimpleReplyBytes       = simpleReplyBytes
	StructuredReplyBytes   = structuredReplyBytes
	ExportNameReplyBytes   = exportNameReplyBytes
	ExportNameZeroesBytes  = exportNameZeroesBytes
	ChunkFlagDone          = chunkFlagDone
	ChunkOffsetData        = chunkOffsetData
	ChunkError             = chunkError
)
