// The model's commands (see model_test.go): one serialisable command type
// whose Op picks I/O, member, link or settle behaviour, so a shrunk
// sequence saves as JSON and replays; Run drives the engine, servers and
// proxies, PostCondition checks what Run saw against the model's
// prediction (model_state_test.go).
package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/leanovate/gopter"
	"github.com/leanovate/gopter/commands"

	"dst/storage/nbd"
	"dst/storage/node"
	"dst/storage/spec"
)

// Ops and their classes.
const (
	classIO = iota
	classMember
	classLink
	classSettle
)

var modelOps = []string{"write", "read", "flush", "trim", "zeroes", "kill", "restart", "replace", "suspend", "resume",
	"hang", "cut", "heal", "settle", "crash", "crashwrite", "grow", "growcrash", "shrinkcrash"}

func opClass(op string) int {
	switch op {
	case "write", "read", "flush", "trim", "zeroes":
		return classIO
	case "kill", "restart", "replace", "suspend", "resume":
		return classMember
	case "hang", "cut", "heal":
		return classLink
	case "settle", "crash", "crashwrite", "grow", "growcrash", "shrinkcrash":
		return classSettle
	}
	panic(fmt.Sprintf("model: unknown op %q", op))
}

// modelCmd is one command; it is what a saved failure holds.
type modelCmd struct {
	Op     string `json:"op"`
	Member int    `json:"member,omitempty"`
	Off    int64  `json:"off,omitempty"`
	Len    int64  `json:"len,omitempty"`
	// Ops is how many state-changing node operations (writes, trims,
	// write-zeroes, of any member) a crashwrite lets through before the
	// engine dies.
	Ops int `json:"ops,omitempty"`
}

func (c *modelCmd) String() string {
	switch opClass(c.Op) {
	case classIO:
		if c.Op == "flush" {
			return "flush"
		}
		return fmt.Sprintf("%s(%d,+%d)", c.Op, c.Off, c.Len)
	case classSettle:
		switch c.Op {
		case "crash":
			return "crash-engine-and-settle"
		case "crashwrite":
			return fmt.Sprintf("crash-during-write(%d,+%d,after %d ops)-and-settle", c.Off, c.Len, c.Ops)
		case "grow":
			return "settle-add-a-replica-online-copy-and-remove-it"
		case "growcrash":
			return fmt.Sprintf("settle-add-a-replica-online-crash(after %d ops)-and-settle", c.Ops)
		case "shrinkcrash":
			return fmt.Sprintf("settle-add-a-replica-online-copy-remove-it-crash(after %d ops)-and-settle", c.Ops)
		}
		return c.Op
	}
	return fmt.Sprintf("%s(%d)", c.Op, c.Member)
}

// cmdResult is what Run observed.
type cmdResult struct {
	sut     *modelSUT
	err     error
	data    []byte   // write: what was written; read: what was read
	states  []State  // the engine's member states after the command
	members [][]byte // heal, settle: every member's data area
	// rejoinErr is what the rejoin after a heal returned.
	rejoinErr error
	// crashwrite: what the device holds in the write's range after the
	// settle; crash, crashwrite: the regions the crash resync marked per
	// member, and the members it copied whole.
	read        []byte
	crashMarked map[int][]int
	crashFull   int
}

func (c *modelCmd) PreCondition(st commands.State) bool {
	s := st.(*modelState)
	if c.Member < 0 || c.Member >= s.g.members() {
		return false
	}
	i := c.Member
	// With a member's media wiped, losing another too is a double
	// failure, outside what a mirror of two promises.
	otherWiped := s.other(i, func(j int) bool { return s.wiped[j] })
	switch c.Op {
	case "kill":
		return s.server[i] && !otherWiped
	case "restart":
		return !s.server[i]
	case "replace":
		// Wiping the only in-sync copy is a double failure: data is gone.
		return s.mirror() && !s.server[i] && s.otherInSync(i)
	case "suspend", "resume":
		return s.mirror()
	case "hang", "cut":
		return s.link[i] == linkUp && !otherWiped
	case "heal":
		return s.link[i] != linkUp
	}
	return true
}

func (c *modelCmd) Run(sut commands.SystemUnderTest) commands.Result {
	m := sut.(*modelSUT)
	m.ran = append(m.ran, c)
	m.busy = true
	r := &cmdResult{sut: m}
	switch opClass(c.Op) {
	case classIO:
		c.runIO(m, r)
	case classMember, classLink:
		m.lastRejoinErr = nil
		r.err = c.runMember(m)
		r.rejoinErr = m.lastRejoinErr
	default:
		r.err = c.runSettle(m, r, false)
	}
	if r.err == nil && c.grows() {
		r.err = c.runGrow(m, r)
	}
	if m.st != nil {
		for _, mb := range m.st.e.members {
			r.states = append(r.states, mb.State())
		}
	}
	if c.Op == "heal" || opClass(c.Op) == classSettle {
		for i := range m.mems {
			a := m.g.areas[i]
			r.members = append(r.members, m.mems[i].Bytes(int(a.DataOffset), int(a.DataSize)))
		}
	}
	m.busy = false
	return r
}

// pattern is the content write id puts at device offset off.
func pattern(id uint32, off int64) byte {
	x := uint64(id)*0x9e3779b97f4a7c15 ^ uint64(off)*0xbf58476d1ce4e5b9
	x ^= x >> 29
	return byte(x) | 1 // never zero, so a missed write is visible
}

func (c *modelCmd) runIO(m *modelSUT, r *cmdResult) {
	e := m.st.e
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	switch c.Op {
	case "write":
		id := rand.Uint32() | 1
		r.data = make([]byte, c.Len)
		for i := range r.data {
			r.data[i] = pattern(id, c.Off+int64(i))
		}
		r.err = e.WriteAt(ctx, r.data, c.Off, 0)
	case "read":
		r.data = make([]byte, c.Len)
		r.err = e.ReadAt(ctx, r.data, c.Off)
	case "flush":
		r.err = e.Flush(ctx)
	case "trim":
		r.err = e.Trim(ctx, c.Off, c.Len, 0)
	default:
		r.err = e.WriteZeroes(ctx, c.Off, c.Len, 0)
	}
}

func (c *modelCmd) runMember(m *modelSUT) error {
	i := c.Member
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p := m.proxies[i]
	switch c.Op {
	case "kill":
		m.stopServer(i)
	case "restart":
		m.expectConnect(i)
		if err := m.startServer(i); err != nil {
			return err
		}
		if !m.linkDown(i) {
			return m.waitConnect(i)
		}
	case "replace":
		m.mems[i] = node.NewMemory(int(m.g.raw[i]))
	case "suspend":
		return m.st.e.Suspend(i)
	case "resume":
		return m.st.e.Resume(ctx, i)
	case "hang":
		p.Blackhole(true)
		m.down[i] = true
	case "cut":
		p.Refuse(true)
		p.Cut()
		m.down[i] = true
	case "heal":
		if err := m.heal(i); err != nil {
			return err
		}
		if m.g.kind == spec.KindMirror && m.servers[i] != nil && m.st.e.members[i].State() == Failed {
			// What the monitor does when it finds the member back. Its
			// error may be only that the membership could not be recorded
			// on another member that is gone: the state is what counts,
			// and PostCondition compares it.
			m.lastRejoinErr = m.rejoin(ctx, i)
		}
	}
	return nil
}

// crashEngine kills the engine as a crash does: a membership change
// still pending is recorded first (with every member back, the monitor's
// next tick would: the model runs no monitor), so the superblocks name
// the members the model counts in sync (a crash with a record pending is
// the simulator's to check: storage/sim crashes at any point); then a
// crashwrite's write, then the engine stops without a clean shutdown.
func (c *modelCmd) crashEngine(m *modelSUT, r *cmdResult) error {
	if m.st.e.changePending.Load() {
		if err := m.st.e.recordChange(context.Background()); err != nil {
			return fmt.Errorf("record the pending membership change before the crash: %w", err)
		}
	}
	if c.Op == "crashwrite" {
		r.data = c.crashWrite(m)
	}
	m.st.e.Close() // no clean shutdown: superblocks say unclean
	m.st.closeNodes()
	m.st = nil
	m.dying.Store(false)
	return nil
}

// crashes: the command's settle crashes the engine first.
func (c *modelCmd) crashes() bool { return c.Op == "crash" || c.Op == "crashwrite" }

// modelSpareURL names the spare medium grow adds as a third replica.
const modelSpareURL = "memory:spare"

// runGrow, after the settle (every member in sync): a replica is added
// online (Storage.PrepareChange, Reassemble) and copied whole, then
// removed again, so the storage ends with the members the model knows.
// growcrash lets c.Ops state-changing member operations of the add
// through and crashes the engine there, then assembles the model's
// config again (which removes the spare if the add was recorded) and
// settles; shrinkcrash does so in the removal (the config then names the
// membership the removal makes).
func (c *modelCmd) runGrow(m *modelSUT, r *cmdResult) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m.spare = node.NewMemory(int(m.g.raw[0]))
	tree := m.st.Tree()
	grown, k, err := tree.WithLeaf("/", modelSpareURL)
	if err != nil {
		return err
	}
	change := func(to spec.Tree) error {
		ch, err := m.st.PrepareChange(ctx, to, ReassembleOptions{})
		if err != nil {
			return fmt.Errorf("prepare the change to %s: %w", to.String(), err)
		}
		ns, err := m.st.Reassemble(ctx, ch)
		m.st = ns
		if err != nil {
			return fmt.Errorf("change to %s: %w", to.String(), err)
		}
		return nil
	}
	crashIn := func(to spec.Tree) error {
		// The operations past the budget fail (the engine died before
		// them), so the change fails, and so may its undoing: whatever
		// it returns, the engine dies here.
		m.budget.Store(int64(c.Ops))
		m.dying.Store(true)
		_ = change(to)
		if m.st != nil {
			m.st.e.Close() // no clean shutdown
			m.st.closeNodes()
			m.st = nil
		}
		m.dying.Store(false)
		return c.runSettle(m, r, true)
	}
	if c.Op == "growcrash" {
		return crashIn(grown)
	}
	if err := change(grown); err != nil {
		return err
	}
	if st := m.st.e.members[k].State(); st != Failed {
		return fmt.Errorf("the replica added is %v before its copy", st)
	}
	if err := m.rejoin(ctx, k); err != nil {
		return fmt.Errorf("copy the replica added: %w", err)
	}
	got, want := m.spare.Bytes(int(m.st.DataOffset(k)), int(m.g.size)), m.mems[0].Bytes(int(m.st.DataOffset(0)), int(m.g.size))
	if at := firstDiff(got, want); at >= 0 {
		return fmt.Errorf("the replica added differs from member 0 at byte %d of its data area after its copy", at)
	}
	if c.Op == "shrinkcrash" {
		return crashIn(tree)
	}
	return change(tree)
}

// grows: the command changes the membership online (runGrow).
func (c *modelCmd) grows() bool {
	return c.Op == "grow" || c.Op == "growcrash" || c.Op == "shrinkcrash"
}

func (m *modelSUT) linkDown(i int) bool { return m.down[i] }

// heal brings member i's link back: the connections the fault held are
// reset first (a link that returns after TCP gave up), so no request
// written before the fault reaches the member late — that window is
// node.Remote's documented limit, not modelled here — and, if the server
// runs, waits for the node to reconnect.
func (m *modelSUT) heal(i int) error {
	p := m.proxies[i]
	m.expectConnect(i)
	p.Cut()
	p.Blackhole(false)
	p.Refuse(false)
	m.down[i] = false
	if m.servers[i] == nil {
		return nil
	}
	return m.waitConnect(i)
}

// rejoin probes a failed member (same media: copy what it missed; other
// media: copy everything) or resumes a suspended one.
func (m *modelSUT) rejoin(ctx context.Context, i int) error {
	full := false
	if m.st.e.members[i].State() == Failed {
		_, full = m.st.probe(ctx, i)
	}
	return m.st.e.Rejoin(ctx, i, full, nil)
}

func (c *modelCmd) runSettle(m *modelSUT, r *cmdResult, crashed bool) error {
	for i := range m.mems {
		if m.down[i] {
			if err := m.heal(i); err != nil {
				return err
			}
		}
	}
	for i := range m.mems {
		if m.servers[i] == nil {
			m.expectConnect(i)
			if err := m.startServer(i); err != nil {
				return err
			}
			if err := m.waitConnect(i); err != nil {
				return err
			}
		}
	}
	if c.crashes() || crashed {
		if !crashed {
			if err := c.crashEngine(m, r); err != nil {
				return err
			}
		}
		if err := m.assemble(); err != nil {
			return fmt.Errorf("re-assemble: %w", err)
		}
		r.crashMarked = map[int][]int{}
		for i, mb := range m.st.e.members {
			if mb.crashRegions.Load() == 0 {
				continue
			}
			a := mb.ancestors[0]
			for reg := a.mi.next(a.child, 0); reg >= 0; reg = a.mi.next(a.child, reg+1) {
				r.crashMarked[i] = append(r.crashMarked[i], reg)
			}
		}
		r.crashFull = m.st.e.Activity().CrashFullCopies
	}
	defer func() {
		if c.Op == "settle" && m.st != nil {
			// A quiet point: what was written is flushed and its marks
			// cleared.
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := m.st.e.clearAllActive(ctx); err != nil && r.err == nil {
				r.err = fmt.Errorf("clear the activity log: %w", err)
			}
		}
		if c.Op == "crashwrite" && r.err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			r.read = make([]byte, c.Len)
			r.err = m.st.e.ReadAt(ctx, r.read, c.Off)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// As the monitor does, which tries again every interval: a member
	// that must be copied whole waits for a source another one becomes.
	var errs []error
	for range m.mems {
		errs = errs[:0]
		for i := range m.mems {
			if s := m.st.e.members[i].State(); s == Failed || s == Suspended {
				if err := m.rejoin(ctx, i); err != nil {
					errs = append(errs, fmt.Errorf("rejoin %d: %w", i, err))
				}
			}
		}
		if len(errs) == 0 {
			return nil
		}
	}
	return errors.Join(errs...)
}

func (c *modelCmd) PostCondition(st commands.State, res commands.Result) *gopter.PropResult {
	s := st.(*modelState)
	r := res.(*cmdResult)
	fail := func(format string, a ...any) *gopter.PropResult {
		err := fmt.Errorf("%v: "+format, append([]any{c}, a...)...)
		if !r.sut.failed {
			r.sut.failed, r.sut.errMsg = true, err.Error()
		}
		return &gopter.PropResult{Status: gopter.PropFalse, Error: err}
	}
	switch opClass(c.Op) {
	case classIO:
		if s.expectOK != (r.err == nil) {
			return fail("model expects success=%v, got err=%v (%v)", s.expectOK, r.err, s)
		}
		if r.err != nil {
			if msg := c.checkError(s, r.err); msg != "" {
				return fail("%s", msg)
			}
		}
		if c.Op == "write" {
			for _, p := range s.g.pieces(c.Off, c.Len) {
				if (s.mirror() && r.err == nil) || (!s.mirror() && s.reachable(p.member)) {
					copy(s.data[p.devOff:p.devOff+p.n], r.data[p.devOff-c.Off:])
				}
			}
		}
		if c.Op == "read" && r.err == nil {
			if at := firstDiff(r.data, s.data[c.Off:c.Off+c.Len]); at >= 0 {
				return fail("byte %d (device offset %d) is %#x, want %#x", at, c.Off+int64(at), r.data[at], s.data[c.Off+int64(at)])
			}
		}
	case classMember, classLink:
		switch {
		case c.Op == "restart" && r.err != nil:
			return fail("%w", r.err)
		case c.Op == "heal" && r.err != nil:
			return fail("%w", r.err)
		case (c.Op == "resume" || c.Op == "heal") && r.states[c.Member] != s.core.State(c.Member):
			return fail("member %d is %v, the model says %v (err %v, rejoin err %v)",
				c.Member, r.states[c.Member], s.core.State(c.Member), r.err, r.rejoinErr)
		case c.Op == "heal":
			return c.checkMembers(s, r, fail, []int{c.Member})
		}
	default:
		if r.err != nil {
			return fail("%w", r.err)
		}
		if msg := c.checkCrash(s, r); msg != "" {
			return fail("%s", msg)
		}
		return c.checkMembers(s, r, fail, s.members())
	}
	return &gopter.PropResult{Status: gopter.PropTrue}
}

// crashWrite writes c's range with the engine dying after c.Ops node
// operations: the ones after are dropped unseen, as if its process were
// killed between two steps. It returns what the write carried.
func (c *modelCmd) crashWrite(m *modelSUT) []byte {
	id := rand.Uint32() | 1
	p := make([]byte, c.Len)
	for i := range p {
		p[i] = pattern(id, c.Off+int64(i))
	}
	m.budget.Store(int64(c.Ops))
	m.dying.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_ = m.st.e.WriteAt(ctx, p, c.Off, 0) // it may or may not have gone through
	return p
}

// checkCrash: after a crash, the crash resync copied a subset of the
// regions written since the last quiet point, no more than the activity
// log's bound twice over (or the largest request's regions), and nothing whole; a
// crashwrite left each byte of its range old or new, the same on every
// member (checkMembers), which the model takes on.
func (c *modelCmd) checkCrash(s *modelState, r *cmdResult) string {
	if !c.crashes() && c.Op != "growcrash" && c.Op != "shrinkcrash" {
		return ""
	}
	if r.crashFull != 0 {
		return fmt.Sprintf("the crash resync copied %d members whole although their activity logs were readable", r.crashFull)
	}
	for i, regs := range r.crashMarked {
		// The copy is the union of the members' logs, each within the
		// bound; a crash between a clear's page write to one member and
		// to the other leaves one with the old regions and one with the
		// new, so the union may hold twice the bound.
		if len(regs) > 2*max(modelActivityRegions, 5) {
			return fmt.Sprintf("member %d: the crash resync marked %d regions %v, beyond twice the log's bound %d", i, len(regs), regs, modelActivityRegions)
		}
		for _, reg := range regs {
			if !s.checkSince[reg] {
				return fmt.Sprintf("member %d: the crash resync marked region %d (of %v), which no write touched since the last quiet point (%v)",
					i, reg, regs, s.checkSince)
			}
		}
	}
	if c.Op == "crashwrite" {
		for k, b := range r.read {
			if off := c.Off + int64(k); b != s.data[off] && b != r.data[k] {
				return fmt.Sprintf("device offset %d is %#x after the crash: neither the old %#x nor the new %#x", off, b, s.data[off], r.data[k])
			}
		}
		copy(s.data[c.Off:], r.read)
	}
	return ""
}

// memberInError finds the member an engine error names.
var memberInError = regexp.MustCompile(`on member (\d+) `)

// checkError: a request the model fails reaches an NBD client as EIO, and
// a linear or stripe error names a gone member the request touches.
func (c *modelCmd) checkError(s *modelState, err error) string {
	if e := nbd.ErrnoOf(err); e != nbd.EIO {
		return fmt.Sprintf("err %v goes out as %v, want EIO", err, e)
	}
	if s.mirror() {
		return ""
	}
	sub := memberInError.FindStringSubmatch(err.Error())
	if sub == nil {
		return fmt.Sprintf("err %v names no member", err)
	}
	i, _ := strconv.Atoi(sub[1])
	if s.reachable(i) || (c.Op != "flush" && !s.owners(c.Off, c.Len)[i]) {
		return fmt.Sprintf("err %v names member %d, which is reachable or not touched (%v)", err, i, s)
	}
	return ""
}

// checkMembers requires the data areas of the listed members that are in
// sync and reachable to hold the model's bytes where the layout puts them.
func (c *modelCmd) checkMembers(s *modelState, r *cmdResult, fail func(string, ...any) *gopter.PropResult, which []int) *gopter.PropResult {
	for _, p := range s.g.pieces(0, s.g.size) {
		if !slices.Contains(which, p.member) || !s.servable(p.member) {
			continue
		}
		got, want := r.members[p.member][p.memOff:p.memOff+p.n], s.data[p.devOff:p.devOff+p.n]
		if !bytes.Equal(got, want) {
			at := int64(firstDiff(got, want))
			return fail("member %d data byte %d (device offset %d) is %#x, want %#x",
				p.member, p.memOff+at, p.devOff+at, got[at], want[at])
		}
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
