// Package sim_test runs the whole engine in a testing/synctest bubble: a
// mirror assembled over in-memory disks, each behind a volatile write
// cache (node.Volatile, a disk that can lose power) and a real nbd.Server,
// reached by real node.Remote clients over net.Pipe links through the
// real fault proxy (nbdproxy), takes a seeded workload and a seeded fault
// schedule while the bubble's clock runs the timeouts, failover and
// resync in virtual time.
//
// The faults: a link cut, hung or slowed and healed; a reply the proxy
// swallows (the node times the request out and fences its connection); a
// write the proxy holds back until the node fenced its connection and
// newer data covers its range, then delivers (it must not land: the
// server closed the fenced connection); a request duplicated; a node's process killed (its
// cache survives, as a page cache does) or its machine's power cut (the
// unflushed part of its cache is lost, and it boots with a new boot id);
// its media replaced by a blank disk; a member replaced online by a new
// node (Storage.ReplaceMember, the config then naming the new node); a
// member suspended and resumed; the
// engine killed between two requests (Storage.Abandon, then Assemble from
// the members' records) or in the middle of a write after a seeded number
// of node operations.
//
// The invariants, after every step: every acknowledged write reads back
// (a write that failed or was cut short by a crash leaves each byte old
// or new); at a settle point (every fault healed, the mirror in sync and
// flushed) every replica's data area is byte-identical to what was
// acknowledged. Faults are scheduled only while the other replica is in
// sync and reachable, so a correct engine never fails a request: any
// I/O error is a failure too.
//
// A failing sequence prints its replay command and its trace: the steps,
// and the engine's own log of membership transitions, fences and resync
// steps, at virtual times.
package sim_test

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"dst/storage/engine"
	"dst/storage/nbd"
	"dst/storage/nbd/nbdproxy"
	"dst/storage/node"
	"dst/storage/spec"
)

var (
	seedFlag    = flag.Uint64("sim.seed", 0, "seed of the first sequence (0: from the clock)")
	seqsFlag    = flag.Int("sim.seqs", 200, "sequences to run")
	stepsFlag   = flag.Int("sim.steps", 60, "steps per sequence")
	faults      = flag.Bool("sim.faults", true, "inject faults")
	traceFlag   = flag.Bool("sim.trace", false, "log every step and engine decision as it happens")
	replaysFlag = flag.Int("sim.replays", 20, "seeds TestSimTraceReplays runs -sim.runs times each")
	runsFlag    = flag.Int("sim.runs", 3, "runs of each seed in TestSimTraceReplays")
)

// geometry is the shape of a simulated mirror.
type geometry struct {
	members     int
	memberBytes int
	cacheBytes  int64 // each node's volatile cache
	// The engine's activity log: its bound, and how long a region stays
	// marked after its last write (0: the default).
	activityRegions int
	activityQuiet   time.Duration
	// monitor is the engine's probe interval (0: 50 ms).
	monitor time.Duration
}

var randomGeometry = geometry{members: 2, memberBytes: 2 << 20, cacheBytes: 256 << 10, activityRegions: 8}

// modelGeometry is the engine model test's mirror (model_test.go), for
// replaying its saved sequences: two 512 KiB members, a log of 4 regions
// that only pressure clears.
var modelGeometry = geometry{members: 2, memberBytes: 512 << 10, cacheBytes: 256 << 10, activityRegions: 4, activityQuiet: time.Hour}

// simNode is one node: a disk that outlives everything but a media
// replacement, the volatile cache of the machine's current boot, and the
// nbd.Server of the process now running (none while it is down).
type simNode struct {
	disk   *node.Memory
	vol    *node.Volatile
	srv    *nbd.Server
	boot   int // the machine's boots (its boot id)
	starts int // the process's starts (seeds each cache)
	up     bool
	// powerCut: its machine lost power and the engine has not yet been
	// seen to take it out of service for that (it does at the reconnect
	// if the member held unflushed writes): until then it may leave at
	// any moment, so it does not count as a replica standing in.
	powerCut bool
}

// link is the wire between the engine and one node: net.Pipe pairs from
// the engine to the link's fault proxy (the real nbdproxy.Proxy, which
// parses the NBD stream) and from the proxy to the node's current
// nbd.Server. Cut closes them and refuses new dials; Hang stops
// delivering bytes in both directions on the engine's side (the peer
// looks alive and silent) until Heal. A node that is down refuses dials
// as well. The proxy loses replies, holds a write back past its fence,
// duplicates requests and slows frames when the schedule says so.
type link struct {
	n  *simNode
	px *nbdproxy.Proxy

	mu      sync.Mutex
	cut     bool
	hung    chan struct{}               // closed when not hung
	conns   []net.Conn                  // both ends of every pipe
	release func()                      // delivers the write the proxy holds back, if any
	held    atomic.Pointer[nbd.Request] // the write it holds back
	slow    bool                        // the proxy delays every frame
	// trouble: a lost reply or a held write is armed and the engine has
	// not yet been seen to take the member out for it; until then the
	// member may leave at any moment, so it does not count as a replica
	// standing in.
	trouble bool
}

func newLink(n *simNode) (*link, error) {
	l := &link{n: n, hung: make(chan struct{})}
	close(l.hung)
	px, err := nbdproxy.NewConns(nbdproxy.Options{Dial: l.dialNode})
	if err != nil {
		return nil, err
	}
	l.px = px
	return l, nil
}

func (l *link) dial(context.Context) (net.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cut {
		return nil, errors.New("sim: link cut")
	}
	if !l.n.up {
		return nil, errors.New("sim: connection refused (node down)")
	}
	c, s := net.Pipe()
	gc, gs := newGated(c, l), newGated(s, l)
	l.conns = append(l.conns, gc, gs)
	l.px.ServeConn(gs)
	return gc, nil
}

// dialNode is the proxy's dial of the node's server.
func (l *link) dialNode(context.Context) (net.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.n.up {
		return nil, errors.New("sim: connection refused (node down)")
	}
	c, s := net.Pipe()
	l.conns = append(l.conns, c, s)
	srv := l.n.srv
	go func() { _ = srv.ServeConn(context.Background(), s) }()
	return c, nil
}

// hold makes the proxy keep back the next write it sees (of data or of
// metadata), until releaseHeld: by then the node has timed it out and
// fenced its connection, so the write arrives stale.
func (l *link) hold() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.release != nil {
		return
	}
	var once atomic.Bool
	l.held.Store(nil)
	l.release = l.px.HoldWrites(func(req nbd.Request) bool {
		if !once.CompareAndSwap(false, true) {
			return false
		}
		l.held.Store(&req)
		return true
	})
	l.trouble = true
}

// heldWrite returns the write the proxy holds back, if it caught one.
func (l *link) heldWrite() (nbd.Request, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	req := l.held.Load()
	if l.release == nil || req == nil {
		return nbd.Request{}, false
	}
	return *req, true
}

// releaseHeld delivers what the proxy holds back and reports whether it
// held anything back.
func (l *link) releaseHeld() bool {
	l.mu.Lock()
	release := l.release
	l.release = nil
	l.mu.Unlock()
	if release == nil {
		return false
	}
	release()
	return true
}

// dropHeld drops what the proxy holds back, with its connections (the
// network lost it), and holds nothing more.
func (l *link) dropHeld() {
	l.mu.Lock()
	release := l.release
	l.release = nil
	l.mu.Unlock()
	if release != nil {
		l.px.Cut()
		release() // ends the hold rule; what it held died with its connection
	}
}

// drop closes every connection (l.mu held).
func (l *link) drop() {
	for _, c := range l.conns {
		c.Close()
	}
	l.conns = nil
}

func (l *link) setCut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = true
	l.drop()
}

func (l *link) setHung() {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.hung:
		l.hung = make(chan struct{})
	default:
	}
}

func (l *link) heal() {
	l.px.Delay(0)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut, l.slow = false, false
	select {
	case <-l.hung:
	default:
		close(l.hung)
	}
}

// setSlow makes the proxy delay every frame by d until the link heals.
func (l *link) setSlow(d time.Duration) {
	l.px.Delay(d)
	l.mu.Lock()
	l.slow = true
	l.mu.Unlock()
}

// loseReply makes the proxy swallow the reply to the next write or FLUSH.
func (l *link) loseReply() {
	var once atomic.Bool
	l.px.DropReplies(func(req nbd.Request) bool {
		return (req.Cmd == nbd.CmdWrite || req.Cmd == nbd.CmdFlush) && once.CompareAndSwap(false, true)
	})
	l.mu.Lock()
	l.trouble = true
	l.mu.Unlock()
}

// troubled reports whether a lost reply or a held write is armed on l
// and the member, in state, has not been seen to leave for it; it
// forgets the trouble once the member left.
func (l *link) troubled(state string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.trouble && state != engine.InSync.String() {
		l.trouble = false
		return true // out of sync anyway
	}
	return l.trouble
}

// disarm turns off a lost reply that did not happen yet and forgets the
// trouble (everything healed, at a settle point).
func (l *link) disarm() {
	l.px.DropReplies(nil)
	l.mu.Lock()
	l.trouble = false
	l.mu.Unlock()
}

// isUp reports whether the link is neither cut nor hung nor slow.
func (l *link) isUp() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.hung:
		return !l.cut && !l.slow
	default:
		return false
	}
}

func (l *link) gate() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.hung
}

// gated is one end of a link: while the link hangs, its reads wait (the
// bytes stay in the pipe), so both sides see silence; closing it ends a
// waiting read, as closing a socket does.
type gated struct {
	net.Conn
	l      *link
	once   sync.Once
	closed chan struct{}
}

func newGated(c net.Conn, l *link) *gated { return &gated{Conn: c, l: l, closed: make(chan struct{})} }

func (g *gated) Read(p []byte) (int, error) {
	if err := g.wait(); err != nil {
		return 0, err
	}
	n, err := g.Conn.Read(p)
	if n > 0 {
		// A read that was waiting when the link hung holds what it got
		// until the link heals, as if the bytes were still on the way.
		if err := g.wait(); err != nil {
			return 0, err
		}
	}
	return n, err
}

// wait waits while the link hangs; it fails once g is closed.
func (g *gated) wait() error {
	select {
	case <-g.l.gate():
		return nil
	case <-g.closed:
		return net.ErrClosed
	}
}

func (g *gated) Close() error {
	g.once.Do(func() { close(g.closed) })
	return g.Conn.Close()
}

// dyingGate stands between a node's server and its cache: while the
// engine is dying, only the first budget state-changing operations (of
// any node) pass, and the others fail unseen, as if the engine's process
// died between two of them.
type dyingGate struct {
	*node.Volatile
	s *sim
}

var errEngineDied = errors.New("sim: the engine died before this operation")

func (g dyingGate) pass() error {
	if g.s.dying.Load() && g.s.budget.Add(-1) < 0 {
		return errEngineDied
	}
	return nil
}

func (g dyingGate) WriteAt(ctx context.Context, p []byte, off int64, flags nbd.CmdFlags) error {
	if err := g.pass(); err != nil {
		return err
	}
	return g.Volatile.WriteAt(ctx, p, off, flags)
}

func (g dyingGate) Trim(ctx context.Context, off, length int64, flags nbd.CmdFlags) error {
	if err := g.pass(); err != nil {
		return err
	}
	return g.Volatile.Trim(ctx, off, length, flags)
}

func (g dyingGate) WriteZeroes(ctx context.Context, off, length int64, flags nbd.CmdFlags) error {
	if err := g.pass(); err != nil {
		return err
	}
	return g.Volatile.WriteZeroes(ctx, off, length, flags)
}

// sim is one sequence: the nodes, their links, the assembled mirror and
// the model of what it must hold.
type sim struct {
	tb    testing.TB
	rng   *rand.Rand
	seed  uint64
	geo   geometry
	nodes []*simNode
	links []*link
	// addrs are the members' node addresses as the config names them
	// (an online replacement changes one); byAddr finds each address's
	// link, retired are the links of nodes replaced.
	addrs        []string
	addrMu       sync.Mutex // guards byAddr: the engine's nodes dial through it
	byAddr       map[string]*link
	retired      []*link
	replacements int
	t0           time.Time

	st     *engine.Storage
	stopSt context.CancelFunc
	ran    chan error

	dying  atomic.Bool
	budget atomic.Int64

	model model
	// strict: every request must succeed (see ioFailed).
	strict bool
	// powerLost: a node lost power since the last acknowledged FLUSH.
	powerLost bool

	// all and replica are settle's buffers for the whole device.
	all, replica []byte

	traceMu sync.Mutex
	trace   []string
	failed  error // the first invariant broken
}

// proxyTotals sums the fault proxies' counters over the sequences run.
var proxyTotals proxyTotal

type proxyTotal struct {
	mu sync.Mutex
	nbdproxy.Stats
}

func (t *proxyTotal) add(st nbdproxy.Stats) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.Held += st.Held
	t.Released += st.Released
	t.HeldDropped += st.HeldDropped
	t.Duplicated += st.Duplicated
	t.RepliesDropped += st.RepliesDropped
	t.Accepted += st.Accepted
}

func (t *proxyTotal) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return fmt.Sprintf("%d connections, %d writes held back (%d released late, %d dropped), %d replies lost, %d requests duplicated",
		t.Accepted, t.Held, t.Released, t.HeldDropped, t.RepliesDropped, t.Duplicated)
}

// errInvariant marks the error of a broken invariant.
var errInvariant = errors.New("sim: invariant broken")

func (s *sim) logf(format string, a ...any) {
	s.addTrace(fmt.Sprintf(format, a...))
}

func (s *sim) addTrace(line string) {
	line = fmt.Sprintf("%10v ", time.Since(s.t0).Round(time.Millisecond)) + line
	s.traceMu.Lock()
	s.trace = append(s.trace, line)
	s.traceMu.Unlock()
	if *traceFlag {
		s.tb.Log(line)
	}
}

// Trace returns the trace so far.
func (s *sim) Trace() []string {
	s.traceMu.Lock()
	defer s.traceMu.Unlock()
	return append([]string(nil), s.trace...)
}

// fail records a broken invariant (the first one counts).
func (s *sim) fail(format string, a ...any) error {
	err := fmt.Errorf("%w: %s", errInvariant, fmt.Sprintf(format, a...))
	if s.failed == nil {
		s.failed = err
		s.logf("FAILED: %v", err)
	}
	return err
}

// traceHandler puts the engine's and nodes' Info and Warn records in the
// trace, without wall time, and the membership core's decisions (Debug
// "membership"): these are what a reader follows.
type traceHandler struct {
	s     *sim
	attrs string
}

func (h traceHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelDebug }

func (h traceHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level < slog.LevelInfo && r.Message != "membership" {
		return nil
	}
	var b strings.Builder
	b.WriteString("  ")
	b.WriteString(r.Message)
	b.WriteString(h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	h.s.addTrace(b.String())
	return nil
}

func (h traceHandler) WithAttrs(as []slog.Attr) slog.Handler {
	var b strings.Builder
	b.WriteString(h.attrs)
	for _, a := range as {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
	}
	return traceHandler{s: h.s, attrs: b.String()}
}

func (h traceHandler) WithGroup(string) slog.Handler { return h }

// newSim builds the nodes and assembles the mirror; it must run inside
// a bubble, and registers the cleanup there.
func newSim(tb testing.TB, seed uint64, geo geometry) (*sim, error) {
	s := &sim{tb: tb, rng: rand.New(rand.NewPCG(seed, 0x5eed)), seed: seed, geo: geo, t0: time.Now(),
		byAddr: map[string]*link{}, strict: true}
	for i := range geo.members {
		n := &simNode{disk: node.NewMemory(geo.memberBytes)}
		s.nodes = append(s.nodes, n)
		l, err := newLink(n)
		if err != nil {
			return nil, err
		}
		s.links = append(s.links, l)
		s.addrs = append(s.addrs, fmt.Sprintf("sim-%d:10809", i))
		s.byAddr[s.addrs[i]] = l
		if err := s.startNode(i); err != nil {
			return nil, err
		}
	}
	tb.Cleanup(func() { // inside the bubble, also after a failure
		for _, l := range s.retired {
			defer func() {
				l.px.Close()
				proxyTotals.add(l.px.Stats())
			}()
			l.dropHeld()
		}
		for i, l := range s.links {
			defer func() {
				l.px.Close()
				proxyTotals.add(l.px.Stats())
			}()
			l.dropHeld()
			l.heal()
			if !s.nodes[i].up {
				_ = s.startNode(i)
			}
		}
		s.dying.Store(false)
		if s.st == nil {
			return
		}
		s.stopRun()
		if err := s.st.Close(context.Background()); err != nil && s.failed == nil {
			tb.Errorf("close: %v", err)
		}
	})
	if err := s.assemble(false); err != nil {
		return nil, err
	}
	return s, nil
}

// startNode starts node i's process: a server in front of a fresh cache
// over its disk, with the boot id of its machine's current boot.
func (s *sim) startNode(i int) error {
	n := s.nodes[i]
	n.starts++
	vol, err := node.NewVolatile(n.disk, node.VolatileOptions{Seed: s.seed ^ uint64(i)<<32 ^ uint64(n.starts), MaxBytes: s.geo.cacheBytes})
	if err != nil {
		return err
	}
	srv, err := nbd.NewServer(nbd.ServerOptions{
		Exports: []*nbd.Export{{Name: "m", Size: vol.Size(), Flags: vol.Flags(), Backend: dyingGate{vol, s}}},
		BootID:  fmt.Sprintf("sim-%d-boot-%d", i, n.boot)})
	if err != nil {
		return err
	}
	l := s.links[i]
	l.mu.Lock()
	n.vol, n.srv, n.up = vol, srv, true
	l.mu.Unlock()
	return nil
}

// stopNode takes node i down: its connections close and it refuses new
// ones. power cuts its machine's power (the unflushed cache is lost and
// it boots anew); otherwise only the process dies and its cache is
// written below.
func (s *sim) stopNode(i int, power bool) error {
	n, l := s.nodes[i], s.links[i]
	l.mu.Lock()
	n.up = false
	l.drop()
	l.mu.Unlock()
	ctx := context.Background()
	if !power {
		return n.vol.Crash(ctx)
	}
	n.boot++
	n.powerCut = true
	s.powerLost = true
	kept, lost, err := n.vol.PowerCut(ctx, s.rng.IntN(101))
	s.logf("power cut %d: %d units kept, %d lost", i, kept, lost)
	return err
}

// replaceMedia takes node i down and gives it a blank disk (and, being
// another machine, another boot).
func (s *sim) replaceMedia(i int) error {
	if err := s.stopNode(i, true); err != nil {
		return err
	}
	s.nodes[i].disk = node.NewMemory(s.geo.memberBytes)
	return nil
}

func (s *sim) logger() *slog.Logger { return slog.New(traceHandler{s: s}) }

// assemble assembles the mirror from the members' records and runs its
// monitor; degraded starts it with allow_degraded, a member that does not
// answer within 200 ms staying behind (dialled on in the background).
func (s *sim) assemble(degraded bool) error {
	ro := node.RemoteOptions{RequestTimeout: 300 * time.Millisecond, Retries: 1, Budget: 150 * time.Millisecond,
		BackoffMin: 2 * time.Millisecond, BackoffMax: 10 * time.Millisecond, PingInterval: -1, DialTimeout: time.Second,
		Seed: s.seed,
		Dial: func(ctx context.Context, _, addr string) (net.Conn, error) {
			s.addrMu.Lock()
			l := s.byAddr[addr]
			s.addrMu.Unlock()
			return l.dial(ctx)
		}}
	var tree []spec.Tree
	for i := range s.nodes {
		tree = append(tree, spec.Member("nbd://"+s.addrs[i]+"/m"))
	}
	st, err := engine.Assemble(context.Background(), spec.Mirror(tree...), engine.AssembleOptions{
		Open: func(ctx context.Context, u string) (node.Node, error) {
			if degraded {
				return node.Open(ctx, u, node.OpenOptions{Remote: ro, ConnectTimeout: 200 * time.Millisecond, Background: true})
			}
			return node.Open(ctx, u, node.OpenOptions{Remote: ro, ConnectTimeout: 5 * time.Second})
		},
		AllowDegraded: degraded,
		RegionSize:    64 << 10,
		Logger:        s.logger(),
		Engine:        engine.Options{ActivityRegions: s.geo.activityRegions, ActivityQuiet: s.geo.activityQuiet},
		Monitor:       engine.MonitorOptions{Interval: cmp.Or(s.geo.monitor, 50*time.Millisecond), Failover: -1},
		Rand:          rand.NewChaCha8(seedBytes(s.seed)),
	})
	if err != nil {
		return err
	}
	s.st = st
	if s.model.data == nil {
		s.model = newModel(st.Engine().Size())
	}
	rctx, stop := context.WithCancel(context.Background())
	s.stopSt, s.ran = stop, make(chan error, 1)
	go func() { s.ran <- st.Run(rctx) }()
	return nil
}

func seedBytes(seed uint64) [32]byte {
	var b [32]byte
	for i := range 8 {
		b[i] = byte(seed >> (8 * i))
	}
	return b
}

func (s *sim) stopRun() {
	s.stopSt()
	<-s.ran
}

// flushed records an acknowledged FLUSH.
func (s *sim) flushed() {
	s.model.flushedAll()
	s.powerLost = false
}

// crash kills the engine between two requests, or, with ops >= 0, in the
// middle of a write of p at off after ops node operations; then it
// assembles the mirror again from what the members recorded. Every node
// is up and every link healed first: assembling waits for every member.
func (s *sim) crash(ctx context.Context, ops int, p []byte, off int64) error {
	return s.restart(ctx, ops, p, off, -1)
}

// crashDegraded kills the engine between two requests and starts it again
// with allow_degraded while member j does not answer (its link cut): the
// start goes on without it, and j joins when a later heal lets it answer,
// copying what it missed (or everything, after a run without this engine
// or in the middle of a copy).
func (s *sim) crashDegraded(ctx context.Context, j int) error {
	return s.restart(ctx, -1, nil, 0, j)
}

// restart is crash, leaving member away (>= 0) cut off for a degraded start.
func (s *sim) restart(ctx context.Context, ops int, p []byte, off int64, away int) error {
	s.healAll()
	for _, l := range s.links {
		// A write held back in the network dies with the engine: a new
		// engine is a new fencing session, which cannot fence the old
		// one's connections (the documented limit of fencing). A lost
		// reply armed and not yet struck is disarmed: assembling waits for
		// every member.
		l.dropHeld()
		l.disarm()
	}
	if ops >= 0 {
		s.budget.Store(int64(ops))
		s.dying.Store(true)
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second) // a dying engine may wait for ever
		err := s.st.Engine().WriteAt(wctx, p, off, 0)
		cancel()
		s.logf("crash after %d node operations of write %d+%d (%v)", ops, off, len(p), err)
		s.model.failedWrite(off, p)
	} else {
		s.logf("crash")
	}
	if s.powerLost {
		// A machine lost power since the last FLUSH, and the engine dies
		// now: what was written since may be lost (the restart may take
		// that machine's replica as the source of a copy).
		s.model.lostUnflushed()
	}
	s.stopRun()
	s.st.Abandon()
	s.st = nil
	s.dying.Store(false)
	if away >= 0 {
		s.links[away].setCut()
		s.logf("crash; start degraded with %d cut off", away)
	}
	if err := s.assemble(away >= 0); err != nil {
		return s.fail("assemble after the crash: %v", err)
	}
	return nil
}

// releaseHeld writes newer data over the range of the data write the
// proxy holds back on link i, if it holds one, and then lets the old
// write go: it must not land (the node fenced its connection).
func (s *sim) releaseHeld(ctx context.Context, i int) error {
	l := s.links[i]
	if req, ok := l.heldWrite(); ok {
		off, size := int64(req.Offset)-s.st.DataOffset(i), s.st.Engine().Size()
		if n := min(int64(req.Length), size-off); off >= 0 && n > 0 {
			s.logf("newer data over the write %d+%d held back on %d", off, n, i)
			if err := s.write(ctx, off, s.payload(n)); err != nil {
				return err
			}
		}
	}
	if l.releaseHeld() {
		s.logf("release the write held back on %d", i)
	}
	return nil
}

// replaceOnline puts a new node with a blank disk in member j's position
// while the storage serves (Storage.ReplaceMember), and names it in the
// config the next assembly reads; the monitor copies it whole.
func (s *sim) replaceOnline(ctx context.Context, j int) error {
	s.replacements++
	n := &simNode{disk: node.NewMemory(s.geo.memberBytes)}
	l, err := newLink(n)
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("sim-%d-r%d:10809", j, s.replacements)
	s.addrMu.Lock()
	s.byAddr[addr] = l
	s.addrMu.Unlock()
	old := s.links[j]
	s.nodes[j], s.links[j] = n, l
	if err := s.startNode(j); err != nil {
		return err
	}
	old.dropHeld()
	old.heal()
	s.retired = append(s.retired, old)
	s.logf("replace member %d online by %s", j, addr)
	if err := s.st.ReplaceMember(ctx, j, "nbd://"+addr+"/m", engine.ReplaceOptions{Force: true}); err != nil {
		return s.fail("replace member %d online: %v", j, err)
	}
	s.addrs[j] = addr
	return nil
}

// healAll heals every link and starts every node that is down.
func (s *sim) healAll() {
	for i, l := range s.links {
		l.heal()
		if !s.nodes[i].up {
			if err := s.startNode(i); err != nil {
				s.tb.Fatal(err)
			}
		}
	}
}

// servable reports whether member i is in sync with nothing dirty, and
// reachable: its node up and its link up.
func (s *sim) servable(i int) bool {
	m := s.st.Engine().Status()[i]
	n := s.nodes[i]
	if n.powerCut {
		if m.State != engine.InSync.String() {
			n.powerCut = false // noticed: in sync again means copied back
		}
		return false
	}
	if s.links[i].troubled(m.State) {
		return false
	}
	return n.up && s.links[i].isUp() && m.State == engine.InSync.String() && m.DirtyRegions == 0
}

// othersServable reports whether some member other than i is servable.
func (s *sim) othersServable(i int) bool {
	for j := range s.nodes {
		if j != i && s.servable(j) {
			return true
		}
	}
	return false
}

// settle heals everything and waits, in virtual time, for the mirror to
// be in sync; then every acknowledged byte must read back and every
// replica's data area must equal it.
func (s *sim) settle(ctx context.Context) error {
	s.healAll()
	for _, l := range s.links {
		l.disarm()
	}
	s.logf("settle")
	// Time for every node to reconnect (the backoff is at most 10 ms), so
	// the engine has seen what a restart or a new disk left; then the
	// writes held back in the network arrive, behind the fences of those
	// reconnects.
	time.Sleep(time.Second)
	for i := range s.links {
		if err := s.releaseHeld(ctx, i); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ok := true
		for i, m := range s.st.Engine().Status() {
			if m.State == engine.Suspended.String() {
				err := s.st.Engine().Resume(ctx, i)
				s.logf("resume %d: %v", i, err)
			}
			if m.State != engine.InSync.String() || m.DirtyRegions != 0 {
				ok = false
			}
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			return s.fail("not in sync 2 virtual minutes after the last heal: %+v", s.st.Engine().Status())
		}
		time.Sleep(100 * time.Millisecond)
	}
	e := s.st.Engine()
	if err := e.Flush(ctx); err != nil {
		return s.fail("flush at settle: %v", err)
	}
	s.flushed()
	for _, n := range s.nodes {
		n.powerCut = false // all in sync and flushed: nothing left to lose
	}
	if int64(len(s.all)) != e.Size() {
		s.all, s.replica = make([]byte, e.Size()), make([]byte, e.Size())
	}
	all := s.all
	if err := e.ReadAt(ctx, all, 0); err != nil {
		return s.fail("read of the whole device at settle: %v", err)
	}
	if err := s.model.check("settle read", 0, all); err != nil {
		return s.fail("%v", err)
	}
	s.model.adopt(0, all)
	for i, n := range s.nodes {
		if err := n.disk.ReadAt(ctx, s.replica, s.st.DataOffset(i)); err != nil {
			return s.fail("read replica %d's disk: %v", i, err)
		}
		if at := firstDiff(s.replica, s.model.data); at >= 0 {
			var vals []string
			for j, n := range s.nodes {
				vals = append(vals, fmt.Sprintf("replica %d holds %#x", j, n.disk.Bytes(int(s.st.DataOffset(j))+at, 1)[0]))
			}
			return s.fail("replica %d differs from the acknowledged data at device offset %d (region %d) after the resync: %s, the read returned %#x",
				i, at, at/(64<<10), strings.Join(vals, ", "), s.model.data[at])
		}
	}
	return nil
}

func firstDiff(a, b []byte) int {
	n := min(len(a), len(b))
	for k := 0; k < n; k += 4096 {
		e := min(k+4096, n)
		if bytes.Equal(a[k:e], b[k:e]) {
			continue
		}
		for i := k; i < e; i++ {
			if a[i] != b[i] {
				return i
			}
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// runSeq runs one random sequence in a bubble of its own and returns the
// broken invariant, if any, and the trace.
func runSeq(t *testing.T, seed uint64, steps int) (err error, trace []string, virtual time.Duration) {
	// Outside the bubble, in wall time: a sequence whose clock froze (a
	// goroutine waits on something a bubble does not count as durable,
	// such as a sync.Mutex held across I/O) fails here instead of hanging
	// the run.
	stall := time.AfterFunc(time.Minute, func() {
		buf := make([]byte, 8<<20)
		buf = buf[:runtime.Stack(buf, true)]
		os.Stderr.Write(buf)
		panic(fmt.Sprintf("sim: sequence %d made no progress for a minute of wall time: its clock froze (goroutines above)", seed))
	})
	defer stall.Stop()
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		s, e := newSim(t, seed, randomGeometry)
		if e != nil {
			err = fmt.Errorf("sim: build sequence %d: %w", seed, e)
			t.Log(err)
			return
		}
		defer func() { trace, virtual = s.Trace(), time.Since(t0) }()
		ctx := context.Background()
		for i := range steps {
			if err = s.step(ctx, i); err != nil {
				return
			}
		}
		err = s.settle(ctx)
	})
	return err, trace, virtual
}

func TestSimMirror(t *testing.T) {
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("first seed %d (replay one: %s)", seed, replayCommand("N"))
	start, cpu0 := time.Now(), cpuTime()
	var virtual time.Duration
	ran := 0
	for k := range *seqsFlag {
		seed := seed + uint64(k)
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			err, trace, v := runSeq(t, seed, *stepsFlag)
			virtual += v
			ran++
			if err != nil {
				if !*traceFlag {
					t.Log("trace:\n" + strings.Join(trace, "\n"))
				}
				t.Logf("replay: %s", replayCommand(fmt.Sprint(seed)))
				t.Fatal(err)
			}
		})
	}
	wall := time.Since(start)
	cpu := cpuTime() - cpu0
	t.Logf("%d sequences, %v of simulated time in %v of wall time and %v of CPU: %.0f sequences per wall minute, %.0f per CPU minute",
		ran, virtual.Round(time.Second), wall.Round(time.Millisecond), cpu.Round(time.Millisecond), float64(ran)/wall.Minutes(), float64(ran)/cpu.Minutes())
	t.Logf("fault proxies: %v", &proxyTotals)
}

// cpuTime is the user and system CPU time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func replayCommand(seed string) string {
	return fmt.Sprintf("go test ./storage/sim -run 'TestSimMirror$' -count=1 -args -sim.seqs=1 -sim.seed=%s -sim.steps=%d -sim.trace", seed, *stepsFlag)
}

// TestSimTraceReplays measures how often a seed replays its trace exactly
// (every step, every engine decision, at the same virtual times): each of
// -sim.replays seeds runs -sim.runs times, and each run after the first is
// compared with the first. Goroutine order inside a bubble is not fully
// deterministic (two requests failing at the same virtual instant reach
// the engine in either order), so this is a rate: reported, and checked
// against a floor below what is measured (see the resolve note of issue
// 14). TestSimCatchesPlantedBugs runs it on the failing seeds it finds.
func TestSimTraceReplays(t *testing.T) {
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	runs := max(*runsFlag, 2)
	exact, sameSet, sameEnd, total, seedsExact := 0, 0, 0, 0, 0
	var firstDiff string
	for k := range *replaysFlag {
		seed := seed + uint64(k)
		err0, want, _ := runSeq(t, seed, *stepsFlag)
		all := true
		for range runs - 1 {
			err, got, _ := runSeq(t, seed, *stepsFlag)
			total++
			if (err == nil) == (err0 == nil) && (err == nil || sameLine(err.Error(), err0.Error())) {
				sameEnd++
			}
			if slices.EqualFunc(got, want, sameLine) {
				exact++
				sameSet++
				continue
			}
			all = false
			if slices.EqualFunc(byInstant(got), byInstant(want), sameLine) {
				sameSet++
			}
			if firstDiff == "" {
				at := 0
				for at < min(len(got), len(want)) && sameLine(got[at], want[at]) {
					at++
				}
				firstDiff = fmt.Sprintf("seed %d, trace line %d: %q vs %q", seed, at, lineAt(want, at), lineAt(got, at))
			}
		}
		if all {
			seedsExact++
		}
	}
	t.Logf("replays: %d of %d matched their seed's first trace exactly (%.0f%%), %d the same lines at each virtual instant in another order (%.0f%% in all), %d ended as the first run did; %d of %d seeds replayed exactly in all %d runs",
		exact, total, 100*float64(exact)/float64(total), sameSet-exact, 100*float64(sameSet)/float64(total), sameEnd, seedsExact, *replaysFlag, runs)
	if firstDiff != "" {
		t.Logf("first divergence: %s", firstDiff)
	}
	if *replaysFlag >= 10 {
		require.GreaterOrEqual(t, exact*10, total*6, "fewer than 60% of the replays match their trace exactly")
	}
}

// byInstant returns the trace with the lines of each virtual instant
// sorted: goroutines logging at the same instant do so in either order.
func byInstant(trace []string) []string {
	out := slices.Clone(trace)
	for i := 0; i < len(out); {
		j := i + 1
		for j < len(out) && instant(out[j]) == instant(out[i]) {
			j++
		}
		slices.SortFunc(out[i:j], func(a, b string) int {
			return strings.Compare(volatile.ReplaceAllString(a, ""), volatile.ReplaceAllString(b, ""))
		})
		i = j
	}
	return out
}

// instant is a trace line's virtual time (addTrace's first field).
func instant(line string) string { return strings.Fields(line)[0] }

// volatile are the parts of a trace line that count things the
// schedule does not decide (transaction ids, tries): lines that differ
// only there are the same decision.
var volatile = regexp.MustCompile(`\(transaction \d+, \d+ tries\)`)

func sameLine(a, b string) bool {
	return a == b || volatile.ReplaceAllString(a, "") == volatile.ReplaceAllString(b, "")
}

func lineAt(lines []string, i int) string {
	if i < len(lines) {
		return lines[i]
	}
	return "(end)"
}
