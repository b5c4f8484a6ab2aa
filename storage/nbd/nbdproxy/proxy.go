// Package nbdproxy is the NBD fault proxy of the torture harness and of
// the tests: a listener that forwards NBD connections to an upstream
// server and, because it parses the stream with package nbd's codecs,
// can cut, reset, refuse, stall, delay, hold back, duplicate and drop
// requests and replies on command (Proxy). It is a production part of
// the harness (`dst torture` runs it in front of every node), so it
// depends on no test package.
package nbdproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"dst/storage/nbd"
)

// Defaults of Options.
const (
	DefaultMaxConns        = 64
	DefaultMaxInFlight     = 4096
	DefaultMaxHeldRequests = 1024
	DefaultMaxHeldBytes    = 64 << 20
	DefaultDialTimeout     = 5 * time.Second
)

// Options configure a Proxy. The zero value of each field is
// documented next to it.
type Options struct {
	// UpstreamNetwork is the network of the upstream address, "tcp" or
	// "unix". Empty means the proxy's own network.
	UpstreamNetwork string
	// Dir is the directory of the socket when the proxy listens on
	// "unix". Empty means a new temporary directory that Close removes.
	Dir string
	// MaxConns bounds the connections served at once; more are refused
	// like under Refuse. Zero means DefaultMaxConns.
	MaxConns int
	// MaxInFlight bounds the requests tracked per connection (sent by the
	// client, reply not yet complete). A client with more loses its
	// connection. Zero means DefaultMaxInFlight.
	MaxInFlight int
	// MaxHeldRequests and MaxHeldBytes bound what Hold keeps back, over
	// all connections together. A matching request beyond either is
	// forwarded at once and counted in Stats.HoldOverflows. Zero
	// means DefaultMaxHeldRequests and DefaultMaxHeldBytes.
	MaxHeldRequests int
	MaxHeldBytes    int64
	// MaxPayloadBytes bounds a write payload the proxy buffers to hold or
	// duplicate its request; a larger write is forwarded unaltered (and
	// counted in HoldOverflows). Zero means nbd.DefaultMaxPayload.
	MaxPayloadBytes int64
	// DialTimeout bounds the upstream dial of each accepted connection.
	// Zero means DefaultDialTimeout.
	DialTimeout time.Duration
	// Logger receives connection-level events at Debug; nil discards them.
	Logger *slog.Logger
	// Dial, if set, connects upstream instead of dialling the upstream
	// address (an in-memory server, a simulation); DialTimeout still
	// bounds it through its context. NewConns needs it.
	Dial func(ctx context.Context) (net.Conn, error)
}

// Proxy forwards NBD connections from its own listener to an upstream
// server and injects faults into them: cuts, resets, refusals, stalls,
// latency, and — because it parses the NBD stream — reordered, duplicated
// requests and lost replies. It exists so tests can prove that a client
// resends on timeout, reconnects after a cut, and never lets a delayed old
// write land after a newer one.
//
// Every fault method is safe for concurrent use and takes effect for the
// next frame each connection forwards (a frame is a handshake message, a
// request with its payload, a reply or reply chunk with its payload, or a
// read of up to 64 KiB on a connection the proxy forwards byte for byte).
//
// Each connection is served by exactly two goroutines, one per direction,
// that end with it; Close waits for all of them. The proxy forwards the
// handshake and the transmission phase it can parse (fixed newstyle and
// oldstyle, simple and structured replies). A connection it cannot parse —
// after STARTTLS, with extended headers, or with bytes that break the
// protocol — is forwarded byte for byte from that point on: the link
// faults (Cut, Reset, Blackhole, Delay) still apply, the request faults do
// not, and Stats.Unparsed counts it.
//
// Memory is bounded: about 256 KiB of buffers per connection (MaxConns of
// them), what Hold keeps (MaxHeldRequests, MaxHeldBytes), one buffered
// request per connection being held or duplicated (MaxPayloadBytes), and
// MaxInFlight tracked cookies per connection.
//
// The proxy injects no randomness of its own: a fault happens when the
// caller turns it on or when a match function says so, so a caller that
// draws its decisions from a seeded source replays exactly.
type Proxy struct {
	opts        Options
	network     string
	upNetwork   string
	upstream    string
	ln          net.Listener
	tempDir     string
	log         *slog.Logger
	dialCtx     context.Context
	cancelDials context.CancelFunc

	mu         sync.Mutex
	closed     bool
	running    bool
	conns      map[*proxyConn]struct{}
	refuse     bool
	blackhole  chan struct{} // non-nil while on; closed when turned off
	delay      time.Duration
	resetArmed bool
	resetLeft  int64
	heldCount  int
	heldBytes  int64
	changed    chan struct{} // closed and replaced on every event while someone waits

	holds   atomic.Pointer[[]*holdRule] // copy on write, under mu
	dup     atomic.Pointer[matcher]
	drop    atomic.Pointer[matcher]
	waiting atomic.Int32
	nextID  atomic.Uint64
	st      proxyCounters

	runWG  sync.WaitGroup // Run
	connWG sync.WaitGroup // the goroutines of every connection
}

type matcher struct{ f func(nbd.Request) bool }

// New listens on a free loopback port (network "tcp") or on a socket
// in opts.Dir (network "unix") and returns a proxy to upstream. It starts
// nothing: Run serves, Close stops.
func New(network, upstream string, opts Options) (*Proxy, error) {
	if opts.UpstreamNetwork == "" {
		opts.UpstreamNetwork = network
	}
	p := newProxy(network, upstream, opts)
	switch network {
	case "tcp", "tcp4":
		ln, err := net.Listen(network, "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("nbdproxy: proxy listen: %w", err)
		}
		p.ln = ln
	case "unix":
		dir := opts.Dir
		if dir == "" {
			d, err := os.MkdirTemp("", "nbdproxy")
			if err != nil {
				return nil, fmt.Errorf("nbdproxy: proxy socket directory: %w", err)
			}
			dir, p.tempDir = d, d
		}
		ln, err := net.Listen("unix", filepath.Join(dir, "proxy.sock"))
		if err != nil {
			if p.tempDir != "" {
				os.RemoveAll(p.tempDir)
			}
			return nil, fmt.Errorf("nbdproxy: proxy listen: %w", err)
		}
		p.ln = ln
	default:
		return nil, fmt.Errorf("nbdproxy: proxy network %q (want tcp or unix)", network)
	}
	return p, nil
}

// NewConns returns a proxy without a listener, to opts.Dial: ServeConn
// hands it each client connection (the client end of a net.Pipe, say),
// Run is not used, Close stops it. Every fault works as with New.
func NewConns(opts Options) (*Proxy, error) {
	if opts.Dial == nil {
		return nil, errors.New("nbdproxy: NewConns needs Options.Dial")
	}
	return newProxy("", "", opts), nil
}

func newProxy(network, upstream string, opts Options) *Proxy {
	if opts.MaxConns <= 0 {
		opts.MaxConns = DefaultMaxConns
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = DefaultMaxInFlight
	}
	if opts.MaxHeldRequests <= 0 {
		opts.MaxHeldRequests = DefaultMaxHeldRequests
	}
	if opts.MaxHeldBytes <= 0 {
		opts.MaxHeldBytes = DefaultMaxHeldBytes
	}
	if opts.MaxPayloadBytes <= 0 {
		opts.MaxPayloadBytes = nbd.DefaultMaxPayload
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = DefaultDialTimeout
	}
	p := &Proxy{opts: opts, network: network, upNetwork: opts.UpstreamNetwork, upstream: upstream,
		log: opts.Logger, conns: map[*proxyConn]struct{}{}, changed: make(chan struct{})}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.dialCtx, p.cancelDials = context.WithCancel(context.Background())
	return p
}

// ServeConn serves conn, a client connection accepted elsewhere, as if
// the proxy's listener had accepted it: it is refused (closed) while
// Refuse is on, beyond MaxConns, or after Close.
func (p *Proxy) ServeConn(conn net.Conn) { p.accept(conn) }

// Addr is the address clients dial: host:port, or the socket path; ""
// for a proxy made by NewConns.
func (p *Proxy) Addr() string {
	if p.ln == nil {
		return ""
	}
	return p.ln.Addr().String()
}

// Network is the network clients dial: "tcp" or "unix"; "" for a proxy
// made by NewConns.
func (p *Proxy) Network() string {
	if p.ln == nil {
		return ""
	}
	return p.ln.Addr().Network()
}

// Run accepts and serves connections until ctx ends or Close is called.
// Before returning it closes every connection and waits for their
// goroutines. It returns nil after ctx or Close ended it, net.ErrClosed if
// the proxy was closed before, and the accept error otherwise. Run must be
// called at most once.
func (p *Proxy) Run(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return net.ErrClosed
	}
	if p.running {
		p.mu.Unlock()
		panic("nbdproxy: Proxy.Run called twice")
	}
	if p.ln == nil {
		p.mu.Unlock()
		panic("nbdproxy: Proxy.Run on a proxy without a listener (NewConns)")
	}
	p.running = true
	p.runWG.Add(1)
	p.mu.Unlock()
	defer p.runWG.Done()

	stop := context.AfterFunc(ctx, func() { p.ln.Close() })
	defer stop()
	var err error
	for {
		conn, aerr := p.ln.Accept()
		if aerr != nil {
			if ctx.Err() == nil && !p.isClosed() {
				err = fmt.Errorf("nbdproxy: proxy accept: %w", aerr)
			}
			break
		}
		p.accept(conn)
	}
	p.ln.Close()
	p.cancelDials()
	p.killAll()
	p.connWG.Wait()
	return err
}

// Close stops accepting, closes every connection (dropping the requests
// held back), waits until Run and every goroutine of the proxy ended, and
// removes the socket directory it made. It is idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	already := p.closed
	p.closed = true
	p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
	}
	p.cancelDials()
	p.killAll()
	p.runWG.Wait()
	p.connWG.Wait()
	if !already && p.tempDir != "" {
		os.RemoveAll(p.tempDir)
	}
	return nil
}

func (p *Proxy) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// accept registers conn and starts its goroutines, or refuses it.
func (p *Proxy) accept(conn net.Conn) {
	p.mu.Lock()
	if p.closed || p.refuse || len(p.conns) >= p.opts.MaxConns {
		p.mu.Unlock()
		p.st.refused.Add(1)
		abort(conn)
		p.event()
		return
	}
	c := newProxyConn(p, conn)
	p.conns[c] = struct{}{}
	p.connWG.Add(1)
	p.mu.Unlock()
	p.st.accepted.Add(1)
	p.event()
	go c.run()
}

func (p *Proxy) remove(c *proxyConn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	p.event()
}

func (p *Proxy) snapshot() []*proxyConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	cs := make([]*proxyConn, 0, len(p.conns))
	for c := range p.conns {
		cs = append(cs, c)
	}
	return cs
}

func (p *Proxy) killAll() {
	for _, c := range p.snapshot() {
		c.kill(false, nil)
	}
}

// abort closes conn with a reset where the network has one.
func abort(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	conn.Close()
}

// Cut closes every current connection, on both sides, at once. Requests
// they had in flight are lost, requests held back on them are dropped.
// New connections are served as usual.
func (p *Proxy) Cut() {
	cs := p.snapshot()
	for _, c := range cs {
		c.kill(false, &p.st.cuts)
	}
	p.event()
}

// Refuse makes the proxy close new connections at once (with a reset, so
// the client's handshake fails) while on. Current connections stay.
func (p *Proxy) Refuse(on bool) {
	p.mu.Lock()
	p.refuse = on
	p.mu.Unlock()
}

// Blackhole stops all forwarding, in both directions and on every
// connection, while on: the connections stay open, bytes stay in the
// proxy and in the kernel's buffers, and are delivered in order when it is
// turned off (unless Cut or Close comes first). New connections are
// accepted and dialled upstream, but their handshake stalls too. A frame
// already being written when it is turned on completes.
func (p *Proxy) Blackhole(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case on && p.blackhole == nil:
		p.blackhole = make(chan struct{})
	case !on && p.blackhole != nil:
		close(p.blackhole)
		p.blackhole = nil
	}
}

// Delay adds d of latency before every frame forwarded, in both
// directions (a request and its reply are each delayed by d). Frames of
// one direction of a connection are delayed one after another, so Delay
// also lowers throughput, like a slow link. Zero or less turns it off.
func (p *Proxy) Delay(d time.Duration) {
	p.mu.Lock()
	p.delay = max(d, 0)
	p.mu.Unlock()
}

// Reset arms a one-shot reset: after `after` more bytes were forwarded
// client->server (counted over all connections), the connection carrying
// the next byte is reset (SO_LINGER 0 and close, on both sides) instead;
// that connection's server sees a torn frame. A negative after disarms.
func (p *Proxy) Reset(after int64) {
	p.mu.Lock()
	p.resetArmed, p.resetLeft = after >= 0, after
	p.mu.Unlock()
}

// resetBudget returns how many of n bytes may go upstream before an armed
// reset fires, and whether it fires.
func (p *Proxy) resetBudget(n int) (int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.resetArmed || p.resetLeft >= int64(n) {
		if p.resetArmed {
			p.resetLeft -= int64(n)
		}
		return n, false
	}
	allow := int(p.resetLeft)
	p.resetArmed = false
	return allow, true
}

// Hold keeps back, in the proxy, every later request (header and payload)
// that match accepts, while the requests after it pass: this reorders
// requests on a connection, as a network that delays one segment would.
// A request several holds match is kept by the oldest.
//
// release stops the holding and delivers what was held, in arrival order,
// each on its own connection; it ignores Blackhole and Delay, skips
// connections that ended (a held request dies with its connection) and
// may be called more than once. It returns once the requests were written
// upstream, so it may block while an upstream does not read. If the
// client disconnects (NBD_CMD_DISC or a close) while some of its
// requests are held, the proxy keeps the upstream connection open and
// disconnects it only after they were delivered, so a stale write can
// still land after the client moved on. Holding is bounded by
// MaxHeldRequests and MaxHeldBytes.
//
// match is called from the proxy's goroutines, concurrently for different
// connections; it must be quick and must not call the Proxy.
func (p *Proxy) Hold(match func(nbd.Request) bool) (release func()) {
	r := &holdRule{match: match}
	p.mu.Lock()
	old := p.loadHolds()
	rules := append(append(make([]*holdRule, 0, len(old)+1), old...), r)
	p.holds.Store(&rules)
	p.mu.Unlock()
	return func() { p.release(r) }
}

// HoldWrites is Hold for NBD_CMD_WRITE requests that match accepts.
func (p *Proxy) HoldWrites(match func(nbd.Request) bool) (release func()) {
	return p.Hold(func(r nbd.Request) bool { return r.Cmd == nbd.CmdWrite && match(r) })
}

// Duplicate sends every later request that match accepts twice, with the
// same cookie, one right after the other: the server executes it twice
// and replies twice, and the proxy swallows the second reply so the client
// sees one. For a structured reply the first chunk flagged DONE ends the
// reply that is forwarded; the proxy cannot tell apart chunks of the two
// copies that arrive before it. The client must not reuse the cookie
// before the duplicate reply arrived (nbd.Client never does). nil turns it
// off. match is called like Hold's.
func (p *Proxy) Duplicate(match func(nbd.Request) bool) { p.setMatcher(&p.dup, match) }

// DropReplies swallows the whole reply to every later request that match
// accepts, so the client waits until it times out; the server did execute
// the request. The request decides when its first reply chunk arrives. nil
// turns it off. match is called like Hold's.
func (p *Proxy) DropReplies(match func(nbd.Request) bool) { p.setMatcher(&p.drop, match) }

func (p *Proxy) setMatcher(m *atomic.Pointer[matcher], f func(nbd.Request) bool) {
	if f == nil {
		m.Store(nil)
		return
	}
	m.Store(&matcher{f: f})
}

func matches(m *atomic.Pointer[matcher], req nbd.Request) bool {
	mm := m.Load()
	return mm != nil && mm.f(req)
}

// Stats are counters since the proxy was made.
type Stats struct {
	Accepted      int64 // connections accepted and served
	Refused       int64 // connections closed at once: Refuse, MaxConns, or Close
	DialFailures  int64 // accepted connections whose upstream dial failed
	Active        int   // connections open now
	BytesToServer int64 // bytes written upstream
	BytesToClient int64 // bytes written to clients
	// Requests counts the transmission requests clients sent, by command.
	Requests map[nbd.Command]int64
	// Replies counts complete replies servers sent: simple replies and
	// structured chunks flagged DONE, duplicates and dropped ones included.
	Replies          int64
	StructuredChunks int64 // structured reply chunks servers sent
	Unparsed         int64 // connections switched to byte-for-byte forwarding
	Errors           int64 // connections ended by a proxy limit (MaxInFlight)

	Cuts             int64 // connections closed by Cut
	Resets           int64 // connections reset by Reset
	Held             int64 // requests held back by Hold
	Released         int64 // held requests delivered by release
	HeldDropped      int64 // held requests dropped with their connection
	HoldOverflows    int64 // matching requests not held or duplicated: a limit was reached
	Duplicated       int64 // requests sent twice
	DuplicateReplies int64 // second replies swallowed
	RepliesDropped   int64 // replies swallowed by DropReplies
}

type proxyCounters struct {
	accepted, refused, dialFailures, bytesToServer, bytesToClient atomic.Int64
	requests                                                      [int(nbd.CmdResize) + 2]atomic.Int64 // last: other
	replies, chunks, unparsed, errors                             atomic.Int64
	cuts, resets, held, released, heldDropped, holdOverflows      atomic.Int64
	duplicated, duplicateReplies, repliesDropped                  atomic.Int64
}

func (s *proxyCounters) request(cmd nbd.Command) {
	i := int(cmd)
	if i >= len(s.requests) {
		i = len(s.requests) - 1
	}
	s.requests[i].Add(1)
}

// Stats returns the counters. Requests counted under the last index are
// reported as command CmdResize+1 ("other").
func (p *Proxy) Stats() Stats {
	s := &p.st
	p.mu.Lock()
	active := len(p.conns)
	p.mu.Unlock()
	st := Stats{
		Accepted: s.accepted.Load(), Refused: s.refused.Load(), DialFailures: s.dialFailures.Load(),
		Active: active, BytesToServer: s.bytesToServer.Load(), BytesToClient: s.bytesToClient.Load(),
		Requests: map[nbd.Command]int64{}, Replies: s.replies.Load(), StructuredChunks: s.chunks.Load(),
		Unparsed: s.unparsed.Load(), Errors: s.errors.Load(),
		Cuts: s.cuts.Load(), Resets: s.resets.Load(), Held: s.held.Load(), Released: s.released.Load(),
		HeldDropped: s.heldDropped.Load(), HoldOverflows: s.holdOverflows.Load(),
		Duplicated: s.duplicated.Load(), DuplicateReplies: s.duplicateReplies.Load(),
		RepliesDropped: s.repliesDropped.Load(),
	}
	for i := range s.requests {
		if n := s.requests[i].Load(); n != 0 {
			st.Requests[nbd.Command(i)] = n
		}
	}
	return st
}

// Wait blocks until cond holds for the stats, or ctx ends (then it returns
// ctx's error). cond is checked at once and again after every connection
// event, request, reply and fault; it must not call the Proxy.
func (p *Proxy) Wait(ctx context.Context, cond func(Stats) bool) error {
	p.waiting.Add(1)
	defer p.waiting.Add(-1)
	for {
		p.mu.Lock()
		ch := p.changed
		p.mu.Unlock()
		if cond(p.Stats()) {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// event wakes the callers of Wait; it costs nothing while nobody waits.
func (p *Proxy) event() {
	if p.waiting.Load() == 0 {
		return
	}
	p.mu.Lock()
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}
