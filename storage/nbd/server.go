package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Defaults of ServerOptions.
const (
	DefaultMaxInFlight      = 64
	DefaultMaxPayload       = 32 << 20
	DefaultBufferBytes      = 256 << 20
	DefaultHandshakeTimeout = 30 * time.Second
	readBufferBytes         = 128 << 10
)

// ServerOptions configure a Server. The zero value of each field is
// documented next to it.
type ServerOptions struct {
	// Exports are the devices offered; at least one is required.
	Exports []*Export
	// Authorize decides what a peer may do with an export; nil allows
	// read-write access to everyone. A denied peer gets NBD_REP_ERR_POLICY
	// with the error's text, and nothing else.
	Authorize func(e *Export, p Peer) (Access, error)
	// TLS enables NBD_OPT_STARTTLS; nil answers it with ERR_UNSUP.
	TLS *tls.Config
	// TLSRequired refuses every option but STARTTLS and ABORT before TLS
	// (ERR_TLS_REQD). It needs TLS.
	TLSRequired bool
	// MaxInFlight bounds the requests being served per connection; the
	// server stops reading a connection while that many are in flight.
	// Zero means DefaultMaxInFlight.
	MaxInFlight int
	// MaxPayload bounds the length of a request (advertised as the maximum
	// block size). Zero means DefaultMaxPayload (32 MiB), which is also the
	// upper limit.
	MaxPayload int
	// BufferBytes bounds the payload memory of all connections together.
	// Zero means DefaultBufferBytes.
	BufferBytes int64
	// HandshakeTimeout bounds the handshake. Zero means
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// Logger receives connection-level events; nil discards them.
	Logger *slog.Logger
	// BootID identifies the boot of the machine the server runs on; it is
	// sent with the answer to OptFence, so a client can tell that the
	// machine restarted (and may have lost writes that were not flushed).
	// Empty means the kernel's (/proc/sys/kernel/random/boot_id).
	BootID string
}

// Server serves exports over NBD. Each connection is served by one reader
// goroutine and MaxInFlight worker goroutines, started when the connection
// is accepted and ended with it; replies go out as requests complete, in any
// order.
type Server struct {
	opts ServerOptions
	log  *slog.Logger
	pool *bufferPool

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*serverConn]struct{}
	shutting  bool
	wg        sync.WaitGroup

	fences fences
	bootID string
}

// NewServer checks opts and returns a server; it starts nothing.
func NewServer(opts ServerOptions) (*Server, error) {
	if len(opts.Exports) == 0 {
		return nil, errors.New("nbd: server needs at least one export")
	}
	names := map[string]bool{}
	for _, e := range opts.Exports {
		switch {
		case e == nil || e.Backend == nil:
			return nil, fmt.Errorf("nbd: export %q has no backend", nameOf(e))
		case e.Size < 0:
			return nil, fmt.Errorf("nbd: export %q has negative size %d", e.Name, e.Size)
		case len(e.Name) > maxStringBytes || len(e.Description) > maxStringBytes:
			return nil, fmt.Errorf("nbd: export %q: name or description longer than %d bytes", e.Name, maxStringBytes)
		case names[e.Name]:
			return nil, fmt.Errorf("nbd: two exports named %q", e.Name)
		case e.MinBlock != 0 && e.MinBlock&(e.MinBlock-1) != 0:
			return nil, fmt.Errorf("nbd: export %q: minimum block %d is not a power of two", e.Name, e.MinBlock)
		}
		names[e.Name] = true
	}
	if opts.TLSRequired && opts.TLS == nil {
		return nil, errors.New("nbd: TLS required but no TLS configuration given")
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = DefaultMaxInFlight
	}
	if opts.MaxPayload <= 0 || opts.MaxPayload > DefaultMaxPayload {
		opts.MaxPayload = DefaultMaxPayload
	}
	if opts.BufferBytes <= 0 {
		opts.BufferBytes = DefaultBufferBytes
	}
	if opts.BufferBytes < 1<<maxBufferShift {
		opts.BufferBytes = 1 << maxBufferShift
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = DefaultHandshakeTimeout
	}
	s := &Server{
		opts:      opts,
		log:       opts.Logger,
		pool:      newBufferPool(opts.BufferBytes),
		bootID:    bootID(opts.BootID),
		listeners: map[net.Listener]struct{}{},
		conns:     map[*serverConn]struct{}{},
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

func nameOf(e *Export) string {
	if e == nil {
		return ""
	}
	return e.Name
}

// flagsFor returns the transmission flags a peer with the given access sees.
func (s *Server) flagsFor(e *Export, a Access) TransmissionFlags {
	f := e.Flags | FlagHasFlags
	if a == AccessReadOnly {
		f |= FlagReadOnly
	}
	if f&FlagReadOnly != 0 {
		f &^= FlagSendTrim | FlagSendWriteZero | FlagSendFastZero
	}
	if f&FlagSendWriteZero == 0 {
		f &^= FlagSendFastZero
	}
	return f
}

// blockSizes returns the advertised minimum, preferred and maximum block.
func (s *Server) blockSizes(e *Export) (uint32, uint32, uint32) {
	minB, prefB, maxB := e.MinBlock, e.PreferredBlock, e.MaxBlock
	if minB == 0 {
		minB = 1
	}
	if prefB == 0 {
		prefB = 4096
	}
	if prefB < minB {
		prefB = minB
	}
	if maxB == 0 || maxB > uint32(s.opts.MaxPayload) {
		maxB = uint32(s.opts.MaxPayload)
	}
	return minB, prefB, maxB
}

// Serve accepts connections on ln until ctx is done, Shutdown is called or
// ln fails. It closes ln before returning. Connections it accepted are
// served until they end or Shutdown drains them.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.shutting {
		s.mu.Unlock()
		ln.Close()
		return ErrClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var tempDelay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			shutting := s.shutting
			s.mu.Unlock()
			if shutting || ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
				time.Sleep(tempDelay)
				continue
			}
			return fmt.Errorf("nbd: accept: %w", err)
		}
		tempDelay = 0
		if !s.track(nil) {
			c.Close()
			return nil
		}
		go func() {
			defer s.wg.Done()
			if err := s.ServeConn(ctx, c); err != nil {
				s.log.Warn("connection ended", "peer", c.RemoteAddr(), "err", err)
			}
		}()
	}
}

// track adds one to the server's wait group unless it is shutting down.
func (s *Server) track(c *serverConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutting {
		return false
	}
	if c == nil {
		s.wg.Add(1)
	} else {
		s.conns[c] = struct{}{}
	}
	return true
}

// ServeConn runs the handshake and then serves requests on conn until the
// client disconnects, the connection fails or Shutdown drains it. It closes
// conn. A clean end (NBD_CMD_DISC, or the client closing between requests)
// returns nil.
func (s *Server) ServeConn(ctx context.Context, conn net.Conn) error {
	c := &serverConn{srv: s, conn: conn, done: make(chan struct{})}
	if !s.track(c) {
		conn.Close()
		return ErrClosed
	}
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.unfence(c)
		c.close()
		close(c.done)
	}()
	stop := context.AfterFunc(ctx, c.close)
	defer stop()

	sess := &session{srv: s, sc: c, conn: conn, r: bufio.NewReaderSize(conn, readBufferBytes),
		peer: Peer{Addr: conn.RemoteAddr()}}
	_ = conn.SetDeadline(time.Now().Add(s.opts.HandshakeTimeout))
	n, err := sess.handshake()
	if err != nil {
		if errors.Is(err, errAbort) {
			return nil
		}
		return fmt.Errorf("handshake with %v: %w", conn.RemoteAddr(), err)
	}
	_ = conn.SetDeadline(time.Time{})
	s.log.Debug("client connected", "peer", conn.RemoteAddr(), "export", n.export.Name,
		"access", n.access, "tls", sess.peer.TLS != nil, "structured", n.structured)
	c.mu.Lock()
	c.conn = n.conn
	c.mu.Unlock()
	return c.transmit(ctx, n)
}

// Shutdown stops accepting connections, answers new requests with
// ESHUTDOWN, waits for requests in flight to complete and closes every
// connection. If ctx ends first, the remaining connections are closed at
// once and ctx's error is returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutting = true
	for ln := range s.listeners {
		ln.Close()
	}
	conns := make([]*serverConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.drain()
	}
	done := make(chan struct{})
	go func() {
		for _, c := range conns {
			<-c.done
		}
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		for _, c := range conns {
			c.close()
		}
		<-done
		return ctx.Err()
	}
}

// serverConn is one connection in the transmission phase.
type serverConn struct {
	srv *Server

	mu       sync.Mutex
	conn     net.Conn
	inflight int
	draining bool
	closed   bool
	done     chan struct{} // closed when ServeConn returns

	wmu sync.Mutex // serialises replies

	fence connFence
}

// close closes the connection once and wakes everything blocked on it.
func (c *serverConn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.closed = true
		c.conn.Close()
	}
}

// drain makes the connection answer ESHUTDOWN from now on and closes it as
// soon as nothing is in flight.
func (c *serverConn) drain() {
	c.mu.Lock()
	c.draining = true
	idle := c.inflight == 0
	c.mu.Unlock()
	if idle {
		c.close()
	}
}

// begin counts a request in flight unless the connection is draining.
func (c *serverConn) begin() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.draining {
		return false
	}
	c.inflight++
	return true
}

func (c *serverConn) end() {
	c.mu.Lock()
	c.inflight--
	idle := c.draining && c.inflight == 0
	c.mu.Unlock()
	if idle {
		c.close()
	}
}

// errDisconnect ends the transmission phase after NBD_CMD_DISC.
var errDisconnect = errors.New("nbd: client disconnected")

// errClientGone ends the transmission phase when the client closed the
// connection without NBD_CMD_DISC: it is no error of the server's, but
// unlike a DISC it abandons the requests in flight, so writes not started
// yet are dropped (a client that fenced this connection resends them
// elsewhere, and they must not land after the resend).
var errClientGone = errors.New("nbd: client closed the connection without NBD_CMD_DISC")

// readErr classifies an error reading from the client.
func readErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return errClientGone
	}
	return err
}

var _ io.Writer = (*net.TCPConn)(nil)
