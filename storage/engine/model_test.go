// The engine against a model (gopter commands): mirror, linear and stripe
// storages of memory disks behind real NBD servers, each reached by
// node.Remote through an NBD fault proxy on loopback, take generated
// sequences of writes, reads, flushes, trims and write-zeroes anchored on
// page, region and member boundaries (odd member sizes and an odd stripe
// chunk put boundaries inside pages), interleaved with killing and
// restarting member servers, hanging, cutting and healing their links,
// replacing media, suspending and resuming members, crashing and
// re-assembling the engine, adding a replica online (copied whole) and
// removing it again, with a crash at any step of the add or of the
// removal, and resync; the model predicts which requests succeed (a
// mirror serves while a replica is gone, a linear or stripe range fails
// exactly when a member it touches is gone), what every read returns and
// each member's state, and members must hold the model's bytes after heal
// and settle. A failing sequence shrinks, is logged with the replay line
// (internal/proptest) and is saved under testdata/model-failures, where
// TestModelSavedFailures replays it.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leanovate/gopter"
	"github.com/leanovate/gopter/commands"
	"github.com/leanovate/gopter/gen"

	"dst/internal/proptest"
	"dst/storage/meta"
	"dst/storage/nbd"
	"dst/storage/nbd/nbdproxy"
	"dst/storage/node"
	"dst/storage/spec"
)

const modelRegion = 64 << 10

// modelActivityRegions bounds the model mirror's activity log (of 8
// regions).
const modelActivityRegions = 4

// modelGeometry is a storage the model runs on: its layout kind, the raw
// size of each member and, derived without the engine, where every device
// byte lives.
type modelGeometry struct {
	name  string
	kind  spec.Kind
	raw   []int64
	chunk int64 // stripe only

	areas    []meta.Area
	size     int64
	starts   []int64 // linear: device offset of each member's first byte
	perChild int64   // stripe: bytes of each member in use
}

// modelGeometries are the storages the model runs on. Linear and stripe
// members have odd data sizes and the stripe an odd chunk, so member and
// chunk boundaries fall inside pages.
var modelGeometries = map[string]*modelGeometry{
	"mirror": newGeometry("mirror", spec.KindMirror, 0, 512<<10, 512<<10),
	"linear": newGeometry("linear", spec.KindLinear, 0, 200003, 151557, 180225),
	"stripe": newGeometry("stripe", spec.KindStripe, 12289, 190003, 170001, 181237),
}

func newGeometry(name string, kind spec.Kind, chunk int64, raw ...int64) *modelGeometry {
	g := &modelGeometry{name: name, kind: kind, raw: raw, chunk: chunk}
	g.starts = []int64{0}
	for i, r := range raw {
		a, err := meta.Plan(r, modelRegion)
		if err != nil {
			panic(err)
		}
		g.areas = append(g.areas, a)
		g.starts = append(g.starts, g.starts[i]+a.DataSize)
		if i == 0 || a.DataSize < g.perChild {
			g.perChild = a.DataSize
		}
	}
	switch kind {
	case spec.KindMirror:
		g.size = g.perChild
	case spec.KindLinear:
		g.size = g.starts[len(raw)]
	case spec.KindStripe:
		g.perChild = g.perChild / chunk * chunk
		g.size = int64(len(raw)) * g.perChild
	}
	return g
}

func (g *modelGeometry) members() int { return len(g.raw) }

// piece is a run of device bytes held by one member at a data-area offset.
type piece struct {
	member         int
	memOff, devOff int64
	n              int64
}

// pieces returns where [off, off+n) lives: on every member for a mirror,
// on consecutive members for linear, chunk by chunk round robin for stripe.
func (g *modelGeometry) pieces(off, n int64) []piece {
	var out []piece
	end := off + n
	switch g.kind {
	case spec.KindMirror:
		for i := range g.raw {
			out = append(out, piece{i, off, off, n})
		}
	case spec.KindLinear:
		for i := range g.raw {
			b, e := max(off, g.starts[i]), min(end, g.starts[i+1])
			if b < e {
				out = append(out, piece{i, b - g.starts[i], b, e - b})
			}
		}
	case spec.KindStripe:
		for b := off; b < end; {
			k, within := b/g.chunk, b%g.chunk
			l := min(g.chunk-within, end-b)
			nm := int64(len(g.raw))
			out = append(out, piece{int(k % nm), (k/nm)*g.chunk + within, b, l})
			b += l
		}
	}
	return out
}

// anchors are the offsets requests are drawn around: the ends, pages,
// regions, member and chunk boundaries.
func (g *modelGeometry) anchors() []int64 {
	a := []int64{0, 4096, modelRegion, 2*modelRegion + 4096, g.size / 2, g.size - 4096, g.size}
	switch g.kind {
	case spec.KindLinear:
		a = append(a, g.starts[1:len(g.raw)]...)
	case spec.KindStripe:
		for k := int64(1); k <= 2*int64(len(g.raw))+1; k++ {
			a = append(a, k*g.chunk)
		}
		a = append(a, g.size-g.chunk)
	}
	return a
}

// genOffLen draws requests around the anchors.
func (g *modelGeometry) genOffLen() gopter.Gen {
	anchors := g.anchors()
	lengths := []int64{1, 511, 512, 513, 4095, 4096, 4097, modelRegion, modelRegion + 1, 3 * modelRegion}
	return gopter.CombineGens(gen.IntRange(0, len(anchors)-1), gen.Int64Range(-8200, 8200), gen.IntRange(0, len(lengths)-1)).
		Map(func(v []any) [2]int64 {
			off := min(max(anchors[v[0].(int)]+v[1].(int64), 0), g.size-1)
			n := min(lengths[v[2].(int)], g.size-off)
			return [2]int64{off, n}
		})
}

// modelSUT is the system under test: per member a memory disk, the NBD
// server exporting it and the fault proxy in front of it.
type modelSUT struct {
	t       testing.TB
	g       *modelGeometry
	addrs   []string
	mems    []*node.Memory
	servers []*memberServer
	proxies []*nbdproxy.Proxy
	proxyWG []chan error
	down    []bool // the link is hung or cut
	// connected[i] is signalled when member i's node installs a connection.
	connected []chan struct{}
	st        *Storage
	// spare is the medium grow adds as a third replica.
	spare *node.Memory
	// plant, if set, wraps member i's node: a deliberate bug.
	plant func(i int, n node.Node) node.Node
	// boots, if set, are the boot ids member servers report (startServer);
	// "" or missing: the kernel's.
	boots []string
	// dying, while set, lets budget more state-changing operations reach
	// the members and drops the rest unseen: the engine dies (crashwrite).
	dying  atomic.Bool
	budget atomic.Int64

	// ran are the commands run so far, failed whether a postcondition
	// failed, busy whether a command is running (it panicked if still set
	// when the SUT is destroyed).
	ran []*modelCmd
	// lastRejoinErr is the error of the rejoin a heal ran.
	lastRejoinErr error
	failed        bool
	errMsg        string
	busy          bool
}

// gate is a member's media as its server sees it: while the SUT is dying,
// state-changing operations beyond the budget are dropped.
type gate struct {
	*node.Memory
	m *modelSUT
}

var errEngineDied = errors.New("model: the engine died before this operation")

func (g gate) pass() error {
	if g.m.dying.Load() && g.m.budget.Add(-1) < 0 {
		return errEngineDied
	}
	return nil
}

func (g gate) WriteAt(ctx context.Context, p []byte, off int64, flags nbd.CmdFlags) error {
	if err := g.pass(); err != nil {
		return err
	}
	return g.Memory.WriteAt(ctx, p, off, flags)
}

func (g gate) Trim(ctx context.Context, off, length int64, flags nbd.CmdFlags) error {
	if err := g.pass(); err != nil {
		return err
	}
	return g.Memory.Trim(ctx, off, length, flags)
}

func (g gate) WriteZeroes(ctx context.Context, off, length int64, flags nbd.CmdFlags) error {
	if err := g.pass(); err != nil {
		return err
	}
	return g.Memory.WriteZeroes(ctx, off, length, flags)
}

type memberServer struct {
	srv    *nbd.Server
	cancel context.CancelFunc
	done   chan struct{}
}

func newModelSUT(t testing.TB, g *modelGeometry, plant func(int, node.Node) node.Node) (*modelSUT, error) {
	n := g.members()
	m := &modelSUT{t: t, g: g, plant: plant, addrs: make([]string, n), mems: make([]*node.Memory, n),
		servers: make([]*memberServer, n), proxies: make([]*nbdproxy.Proxy, n), proxyWG: make([]chan error, n),
		down: make([]bool, n), connected: make([]chan struct{}, n)}
	for i := range n {
		m.connected[i] = make(chan struct{}, 1)
		m.mems[i] = node.NewMemory(int(g.raw[i]))
		m.addrs[i] = "127.0.0.1:0"
		if err := m.startServer(i); err != nil {
			m.close()
			return nil, err
		}
		p, err := nbdproxy.New("tcp", m.addrs[i], nbdproxy.Options{DialTimeout: time.Second})
		if err != nil {
			m.close()
			return nil, err
		}
		m.proxies[i], m.proxyWG[i] = p, make(chan error, 1)
		go func() { m.proxyWG[i] <- p.Run(context.Background()) }()
	}
	if err := m.assemble(); err != nil {
		m.close()
		return nil, err
	}
	return m, nil
}

func (m *modelSUT) startServer(i int) error {
	ln, err := net.Listen("tcp", m.addrs[i])
	if err != nil {
		return err
	}
	m.addrs[i] = ln.Addr().String()
	var boot string
	if i < len(m.boots) {
		boot = m.boots[i]
	}
	srv, err := nbd.NewServer(nbd.ServerOptions{Exports: []*nbd.Export{{Size: m.g.raw[i], Flags: m.mems[i].Flags(), Backend: gate{m.mems[i], m}}},
		BootID: boot})
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

// expectConnect forgets earlier connections of member i's node; call it
// before the event that makes the node reconnect, then waitConnect.
func (m *modelSUT) expectConnect(i int) {
	select {
	case <-m.connected[i]:
	default:
	}
}

// waitConnect waits until member i's node installed a connection after
// expectConnect, so what follows does not depend on the backoff's timing.
func (m *modelSUT) waitConnect(i int) error {
	select {
	case <-m.connected[i]:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("member %d: the node did not reconnect within 10s", i)
	}
}

// modelRemote: requests fail fast enough (a try 300 ms, one resend, a
// 150 ms budget once sendable) that a gone member costs little, and a
// healthy one on a loaded machine is far from the limits.
var modelRemote = node.RemoteOptions{RequestTimeout: 300 * time.Millisecond, Retries: 1, Budget: 150 * time.Millisecond,
	BackoffMin: 2 * time.Millisecond, BackoffMax: 10 * time.Millisecond, PingInterval: -1, DialTimeout: time.Second}

func (m *modelSUT) assemble() error {
	tree := spec.Tree{Kind: m.g.kind, Chunk: m.g.chunk}
	index := map[string]int{}
	for i := range m.g.raw {
		u := "nbd://" + m.proxies[i].Addr()
		index[u] = i
		tree.Members = append(tree.Members, spec.Member(u))
	}
	st, err := Assemble(context.Background(), tree, AssembleOptions{
		Open: func(ctx context.Context, u string) (node.Node, error) {
			if u == modelSpareURL {
				return kept{m.spare}, nil
			}
			i := index[u]
			ro := modelRemote
			ro.OnState = func(s node.State, _ error) {
				if s == node.StateConnected {
					select {
					case m.connected[i] <- struct{}{}:
					default:
					}
				}
			}
			if os.Getenv("MODEL_DEBUG") != "" {
				ro.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
			}
			n, err := node.Open(ctx, u, node.OpenOptions{Remote: ro, ConnectTimeout: 5 * time.Second})
			if err != nil {
				return nil, err
			}
			if m.plant != nil {
				n = m.plant(i, n)
			}
			return n, nil
		},
		RegionSize: modelRegion,
		// A small log that only pressure and settle clear, so crashes find
		// it full and the clearer runs under the model's requests.
		Engine: Options{ActivityRegions: modelActivityRegions, ActivityQuiet: time.Hour},
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
	for i := range m.servers {
		m.stopServer(i)
	}
	for i, p := range m.proxies {
		if p != nil {
			p.Close()
			if err := <-m.proxyWG[i]; err != nil {
				m.t.Errorf("proxy %d: %v", i, err)
			}
		}
	}
}

// modelRun configures one run of the model.
type modelRun struct {
	g *modelGeometry
	// plant wraps member nodes with a deliberate bug; nil for the engine
	// as it is.
	plant func(i int, n node.Node) node.Node
	// onFail receives the commands of every sequence that failed, in the
	// order gopter ran them: the last one is the shrunk sequence.
	onFail func(cmds []*modelCmd, msg string)
}

// modelWeights are the command weights for the geometry: media
// replacement and suspension exist only where a replica stands in.
func modelWeights(g *modelGeometry) map[string]int {
	w := map[string]int{"write": 30, "read": 25, "flush": 6, "trim": 4, "zeroes": 4,
		"kill": 4, "restart": 6, "hang": 2, "cut": 2, "heal": 5, "settle": 3, "crash": 2}
	if g.kind == spec.KindMirror {
		w["replace"], w["suspend"], w["resume"], w["crashwrite"] = 2, 3, 3, 3
		w["grow"], w["growcrash"], w["shrinkcrash"] = 2, 2, 2
	}
	return w
}

func (r modelRun) commands(t testing.TB) *commands.ProtoCommands {
	g := r.g
	weights := modelWeights(g)
	return &commands.ProtoCommands{
		NewSystemUnderTestFunc: func(commands.State) commands.SystemUnderTest {
			m, err := newModelSUT(t, g, r.plant)
			if err != nil {
				t.Fatal(err)
			}
			return m
		},
		DestroySystemUnderTestFunc: func(sut commands.SystemUnderTest) {
			m := sut.(*modelSUT)
			m.close()
			if m.busy { // a command panicked: gopter reports it as a failure
				m.failed, m.errMsg = true, fmt.Sprintf("%v panicked", m.ran[len(m.ran)-1])
			}
			if m.failed && r.onFail != nil {
				r.onFail(m.ran, m.errMsg)
			}
		},
		InitialStateGen:         gen.Const(0).Map(func(int) *modelState { return newModelState(g) }),
		InitialPreConditionFunc: func(commands.State) bool { return true },
		GenCommandFunc: func(st commands.State) gopter.Gen {
			var ws []gen.WeightedGen
			for _, op := range modelOps {
				w := weights[op]
				if w == 0 {
					continue
				}
				var gn gopter.Gen
				switch opClass(op) {
				case classIO:
					if op == "flush" {
						gn = gen.Const(commands.Command(&modelCmd{Op: op}))
						break
					}
					gn = g.genOffLen().Map(func(v [2]int64) commands.Command { return &modelCmd{Op: op, Off: v[0], Len: v[1]} })
				case classMember, classLink:
					gn = gen.IntRange(0, g.members()-1).Map(func(i int) commands.Command { return &modelCmd{Op: op, Member: i} })
				case classSettle:
					if op == "growcrash" || op == "shrinkcrash" {
						// Through the clean stop's flushes and page writes
						// and the new membership's superblock writes.
						gn = gen.IntRange(0, 12).Map(func(n int) commands.Command { return &modelCmd{Op: op, Ops: n} })
						break
					}
					if op == "crashwrite" {
						// Up to 7 operations: two mark pages, two data
						// writes and what the clearer does between them.
						gn = gopter.CombineGens(g.genOffLen(), gen.IntRange(0, 7)).Map(func(v []any) commands.Command {
							ol := v[0].([2]int64)
							return &modelCmd{Op: op, Off: ol[0], Len: ol[1], Ops: v[1].(int)}
						})
						break
					}
					gn = gen.Const(commands.Command(&modelCmd{Op: op}))
				default:
					gn = gen.Const(commands.Command(&modelCmd{Op: op}))
				}
				ws = append(ws, gen.WeightedGen{Weight: w, Gen: gn})
			}
			return gen.Weighted(ws)
		},
	}
}

// modelSequences is how many command sequences a property checks by
// default, per geometry; PROP_ITER multiplies it.
var modelSequences = map[string]int{"mirror": 8, "linear": 4, "stripe": 4}

// checkModel runs the property for geometry name and saves the shrunk
// failing sequence.
func checkModel(t *testing.T, name string) {
	if testing.Short() {
		t.Skip("-short: the model test runs real NBD servers")
	}
	g := modelGeometries[name]
	params := proptest.Params(t, modelSequences[name])
	params.MaxShrinkCount = 200
	var last []*modelCmd
	var lastMsg string
	run := modelRun{g: g, onFail: func(cmds []*modelCmd, msg string) { last, lastMsg = cmds, msg }}
	props := gopter.NewProperties(params)
	props.Property(name+": the engine behaves like the model", commands.Prop(run.commands(t)))
	props.TestingRun(t)
	if t.Failed() && last != nil {
		t.Logf("the shrunk sequence failed with: %s", lastMsg)
		path, err := saveFailure(modelFailuresDir, savedFailure{Layout: name, Seed: params.Seed(), Replay: proptest.ReplayLine(params.Seed()),
			Error: lastMsg, Steps: last})
		if err != nil {
			t.Errorf("saving the shrunk sequence: %v", err)
			return
		}
		t.Logf("shrunk sequence saved to %s: commit it and TestModelSavedFailures replays it", path)
	}
}

func TestModelMirror(t *testing.T) { checkModel(t, "mirror") }
func TestModelLinear(t *testing.T) { checkModel(t, "linear") }
func TestModelStripe(t *testing.T) { checkModel(t, "stripe") }

// runSequence runs fixed commands against the model and returns the first
// postcondition that failed ("" if none).
func runSequence(t testing.TB, run modelRun, cmds []*modelCmd) string {
	t.Helper()
	pc := run.commands(t)
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
			return r.Error.Error() // it names the command
		}
	}
	return ""
}
