// The engine against a model (gopter commands): a mirror of two members,
// each a memory disk behind a real NBD server reached through node.Remote
// over loopback, takes generated sequences of writes, reads, flushes,
// trims and write-zeroes at offsets anchored on page and region boundaries,
// interleaved with killing and restarting member servers, replacing their
// media, suspending and resuming members, crashing and re-assembling the
// engine, and resync. The model predicts exactly which requests succeed,
// what every read returns and each member's state; after a resync the
// members' data areas must equal the model byte for byte. Failing
// sequences shrink and print with the seed (PROP_SEED replays,
// PROP_ITER scales).
package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/leanovate/gopter"
	"github.com/leanovate/gopter/commands"
	"github.com/leanovate/gopter/gen"

	"dst/storage/meta"
	"dst/storage/nbd"
	"dst/storage/node"
)

const (
	modelMembers  = 2
	modelDiskSize = 512 << 10
	modelRegion   = 64 << 10
)

// modelState is what the model expects.
type modelState struct {
	size    int64
	data    []byte // what reads must return
	up      [modelMembers]bool
	state   [modelMembers]State // the engine's view: InSync, Failed, Suspended
	written [modelMembers]bool  // wrote since its last flush
	full    [modelMembers]bool  // must be copied whole when it rejoins
	wiped   [modelMembers]bool  // its media was replaced while it was down
	// expectOK is the model's prediction for the last command.
	expectOK bool
}

func (s *modelState) String() string {
	return fmt.Sprintf("{size %d, up %v, states %v, written %v, full %v}", s.size, s.up, s.state, s.written, s.full)
}

func (s *modelState) clone() *modelState {
	c := *s
	c.data = append([]byte(nil), s.data...)
	return &c
}

func (s *modelState) inSync(i int) bool { return s.state[i] == InSync }

// otherInSync reports whether a member other than i is in sync.
func (s *modelState) otherInSync(i int) bool {
	for j := range modelMembers {
		if j != i && s.inSync(j) {
			return true
		}
	}
	return false
}

// modelSUT is the system under test.
type modelSUT struct {
	t       testing.TB
	addrs   [modelMembers]string
	mems    [modelMembers]*node.Memory
	servers [modelMembers]*memberServer
	st      *Storage
}

type memberServer struct {
	srv    *nbd.Server
	cancel context.CancelFunc
	done   chan struct{}
}

func (m *modelSUT) startServer(i int) error {
	ln, err := net.Listen("tcp", m.addrs[i])
	if err != nil {
		return err
	}
	m.addrs[i] = ln.Addr().String()
	srv, err := nbd.NewServer(nbd.ServerOptions{Exports: []*nbd.Export{{Size: modelDiskSize, Flags: m.mems[i].Flags(), Backend: m.mems[i]}}})
	if err != nil {
		ln.Close()
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	ms := &memberServer{srv: srv, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(ms.done); _ = srv.Serve(ctx, ln) }()
	m.servers[i] = ms
	return nil
}

// restart starts member i's server again and waits for its node to
// reconnect (and verify the media), so what follows does not depend on the
// backoff's timing.
func (m *modelSUT) restart(i int) error {
	r := m.st.nodes[i].(*node.Remote)
	before := r.Metrics().Connects
	if err := m.startServer(i); err != nil {
		return err
	}
	for deadline := time.Now().Add(10 * time.Second); r.Metrics().Connects == before; {
		if time.Now().After(deadline) {
			return fmt.Errorf("restart %d: the node did not reconnect within 10s", i)
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

func (m *modelSUT) stopServer(i int) {
	ms := m.servers[i]
	if ms == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = ms.srv.Shutdown(ctx)
	ms.cancel()
	<-ms.done
	m.servers[i] = nil
}

var modelRemote = node.RemoteOptions{RequestTimeout: 300 * time.Millisecond, Retries: 1,
	BackoffMin: 2 * time.Millisecond, BackoffMax: 10 * time.Millisecond, PingInterval: -1, DialTimeout: time.Second}

func (m *modelSUT) assemble() error {
	spec := Spec{Kind: KindMirror}
	for i := range modelMembers {
		spec.Members = append(spec.Members, Spec{Kind: KindMember, URL: "nbd://" + m.addrs[i]})
	}
	st, err := Assemble(context.Background(), spec, AssembleOptions{
		Open: func(ctx context.Context, u string) (node.Node, error) {
			ro := modelRemote
			if os.Getenv("MODEL_DEBUG") != "" {
				ro.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
			}
			return node.Open(ctx, u, node.OpenOptions{Remote: ro, ConnectTimeout: 5 * time.Second})
		},
		RegionSize: modelRegion,
	})
	m.st = st
	return err
}

func (m *modelSUT) close() {
	if m.st != nil {
		m.st.e.Close()
		m.st.closeNodes()
		m.st = nil
	}
	for i := range modelMembers {
		m.stopServer(i)
	}
}

// pattern is the content write id puts at device offset off.
func pattern(id uint32, off int64) byte {
	x := uint64(id)*0x9e3779b97f4a7c15 ^ uint64(off)*0xbf58476d1ce4e5b9
	x ^= x >> 29
	return byte(x) | 1 // never zero, so a missed write is visible
}

// request is an I/O command; kind is one of write, read, flush, trim,
// zeroes.
type ioCmd struct {
	kind     string
	off, len int64
}

func (c *ioCmd) String() string { return fmt.Sprintf("%s(%d,+%d)", c.kind, c.off, c.len) }

func (c *ioCmd) PreCondition(commands.State) bool { return true }

type ioResult struct {
	err  error
	data []byte
	id   uint32
}

func (c *ioCmd) Run(sut commands.SystemUnderTest) commands.Result {
	m := sut.(*modelSUT)
	e := m.st.e
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	switch c.kind {
	case "write":
		id := uint32(rand.Uint32() | 1)
		p := make([]byte, c.len)
		for i := range p {
			p[i] = pattern(id, c.off+int64(i))
		}
		return &ioResult{err: e.WriteAt(ctx, p, c.off, 0), data: p}
	case "read":
		p := make([]byte, c.len)
		return &ioResult{err: e.ReadAt(ctx, p, c.off), data: p}
	case "flush":
		return &ioResult{err: e.Flush(ctx)}
	case "trim":
		return &ioResult{err: e.Trim(ctx, c.off, c.len, 0)}
	default:
		return &ioResult{err: e.WriteZeroes(ctx, c.off, c.len, 0)}
	}
}

// NextState predicts the engine: a write-like request goes to every
// in-sync member; a dead one among them drops out if another got the
// write, else the request fails and nothing changes.
func (c *ioCmd) NextState(st commands.State) commands.State {
	s := st.(*modelState).clone()
	s.expectOK = readSucceeds(s)
	switch c.kind {
	case "read":
		for i := range modelMembers { // reads try in-sync members in index order
			if !s.inSync(i) {
				continue
			}
			if s.up[i] {
				break
			}
			if s.otherInSync(i) {
				s.state[i] = Failed
			}
		}
	case "flush":
		s.expectOK = true
		flushed := s.state
		for i := range modelMembers {
			if !s.inSync(i) || !s.written[i] {
				continue
			}
			switch {
			case s.up[i]:
				s.written[i] = false
			case otherInSyncOf(flushed, i):
				s.state[i], s.full[i], s.written[i] = Failed, true, false
			default:
				s.expectOK = false
			}
		}
	default:
		if !c.writeSucceeds(s) {
			s.expectOK = false
			return s
		}
		for i := range modelMembers {
			if s.inSync(i) && !s.up[i] {
				s.state[i] = Failed
			} else if s.inSync(i) {
				s.written[i] = true
			}
		}
		if c.kind != "write" {
			clear(s.data[c.off : c.off+c.len]) // memory disks read trimmed bytes as zeroes
		}
		// Write content is known only after Run; PostCondition checks it.
	}
	return s
}

func (c *ioCmd) writeSucceeds(s *modelState) bool {
	for i := range modelMembers {
		if s.inSync(i) && s.up[i] {
			return true
		}
	}
	return false
}

// otherInSyncOf reports whether a member other than i is in sync in states.
func otherInSyncOf(states [modelMembers]State, i int) bool {
	for j := range modelMembers {
		if j != i && states[j] == InSync {
			return true
		}
	}
	return false
}

// readSucceeds: some in-sync member is up.
func readSucceeds(s *modelState) bool {
	for i := range modelMembers {
		if s.inSync(i) && s.up[i] {
			return true
		}
	}
	return false
}

func (c *ioCmd) PostCondition(st commands.State, res commands.Result) *gopter.PropResult {
	s := st.(*modelState)
	r := res.(*ioResult)
	fail := func(format string, a ...any) *gopter.PropResult {
		return &gopter.PropResult{Status: gopter.PropFalse, Error: fmt.Errorf(format, a...)}
	}
	if s.expectOK != (r.err == nil) {
		return fail("%v: model expects success=%v, got err=%v (states %v, up %v)", c, s.expectOK, r.err, s.state, s.up)
	}
	if c.kind == "write" && r.err == nil {
		copy(s.data[c.off:], r.data) // content is known only now; NextState already ran
	}
	if c.kind == "read" && r.err == nil && !bytes.Equal(r.data, s.data[c.off:c.off+c.len]) {
		at := firstDiff(r.data, s.data[c.off:c.off+c.len])
		return fail("%v: byte %d (device offset %d) is %#x, want %#x", c, at, c.off+int64(at), r.data[at], s.data[c.off+int64(at)])
	}
	return &gopter.PropResult{Status: gopter.PropTrue}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// memberCmd changes a member: kill, restart, replace, suspend, resume.
type memberCmd struct {
	kind string
	i    int
}

func (c *memberCmd) String() string { return fmt.Sprintf("%s(%d)", c.kind, c.i) }

func (c *memberCmd) PreCondition(st commands.State) bool {
	s := st.(*modelState)
	switch c.kind {
	case "kill":
		// With another member's media wiped, losing this one too is a
		// double failure, outside what a mirror of two promises.
		for j := range modelMembers {
			if j != c.i && s.wiped[j] {
				return false
			}
		}
		return s.up[c.i]
	case "restart":
		return !s.up[c.i]
	case "replace":
		// Wiping the only in-sync copy is a double failure: data is gone.
		return !s.up[c.i] && s.otherInSync(c.i)
	}
	return true
}

func (c *memberCmd) Run(sut commands.SystemUnderTest) commands.Result {
	m := sut.(*modelSUT)
	switch c.kind {
	case "kill":
		m.stopServer(c.i)
	case "restart":
		return m.restart(c.i)
	case "replace":
		m.mems[c.i] = node.NewMemory(modelDiskSize)
	case "suspend":
		return m.st.e.Suspend(c.i)
	case "resume":
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return m.st.e.Resume(ctx, c.i)
	}
	return nil
}

func (c *memberCmd) NextState(st commands.State) commands.State {
	s := st.(*modelState).clone()
	switch c.kind {
	case "kill":
		s.up[c.i] = false
	case "restart":
		s.up[c.i] = true
		if s.wiped[c.i] && s.state[c.i] != Suspended {
			// The reconnect finds other media: the member leaves service.
			s.state[c.i], s.written[c.i] = Failed, false
		}
		s.wiped[c.i] = false
	case "replace":
		s.full[c.i], s.wiped[c.i] = true, true
	case "suspend":
		if s.otherInSync(c.i) && s.state[c.i] != Suspended {
			s.state[c.i] = Suspended
		}
	case "resume":
		if c.resumes(s) {
			s.state[c.i], s.full[c.i] = InSync, false
			s.written[c.i] = true
		}
	}
	return s
}

// resumes: a failed or suspended member rejoins when it is up and an
// in-sync member to copy from is up.
func (c *memberCmd) resumes(s *modelState) bool {
	if s.state[c.i] == InSync || !s.up[c.i] {
		return false
	}
	for j := range modelMembers {
		if j != c.i && s.inSync(j) && s.up[j] {
			return true
		}
	}
	return false
}

func (c *memberCmd) PostCondition(st commands.State, res commands.Result) *gopter.PropResult {
	s := st.(*modelState)
	err, _ := res.(error)
	switch c.kind {
	case "restart":
		if err != nil {
			return &gopter.PropResult{Status: gopter.PropFalse, Error: fmt.Errorf("restart: %w", err)}
		}
	case "resume":
		if s.state[c.i] == InSync && err != nil && !errors.Is(err, ErrBusy) {
			return &gopter.PropResult{Status: gopter.PropFalse, Error: fmt.Errorf("%v: %w", c, err)}
		}
	}
	return &gopter.PropResult{Status: gopter.PropTrue}
}

// settleCmd restarts every member, resyncs everything and checks that the
// members' data areas equal the model.
type settleCmd struct{ crash bool }

func (c *settleCmd) String() string {
	if c.crash {
		return "crash-engine-and-settle"
	}
	return "settle"
}

func (c *settleCmd) PreCondition(commands.State) bool { return true }

func (c *settleCmd) Run(sut commands.SystemUnderTest) commands.Result {
	m := sut.(*modelSUT)
	for i := range modelMembers {
		if m.servers[i] == nil {
			if err := m.restart(i); err != nil {
				return err
			}
		}
	}
	if c.crash {
		m.st.e.Close() // no clean shutdown: superblocks say unclean
		m.st.closeNodes()
		m.st = nil
		if err := m.assemble(); err != nil {
			return fmt.Errorf("re-assemble: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range modelMembers {
		if s := m.st.e.members[i].State(); s == Failed || s == Suspended {
			full := false
			if s == Failed {
				_, full = m.st.probe(ctx, i)
			}
			if err := m.st.e.Rejoin(ctx, i, full, nil); err != nil {
				return fmt.Errorf("rejoin %d: %w", i, err)
			}
		}
	}
	out := make([][]byte, modelMembers)
	for i := range modelMembers {
		out[i] = m.mems[i].Bytes(int(m.st.DataOffset(i)), int(m.st.e.Size()))
	}
	return out
}

func (c *settleCmd) NextState(st commands.State) commands.State {
	s := st.(*modelState).clone()
	source := -1 // after a crash, the lowest in-sync member serves; the rest are recopied
	for i := range modelMembers {
		if s.inSync(i) && source < 0 {
			source = i
		}
	}
	for i := range modelMembers {
		if c.crash {
			s.written[i] = i != source
		} else if !s.inSync(i) {
			s.written[i] = true // the resync wrote it
		}
		s.up[i], s.state[i], s.full[i], s.wiped[i] = true, InSync, false, false
	}
	return s
}

func (c *settleCmd) PostCondition(st commands.State, res commands.Result) *gopter.PropResult {
	s := st.(*modelState)
	out, ok := res.([][]byte)
	if !ok {
		return &gopter.PropResult{Status: gopter.PropFalse, Error: fmt.Errorf("%v: %v", c, res)}
	}
	for i, d := range out {
		if !bytes.Equal(d, s.data) {
			at := firstDiff(d, s.data)
			return &gopter.PropResult{Status: gopter.PropFalse,
				Error: fmt.Errorf("%v: member %d data byte %d is %#x, want %#x", c, i, at, d[at], s.data[at])}
		}
	}
	return &gopter.PropResult{Status: gopter.PropTrue}
}

// genOffLen draws requests around page and region boundaries and the end.
func genOffLen(size int64) gopter.Gen {
	anchors := []int64{0, 4096, modelRegion, 2*modelRegion + 4096, size / 2, size - 4096, size}
	lengths := []int64{1, 511, 512, 513, 4095, 4096, 4097, modelRegion, modelRegion + 1, 3 * modelRegion}
	return gopter.CombineGens(gen.IntRange(0, len(anchors)-1), gen.Int64Range(-8200, 8200), gen.IntRange(0, len(lengths)-1)).
		Map(func(v []any) [2]int64 {
			off := min(max(anchors[v[0].(int)]+v[1].(int64), 0), size-1)
			n := min(lengths[v[2].(int)], size-off)
			return [2]int64{off, n}
		})
}

func modelCommands(t testing.TB) *commands.ProtoCommands {
	return &commands.ProtoCommands{
		NewSystemUnderTestFunc: func(commands.State) commands.SystemUnderTest {
			m := &modelSUT{t: t}
			for i := range modelMembers {
				m.mems[i] = node.NewMemory(modelDiskSize)
				m.addrs[i] = "127.0.0.1:0"
				if err := m.startServer(i); err != nil {
					t.Fatal(err)
				}
			}
			if err := m.assemble(); err != nil {
				t.Fatal(err)
			}
			return m
		},
		DestroySystemUnderTestFunc: func(sut commands.SystemUnderTest) { sut.(*modelSUT).close() },
		InitialStateGen: gen.Const(0).Map(func(int) *modelState {
			a, err := meta.Plan(modelDiskSize, modelRegion)
			if err != nil {
				panic(err)
			}
			s := &modelState{size: a.DataSize, data: make([]byte, a.DataSize)}
			for i := range modelMembers {
				s.up[i] = true
			}
			return s
		}),
		InitialPreConditionFunc: func(commands.State) bool { return true },
		GenCommandFunc: func(st commands.State) gopter.Gen {
			s := st.(*modelState)
			io := func(kind string) gopter.Gen {
				return genOffLen(s.size).Map(func(v [2]int64) commands.Command { return &ioCmd{kind: kind, off: v[0], len: v[1]} })
			}
			member := func(kind string) gopter.Gen {
				return gen.IntRange(0, modelMembers-1).Map(func(i int) commands.Command { return &memberCmd{kind: kind, i: i} })
			}
			return gen.Weighted([]gen.WeightedGen{
				{Weight: 30, Gen: io("write")},
				{Weight: 25, Gen: io("read")},
				{Weight: 6, Gen: io("flush")},
				{Weight: 4, Gen: io("trim")},
				{Weight: 4, Gen: io("zeroes")},
				{Weight: 6, Gen: member("kill")},
				{Weight: 6, Gen: member("restart")},
				{Weight: 2, Gen: member("replace")},
				{Weight: 3, Gen: member("suspend")},
				{Weight: 3, Gen: member("resume")},
				{Weight: 3, Gen: gen.Const(commands.Command(&settleCmd{}))},
				{Weight: 2, Gen: gen.Const(commands.Command(&settleCmd{crash: true}))},
			})
		},
	}
}

func TestModelMirror(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the model test runs real NBD servers")
	}
	params := gopter.DefaultTestParameters()
	params.MinSuccessfulTests = 8
	if v, err := strconv.Atoi(os.Getenv("PROP_ITER")); err == nil && v > 0 {
		params.MinSuccessfulTests = max(1, v/20)
	}
	params.Rng.Seed(time.Now().UnixNano())
	seed := time.Now().UnixNano()
	if v, err := strconv.ParseInt(os.Getenv("PROP_SEED"), 10, 64); err == nil {
		seed = v
	}
	params.Rng.Seed(seed)
	params.MaxShrinkCount = 200
	t.Logf("seed %d (replay: make prop SEED=%d), %d sequences", seed, seed, params.MinSuccessfulTests)
	props := gopter.NewProperties(params)
	props.Property("the engine behaves like the model", commands.Prop(modelCommands(t)))
	props.TestingRun(t)
}

// runSequence runs fixed commands against the model, for regressions the
// property found (commands replay).
func runSequence(t *testing.T, cmds ...commands.Command) {
	t.Helper()
	pc := modelCommands(t)
	sut := pc.NewSystemUnderTest(nil)
	defer pc.DestroySystemUnderTest(sut)
	st, _ := pc.GenInitialState().Sample()
	state := st.(commands.State)
	for _, c := range cmds {
		if !c.PreCondition(state) {
			t.Fatalf("%v: precondition does not hold in %v", c, state)
		}
		res := c.Run(sut)
		state = c.NextState(state)
		if r := c.PostCondition(state, res); !r.Success() {
			t.Fatalf("%v: %v", c, r.Error)
		}
	}
}

// A member killed, given blank media and restarted before any request
// reached it must not serve reads of data it never had.
func TestModelReplacedMediaUnnoticed(t *testing.T) {
	runSequence(t, &ioCmd{kind: "write", off: 0, len: 4096}, &memberCmd{kind: "kill", i: 0},
		&memberCmd{kind: "replace", i: 0}, &memberCmd{kind: "restart", i: 0},
		&ioCmd{kind: "read", off: 0, len: 4096}, &settleCmd{})
}

func TestModelSuspendedMemberAcrossCrash(t *testing.T) {
	runSequence(t, &memberCmd{kind: "suspend", i: 0}, &memberCmd{kind: "kill", i: 1},
		&ioCmd{kind: "trim", off: 509093, len: 2907}, &memberCmd{kind: "restart", i: 1},
		&ioCmd{kind: "write", off: 507435, len: 4565}, &settleCmd{crash: true})
}

func TestModelReplacedThenSettle(t *testing.T) {
	runSequence(t, &ioCmd{kind: "write", off: 1830, len: 196608}, &memberCmd{kind: "kill", i: 0},
		&memberCmd{kind: "replace", i: 0}, &settleCmd{})
}

func TestModelSuspendedKilledSettle(t *testing.T) {
	runSequence(t, &memberCmd{kind: "suspend", i: 1}, &memberCmd{kind: "kill", i: 1}, &settleCmd{})
}
