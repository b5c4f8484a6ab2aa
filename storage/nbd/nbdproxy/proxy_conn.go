package nbdproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"dst/storage/nbd"
)

// errKilled ends a pump whose connection was cut, reset or closed.
var errKilled = errors.New("nbdproxy: proxy connection closed")

// proxyConn is one proxied connection: a client, its upstream, and the
// two pumps between them. The client->server pump (c2s) parses requests
// and is the only goroutine that reads the client; the server->client pump
// (s2c) parses replies and is the only one that writes the client.
// Whole frames go upstream under wmu, from c2s or from a release.
type proxyConn struct {
	p      *Proxy
	id     uint64
	client net.Conn
	cr     *bufio.Reader
	sr     *bufio.Reader
	cbuf   [copyBytes]byte // c2s's copy buffer
	sbuf   [copyBytes]byte // s2c's copy buffer
	chdr   [nbd.RequestHeaderBytes]byte
	shdr   [nbd.StructuredReplyBytes]byte
	done   chan struct{} // closed by kill
	pumps  atomic.Int32
	killed atomic.Bool

	wmu sync.Mutex // whole frames upstream

	mu             sync.Mutex
	server         net.Conn
	flights        map[uint64]flight // requests sent whose reply is not complete
	exportNameSent bool
	noZeroes       bool
	held           int
	heldZero       chan struct{} // closed when held drops to 0

	clientGone bool // s2c only: writes to the client failed; replies are drained
	rawCounted atomic.Bool
}

// flight is the proxy's memory of one request until its reply ended.
type flight struct {
	req      nbd.Request
	extra    int  // duplicate replies still to swallow
	answered bool // the first reply ended (DONE); what follows is a duplicate's
	decided  bool // DropReplies was asked about the first reply
	drop     bool
}

func newProxyConn(p *Proxy, client net.Conn) *proxyConn {
	return &proxyConn{p: p, id: p.nextID.Add(1), client: client, cr: bufio.NewReaderSize(client, copyBytes),
		done: make(chan struct{}), flights: map[uint64]flight{}}
}

// run dials upstream and runs both pumps; it is the s2c goroutine.
func (c *proxyConn) run() {
	p := c.p
	defer p.connWG.Done()
	server, err := p.dialUpstream()
	if err != nil {
		p.st.dialFailures.Add(1)
		p.log.Debug("proxy: upstream dial failed", "conn", c.id, "err", err)
		c.kill(true, nil)
		p.remove(c)
		return
	}
	c.mu.Lock()
	c.server = server
	c.mu.Unlock()
	if c.killed.Load() { // killed while dialling: kill could not close server
		server.Close()
		p.remove(c)
		return
	}
	c.sr = bufio.NewReaderSize(server, copyBytes)
	c.pumps.Store(2)
	p.connWG.Add(1)
	go func() {
		defer p.connWG.Done()
		c.c2s()
		c.pumpDone()
	}()
	err = c.s2cLoop()
	c.kill(false, nil)
	if err != nil && !errors.Is(err, errKilled) && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		p.log.Debug("proxy: server side ended", "conn", c.id, "err", err)
	}
	c.pumpDone()
}

func (c *proxyConn) pumpDone() {
	if c.pumps.Add(-1) == 0 {
		c.p.remove(c)
	}
}

// kill closes both sides once (with a reset if rst) and drops the held
// requests of the connection. It reports whether this call killed it; if
// so it adds one to count (if any) before anyone can see the close.
func (c *proxyConn) kill(rst bool, count *atomic.Int64) bool {
	if !c.killed.CompareAndSwap(false, true) {
		return false
	}
	if count != nil {
		count.Add(1)
	}
	c.p.dropHeld(c)
	c.mu.Lock()
	server := c.server
	c.mu.Unlock()
	if rst {
		abort(c.client)
		if server != nil {
			abort(server)
		}
	} else {
		c.client.Close()
		if server != nil {
			server.Close()
		}
	}
	close(c.done)
	return true
}

func (c *proxyConn) dead() bool { return c.killed.Load() }

func (c *proxyConn) heldInc() {
	c.mu.Lock()
	if c.held == 0 {
		c.heldZero = make(chan struct{})
	}
	c.held++
	c.mu.Unlock()
}

func (c *proxyConn) heldDec() {
	c.mu.Lock()
	c.held--
	if c.held == 0 {
		close(c.heldZero)
	}
	c.mu.Unlock()
}

// waitHeld waits until no request of the connection is held back.
func (c *proxyConn) waitHeld() error {
	c.mu.Lock()
	if c.held == 0 {
		c.mu.Unlock()
		return nil
	}
	ch := c.heldZero
	c.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-c.done:
		return errKilled
	}
}

// gate waits while the proxy is blackholed, then for the delay.
func (c *proxyConn) gate() error {
	p := c.p
	for {
		p.mu.Lock()
		bh, d := p.blackhole, p.delay
		p.mu.Unlock()
		if bh != nil {
			select {
			case <-bh:
				continue
			case <-c.done:
				return errKilled
			}
		}
		if d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-c.done:
				t.Stop()
				return errKilled
			}
		}
		return nil
	}
}

// errClient marks errors reading from the client: the client went away,
// which ends the c2s pump gently.
var errClient = errors.New("client side")

func (c *proxyConn) readClient(b []byte) error {
	if _, err := io.ReadFull(c.cr, b); err != nil {
		return fmt.Errorf("%w: %w", errClient, err)
	}
	return nil
}

// toServer writes b upstream, counting it and firing an armed Reset. The
// caller holds wmu.
func (c *proxyConn) toServer(b []byte) error {
	allow, rst := c.p.resetBudget(len(b))
	n, err := c.server.Write(b[:allow])
	c.p.st.bytesToServer.Add(int64(n))
	if rst {
		c.kill(true, &c.p.st.resets)
		c.p.event()
		return errKilled
	}
	return err
}

// forward sends a frame upstream: hdr, then payload bytes streamed from
// the client.
func (c *proxyConn) forward(hdr []byte, payload int64) error {
	if err := c.gate(); err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.toServer(hdr); err != nil {
		return err
	}
	for payload > 0 {
		b := c.cbuf[:min(payload, int64(len(c.cbuf)))]
		if err := c.readClient(b); err != nil {
			return err
		}
		if err := c.toServer(b); err != nil {
			return err
		}
		payload -= int64(len(b))
	}
	return nil
}

// sendBuffered sends a buffered frame upstream, twice if dup.
func (c *proxyConn) sendBuffered(buf []byte, dup bool) error {
	if err := c.gate(); err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.toServer(buf); err != nil {
		return err
	}
	if dup {
		c.p.st.duplicated.Add(1)
		c.p.event()
		return c.toServer(buf)
	}
	return nil
}

// deliver sends a released frame, unless its connection ended.
func (c *proxyConn) deliver(f *heldFrame) {
	if c.dead() {
		c.p.st.heldDropped.Add(1)
		return
	}
	c.p.st.released.Add(1) // counted before the server can answer
	if err := c.sendNow(f.buf, f.dup); err != nil {
		c.kill(false, nil)
	}
}

func (c *proxyConn) sendNow(buf []byte, dup bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.toServer(buf); err != nil {
		return err
	}
	if dup {
		c.p.st.duplicated.Add(1)
		return c.toServer(buf)
	}
	return nil
}

func (c *proxyConn) readServer(b []byte) error {
	_, err := io.ReadFull(c.sr, b)
	return err
}

// toClient writes b to the client. Once that failed, replies are drained:
// the upstream connection lives on until the server closes it.
func (c *proxyConn) toClient(b []byte) {
	if c.clientGone || len(b) == 0 {
		return
	}
	n, err := c.client.Write(b)
	c.p.st.bytesToClient.Add(int64(n))
	if err != nil {
		c.clientGone = true
	}
}

// toClientFrame forwards (or, if drop, swallows) hdr and payload bytes
// streamed from the server.
func (c *proxyConn) toClientFrame(hdr []byte, payload int64, drop bool) error {
	if !drop {
		if err := c.gate(); err != nil {
			return err
		}
		c.toClient(hdr)
	}
	for payload > 0 {
		b := c.sbuf[:min(payload, int64(len(c.sbuf)))]
		if err := c.readServer(b); err != nil {
			return err
		}
		if !drop {
			c.toClient(b)
		}
		payload -= int64(len(b))
	}
	return nil
}

// holdRule is one Hold: the requests it kept back, in arrival order.
type holdRule struct {
	match    func(nbd.Request) bool
	released bool // under Proxy.mu
	frames   []*heldFrame
}

// heldFrame is a request (header and payload) kept back by a holdRule.
type heldFrame struct {
	c   *proxyConn
	buf []byte
	dup bool // send it twice on release
}

func (p *Proxy) loadHolds() []*holdRule {
	if rs := p.holds.Load(); rs != nil {
		return *rs
	}
	return nil
}

// matchHold returns the first rule that holds req.
func (p *Proxy) matchHold(req nbd.Request) *holdRule {
	for _, r := range p.loadHolds() {
		if r.match(req) {
			return r
		}
	}
	return nil
}

type holdResult int

const (
	holdKept holdResult = iota
	holdReleased
	holdOverflow
	holdDead
)

// hold keeps f under r unless r was released, a limit is reached or f's
// connection ended.
func (p *Proxy) hold(r *holdRule, f *heldFrame) holdResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case r.released:
		return holdReleased
	case f.c.dead():
		return holdDead
	case p.heldCount+1 > p.opts.MaxHeldRequests || p.heldBytes+int64(len(f.buf)) > p.opts.MaxHeldBytes:
		return holdOverflow
	}
	r.frames = append(r.frames, f)
	p.heldCount++
	p.heldBytes += int64(len(f.buf))
	f.c.heldInc()
	return holdKept
}

func (p *Proxy) release(r *holdRule) {
	p.mu.Lock()
	if r.released {
		p.mu.Unlock()
		return
	}
	r.released = true
	frames := r.frames
	r.frames = nil
	var rules []*holdRule
	for _, o := range p.loadHolds() {
		if o != r {
			rules = append(rules, o)
		}
	}
	p.holds.Store(&rules)
	for _, f := range frames {
		p.heldCount--
		p.heldBytes -= int64(len(f.buf))
	}
	p.mu.Unlock()
	for _, f := range frames {
		f.c.deliver(f)
		f.c.heldDec()
	}
	p.event()
}

// dropHeld forgets the held requests of a connection that ended.
func (p *Proxy) dropHeld(c *proxyConn) {
	p.mu.Lock()
	var dropped []*heldFrame
	for _, r := range p.loadHolds() {
		kept := r.frames[:0]
		for _, f := range r.frames {
			if f.c == c {
				dropped = append(dropped, f)
				p.heldCount--
				p.heldBytes -= int64(len(f.buf))
			} else {
				kept = append(kept, f)
			}
		}
		clear(r.frames[len(kept):])
		r.frames = kept
	}
	p.mu.Unlock()
	for range dropped {
		c.heldDec()
	}
	if len(dropped) > 0 {
		p.st.heldDropped.Add(int64(len(dropped)))
		p.event()
	}
}

// dialUpstream connects to the upstream server, within DialTimeout.
func (p *Proxy) dialUpstream() (net.Conn, error) {
	if p.opts.Dial == nil {
		d := net.Dialer{Timeout: p.opts.DialTimeout}
		return d.DialContext(p.dialCtx, p.upNetwork, p.upstream)
	}
	ctx, cancel := context.WithTimeout(p.dialCtx, p.opts.DialTimeout)
	defer cancel()
	return p.opts.Dial(ctx)
}
