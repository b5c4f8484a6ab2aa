// Block status (NBD_CMD_BLOCK_STATUS) with the base:allocation meta
// context, server side: the client lists and selects contexts during the
// handshake (NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT), then
// asks which parts of a range hold data. A Backend that implements
// BlockStatusBackend answers from what it knows (a file's holes); any
// other is reported as all data, which is always true.
//
// Durability: an answer reflects the writes completed before the request
// was read, and promises nothing about them: a range written but not
// flushed is data now and may be a hole again after the node's machine
// loses power. Block status changes nothing.
package nbd

import (
	"context"
	"fmt"
	"strings"
)

// BaseAllocation is the one meta context dst serves.
const BaseAllocation = "base:allocation"

// baseAllocationID is the id the server gives base:allocation on every
// export.
const baseAllocationID = 1

// Allocation state flags of a base:allocation descriptor.
const (
	// StateHole: the range is not allocated (a hole).
	StateHole = uint32(1 << 0)
	// StateZero: the range reads as zeroes.
	StateZero = uint32(1 << 1)
)

// ChunkBlockStatus is the structured reply chunk type of a block status
// answer (NBD_REPLY_TYPE_BLOCK_STATUS).
const ChunkBlockStatus = uint16(5)

// MaxExtents bounds the descriptors of one block status reply (a client
// asking about a huge range gets the first MaxExtents and asks again).
const MaxExtents = 1024

// Extent is one run of a block status answer: Length bytes with the same
// state (StateHole, StateZero; 0 is allocated data).
type Extent struct {
	Length int64
	Flags  uint32
}

// BlockStatusBackend is a Backend that knows which parts of the export
// hold data.
//
// BlockStatus appends to dst the descriptors of [off, off+length) in
// order from off, until the range is covered or dst is full (len(dst) ==
// cap(dst)); it appends at least one. Lengths are positive and sum to at
// most length. StateZero must be set only where a read returns zeroes.
type BlockStatusBackend interface {
	Backend
	BlockStatus(ctx context.Context, off, length int64, dst []Extent) ([]Extent, error)
}

// SparseReadBackend is a BlockStatusBackend whose answer is cheap enough
// to ask before every large read (a seek in a local file). On a
// connection with structured replies the server then answers the holes
// of a read larger than 64 KiB with OFFSET_HOLE chunks instead of reading
// and sending zeroes, and a failure reading one of its data pieces with
// ERROR_OFFSET naming where (the pieces before it were sent). With
// CmdFlagDF only a read that is all hole is answered so (in one chunk).
type SparseReadBackend interface {
	BlockStatusBackend
	// SparseReads reports whether the backend's block status is cheap.
	SparseReads() bool
}

// sparseMaxChunks bounds the chunks of a sparse read reply: a read whose
// range has more pieces is read and sent whole.
const sparseMaxChunks = 16

// planSparse asks a SparseReadBackend for the pieces of sr's read and
// reports whether the reply is sparse: it has a zero piece, and either
// no data piece or no DF flag. sr.sparse then holds the pieces, merged
// where neighbours are both zero or both data.
func (t *transmitter) planSparse(ctx context.Context, sr *serverRequest) bool {
	n := int64(sr.Length)
	if t.sparse == nil || !t.structured || n <= inPlaceMaxBytes {
		return false
	}
	sr.extentBuffers()
	exts, err := t.sparse.BlockStatus(ctx, int64(sr.Offset), n, sr.extents[:0:sparseMaxChunks])
	if err != nil {
		return false // a read tells
	}
	pieces := exts[:0] // merged in place: never ahead of what is read
	var total int64
	data := false
	for _, x := range exts {
		x.Flags &= StateZero
		total += x.Length
		if len(pieces) > 0 && pieces[len(pieces)-1].Flags == x.Flags {
			pieces[len(pieces)-1].Length += x.Length
			continue
		}
		data = data || x.Flags == 0
		pieces = append(pieces, x)
	}
	if total != n || (data && len(pieces) == 1) || (data && sr.Flags&CmdFlagDF != 0) {
		return false
	}
	if sr.chunks == nil {
		sr.chunks = make([]byte, 0, sparseMaxChunks*(ExtendedReplyBytes+14))
		sr.more = make([][]byte, 0, 2*sparseMaxChunks)
	}
	sr.sparse, sr.sparseData, sr.failAt = pieces, data, -1
	return true
}

// readSparse reads the data pieces of a sparse read into sr.data.
func (t *transmitter) readSparse(ctx context.Context, b Backend, sr *serverRequest) error {
	at := int64(0)
	for i, x := range sr.sparse {
		if x.Flags == 0 {
			if err := b.ReadAt(ctx, sr.data[at:at+x.Length], int64(sr.Offset)+at); err != nil {
				sr.failAt = i
				return err
			}
		}
		at += x.Length
	}
	return nil
}

// encodeSparse lays out a sparse read's reply in sr.more: a chunk per
// piece (OFFSET_HOLE or OFFSET_DATA), the last flagged DONE; after a
// failed piece, ERROR_OFFSET at its offset ends the reply instead.
func (t *transmitter) encodeSparse(sr *serverRequest) {
	h, v := sr.chunks[:0], sr.more[:0]
	last := len(sr.sparse) - 1
	at := int64(0)
	for i, x := range sr.sparse {
		off := sr.Offset + uint64(at)
		start := len(h)
		flags := uint16(0)
		if i == last {
			flags = ChunkFlagDone
		}
		switch {
		case sr.errno != 0 && i == sr.failAt:
			h = t.appendChunk(h, ChunkFlagDone, ChunkErrorOffset, sr, 14)
			h = be.AppendUint32(h, uint32(sr.errno))
			h = be.AppendUint16(h, 0)
			h = be.AppendUint64(h, off)
			v = append(v, h[start:])
			sr.more = v
			return
		case x.Flags != 0:
			h = t.appendChunk(h, flags, ChunkOffsetHole, sr, 12)
			h = be.AppendUint64(h, off)
			h = be.AppendUint32(h, uint32(x.Length))
			v = append(v, h[start:])
		default:
			h = t.appendChunk(h, flags, ChunkOffsetData, sr, 8+uint64(x.Length))
			h = be.AppendUint64(h, off)
			v = append(v, h[start:], sr.data[at:at+x.Length])
		}
		at += x.Length
	}
	sr.more = v
}

// appendChunk appends a chunk header of the connection's kind (extended
// or structured) to h, within its capacity.
func (t *transmitter) appendChunk(h []byte, flags, typ uint16, sr *serverRequest, length uint64) []byte {
	n := len(h)
	if t.extended {
		h = h[:n+ExtendedReplyBytes]
		encodeExtendedChunk(h[n:], flags, typ, sr.Cookie, sr.Offset, length)
		return h
	}
	h = h[:n+StructuredReplyBytes]
	encodeChunk(h[n:], flags, typ, sr.Cookie, uint32(length))
	return h
}

// extentBuffers allocates sr's descriptor buffers at the first block
// status request or sparse read of the slot.
func (sr *serverRequest) extentBuffers() {
	if sr.extents == nil {
		sr.extents = make([]Extent, 0, MaxExtents)
		sr.bsPayload = make([]byte, 0, 8+16*MaxExtents)
	}
}

// EncodeMetaQuery encodes the payload of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT: the export name and the queries, each with
// its 32-bit length.
func EncodeMetaQuery(export string, queries ...string) []byte {
	b := be.AppendUint32(nil, uint32(len(export)))
	b = append(b, export...)
	b = be.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = be.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// metaQuery is a parsed NBD_OPT_LIST/SET_META_CONTEXT payload.
type metaQuery struct {
	export  string
	queries []string
}

// parseMetaQuery decodes the payload: export name length and name, the
// number of queries, and each query's length and text.
func parseMetaQuery(data []byte) (metaQuery, error) {
	var q metaQuery
	take := func(n uint32) ([]byte, error) {
		if uint64(n) > uint64(len(data)) {
			return nil, fmt.Errorf("%d bytes announced, %d left", n, len(data))
		}
		b := data[:n]
		data = data[n:]
		return b, nil
	}
	u32 := func() (uint32, error) {
		b, err := take(4)
		if err != nil {
			return 0, err
		}
		return be.Uint32(b), nil
	}
	n, err := u32()
	if err != nil {
		return q, err
	}
	if n > maxStringBytes {
		return q, fmt.Errorf("export name of %d bytes", n)
	}
	name, err := take(n)
	if err != nil {
		return q, err
	}
	q.export = string(name)
	count, err := u32()
	if err != nil {
		return q, err
	}
	if uint64(count)*4 > uint64(len(data)) {
		return q, fmt.Errorf("%d queries in %d bytes", count, len(data))
	}
	for range count {
		n, err := u32()
		if err != nil {
			return q, err
		}
		if n > maxStringBytes {
			return q, fmt.Errorf("query of %d bytes", n)
		}
		b, err := take(n)
		if err != nil {
			return q, err
		}
		q.queries = append(q.queries, string(b))
	}
	if len(data) != 0 {
		return q, fmt.Errorf("%d bytes after the last query", len(data))
	}
	return q, nil
}

// matches reports whether base:allocation answers the query: its full
// name, or (listing only) its namespace "base:".
func matches(query string, list bool) bool {
	return query == BaseAllocation || (list && query == "base:")
}

// metaContext answers NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT. SET needs structured replies (the protocol
// says so: block status answers are structured), and replaces any earlier
// selection, even when it fails.
func (s *session) metaContext(opt Option, data []byte) error {
	list := opt == OptListMetaContext
	if !list {
		s.meta = metaSelection{}
	}
	if !list && !s.structured {
		return s.replyErr(opt, RepErrInvalid, "SET_META_CONTEXT needs structured replies: send STRUCTURED_REPLY first")
	}
	q, err := parseMetaQuery(data)
	if err != nil {
		return s.replyErr(opt, RepErrInvalid, "malformed meta context request: "+err.Error())
	}
	e := s.lookup(q.export)
	if e == nil {
		return s.replyErr(opt, RepErrUnknown, fmt.Sprintf("no export named %q", q.export))
	}
	found := list && len(q.queries) == 0 // an empty list asks for everything
	for _, query := range q.queries {
		if !strings.Contains(query, ":") {
			return s.replyErr(opt, RepErrInvalid, fmt.Sprintf("meta context query %q has no namespace", query))
		}
		found = found || matches(query, list)
	}
	if found {
		id := uint32(0) // LIST: ids mean nothing yet
		if !list {
			id = baseAllocationID
			s.meta = metaSelection{export: e, allocation: true}
		}
		reply := be.AppendUint32(make([]byte, 0, 4+len(BaseAllocation)), id)
		reply = append(reply, BaseAllocation...)
		if err := s.reply(opt, RepMetaContext, reply); err != nil {
			return err
		}
	}
	return s.reply(opt, RepAck, nil)
}

// metaSelection is what SET_META_CONTEXT chose: valid for the export it
// named only.
type metaSelection struct {
	export     *Export
	allocation bool
}

// blockStatus answers a block status request into sr: the backend's
// descriptors (all data without a BlockStatusBackend), merged where
// neighbours share a state, one only with CmdFlagReqOne, each a multiple
// of the minimum block except where the range ends and within 32 bits
// (64 with extended headers: NBD_REPLY_TYPE_BLOCK_STATUS_EXT, whose
// descriptors are a 64-bit length and 64-bit flags after the context id
// and the descriptor count).
func (t *transmitter) blockStatus(ctx context.Context, sr *serverRequest, off, n int64) error {
	sr.extentBuffers()
	exts := sr.extents[:0]
	if sr.Flags&CmdFlagReqOne != 0 {
		exts = sr.extents[:0:1]
	}
	if bs, ok := t.export.Backend.(BlockStatusBackend); ok {
		var err error
		if exts, err = bs.BlockStatus(ctx, off, n, exts); err != nil {
			return err
		}
	} else {
		exts = append(exts, Extent{Length: n})
	}
	p := be.AppendUint32(sr.bsPayload[:0], baseAllocationID)
	if t.extended {
		p = be.AppendUint32(p, 0) // the descriptor count, set below
	}
	var total int64
	const max32 = int64(^uint32(0))
	maxLen := max32 - max32%int64(t.minBlock)
	if t.extended {
		maxLen = n // a 64-bit length holds any range
	}
	count := 0
	for i := 0; i < len(exts); {
		x := exts[i]
		for i++; i < len(exts) && exts[i].Flags == x.Flags; i++ {
			x.Length += exts[i].Length // merge neighbours of one state
		}
		if x.Length <= 0 || total+x.Length > n {
			return fmt.Errorf("%w: backend block status: descriptor of %d bytes at %d past the %d asked for", EIO, x.Length, off+total, n)
		}
		x.Length = min(x.Length, maxLen)
		if t.extended {
			p = be.AppendUint64(p, uint64(x.Length))
			p = be.AppendUint64(p, uint64(x.Flags))
		} else {
			p = be.AppendUint32(p, uint32(x.Length))
			p = be.AppendUint32(p, x.Flags)
		}
		count++
		total += x.Length
		if x.Length == maxLen {
			break // the rest is for the client to ask again
		}
	}
	if count == 0 {
		return fmt.Errorf("%w: backend block status returned no descriptor", EIO)
	}
	if t.extended {
		be.PutUint32(p[4:], uint32(count))
	}
	sr.bsPayload = p
	return nil
}
