package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// ClientOptions configure a Client. Zero values are documented per field.
type ClientOptions struct {
	// ExportName is the export to use; empty asks for the default export.
	ExportName string
	// TLS, if set, makes the client start TLS before choosing the export.
	TLS *tls.Config
	// MaxInFlight bounds the requests in flight on the connection; Submit
	// waits while that many are outstanding. Zero means DefaultMaxInFlight.
	MaxInFlight int
	// HandshakeTimeout bounds the handshake. Zero means
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// Fence, if set, is sent with OptFence before the export is chosen:
	// a dst server then fences the session's older connections before it
	// answers (see OptFence); other servers ignore it (ExportInfo.Fenced
	// says which).
	Fence *Fence
	// BlockStatus asks for structured replies and the base:allocation
	// meta context, for Client.BlockStatus (ExportInfo.AllocationID says
	// whether the server has it). Not for a socket handed to the kernel:
	// its driver speaks simple replies only.
	BlockStatus bool
	// ExtendedHeaders asks for extended headers (NBD_OPT_EXTENDED_HEADERS:
	// 32-byte requests and replies, 64-bit lengths for TRIM, WRITE_ZEROES,
	// CACHE and BLOCK_STATUS; they imply structured replies). A server that
	// does not know them gets the compact headers (ExportInfo.Extended
	// says which). Not for a socket handed to the kernel either.
	ExtendedHeaders bool
}

// Op is one request to the server. The caller owns an Op and its Data
// until Done is called for it.
type Op struct {
	Cmd    Command
	Flags  CmdFlags
	Offset int64
	// Length is the request length; for CmdRead and CmdWrite it must equal
	// len(Data). Beyond 32 bits it needs extended headers.
	Length uint64
	// Data is the write payload, or the buffer a read reply is received
	// into directly.
	Data []byte
	// Extents receives a CmdBlockStatus answer's descriptors, appended up
	// to cap(Extents); more are dropped (the answer then covers less).
	Extents []Extent
	// Done is called exactly once when the reply arrived or the connection
	// failed, from the client's receive goroutine. It must not block and
	// must not call Submit on the same client.
	Done func(op *Op, err error)

	cookie uint64
	hdr    [ExtendedRequestBytes]byte // the encoded request, while queued or sent
}

// Client is a pipelined NBD client: many requests in flight on one
// connection, replies matched by cookie in any order, read data received
// straight into the caller's buffer. Its methods are safe for concurrent
// use. NewClient starts one receive goroutine; Close ends it.
type Client struct {
	info  ExportInfo
	hlen  int // request header bytes: compact or extended
	conn  net.Conn
	r     *bufio.Reader
	slots []clientSlot
	free  chan uint32

	wmu    sync.Mutex // serialises writes to conn
	closed atomic.Bool

	// Requests are sent in batches (flat combining, as the server sends
	// replies): Submit queues its request; the first submitter that finds
	// no send in progress sends everything queued in one writev, until the
	// queue is empty. A submitter may thus return before its request is
	// on the wire, so the closing sweep waits for the send in progress
	// (idle) before it completes ops: no writev reads a buffer whose op
	// was completed (dead stops later sends).
	qmu     sync.Mutex
	idle    sync.Cond // on qmu: signalled when sending ends
	queue   []*Op
	spare   []*Op
	sending bool
	dead    bool
	wvec    [][]byte
	wbufs   net.Buffers

	done  chan struct{} // closed when the receive goroutine ended
	errMu sync.Mutex
	err   error

	waiters sync.Pool

	// chunkBuf holds the fixed part of a structured reply chunk (receive
	// goroutine only; a field, so reading into it allocates nothing).
	chunkBuf [16]byte
}

type clientSlot struct {
	op  atomic.Pointer[Op]
	gen uint32 // touched only by the slot's owner between taking and sending
	// A structured reply's state across its chunks (receive goroutine
	// only): the first error chunk, and the read bytes covered so far.
	err     error
	covered uint64
}

// Dial connects to an NBD server and runs the handshake.
func Dial(ctx context.Context, network, addr string, opts ClientOptions) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s: %w", addr, err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	c, err := NewClient(ctx, conn, opts)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// NewClient runs the handshake on conn (Negotiate) and starts the receive
// goroutine. On error the caller still owns conn.
func NewClient(ctx context.Context, conn net.Conn, opts ClientOptions) (*Client, error) {
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = DefaultMaxInFlight
	}
	info, conn, err := Negotiate(ctx, conn, opts)
	if err != nil {
		return nil, err
	}
	c := &Client{
		info:  info,
		hlen:  RequestHeaderBytes,
		conn:  conn,
		r:     bufio.NewReaderSize(conn, readBufferBytes),
		slots: make([]clientSlot, opts.MaxInFlight),
		free:  make(chan uint32, opts.MaxInFlight),
		done:  make(chan struct{}),
		queue: make([]*Op, 0, opts.MaxInFlight),
		spare: make([]*Op, 0, opts.MaxInFlight),
		wvec:  make([][]byte, 0, 2*opts.MaxInFlight),
	}
	if info.Extended {
		c.hlen = ExtendedRequestBytes
	}
	c.idle.L = &c.qmu
	for i := range c.slots {
		c.free <- uint32(i)
	}
	c.waiters.New = func() any { return newWaiter() }
	go c.receive()
	return c, nil
}

// Info returns what the handshake learned: size, flags, block sizes.
func (c *Client) Info() ExportInfo { return c.info }

// Size returns the export size in bytes.
func (c *Client) Size() int64 { return c.info.Size }

// Done is closed when the connection is gone; Err then tells why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended, or nil while it is up.
func (c *Client) Err() error {
	c.errMu.Lock()
	defer c.errMu.Unlock()
	return c.err
}

// Close sends NBD_CMD_DISC, closes the connection and waits for the receive
// goroutine. Requests still in flight complete with ErrClosed.
func (c *Client) Close() error {
	// DISC is a courtesy: skip it when a send is stuck on a peer that
	// stopped reading, rather than wait for that send.
	if !c.closed.Load() && c.wmu.TryLock() {
		var hdr [ExtendedRequestBytes]byte
		c.encode(hdr[:], &Request{Cmd: CmdDisc})
		_ = c.conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = c.conn.Write(hdr[:c.hlen])
		c.wmu.Unlock()
	}
	c.fail(ErrClosed)
	<-c.done
	return nil
}

// fail records the first error and closes the connection.
func (c *Client) fail(err error) {
	c.errMu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.errMu.Unlock()
	c.conn.Close()
}

// Submit sends op. It waits for a free in-flight slot (or ctx, or the
// connection to end) and returns an error, without calling Done, only if
// op was not sent. Once Submit returned nil, Done reports the outcome.
func (c *Client) Submit(ctx context.Context, op *Op) error {
	if err := c.checkOp(op); err != nil {
		return err
	}
	var idx uint32
	select {
	case idx = <-c.free:
	case <-c.done:
		return c.closedErr()
	case <-ctx.Done():
		return ctx.Err()
	}
	s := &c.slots[idx]
	s.gen++
	op.cookie = uint64(s.gen)<<32 | uint64(idx)
	s.op.Store(op)
	if c.closed.Load() {
		if s.op.CompareAndSwap(op, nil) {
			c.free <- idx
			return c.closedErr()
		}
		return nil // the closing sweep owns it and calls Done
	}
	req := Request{Flags: op.Flags, Cmd: op.Cmd, Cookie: op.cookie, Offset: uint64(op.Offset), Length: op.Length}
	c.encode(op.hdr[:], &req)
	c.qmu.Lock()
	if c.dead {
		c.qmu.Unlock()
		return nil // the closing sweep completed it, or will
	}
	c.queue = append(c.queue, op)
	if c.sending {
		c.qmu.Unlock()
		return nil // the send in progress takes it
	}
	// Become the sender, but first let the goroutines that are ready to
	// run queue their requests too: one writev then carries them all.
	c.sending = true
	c.qmu.Unlock()
	runtime.Gosched()
	c.qmu.Lock()
	c.sendQueued()
	return nil
}

// sendQueued is called with qmu held and no send in progress; it sends
// the queue in batches until it is empty and returns with qmu released.
// After a failed write it drops what is queued: the receive goroutine
// sees the closed connection and completes every op in flight.
func (c *Client) sendQueued() {
	var werr error
	for len(c.queue) > 0 {
		batch := c.queue
		c.queue = c.spare[:0]
		c.qmu.Unlock()
		if werr == nil {
			v := c.wvec[:0]
			for _, q := range batch {
				v = append(v, q.hdr[:c.hlen])
				if q.Cmd == CmdWrite {
					v = append(v, q.Data)
				}
			}
			c.wbufs = v
			c.wmu.Lock()
			_, werr = c.wbufs.WriteTo(c.conn)
			c.wmu.Unlock()
			clear(v)
			if werr != nil {
				c.fail(fmt.Errorf("nbd: send %v: %w", batch[0].Cmd, werr))
			}
		}
		clear(batch)
		c.qmu.Lock()
		c.spare = batch[:0]
	}
	c.sending = false
	c.idle.Broadcast()
	c.qmu.Unlock()
}

// encode writes r's header as the connection speaks: compact, or
// extended with PAYLOAD_LEN on a write.
func (c *Client) encode(b []byte, r *Request) {
	if !c.info.Extended {
		EncodeRequest(b, r)
		return
	}
	if r.Cmd == CmdWrite {
		r.Flags |= CmdFlagPayloadLen
	}
	EncodeExtendedRequest(b, r)
}

func (c *Client) closedErr() error {
	if err := c.Err(); err != nil && !errors.Is(err, ErrClosed) {
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	return ErrClosed
}

func (c *Client) checkOp(op *Op) error {
	f := c.info.Flags
	switch op.Cmd {
	case CmdRead, CmdWrite:
		if int(op.Length) != len(op.Data) {
			panic(fmt.Sprintf("nbd: %v of length %d with a buffer of %d bytes", op.Cmd, op.Length, len(op.Data)))
		}
		if op.Cmd == CmdWrite && f&FlagReadOnly != 0 {
			return fmt.Errorf("%w: export is read-only", ErrUnsupported)
		}
		if op.Length > uint64(c.info.MaxBlock) {
			return fmt.Errorf("%w: %v of %d bytes (maximum %d)", ErrTooLarge, op.Cmd, op.Length, c.info.MaxBlock)
		}
	case CmdFlush:
		if f&FlagSendFlush == 0 {
			return fmt.Errorf("%w: FLUSH", ErrUnsupported)
		}
	case CmdBlockStatus:
		if !c.info.Allocation {
			return fmt.Errorf("%w: BLOCK_STATUS (no base:allocation on this connection)", ErrUnsupported)
		}
		if op.Length == 0 {
			return fmt.Errorf("%w: BLOCK_STATUS of no bytes", ErrUnsupported)
		}
	case CmdTrim:
		if f&FlagSendTrim == 0 {
			return fmt.Errorf("%w: TRIM", ErrUnsupported)
		}
	case CmdWriteZeroes:
		if f&FlagSendWriteZero == 0 {
			return fmt.Errorf("%w: WRITE_ZEROES", ErrUnsupported)
		}
	case CmdCache:
		if f&FlagSendCache == 0 {
			return fmt.Errorf("%w: CACHE", ErrUnsupported)
		}
	default:
		return fmt.Errorf("%w: command %v", ErrUnsupported, op.Cmd)
	}
	if op.Length > uint64(^uint32(0)) && !c.info.Extended {
		return fmt.Errorf("%w: %v of %d bytes needs extended headers", ErrTooLarge, op.Cmd, op.Length)
	}
	if op.Flags&CmdFlagPayloadLen != 0 {
		return fmt.Errorf("%w: PAYLOAD_LEN is the client's to set", ErrUnsupported)
	}
	if op.Flags&CmdFlagFUA != 0 && f&FlagSendFUA == 0 {
		return fmt.Errorf("%w: FUA", ErrUnsupported)
	}
	return nil
}

// receive reads replies until the connection ends, then fails everything
// still in flight.
func (c *Client) receive() {
	err := c.receiveLoop()
	c.fail(err)
	c.closed.Store(true)
	// Wait for the send in progress (the connection is closed, so it ends
	// soon) and stop later ones before completing ops: their buffers go
	// back to their owners.
	c.qmu.Lock()
	for c.sending {
		c.idle.Wait()
	}
	c.dead = true
	clear(c.queue)
	c.queue = c.queue[:0]
	c.qmu.Unlock()
	cerr := c.closedErr()
	for i := range c.slots {
		if op := c.slots[i].op.Swap(nil); op != nil {
			op.Done(op, cerr)
		}
	}
	close(c.done)
}

func (c *Client) receiveLoop() error {
	var hdr [ExtendedReplyBytes]byte
	var rep Reply
	first := SimpleReplyBytes // bytes every reply header has
	if c.info.Extended {
		first = ExtendedReplyBytes
	}
	for {
		if _, err := io.ReadFull(c.r, hdr[:first]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("%w: %w", ErrClosed, err)
			}
			return fmt.Errorf("nbd: read reply: %w", err)
		}
		rest, structured, err := decodeReplyMagic(hdr[:])
		if err != nil {
			return err
		}
		switch {
		case c.info.Extended && 4+rest != ExtendedReplyBytes:
			return fmt.Errorf("%w: compact reply on a connection with extended headers", ErrProtocol)
		case !c.info.Extended && 4+rest == ExtendedReplyBytes:
			return fmt.Errorf("%w: extended reply that was not negotiated", ErrProtocol)
		case structured && !c.info.Structured:
			return fmt.Errorf("%w: structured reply that was not negotiated", ErrProtocol)
		case 4+rest > first:
			if _, err := io.ReadFull(c.r, hdr[first:4+rest]); err != nil {
				return fmt.Errorf("nbd: read reply: %w", err)
			}
		}
		if err := DecodeReply(hdr[:4+rest], &rep); err != nil {
			return err
		}
		idx := uint32(rep.Cookie)
		if idx >= uint32(len(c.slots)) {
			return fmt.Errorf("%w: reply with unknown cookie %#x", ErrProtocol, rep.Cookie)
		}
		s := &c.slots[idx]
		op := s.op.Load()
		if op == nil || op.cookie != rep.Cookie {
			return fmt.Errorf("%w: reply with unknown cookie %#x", ErrProtocol, rep.Cookie)
		}
		if rep.Extended && rep.Offset != uint64(op.Offset) {
			return fmt.Errorf("%w: extended reply to %v at %d names offset %d", ErrProtocol, op.Cmd, op.Offset, rep.Offset)
		}
		var opErr error
		switch {
		case rep.Structured:
			done, err := c.chunk(s, op, &rep)
			if err != nil {
				return err
			}
			if !done {
				continue
			}
			opErr, s.err, s.covered = s.err, nil, 0
		case rep.Errno != 0:
			opErr = fmt.Errorf("nbd: %v offset %d length %d: %w", op.Cmd, op.Offset, op.Length, rep.Errno)
		case op.Cmd == CmdRead && op.Length > 0:
			if c.info.Structured {
				return fmt.Errorf("%w: simple reply with data to a READ on a structured connection", ErrProtocol)
			}
			if _, err := io.ReadFull(c.r, op.Data); err != nil {
				return fmt.Errorf("nbd: read payload: %w", err)
			}
		case op.Cmd == CmdBlockStatus:
			return fmt.Errorf("%w: simple reply to BLOCK_STATUS", ErrProtocol)
		}
		if !s.op.CompareAndSwap(op, nil) {
			panic("nbd: in-flight slot taken while its reply was being received")
		}
		c.free <- idx
		op.Done(op, opErr)
	}
}

// chunk takes one structured reply chunk of op (header in rep) and
// reports whether it was the last. Errors the server reports go to
// s.err; an error returned breaks the connection (the protocol is lost).
func (c *Client) chunk(s *clientSlot, op *Op, rep *Reply) (done bool, err error) {
	n := int64(rep.Length)
	b := c.chunkBuf[:]
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %v offset %d length %d: chunk type %d of %d bytes: %s", ErrProtocol,
			op.Cmd, op.Offset, op.Length, rep.Type, rep.Length, fmt.Sprintf(format, a...))
	}
	if rep.Length > maxChunkBytes {
		return false, bad("larger than any answer")
	}
	// within checks that [off, off+size) lies in op's range and returns
	// where in op.Data it starts.
	within := func(off uint64, size int64) (int64, error) {
		at := int64(off) - op.Offset
		if op.Cmd != CmdRead || off > 1<<62 || at < 0 || size < 0 || at+size > int64(op.Length) {
			return 0, bad("range %d+%d outside the request", off, size)
		}
		return at, nil
	}
	switch rep.Type {
	case ChunkNone:
		if n != 0 || rep.Flags&ChunkFlagDone == 0 {
			return false, bad("NONE must be empty and final")
		}
	case ChunkOffsetData:
		if n < 8 {
			return false, bad("too short")
		}
		if _, err := io.ReadFull(c.r, b[:8]); err != nil {
			return false, err
		}
		at, err := within(be.Uint64(b[:8]), n-8)
		if err != nil {
			return false, err
		}
		if _, err := io.ReadFull(c.r, op.Data[at:at+n-8]); err != nil {
			return false, fmt.Errorf("nbd: read payload: %w", err)
		}
		s.covered += uint64(n - 8)
	case ChunkOffsetHole:
		if n != 12 {
			return false, bad("a hole chunk is 12 bytes")
		}
		if _, err := io.ReadFull(c.r, b[:12]); err != nil {
			return false, err
		}
		size := int64(be.Uint32(b[8:12]))
		at, err := within(be.Uint64(b[:8]), size)
		if err != nil {
			return false, err
		}
		clear(op.Data[at : at+size])
		s.covered += uint64(size)
	case ChunkBlockStatus:
		if op.Cmd != CmdBlockStatus || n < 4 || (n-4)%8 != 0 {
			return false, bad("not a block status answer")
		}
		if _, err := io.ReadFull(c.r, b[:4]); err != nil {
			return false, err
		}
		known := be.Uint32(b[:4]) == c.info.AllocationID
		for left := n - 4; left > 0; left -= 8 {
			if _, err := io.ReadFull(c.r, b[:8]); err != nil {
				return false, err
			}
			if known && len(op.Extents) < cap(op.Extents) {
				l := be.Uint32(b[:4])
				if l == 0 {
					return false, bad("descriptor of no bytes")
				}
				op.Extents = append(op.Extents, Extent{Length: int64(l), Flags: be.Uint32(b[4:8])})
			}
		}
	case ChunkBlockStatusExt:
		if op.Cmd != CmdBlockStatus || !rep.Extended || n < 8 || (n-8)%16 != 0 {
			return false, bad("not an extended block status answer")
		}
		if _, err := io.ReadFull(c.r, b[:8]); err != nil {
			return false, err
		}
		known := be.Uint32(b[:4]) == c.info.AllocationID
		if count := int64(be.Uint32(b[4:8])); count != 0 && count != (n-8)/16 {
			return false, bad("%d descriptors announced", count)
		}
		for left := n - 8; left > 0; left -= 16 {
			if _, err := io.ReadFull(c.r, b[:16]); err != nil {
				return false, err
			}
			if known && len(op.Extents) < cap(op.Extents) {
				l, flags := be.Uint64(b[:8]), be.Uint64(b[8:16])
				if l == 0 || l > op.Length || flags > uint64(^uint32(0)) {
					return false, bad("descriptor of %d bytes, flags %#x", l, flags)
				}
				op.Extents = append(op.Extents, Extent{Length: int64(l), Flags: uint32(flags)})
			}
		}
	default:
		if rep.Type&(1<<15) == 0 {
			// An unknown chunk that is not an error: the protocol says
			// to ignore it.
			if _, err := c.r.Discard(int(n)); err != nil {
				return false, err
			}
			break
		}
		// ERROR, ERROR_OFFSET and unknown error types: errno and message
		// first.
		if n < 6 {
			return false, bad("error chunk too short")
		}
		if _, err := io.ReadFull(c.r, b[:6]); err != nil {
			return false, err
		}
		errno, msgLen := Errno(be.Uint32(b[:4])), int64(be.Uint16(b[4:6]))
		if msgLen > n-6 {
			return false, bad("message of %d bytes", msgLen)
		}
		msg := make([]byte, min(msgLen, maxStringBytes))
		if _, err := io.ReadFull(c.r, msg); err != nil {
			return false, err
		}
		rest := n - 6 - int64(len(msg))
		where := ""
		if rep.Type == ChunkErrorOffset && msgLen == int64(len(msg)) && rest == 8 {
			if _, err := io.ReadFull(c.r, b[:8]); err != nil {
				return false, err
			}
			where, rest = fmt.Sprintf(" at %d", be.Uint64(b[:8])), 0
		}
		if _, err := c.r.Discard(int(rest)); err != nil {
			return false, err
		}
		if errno == 0 {
			errno = EIO // an error chunk must carry an error
		}
		if s.err == nil {
			s.err = fmt.Errorf("nbd: %v offset %d length %d: %w%s (%s)", op.Cmd, op.Offset, op.Length, errno, where, msg)
		}
	}
	if rep.Flags&ChunkFlagDone == 0 {
		return false, nil
	}
	if s.err == nil && op.Cmd == CmdRead && s.covered != uint64(op.Length) {
		return false, bad("a successful READ covered %d of its %d bytes", s.covered, op.Length)
	}
	return true, nil
}

// BlockStatus asks which parts of [off, off+length) hold data
// (base:allocation; needs ClientOptions.BlockStatus and a server with the
// context, see ExportInfo.Allocation) and appends the descriptors to dst,
// up to cap(dst), in order from off. The server may answer for less than
// the whole range; ask again from where the answer ends.
func (c *Client) BlockStatus(ctx context.Context, off int64, length uint64, dst []Extent) ([]Extent, error) {
	if cap(dst) == len(dst) {
		return dst, fmt.Errorf("nbd: BLOCK_STATUS needs room in dst for at least one descriptor")
	}
	start := len(dst)
	w := c.waiters.Get().(*waiter)
	w.op.Extents = dst
	err := c.doWaiter(ctx, w, CmdBlockStatus, 0, off, length, nil)
	dst, w.op.Extents = w.op.Extents, nil
	c.waiters.Put(w)
	if err == nil && len(dst) == start {
		err = fmt.Errorf("%w: BLOCK_STATUS offset %d length %d answered without a base:allocation descriptor", ErrProtocol, off, length)
	}
	return dst, err
}

// maxChunkBytes bounds the payload of one reply chunk the client takes (a
// read's data is at most MaxBlock; libnbd draws the line at 64 MiB too).
const maxChunkBytes = 64 << 20

// waiter turns an Op into a blocking call without allocating per call.
type waiter struct {
	op Op
	ch chan error
}

func newWaiter() *waiter {
	w := &waiter{ch: make(chan error, 1)}
	w.op.Done = func(_ *Op, err error) { w.ch <- err }
	return w
}

// do runs one request synchronously. If ctx ends before the reply, the
// connection is closed — the only way to take the buffer back safely — and
// ctx's error is returned.
func (c *Client) do(ctx context.Context, cmd Command, flags CmdFlags, off int64, length uint64, data []byte) error {
	w := c.waiters.Get().(*waiter)
	err := c.doWaiter(ctx, w, cmd, flags, off, length, data)
	c.waiters.Put(w)
	return err
}

// doWaiter runs one request on w's Op and waits for it.
func (c *Client) doWaiter(ctx context.Context, w *waiter, cmd Command, flags CmdFlags, off int64, length uint64, data []byte) error {
	w.op.Cmd, w.op.Flags, w.op.Offset, w.op.Length, w.op.Data = cmd, flags, off, length, data
	if err := c.Submit(ctx, &w.op); err != nil {
		w.op.Data = nil
		return err
	}
	var err error
	select {
	case err = <-w.ch:
	case <-ctx.Done():
		c.fail(fmt.Errorf("nbd: %v abandoned: %w", cmd, ctx.Err()))
		<-w.ch
		err = ctx.Err()
	}
	w.op.Data = nil
	return err
}

// ReadAt reads len(p) bytes at off.
func (c *Client) ReadAt(ctx context.Context, p []byte, off int64) error {
	return c.do(ctx, CmdRead, 0, off, uint64(len(p)), p)
}

// WriteAt writes p at off; flags may carry CmdFlagFUA.
func (c *Client) WriteAt(ctx context.Context, p []byte, off int64, flags CmdFlags) error {
	return c.do(ctx, CmdWrite, flags, off, uint64(len(p)), p)
}

// Flush asks the server to make completed writes durable.
func (c *Client) Flush(ctx context.Context) error {
	return c.do(ctx, CmdFlush, 0, 0, 0, nil)
}

// Trim discards [off, off+length).
func (c *Client) Trim(ctx context.Context, off int64, length uint64, flags CmdFlags) error {
	return c.do(ctx, CmdTrim, flags, off, length, nil)
}

// WriteZeroes zeroes [off, off+length).
func (c *Client) WriteZeroes(ctx context.Context, off int64, length uint64, flags CmdFlags) error {
	return c.do(ctx, CmdWriteZeroes, flags, off, length, nil)
}

// Cache asks the server to prefetch [off, off+length).
func (c *Client) Cache(ctx context.Context, off int64, length uint64) error {
	return c.do(ctx, CmdCache, 0, off, length, nil)
}
