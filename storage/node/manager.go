package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"dst/storage/nbd"
)

// conn is one connection of a Remote: the pipelined client and the socket
// under it, which the fence closes directly so that a send blocked on a
// peer that stopped reading gives up at once.
type conn struct {
	client     *nbd.Client
	raw        net.Conn
	info       nbd.ExportInfo
	maxPayload int64 // the longest READ or WRITE: MaxBlock, whole minimum blocks
	gen        uint64
	upAt       time.Time
	// mediaChanged: the verifier did not recognise the media; requests
	// that began before this connection was installed fail.
	mediaChanged bool

	suspected atomic.Bool
	reason    error // why it was suspected; under Remote.mu

	// deadlineAt is when the write deadline was last pushed (unix ns).
	deadlineAt atomic.Int64
}

// extendWriteDeadline keeps the connection's write deadline between
// 3/4 and all of timeout ahead of now, so a send to a peer that stopped
// reading fails within timeout; it moves the deadline (a runtime timer
// update) at most four times per timeout, not for every request.
func (c *conn) extendWriteDeadline(timeout time.Duration) {
	now := time.Now()
	last := c.deadlineAt.Load()
	if now.UnixNano()-last < int64(timeout/4) {
		return
	}
	if c.deadlineAt.CompareAndSwap(last, now.UnixNano()) {
		_ = c.raw.SetWriteDeadline(now.Add(timeout))
	}
}

// nodeFlags are the export flags a Remote passes on as its own: the
// capabilities of the device. Protocol options of the peer's server
// (structured reads, resize) stay with the connection.
const nodeFlags = nbd.FlagReadOnly | nbd.FlagSendFlush | nbd.FlagSendFUA | nbd.FlagRotational |
	nbd.FlagSendTrim | nbd.FlagSendWriteZero | nbd.FlagCanMultiConn | nbd.FlagSendCache | nbd.FlagSendFastZero

// errStopping is the reason of the fence when Run ends.
var errStopping = errors.New("node: stopping")

// Run is the connection manager: it connects, installs the connection,
// pings it while idle, fences it when it is lost or suspect (a request or
// a ping timed out, the peer shut down) and reconnects with exponential
// backoff and jitter, until ctx ends or Close is called. It then fences
// the connection, stops the node (requests fail with ErrUnavailable) and
// returns nil. Run may be called once; it fails with ErrUnavailable after
// Close.
func (r *Remote) Run(ctx context.Context) error {
	r.mu.Lock()
	switch {
	case r.closed:
		r.mu.Unlock()
		return fmt.Errorf("%w: node %s is closed", ErrUnavailable, r.name)
	case r.ran:
		r.mu.Unlock()
		return fmt.Errorf("node %s: Run called twice", r.name)
	}
	r.ran = true
	ctx, cancel := context.WithCancel(ctx)
	r.cancelRun, r.runDone = cancel, make(chan struct{})
	done := r.runDone
	r.mu.Unlock()
	defer close(done)
	defer cancel()

	failures := 0  // failed attempts (or short-lived connections) in a row: the backoff
	dialFails := 0 // failed attempts since the last connection: the log
	for {
		if failures > 0 && !r.sleep(ctx, r.backoff(failures)) {
			break
		}
		c, err := r.connect(ctx)
		if ctx.Err() != nil {
			if c != nil {
				c.raw.Close()
				c.client.Close()
			}
			break
		}
		if err != nil {
			failures++
			dialFails++
			if dialFails == 1 {
				r.log.Warn("connect failed; retrying with backoff", "err", err)
			} else {
				r.log.Debug("connect failed", "attempt", dialFails, "err", err)
			}
			r.setState(StateConnecting, err)
			continue
		}
		dialFails = 0
		r.install(c)
		reason := r.monitor(ctx, c)
		if ctx.Err() != nil {
			r.stop(nil)
			r.fence(c, errStopping)
			return nil
		}
		r.fence(c, reason)
		r.setState(StateConnecting, reason)
		if time.Since(c.upAt) < r.opts.BackoffMax {
			failures++
		} else {
			failures = 0
		}
	}
	r.stop(nil)
	return nil
}

// backoff returns the pause before connection attempt n (n >= 1): it
// doubles from BackoffMin to BackoffMax, drawn from [d/2, d].
func (r *Remote) backoff(n int) time.Duration {
	d := r.opts.BackoffMin
	for i := 1; i < n && d < r.opts.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, r.opts.BackoffMax)
	return d/2 + time.Duration(r.rnd.Int64N(int64(d/2)+1))
}

// sleep waits d or until ctx ends; it reports whether d passed.
func (r *Remote) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// connect dials and runs the handshake, both within DialTimeout.
func (r *Remote) connect(ctx context.Context) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, r.opts.DialTimeout)
	defer cancel()
	dial := r.opts.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	raw, err := dial(ctx, r.addr.Network, r.addr.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	if tc, ok := raw.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	client, err := nbd.NewClient(ctx, raw, nbd.ClientOptions{
		ExportName:       r.addr.Export,
		TLS:              r.opts.TLS,
		MaxInFlight:      r.opts.MaxInFlight + 1, // the calls in flight and a ping
		HandshakeTimeout: r.opts.DialTimeout,
		// A dst peer closes this session's older connections, and waits
		// for what they were writing, before it lets this one in: nothing
		// sent on a fenced connection lands after its resend here.
		Fence: &nbd.Fence{Session: r.session, Generation: r.dials.Add(1)},
		// Structured replies and base:allocation where the peer has them,
		// for BlockStatus.
		BlockStatus: true,
	})
	if err != nil {
		raw.Close()
		return nil, err
	}
	if !client.Info().Fenced && !r.warnedNoFence.Swap(true) {
		r.log.Info("the peer does not fence old connections (not a dst export): a write a stopped peer held " +
			"on a fenced connection could still land after its resend")
	}
	mediaChanged := false
	if v := r.verify.Load(); v != nil {
		switch err := (*v)(ctx, client); {
		case errors.Is(err, ErrMediaChanged):
			mediaChanged = true
			r.log.Warn("reconnected to other media; requests begun before fail", "err", err)
		case err != nil:
			client.Close()
			raw.Close()
			return nil, fmt.Errorf("verify: %w", err)
		}
	}
	info := client.Info()
	mp := int64(info.MaxBlock)
	if info.MinBlock > 1 {
		mp -= mp % int64(info.MinBlock)
	}
	return &conn{client: client, raw: raw, info: info, maxPayload: max(mp, int64(info.MinBlock)), upAt: time.Now(),
		mediaChanged: mediaChanged}, nil
}

// install makes c the live connection and reports changes of the export.
func (r *Remote) install(c *conn) {
	n := r.m.connects.Add(1)
	c.gen = n
	if c.mediaChanged {
		r.mediaGen.Store(n)
	}
	info := c.info
	flags := info.Flags & nodeFlags
	r.mu.Lock()
	prev, had := r.info, r.connected
	r.info, r.connected = info, true
	r.size.Store(info.Size)
	r.flags.Store(uint32(flags))
	r.lastReply.Store(time.Now().UnixNano())
	r.cur.Store(c)
	close(r.up)
	changedState := r.state != StateConnected
	r.state = StateConnected
	r.mu.Unlock()

	var changed []error
	if had && prev.Size != info.Size {
		changed = append(changed, fmt.Errorf("%w: %d -> %d bytes", ErrSizeChanged, prev.Size, info.Size))
	}
	if pf := prev.Flags & nodeFlags; had && pf != flags {
		changed = append(changed, fmt.Errorf("%w: %v -> %v", ErrFlagsChanged, pf, flags))
	}
	change := errors.Join(changed...)
	if change != nil {
		r.log.Warn("export changed", "size", info.Size, "flags", flags, "change", change)
	}
	r.log.Info("connected", "connection", n, "size", info.Size, "flags", flags,
		"min_block", info.MinBlock, "max_block", info.MaxBlock)
	if (changedState || change != nil) && r.opts.OnState != nil {
		r.opts.OnState(StateConnected, change)
	}
}

// suspect takes c out of use (no try picks it any more) and asks the
// manager to fence it. reason is kept for the log and OnState.
func (r *Remote) suspect(c *conn, reason error) {
	r.mu.Lock()
	if c.reason == nil {
		c.reason = reason
	}
	if r.cur.Load() == c {
		r.cur.Store(nil)
		r.up = make(chan struct{})
	}
	r.mu.Unlock()
	c.suspected.Store(true)
	select {
	case r.kick <- struct{}{}:
	default: // a kick is pending; the manager sees c.suspected
	}
}

// monitor watches the live connection c until it must go: it returns why.
func (r *Remote) monitor(ctx context.Context, c *conn) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	pinging := false
	var pingDeadline time.Time
	for {
		if c.suspected.Load() {
			r.mu.Lock()
			reason := c.reason
			r.mu.Unlock()
			return reason
		}
		wait := time.Duration(1<<63 - 1)
		now := time.Now()
		switch {
		case pinging:
			wait = pingDeadline.Sub(now)
			if wait <= 0 {
				r.m.timeouts.Add(1)
				return fmt.Errorf("%w: ping (READ of %d bytes at 0) got no reply within %v", ErrTimeout, c.info.MinBlock, r.opts.RequestTimeout)
			}
		case r.opts.PingInterval > 0 && c.info.Size >= int64(c.info.MinBlock):
			wait = time.Unix(0, r.lastReply.Load()).Add(r.opts.PingInterval).Sub(now)
			if wait <= 0 {
				if err := r.ping(c); err != nil {
					return err
				}
				pinging, pingDeadline = true, now.Add(r.opts.RequestTimeout)
				continue
			}
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return errStopping
		case <-c.client.Done():
			return fmt.Errorf("connection lost: %w", c.client.Err())
		case <-r.kick:
		case err := <-r.pingDone:
			pinging = false
			if err != nil && !isReply(err) {
				return fmt.Errorf("ping: %w", err)
			}
			if errors.Is(err, nbd.ESHUTDOWN) {
				return fmt.Errorf("ping: %w", err)
			}
		case <-timer.C:
		}
	}
}

// ping sends a READ of the minimum block at offset 0; its reply arrives
// on r.pingDone.
func (r *Remote) ping(c *conn) error {
	n := int(c.info.MinBlock)
	if cap(r.pingBuf) < n {
		r.pingBuf = make([]byte, n)
	}
	r.pingOp.Cmd, r.pingOp.Flags, r.pingOp.Offset, r.pingOp.Length, r.pingOp.Data = nbd.CmdRead, 0, 0, uint64(n), r.pingBuf[:n]
	r.m.pings.Add(1)
	c.extendWriteDeadline(r.opts.RequestTimeout)
	if err := c.client.Submit(context.Background(), &r.pingOp); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	return nil
}

// fence takes c out of use, closes its socket and waits until the client
// completed every request in flight on it (with nbd.ErrClosed): from then
// on nothing sent on c can still be answered or resent through it. Only
// after fence returns does Run install a new connection.
func (r *Remote) fence(c *conn, reason error) {
	r.mu.Lock()
	if c.reason == nil {
		c.reason = reason
	}
	if r.cur.Load() == c {
		r.cur.Store(nil)
		r.up = make(chan struct{})
	}
	r.mu.Unlock()
	c.suspected.Store(true)
	if reason == errStopping {
		c.client.Close() // NBD_CMD_DISC first: a clean goodbye
	} else {
		c.raw.Close()
		c.client.Close()
	}
	c.raw.Close()
	select { // a ping in flight was completed by the close
	case <-r.pingDone:
	default:
	}
	r.m.fences.Add(1)
	if reason == errStopping {
		r.log.Info("disconnected", "connection", c.gen)
		return
	}
	r.log.Warn("connection fenced; reconnecting", "connection", c.gen, "up_for", time.Since(c.upAt).Round(time.Millisecond), "reason", reason)
}
