package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"dst/storage/nbd"

	"dst/storage/rangelock"
)

// Defaults of RemoteOptions.
const (
	DefaultDialTimeout    = 5 * time.Second
	DefaultRequestTimeout = 5 * time.Second
	DefaultRetries        = 5
	DefaultBackoffMin     = 50 * time.Millisecond
	DefaultBackoffMax     = 2 * time.Second
	DefaultPingInterval   = time.Second
)

// RemoteOptions configure a Remote. The zero value of each field is
// documented next to it; the zero RemoteOptions is a sensible node.
type RemoteOptions struct {
	// TLS, if set, makes every connection start TLS before choosing the
	// export. An nbds URL requires it. A TCP address's host becomes the
	// ServerName if the config names none.
	TLS *tls.Config
	// DialTimeout bounds one connection attempt: dial and handshake. Zero
	// means DefaultDialTimeout.
	DialTimeout time.Duration
	// Dial, if set, makes the connections instead of a net.Dialer (the
	// simulation's in-memory links); network and addr are the node's.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// RequestTimeout bounds one try of a request: from sending it (or
	// writing it to the socket) to its reply. A try that passes it makes
	// the connection suspect: it is fenced and the request resent. It also
	// bounds a ping. Zero means DefaultRequestTimeout.
	RequestTimeout time.Duration
	// Retries is the number of tries after the first (resends) a request
	// gets before it fails with ErrUnavailable. Zero means DefaultRetries;
	// negative means none.
	Retries int
	// Budget bounds a request from the moment it may be sent (it holds a
	// slot and, if write-like, its range): no try starts after the budget
	// is spent and no wait for a connection outlasts it; then the request
	// fails with ErrUnavailable. Once sendable, a request returns within
	// Budget + RequestTimeout plus the time to fence a connection (per
	// part, for a request split in parts). The wait for a slot or for an
	// overlapping write is bounded by the caller's ctx and by the budgets
	// of the requests ahead. Zero means (Retries+1) × RequestTimeout.
	Budget time.Duration
	// BackoffMin and BackoffMax bound the pause between connection
	// attempts: it doubles from BackoffMin up to BackoffMax after each
	// failed attempt (or connection that lived less than BackoffMax),
	// with jitter that draws it from [d/2, d]. A connection lost after
	// living longer is redialled at once. Zero means DefaultBackoffMin and
	// DefaultBackoffMax.
	BackoffMin, BackoffMax time.Duration
	// PingInterval: a connection that received no reply for this long is
	// pinged with a READ of the export's minimum block at offset 0 (NBD
	// has no no-op); a ping without a reply within RequestTimeout fences
	// the connection. Zero means DefaultPingInterval; negative disables
	// pings. Exports smaller than their minimum block are not pinged.
	PingInterval time.Duration
	// MaxInFlight bounds the requests in flight on the node; callers
	// beyond it wait. It sizes the waiter pool and the range table. Zero
	// means nbd.DefaultMaxInFlight.
	MaxInFlight int
	// Name names the node in logs and errors. Empty means the URL.
	Name string
	// Logger receives the node's state changes (never a line per
	// request); it is narrowed with "node". Nil discards them.
	Logger *slog.Logger
	// Seed seeds the jitter of the backoff (with the node's name mixed
	// in, so nodes with one seed do not redial in step). A run replays its
	// backoff schedule from its seed.
	Seed uint64
	// OnState, if set, is called on every state change, in order, from
	// the goroutine running Run (or from Close if Run never ran). err
	// says why: the dial error or the reason a connection was fenced
	// (wrapping ErrTimeout after a request or a ping got no reply, nbd.
	// ErrClosed after the peer closed, nbd.ESHUTDOWN after it said it was
	// shutting down). A connection to an export whose size or flags
	// differ from the previous connection's is reported as StateConnected
	// with an error wrapping ErrSizeChanged and/or ErrFlagsChanged.
	// OnState must not block and must not call Close.
	OnState func(State, error)
}

// Remote is a Node served by any NBD server (dst export, nbdkit, qemu-nbd,
// nbd-server) over one pipelined connection, where every request is a
// transaction: it has an id, a deadline per try and a try count; a try
// that times out or loses its connection fences the connection and is
// resent on the next one; an NBD error reply (EIO, ENOSPC, EPERM, EINVAL,
// ...) is returned as it is, wrapped with the op, offset, length and node
// (ESHUTDOWN excepted: the peer is going away, so it is resent on the
// next connection); after the last try the request fails with an error
// wrapping ErrUnavailable.
//
// Ordering and fencing — what a caller may rely on:
//
//   - At most one write-like request (WRITE, TRIM, WRITE_ZEROES) is in
//     flight per overlapping byte range: a request overlapping an earlier
//     unfinished one waits until that one — with all its retries — has
//     returned. Overlapping write-like requests are sent in the order they
//     were called. Reads do not wait: a read racing an overlapping write
//     sees old or new data, as NBD allows.
//   - A connection is fenced before anything is resent: it is taken out
//     of use, its socket closed, and the nbd.Client drained — every
//     request in flight on it completed with nbd.ErrClosed — before a new
//     connection is installed. No byte of an old connection reaches the
//     wire after its fence began, and only the new connection carries
//     resends.
//   - Together: of two overlapping writes where the newer was called
//     after the older returned (or queued behind it), the older one was
//     either acknowledged before the newer was sent, or its connection was
//     closed and drained before the newer was sent.
//
// What a client alone cannot fence: a request the server had already read
// (or a proxy held) from a connection the client has since closed. A
// server that was stopped (SIGSTOP, a VM pause, a long swap-in) may
// execute it on resume — later than a newer write sent on the new
// connection. A dst peer (dst export, dst serve: nbd.Server) closes this
// window: every connection carries the node's session and a generation
// (nbd.OptFence), and the server acknowledges a new connection only after
// it has closed the session's older ones, waited for the writes they had
// started and made them drop every other write, so a resend can never be
// overtaken. A peer that does not know the option (nbdkit, qemu-nbd,
// nbd-server) answers ERR_UNSUP: the window stays open there (logged once
// per node), and on a dst server a client that closes without DISC still
// has its not-yet-started writes dropped. With such peers the engine must
// treat a write that failed with ErrUnavailable, and any write in flight
// when the node reported StateConnecting, as possibly landing later on
// that node: for a mirror, keep its region dirty in the write-intent
// bitmap until the node was resynced, not merely reconnected.
//
// Durability across a reconnect: a FLUSH sent on a new connection covers
// writes acknowledged on an old one only if the peer kept them (same
// process, or the data reached its page cache). A peer that restarted may
// have lost acknowledged, unflushed writes; RemoteMetrics.Connects tells
// the engine that the connection changed between a write and its flush.
//
// Size and Flags are learned from the handshake at every (re)connect and
// are zero before the first connection (see Ready). Requests longer than
// the peer's maximum block (for READ and WRITE) or than 2 GiB (TRIM,
// WRITE_ZEROES, CACHE) are split; the parts of one write-like request hold
// its range together, and each part gets the tries and the budget anew.
// Offsets and lengths must respect the peer's minimum block (the server
// answers EINVAL otherwise).
//
// The caller's buffer: a call returns only after its request completed or
// its connection was drained, so the peer never writes into p after a
// call returned. A call's ctx bounds the waits (for a free slot, an
// overlapping write, a connection); once a try is on the wire the call
// waits for its reply or its try deadline, never shorter.
//
// Time is real (the nbd.Client's deadlines are too); the backoff jitter is
// seeded (RemoteOptions.Seed).
//
// The steady state allocates nothing per request. NewRemote starts
// nothing; Run runs the connection manager; Close stops it and waits for
// every call in flight.
type Remote struct {
	addr Address
	name string
	opts RemoteOptions
	log  *slog.Logger
	rnd  *rand.Rand // the manager goroutine's only

	cur  atomic.Pointer[conn] // the live connection, nil while none
	kick chan struct{}        // capacity 1: a transaction suspects cur

	mu        sync.Mutex
	up        chan struct{} // closed while cur is set; replaced when it is unset
	state     State
	info      nbd.ExportInfo // of the latest connection
	connected bool           // info is valid
	ran       bool           // Run was called
	closed    bool
	cancelRun context.CancelFunc
	runDone   chan struct{}
	stopped   chan struct{} // closed when the node serves no more
	stopOnce  sync.Once
	closeOnce sync.Once

	size      atomic.Int64
	flags     atomic.Uint32
	lastReply atomic.Int64 // UnixNano of the last reply on any connection
	ids       atomic.Uint64
	// verify checks the media at each connection (SetVerify); mediaGen is
	// the last connection whose media it did not recognise.
	verify   atomic.Pointer[func(context.Context, *nbd.Client) error]
	mediaGen atomic.Uint64

	waiters chan *waiter // free list; its capacity bounds the calls in flight
	ranges  *rangelock.Table
	m       remoteCounters

	pingOp   nbd.Op
	pingBuf  []byte
	pingDone chan error // capacity 1

	// aborted points to the channel the next Abort closes (and replaces);
	// aborts counts the Aborts, so a transaction knows whether one came
	// since it began. Abort counts before it swaps the channel, and a
	// waiter loads the channel before it checks the count: no Abort is
	// missed.
	aborted atomic.Pointer[chan struct{}]
	aborts  atomic.Uint64

	// session and dials identify this node's connections to a dst peer,
	// which fences older ones (nbd.OptFence).
	session       uint64
	dials         atomic.Uint64
	warnedNoFence atomic.Bool

	noRanges bool // tests only: switch the range table off to prove the tests can see its absence
}

var _ Node = (*Remote)(nil)

// BootID returns the boot id of the peer's machine as its latest
// connection reported it (nbd.ExportInfo.BootID); "" if unknown.
func (r *Remote) BootID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.info.BootID
}

// NewRemote returns a node for the export at addr. It checks the options
// and starts nothing: call Run.
func NewRemote(addr Address, opts RemoteOptions) (*Remote, error) {
	switch {
	case addr.Network != "tcp" && addr.Network != "unix":
		return nil, fmt.Errorf("%w: network %q (want tcp or unix)", ErrBadURL, addr.Network)
	case addr.Addr == "":
		return nil, fmt.Errorf("%w: empty address", ErrBadURL)
	case addr.TLS && opts.TLS == nil:
		return nil, fmt.Errorf("%w: %s requires TLS but no TLS configuration was given", ErrBadURL, addr)
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = DefaultDialTimeout
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = DefaultRequestTimeout
	}
	switch {
	case opts.Retries == 0:
		opts.Retries = DefaultRetries
	case opts.Retries < 0:
		opts.Retries = 0
	}
	if opts.Budget <= 0 {
		opts.Budget = time.Duration(opts.Retries+1) * opts.RequestTimeout
	}
	if opts.BackoffMin <= 0 {
		opts.BackoffMin = DefaultBackoffMin
	}
	if opts.BackoffMax <= 0 {
		opts.BackoffMax = DefaultBackoffMax
	}
	opts.BackoffMax = max(opts.BackoffMax, opts.BackoffMin)
	if opts.PingInterval == 0 {
		opts.PingInterval = DefaultPingInterval
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = nbd.DefaultMaxInFlight
	}
	if opts.TLS != nil && opts.TLS.ServerName == "" && addr.Network == "tcp" {
		opts.TLS = opts.TLS.Clone()
		opts.TLS.ServerName = hostOf(addr.Addr)
	}
	name := opts.Name
	if name == "" {
		name = addr.String()
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := fnv.New64a()
	h.Write([]byte(name))
	r := &Remote{
		addr:     addr,
		name:     name,
		opts:     opts,
		log:      log.With("node", name),
		rnd:      rand.New(rand.NewPCG(opts.Seed, h.Sum64())),
		kick:     make(chan struct{}, 1),
		up:       make(chan struct{}),
		stopped:  make(chan struct{}),
		waiters:  make(chan *waiter, opts.MaxInFlight),
		ranges:   rangelock.New(opts.MaxInFlight),
		pingDone: make(chan error, 1),
	}
	ab := make(chan struct{})
	r.aborted.Store(&ab)
	r.session = rand.Uint64()
	for range opts.MaxInFlight {
		r.waiters <- newWaiter(r)
	}
	r.pingOp.Done = func(_ *nbd.Op, err error) {
		r.noteReply(err)
		r.pingDone <- err
	}
	return r, nil
}

// SetVerify installs a check run on every later connection after the
// handshake, before the connection is used: it may read through the
// client (a superblock, say). An error wrapping ErrMediaChanged keeps the
// connection but fails, with ErrMediaChanged, every request that began
// before it was installed — they were meant for the media the node had —
// while later requests proceed (so the owner can inspect and rebuild the
// new media). Any other error refuses the connection, which is retried
// with backoff. nil removes the check.
func (r *Remote) SetVerify(v func(ctx context.Context, c *nbd.Client) error) {
	if v == nil {
		r.verify.Store(nil)
		return
	}
	r.verify.Store(&v)
}

// Address returns the address the node connects to.
func (r *Remote) Address() Address { return r.addr }

// String returns the node's name: RemoteOptions.Name or the URL.
func (r *Remote) String() string { return r.name }

// Size returns the export size learned at the latest (re)connect; zero
// before the first.
func (r *Remote) Size() int64 { return r.size.Load() }

// Flags returns the export's capabilities learned at the latest
// (re)connect: its transmission flags without the protocol options of the
// peer's server (HAS_FLAGS, SEND_DF, SEND_RESIZE); zero before the first.
func (r *Remote) Flags() nbd.TransmissionFlags {
	return nbd.TransmissionFlags(r.flags.Load())
}

// Info returns what the latest handshake learned, and whether there was
// one.
func (r *Remote) Info() (nbd.ExportInfo, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.info, r.connected
}

// State returns the current connection state.
func (r *Remote) State() State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state
}

// Metrics returns a snapshot of the node's counters.
func (r *Remote) Metrics() RemoteMetrics { return r.m.snapshot() }

// Ready waits until the node has a live connection. It fails with ctx's
// error, or with ErrUnavailable once the node stopped.
func (r *Remote) Ready(ctx context.Context) error {
	for {
		r.mu.Lock()
		up, live := r.up, r.cur.Load() != nil
		r.mu.Unlock()
		if live {
			return nil
		}
		select {
		case <-up:
		case <-r.stopped:
			return fmt.Errorf("%w: node %s stopped", ErrUnavailable, r.name)
		case <-ctx.Done():
			return fmt.Errorf("node %s: waiting for a connection: %w", r.name, ctx.Err())
		}
	}
}

// Close stops the connection manager (Run returns), fences the
// connection, fails the calls waiting for one with ErrUnavailable, and
// waits until every call in flight has returned. Later calls fail with
// ErrUnavailable at once. It is safe to call more than once.
func (r *Remote) Close() error {
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.closed = true
		cancel, done := r.cancelRun, r.runDone
		r.mu.Unlock()
		if cancel != nil {
			cancel()
			<-done // Run fenced the connection and stopped the node
		} else {
			r.stop(nil)
		}
		for range r.opts.MaxInFlight {
			<-r.waiters // every call in flight has returned its waiter
		}
	})
	return nil
}

// stop marks the node stopped: waiting calls fail, new ones fail at once.
func (r *Remote) stop(reason error) {
	r.stopOnce.Do(func() {
		close(r.stopped)
		r.setState(StateStopped, reason)
		r.log.Info("node stopped")
	})
}

// setState records s and reports it through OnState if it changed.
func (r *Remote) setState(s State, err error) {
	r.mu.Lock()
	changed := r.state != s
	r.state = s
	r.mu.Unlock()
	if changed && r.opts.OnState != nil {
		r.opts.OnState(s, err)
	}
}

// noteReply records the time of a reply (an NBD error reply counts: the
// peer is alive).
func (r *Remote) noteReply(err error) {
	if err == nil || isReply(err) {
		r.lastReply.Store(time.Now().UnixNano())
	}
}

// isReply reports whether err is an error reply of the peer (an
// nbd.Errno), as opposed to a connection failure.
func isReply(err error) bool {
	var errno nbd.Errno
	return errors.As(err, &errno)
}

// hostOf returns the host of a "host:port" address.
func hostOf(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}

// opErr wraps err with the request and the node.
func (r *Remote) opErr(cmd nbd.Command, off, length int64, id uint64, tries int, err error) error {
	return fmt.Errorf("node %s: %v offset %d length %d (transaction %d, %d tries): %w", r.name, cmd, off, length, id, tries, err)
}
