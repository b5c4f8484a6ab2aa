package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"

	"dst/internal/memfault"
)

// serverRequest is one request in flight on a server connection. The
// objects come from a per-connection free list whose size is the in-flight
// limit, so they are allocated once per connection.
type serverRequest struct {
	Request
	errno Errno
	bufp  *[]byte
	data  []byte
	view  bool // data aliases the backend's memory (ViewBackend)
	hdr   [ExtendedReplyBytes + 8]byte
	// extents and bsPayload are the block status answer's descriptors and
	// encoded payload, allocated at the first block status request.
	extents   []Extent
	bsPayload []byte
	vec       [2][]byte
	bufs      net.Buffers
	// A sparse read (SparseReadBackend): its pieces (in extents), whether
	// one holds data, the index of the piece whose read failed (-1), and
	// its chunk headers and reply vector (more, used instead of vec while
	// not empty), allocated at the slot's first sparse read.
	sparse     []Extent
	sparseData bool
	failAt     int
	chunks     []byte
	more       [][]byte
}

// transmitter serves the transmission phase of one connection.
type transmitter struct {
	c          *serverConn
	srv        *Server
	export     *Export
	access     Access
	structured bool
	extended   bool // extended headers: 32-byte requests and replies
	allocation bool // base:allocation selected: block status is served
	conn       net.Conn
	r          *bufio.Reader
	free       chan *serverRequest
	work       chan *serverRequest
	minBlock   uint64
	maxPayload uint32
	// nowait is the backend's in-place path, if it has one: the reader
	// serves reads and writes that complete without waiting right where it
	// decoded them, and queues their replies (held) until it is about to
	// block or the batch is full.
	nowait NowaitBackend
	held   int
	// views is the backend's memory to send read replies from, if any;
	// wviews the memory to receive large writes into.
	views  ViewBackend
	wviews WriteViewBackend
	// sparse is the backend when its block status is cheap: large
	// structured reads answer holes without reading them.
	sparse SparseReadBackend

	// Replies are sent in batches (flat combining): a worker queues its
	// reply; the first that finds no send in progress sends everything
	// queued in one writev, until the queue is empty.
	qmu     sync.Mutex
	queue   []*serverRequest
	spare   []*serverRequest
	sending bool
	wvec    [][]byte
	wbufs   net.Buffers
}

func (c *serverConn) transmit(ctx context.Context, n *negotiation) error {
	s := c.srv
	minB, _, maxB := s.blockSizes(n.export)
	t := &transmitter{
		c: c, srv: s, export: n.export, access: n.access, structured: n.structured, extended: n.extended, allocation: n.allocation,
		conn: n.conn, r: n.r,
		free:       make(chan *serverRequest, s.opts.MaxInFlight),
		work:       make(chan *serverRequest, s.opts.MaxInFlight),
		minBlock:   uint64(minB),
		maxPayload: maxB,
	}
	for range s.opts.MaxInFlight {
		t.free <- &serverRequest{}
	}
	t.nowait, _ = n.export.Backend.(NowaitBackend)
	t.views, _ = n.export.Backend.(ViewBackend)
	t.wviews, _ = n.export.Backend.(WriteViewBackend)
	if sb, ok := n.export.Backend.(SparseReadBackend); ok && sb.SparseReads() {
		t.sparse = sb
	}
	t.queue = make([]*serverRequest, 0, s.opts.MaxInFlight)
	t.spare = make([]*serverRequest, 0, s.opts.MaxInFlight)
	t.wvec = make([][]byte, 0, 2*s.opts.MaxInFlight)
	// connCtx ends when the connection is lost (not on a clean DISC):
	// writes read from a lost connection but not started yet are dropped,
	// so a client that fenced this connection and resent elsewhere is not
	// overtaken by them later.
	connCtx, lost := context.WithCancel(ctx)
	defer lost()
	var wg sync.WaitGroup
	for range s.opts.MaxInFlight {
		wg.Go(func() {
			for r := range t.work {
				t.serve(connCtx, r)
			}
		})
	}
	err := t.readLoop(connCtx)
	if !errors.Is(err, errDisconnect) {
		lost()
	}
	close(t.work)
	wg.Wait()
	if errors.Is(err, errDisconnect) || errors.Is(err, errClientGone) {
		return nil
	}
	if err != nil {
		c.mu.Lock()
		closed := c.closed
		c.mu.Unlock()
		if closed && errors.Is(err, net.ErrClosed) {
			return nil // closed by Shutdown or the context
		}
	}
	return err
}

// readLoop reads requests until the client disconnects or breaks the
// protocol. Bad requests that keep the stream in sync get an error reply
// and the connection stays up; anything that loses sync ends it.
func (t *transmitter) readLoop(ctx context.Context) error {
	var hdr [ExtendedRequestBytes]byte
	hlen := RequestHeaderBytes
	if t.extended {
		hlen = ExtendedRequestBytes
	}
	for {
		if t.held > 0 && t.r.Buffered() < hlen {
			t.releaseHeld()
		}
		if _, err := io.ReadFull(t.r, hdr[:hlen]); err != nil {
			return readErr(err)
		}
		var req Request
		var stray bool // a payload on a command that takes none
		if t.extended {
			var err error
			if stray, err = t.decodeExtended(hdr[:], &req); err != nil {
				return err
			}
		} else if err := DecodeRequest(hdr[:], &req); err != nil {
			return err
		}
		if req.Cmd == CmdDisc {
			return errDisconnect
		}
		if req.Cmd == CmdWrite && req.Length > uint64(t.maxPayload) {
			return fmt.Errorf("%w: write payload of %d bytes exceeds the maximum %d", ErrProtocol, req.Length, t.maxPayload)
		}
		var sr *serverRequest
		select {
		case sr = <-t.free:
		default:
			t.releaseHeld() // held replies own requests: send them before waiting
			sr = <-t.free
		}
		sr.Request = req
		sr.errno = t.check(&req)
		if stray {
			sr.errno, sr.Length = EINVAL, 0 // its payload was skipped
		}
		if sr.errno == 0 && !t.c.begin() {
			sr.errno = ESHUTDOWN
		}
		if sr.errno == 0 && t.nowait != nil {
			done, err := t.tryInPlace(sr)
			if err != nil {
				t.abandon(sr)
				return err
			}
			if done {
				continue
			}
		}
		if err := t.readPayload(ctx, sr); err != nil {
			t.abandon(sr)
			return err
		}
		if sr.errno != 0 {
			err := t.reply(sr)
			t.release(sr)
			if err != nil {
				return err
			}
			continue
		}
		if (sr.view && (sr.Cmd == CmdRead || sr.Flags&CmdFlagFUA == 0)) || (sr.sparse != nil && !sr.sparseData) {
			// Received into, or replied from, the export's memory, or a
			// read of holes only: nothing is left to do but reply.
			t.settle(sr, nil)
			continue
		}
		t.work <- sr
	}
}

// decodeExtended parses an extended request header. A payload comes with
// CmdFlagPayloadLen only, which every WRITE must carry (then cleared: the
// backend sees the flags of a compact request); a payload on any other
// command is skipped here (stray: the request is refused, the stream stays
// in sync). A payload larger than the maximum loses sync: an error.
func (t *transmitter) decodeExtended(hdr []byte, req *Request) (stray bool, err error) {
	if err := DecodeExtendedRequest(hdr, req); err != nil {
		return false, err
	}
	payload := req.Flags&CmdFlagPayloadLen != 0
	req.Flags &^= CmdFlagPayloadLen
	switch {
	case !payload && req.Cmd == CmdWrite:
		return false, fmt.Errorf("%w: extended WRITE without PAYLOAD_LEN", ErrProtocol)
	case !payload || req.Cmd == CmdWrite:
		return false, nil
	case req.Length > uint64(t.maxPayload):
		return false, fmt.Errorf("%w: %v payload of %d bytes exceeds the maximum %d", ErrProtocol, req.Cmd, req.Length, t.maxPayload)
	}
	if t.held > 0 && t.r.Buffered() < int(req.Length) {
		t.releaseHeld() // about to wait for the payload
	}
	if _, err := t.r.Discard(int(req.Length)); err != nil {
		return false, fmt.Errorf("skip %v payload: %w", req.Cmd, readErr(err))
	}
	return true, nil
}

// abandon gives back a request the reader took but could not finish
// reading (the connection is going down).
func (t *transmitter) abandon(sr *serverRequest) {
	if sr.errno == 0 {
		t.c.end()
	}
	t.release(sr)
}

// tryInPlace serves a read or write on the reader's goroutine when the
// backend can do it without waiting: a write straight from the read
// buffer when its payload is already there, a read into a pool buffer.
// The reply is queued and held (see releaseHeld). done=false leaves sr as
// it was, for the worker path; an error means the connection is lost.
func (t *transmitter) tryInPlace(sr *serverRequest) (done bool, err error) {
	n := int(sr.Length)
	switch {
	case n == 0 || n > inPlaceMaxBytes:
		return false, nil
	case sr.Cmd == CmdWrite:
		if t.r.Buffered() < n {
			return false, nil
		}
		if !t.c.beginWrite() {
			return false, nil // fenced: the worker path drops it
		}
		p, _ := t.r.Peek(n)
		ok, werr := t.nowait.TryWriteAt(p, int64(sr.Offset), sr.Flags)
		t.c.endWrite()
		if !ok {
			return false, nil
		}
		if _, err := t.r.Discard(n); err != nil {
			return false, err // cannot happen: the bytes are buffered
		}
		t.settle(sr, werr)
		return true, nil
	case sr.Cmd == CmdRead:
		bp, ok := t.srv.pool.tryGet(n)
		if !ok {
			return false, nil
		}
		ok, rerr := t.nowait.TryReadAt((*bp)[:n], int64(sr.Offset))
		if !ok {
			t.srv.pool.put(bp)
			return false, nil
		}
		sr.bufp, sr.data = bp, (*bp)[:n]
		t.settle(sr, rerr)
		return true, nil
	}
	return false, nil
}

// settle records the outcome of a request served in place and holds its
// reply; a full batch is sent at once.
func (t *transmitter) settle(sr *serverRequest, err error) {
	t.outcome(sr, err)
	t.enqueue(sr)
	t.qmu.Unlock()
	t.held++
	if t.held >= heldRepliesMax {
		t.releaseHeld()
	}
}

// outcome records a backend error as the request's NBD error.
func (t *transmitter) outcome(sr *serverRequest, err error) {
	if err != nil {
		sr.errno = ErrnoOf(err)
		t.srv.log.Debug("request failed", "cmd", sr.Cmd, "offset", sr.Offset, "length", sr.Length, "errno", uint32(sr.errno), "err", err)
	}
}

// enqueue encodes sr's reply and queues it; it returns with qmu held.
func (t *transmitter) enqueue(sr *serverRequest) {
	t.encode(sr)
	t.qmu.Lock()
	t.queue = append(t.queue, sr)
}

// inPlaceMaxBytes is the largest request served in place: larger ones go
// to the workers, which copy in parallel on every CPU (measured: 1 MiB
// reads in place on the reader alone ran at 0.85x of the workers).
const inPlaceMaxBytes = 64 << 10

// heldRepliesMax bounds the replies the reader holds back before sending
// them, so a long burst of requests served in place still streams.
const heldRepliesMax = 16

// releaseHeld sends the replies the reader held back (and whatever the
// workers queued meanwhile).
func (t *transmitter) releaseHeld() {
	t.held = 0
	t.qmu.Lock()
	t.sendQueued()
}

// readPayload takes a buffer for reads and writes and receives a write's
// payload into it; a write that will be refused has its payload skipped.
func (t *transmitter) readPayload(ctx context.Context, sr *serverRequest) error {
	n := int(sr.Length)
	hasData := sr.Cmd == CmdWrite || sr.Cmd == CmdRead
	sparse := sr.Cmd == CmdRead && sr.errno == 0 && t.planSparse(ctx, sr)
	if sparse && !sr.sparseData {
		sr.data = nil // all hole: nothing to read
		return nil
	}
	if sr.errno == 0 && n > viewMinBytes && !sparse {
		switch {
		case sr.Cmd == CmdRead && t.viewRead(sr):
			return nil
		case sr.Cmd == CmdWrite && t.wviews != nil:
			if done, err := t.receiveIntoView(sr); done || err != nil {
				return err
			}
		}
	}
	if hasData && sr.errno == 0 && n > 0 {
		bp, ok := t.srv.pool.tryGet(n)
		if !ok {
			t.releaseHeld() // held replies own buffers: send them before waiting
			var err error
			if bp, err = t.srv.pool.get(ctx, n); err != nil {
				return err
			}
		}
		sr.bufp = bp
		sr.data = (*bp)[:n]
	} else {
		sr.data = nil
	}
	if sr.Cmd != CmdWrite || n == 0 {
		return nil
	}
	if t.held > 0 && t.r.Buffered() < n {
		t.releaseHeld() // about to wait for the payload
	}
	if sr.data == nil {
		if _, err := t.r.Discard(n); err != nil {
			return fmt.Errorf("skip refused write payload: %w", readErr(err))
		}
		return nil
	}
	if _, err := io.ReadFull(t.r, sr.data); err != nil {
		return fmt.Errorf("read write payload: %w", readErr(err))
	}
	return nil
}

// viewMinBytes: reads and writes up to this size go through a buffer
// (or the in-place path) even when the backend has a view. Measured (fio 4k random reads QD32 on a tmpfs
// file): replies sent from the mapping ran at 0.93x of copied ones (a
// page fault or TLB miss per page touched through the mapping costs more
// than a 4 KiB copy); 1 MiB reads at QD8 ran at 1.41x.
const viewMinBytes = inPlaceMaxBytes

// viewRead points a read's reply at the backend's memory, if it has the
// bytes there (ViewBackend).
func (t *transmitter) viewRead(sr *serverRequest) bool {
	if t.views == nil {
		return false
	}
	p, ok := t.views.View(int64(sr.Offset), int(sr.Length))
	if !ok {
		return false
	}
	sr.data, sr.view = p, true
	return true
}

// receiveIntoView receives a write's payload straight into the backend's
// memory (WriteViewBackend), unless the connection is fenced or the
// backend has no view of the range (done=false: the ordinary path).
func (t *transmitter) receiveIntoView(sr *serverRequest) (done bool, err error) {
	if !t.c.beginWrite() {
		return false, nil // fenced: the worker path drops it
	}
	defer t.c.endWrite()
	p, ok := t.wviews.WritableView(int64(sr.Offset), int(sr.Length))
	if !ok {
		return false, nil
	}
	if t.held > 0 && t.r.Buffered() < len(p) {
		t.releaseHeld() // about to wait for the payload
	}
	sr.data, sr.view = p, true
	if err := readFullFaulting(t.r, p); err != nil {
		return true, fmt.Errorf("read write payload into the export's memory: %w", err)
	}
	return true, nil
}

// readFullFaulting is io.ReadFull into memory that may fault: a fault in
// the copy is an error (wrapping memfault.ErrFault), not a crash.
func readFullFaulting(r io.Reader, p []byte) error {
	var err error
	if ferr := memfault.Do(func() { _, err = io.ReadFull(r, p) }); ferr != nil {
		return ferr
	}
	return readErr(err)
}

// check validates a request against the export and the peer's access.
func (t *transmitter) check(r *Request) Errno {
	size := uint64(t.export.Size)
	switch r.Cmd {
	case CmdRead, CmdWrite, CmdTrim, CmdWriteZeroes, CmdCache:
	case CmdBlockStatus:
		// Only with a context selected (which needs structured replies),
		// and for a range of at least one byte.
		if !t.allocation || r.Length == 0 {
			return EINVAL
		}
	case CmdFlush:
		if t.export.Flags&FlagSendFlush == 0 {
			return EINVAL
		}
		return 0
	default:
		return EINVAL
	}
	readOnly := t.srv.flagsFor(t.export, t.access)&FlagReadOnly != 0
	if readOnly && r.Cmd.IsWrite() {
		return EPERM
	}
	if r.Offset > size || r.Length > size-r.Offset {
		if r.Cmd == CmdWrite || r.Cmd == CmdWriteZeroes {
			return ENOSPC
		}
		return EINVAL
	}
	if r.Offset%t.minBlock != 0 || r.Length%t.minBlock != 0 {
		return EINVAL
	}
	if r.Cmd == CmdRead && r.Length > uint64(t.maxPayload) {
		return EINVAL
	}
	flags := t.srv.flagsFor(t.export, t.access)
	switch {
	case r.Cmd == CmdTrim && flags&FlagSendTrim == 0,
		r.Cmd == CmdWriteZeroes && flags&FlagSendWriteZero == 0,
		r.Cmd == CmdCache && flags&FlagSendCache == 0:
		return EINVAL
	case r.Cmd == CmdWriteZeroes && r.Flags&CmdFlagFastZero != 0 && flags&FlagSendFastZero == 0:
		return ENOTSUP
	}
	return 0
}

// serve runs one request on the backend and replies.
func (t *transmitter) serve(ctx context.Context, sr *serverRequest) {
	b := t.export.Backend
	off, n := int64(sr.Offset), int64(sr.Length)
	var err error
	switch {
	case !sr.Cmd.IsWrite():
		err = t.run(ctx, b, sr, off, n)
	case ctx.Err() != nil || !t.c.beginWrite():
		err = ESHUTDOWN // the connection is lost or fenced: do not let it write late
	default:
		err = t.run(ctx, b, sr, off, n)
		t.c.endWrite()
	}
	t.outcome(sr, err)
	t.sendBatched(sr)
}

// sendBatched queues the reply of sr and, unless another goroutine is
// sending, sends everything queued in one writev until nothing is left.
// Each request is released (and counted out of flight) once its reply
// went out.
func (t *transmitter) sendBatched(sr *serverRequest) {
	t.enqueue(sr)
	if t.sending {
		t.qmu.Unlock()
		return // the send in progress takes it
	}
	// Become the sender, but first let the goroutines that are ready to
	// run queue their replies too: one writev then carries them all.
	t.sending = true
	t.qmu.Unlock()
	runtime.Gosched()
	t.qmu.Lock()
	t.sending = false
	t.sendQueued()
}

// sendQueued is called with qmu held and returns with it released: unless
// a send is in progress (whose loop will take what is queued), it sends
// the queue in batches until it is empty.
func (t *transmitter) sendQueued() {
	if t.sending || len(t.queue) == 0 {
		t.qmu.Unlock()
		return
	}
	t.sending = true
	var werr error
	for len(t.queue) > 0 {
		batch := t.queue
		t.queue = t.spare[:0]
		t.qmu.Unlock()
		v := t.wvec[:0]
		for _, r := range batch {
			if len(r.more) > 0 {
				v = append(v, r.more...)
				continue
			}
			v = append(v, r.vec[0])
			if len(r.vec[1]) > 0 {
				v = append(v, r.vec[1])
			}
		}
		if werr == nil {
			t.wbufs = v
			t.c.wmu.Lock()
			_, werr = t.wbufs.WriteTo(t.conn)
			t.c.wmu.Unlock()
		}
		clear(v)
		t.wvec = v[:0] // keeps what sparse replies grew it to
		for _, r := range batch {
			r.vec[0], r.vec[1] = nil, nil
			clear(r.more)
			r.more = r.more[:0]
			t.release(r)
			t.c.end()
		}
		clear(batch)
		t.qmu.Lock()
		t.spare = batch[:0]
	}
	t.sending = false
	t.qmu.Unlock()
	if werr != nil {
		t.c.close() // the reader notices and ends the connection
	}
}

// run calls the backend for one request.
func (t *transmitter) run(ctx context.Context, b Backend, sr *serverRequest, off, n int64) error {
	var err error
	switch sr.Cmd {
	case CmdRead:
		switch {
		case sr.sparse != nil:
			err = t.readSparse(ctx, b, sr)
		case n > 0 && !sr.view:
			err = b.ReadAt(ctx, sr.data, off)
		}
	case CmdWrite:
		switch {
		case sr.view:
			err = t.wviews.WroteView(off, int(n), sr.Flags)
		case n > 0:
			err = b.WriteAt(ctx, sr.data, off, sr.Flags)
		}
	case CmdFlush:
		err = b.Flush(ctx)
	case CmdTrim:
		err = b.Trim(ctx, off, n, sr.Flags)
	case CmdWriteZeroes:
		err = b.WriteZeroes(ctx, off, n, sr.Flags)
	case CmdCache:
		err = b.Cache(ctx, off, n)
	case CmdBlockStatus:
		err = t.blockStatus(ctx, sr, off, n)
	default:
		panic(fmt.Sprintf("nbd: unchecked command %v reached the backend", sr.Cmd))
	}
	return err
}

// encode fills sr.vec with the reply's header and payload.
func (t *transmitter) encode(sr *serverRequest) {
	var hdr []byte
	var payload []byte
	switch {
	case sr.sparse != nil && (sr.errno == 0 || sr.failAt >= 0):
		t.encodeSparse(sr)
	case t.extended:
		hdr, payload = t.encodeExtended(sr)
	case t.structured && sr.Cmd == CmdRead && sr.errno == 0:
		hdr = sr.hdr[:StructuredReplyBytes+8]
		encodeChunk(hdr, ChunkFlagDone, ChunkOffsetData, sr.Cookie, 8+uint32(sr.Length))
		be.PutUint64(hdr[StructuredReplyBytes:], sr.Offset)
		payload = sr.data
	case t.structured && sr.Cmd == CmdBlockStatus && sr.errno == 0:
		hdr = sr.hdr[:StructuredReplyBytes]
		encodeChunk(hdr, ChunkFlagDone, ChunkBlockStatus, sr.Cookie, uint32(len(sr.bsPayload)))
		payload = sr.bsPayload
	case t.structured && (sr.Cmd == CmdRead || sr.Cmd == CmdBlockStatus):
		hdr = sr.hdr[:StructuredReplyBytes+6]
		encodeChunk(hdr, ChunkFlagDone, ChunkError, sr.Cookie, 6)
		be.PutUint32(hdr[StructuredReplyBytes:], uint32(sr.errno))
		be.PutUint16(hdr[StructuredReplyBytes+4:], 0)
	default:
		hdr = sr.hdr[:SimpleReplyBytes]
		encodeSimpleReply(hdr, sr.errno, sr.Cookie)
		if sr.Cmd == CmdRead && sr.errno == 0 {
			payload = sr.data
		}
	}
	sr.vec[0], sr.vec[1] = hdr, payload
}

// encodeExtended encodes sr's reply as one extended chunk: an error, the
// data of a read, a block status answer, or NONE.
func (t *transmitter) encodeExtended(sr *serverRequest) (hdr, payload []byte) {
	switch {
	case sr.errno != 0:
		hdr = sr.hdr[:ExtendedReplyBytes+6]
		encodeExtendedChunk(hdr, ChunkFlagDone, ChunkError, sr.Cookie, sr.Offset, 6)
		be.PutUint32(hdr[ExtendedReplyBytes:], uint32(sr.errno))
		be.PutUint16(hdr[ExtendedReplyBytes+4:], 0)
	case sr.Cmd == CmdRead && sr.Length > 0:
		hdr = sr.hdr[:ExtendedReplyBytes+8]
		encodeExtendedChunk(hdr, ChunkFlagDone, ChunkOffsetData, sr.Cookie, sr.Offset, 8+sr.Length)
		be.PutUint64(hdr[ExtendedReplyBytes:], sr.Offset)
		payload = sr.data
	case sr.Cmd == CmdBlockStatus:
		hdr = sr.hdr[:ExtendedReplyBytes]
		encodeExtendedChunk(hdr, ChunkFlagDone, ChunkBlockStatusExt, sr.Cookie, sr.Offset, uint64(len(sr.bsPayload)))
		payload = sr.bsPayload
	default:
		hdr = sr.hdr[:ExtendedReplyBytes]
		encodeExtendedChunk(hdr, ChunkFlagDone, ChunkNone, sr.Cookie, sr.Offset, 0)
	}
	return hdr, payload
}

// reply sends the reply of sr at once (the reader's error replies):
// header and payload in one write.
func (t *transmitter) reply(sr *serverRequest) error {
	t.encode(sr)
	sr.bufs = sr.vec[:]
	if len(sr.vec[1]) == 0 {
		sr.bufs = sr.vec[:1]
	}
	t.c.wmu.Lock()
	_, err := sr.bufs.WriteTo(t.conn)
	t.c.wmu.Unlock()
	sr.vec[0], sr.vec[1] = nil, nil
	if err != nil {
		return fmt.Errorf("send reply: %w", err)
	}
	return nil
}

// release returns the request's buffer and the request to their free lists.
func (t *transmitter) release(sr *serverRequest) {
	sr.sparse = nil
	if sr.view {
		sr.data, sr.view = nil, false
	}
	if sr.bufp != nil {
		t.srv.pool.put(sr.bufp)
		sr.bufp, sr.data = nil, nil
	}
	t.free <- sr
}
