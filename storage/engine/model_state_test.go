// The model's state and its predictions (NextState) for every command of
// model_cmds_test.go: mirror requests fail over between replicas, linear
// and stripe requests fail exactly where a gone member holds bytes, and
// members rejoin as Engine.Rejoin does. Who is in service is decided by
// the engine's own membership.Core, stepped with the events the model
// expects the engine to see: the rules exist once.
package engine

import (
	"fmt"
	"slices"

	"dst/storage/membership"
	"dst/storage/spec"

	"github.com/leanovate/gopter/commands"
)

// linkState is the state of the proxy in front of a member.
type linkState int8

const (
	linkUp   linkState = iota
	linkHung           // Blackhole: connections stay, nothing moves
	linkCut            // Cut and Refuse: connections closed, new ones refused
)

func (l linkState) String() string { return [...]string{"up", "hung", "cut"}[l] }

// modelState is what the model expects.
type modelState struct {
	g      *modelGeometry
	data   []byte // what reads must return
	server []bool // the member's NBD server runs
	link   []linkState
	// core is the engine's view of its members: InSync, Failed,
	// Suspended (never Resyncing between commands: rejoins are waited for).
	core *membership.Core
	// written: completed a write since its last flush; full: must be
	// copied whole when it rejoins; wiped: its media was replaced while it
	// was unreachable and no reconnect noticed yet; missed: writes went on
	// while it was out of service, so a rejoin copies something.
	written, full, wiped, missed []bool
	// expectOK is the model's prediction for the last I/O command.
	expectOK bool
	// since are the regions write-like requests went to since the last
	// settle, crash or crashwrite (a quiet point: the activity log is
	// empty after it); checkSince is since as it was before the last of
	// them, what that command's crash resync may copy (mirror regions).
	since, checkSince []bool
}

func newModelState(g *modelGeometry) *modelState {
	n := g.members()
	s := &modelState{g: g, data: make([]byte, g.size), server: make([]bool, n), link: make([]linkState, n),
		core: newModelCore(g), written: make([]bool, n), full: make([]bool, n), wiped: make([]bool, n), missed: make([]bool, n),
		since: make([]bool, (g.size+modelRegion-1)/modelRegion)}
	for i := range n {
		s.server[i] = true
	}
	return s
}

// newModelCore is the membership of g with every member in sync.
func newModelCore(g *modelGeometry) *membership.Core {
	var mirrors [][][]int
	if g.kind == spec.KindMirror {
		children := make([][]int, g.members())
		for i := range children {
			children[i] = []int{i}
		}
		mirrors = [][][]int{children}
	}
	c, err := membership.New(g.members(), mirrors)
	if err != nil {
		panic(err)
	}
	return c
}

// states returns every member's state as the core has it.
func (s *modelState) states() []State {
	out := make([]State, s.g.members())
	for i := range out {
		out[i] = s.core.State(i)
	}
	return out
}

func (s *modelState) String() string {
	return fmt.Sprintf("{%s size %d, server %v, link %v, states %v, written %v, full %v, wiped %v, missed %v}",
		s.g.name, s.g.size, s.server, s.link, s.states(), s.written, s.full, s.wiped, s.missed)
}

func (s *modelState) clone() *modelState {
	c := *s
	c.data = slices.Clone(s.data)
	c.server, c.link, c.core = slices.Clone(s.server), slices.Clone(s.link), s.core.Clone()
	c.written, c.full, c.wiped, c.missed = slices.Clone(s.written), slices.Clone(s.full), slices.Clone(s.wiped), slices.Clone(s.missed)
	c.since, c.checkSince = slices.Clone(s.since), slices.Clone(s.checkSince)
	return &c
}

func (s *modelState) mirror() bool             { return s.g.kind == spec.KindMirror }
func (s *modelState) inSync(i int) bool        { return s.core.State(i) == InSync }
func (s *modelState) reachable(i int) bool     { return s.server[i] && s.link[i] == linkUp }
func (s *modelState) servesAny() bool          { return slices.ContainsFunc(s.members(), s.servable) }
func (s *modelState) servable(i int) bool      { return s.inSync(i) && s.reachable(i) }
func (s *modelState) members() []int           { return rangeN(s.g.members()) }
func (s *modelState) otherInSync(i int) bool   { return s.other(i, s.inSync) }
func (s *modelState) otherServable(i int) bool { return s.other(i, s.servable) }

func (s *modelState) other(i int, f func(int) bool) bool {
	for j := range s.g.members() {
		if j != i && f(j) {
			return true
		}
	}
	return false
}

func rangeN(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// owners reports which members hold bytes of [off, off+n).
func (s *modelState) owners(off, n int64) []bool {
	o := make([]bool, s.g.members())
	for _, p := range s.g.pieces(off, n) {
		o[p.member] = true
	}
	return o
}

// reconnected applies what member i's node finds when it reconnects: other
// media take it out of service (a suspended member stays suspended) and
// make a whole copy due.
func (s *modelState) reconnected(i int) {
	if s.wiped[i] && s.core.Fail(i, membership.MediaChanged, membership.Facts{}).Out() {
		s.written[i] = false
	}
	s.wiped[i] = false
}

// rejoin applies Engine.Rejoin of an out-of-service mirror member: with
// nothing to copy it is back at once; otherwise the copy needs it
// reachable and an in-sync replica to read from, or it fails again.
func (s *modelState) rejoin(i int) {
	if s.inSync(i) {
		return
	}
	copies := s.missed[i] || s.full[i]
	// The test's probe of a failed member finds other media (a whole copy)
	// when it can read it; a suspended member is resumed without a probe.
	probeFull := s.core.State(i) == Failed && s.full[i] && s.reachable(i)
	d, err := s.core.Rejoin(i, probeFull)
	if err != nil {
		panic(err) // the model's members are never resyncing between commands
	}
	if copies && len(d.Promote) > 0 && s.reachable(i) {
		// Engine.promote: the only intact copy left is the source.
		copies, s.missed[i] = false, false
	}
	if copies && (!s.reachable(i) || !s.otherServable(i)) {
		s.core.ResyncDone(i, false, membership.Facts{})
		return
	}
	s.core.ResyncDone(i, true, membership.Facts{})
	if copies {
		s.written[i] = false // the copy's commit flushed the member
	}
	s.missed[i], s.full[i] = false, false
	s.recordMembership()
}

// recordMembership applies the superblock write that records a member
// back in sync (Storage.recordMembership): it goes to every in-sync
// member in index order; the first that cannot take it (unreachable)
// leaves service if another in-sync member stands in for it, and the
// write is tried again; otherwise it stays and the error stands.
func (s *modelState) recordMembership() {
	for {
		bad := slices.IndexFunc(s.members(), func(j int) bool { return s.inSync(j) && !s.reachable(j) })
		if bad < 0 || !s.core.Fail(bad, membership.RecordFailed, membership.Facts{}).Changed() {
			return
		}
	}
}

func (c *modelCmd) NextState(st commands.State) commands.State {
	s := st.(*modelState).clone()
	i := c.Member
	switch c.Op {
	case "write", "trim", "zeroes", "crashwrite":
		for r := c.Off / modelRegion; c.Len > 0 && r <= (c.Off+c.Len-1)/modelRegion; r++ {
			s.since[r] = true
		}
	}
	switch c.Op {
	case "write", "read", "flush", "trim", "zeroes":
		if s.mirror() {
			c.nextMirrorIO(s)
		} else {
			c.nextSplitIO(s)
		}
	case "kill":
		s.server[i] = false
	case "restart":
		s.server[i] = true
		if s.link[i] == linkUp {
			s.reconnected(i)
		}
	case "replace":
		s.full[i], s.wiped[i] = true, true
	case "suspend":
		_, _ = s.core.Suspend(i, membership.Facts{}) // refused: nothing changes

	case "resume":
		s.rejoin(i)
	case "hang":
		s.link[i] = linkHung
	case "cut":
		s.link[i] = linkCut
	case "heal":
		s.link[i] = linkUp
		if s.server[i] {
			s.reconnected(i)
			if s.mirror() && s.core.State(i) == Failed {
				s.rejoin(i)
			}
		}
	case "settle", "crash", "crashwrite", "grow", "growcrash", "shrinkcrash":
		c.nextSettle(s)
		s.checkSince, s.since = s.since, make([]bool, len(s.since))
	}
	return s
}

// nextMirrorIO: a write-like request goes to every in-sync member and marks
// the others' regions dirty; an unreachable one among them drops out if
// another got the write, else the request fails. Reads go to in-sync
// members in index order, failing over.
func (c *modelCmd) nextMirrorIO(s *modelState) {
	s.expectOK = s.servesAny()
	switch c.Op {
	case "read":
		for i := range s.g.members() {
			if !s.inSync(i) {
				continue
			}
			if s.reachable(i) {
				break
			}
			s.core.Fail(i, membership.PieceFailed, membership.Facts{})
		}
	case "flush":
		// The engine flushes the members in parallel, then takes out the
		// failed ones in index order while another one is in sync.
		s.expectOK = true
		for i := range s.g.members() {
			if !s.inSync(i) || !s.written[i] {
				continue
			}
			switch {
			case s.reachable(i):
				s.written[i] = false
			case s.core.Fail(i, membership.FlushFailed, membership.Facts{Unflushed: true}).Changed():
				s.full[i], s.written[i] = true, false
			default:
				s.expectOK = false
			}
		}
	default:
		if slices.Contains(s.states(), InSync) {
			for i := range s.g.members() {
				if !s.inSync(i) {
					s.missed[i] = true
				}
			}
		}
		if !s.expectOK {
			return
		}
		for i := range s.g.members() {
			switch {
			case s.inSync(i) && !s.reachable(i):
				s.core.Fail(i, membership.PieceFailed, membership.Facts{Unflushed: s.written[i]})
				s.missed[i] = true
			case s.inSync(i):
				s.written[i] = true
			}
		}
		if c.Op != "write" {
			clear(s.data[c.Off : c.Off+c.Len]) // memory disks read trimmed bytes as zeroes
		}
		// Write content is known only after Run; PostCondition stores it.
	}
}

// nextSplitIO: linear and stripe requests succeed when every member they
// touch is reachable; a failed write-like request still lands on the
// reachable members it touches.
func (c *modelCmd) nextSplitIO(s *modelState) {
	if c.Op == "flush" {
		s.expectOK = true
		for i := range s.g.members() {
			switch {
			case !s.written[i]:
			case s.reachable(i):
				s.written[i] = false
			default:
				s.expectOK = false
			}
		}
		return
	}
	owners := s.owners(c.Off, c.Len)
	s.expectOK = true
	for i, o := range owners {
		if o && !s.reachable(i) {
			s.expectOK = false
		}
	}
	if c.Op == "read" {
		return
	}
	for i, o := range owners {
		if o && s.reachable(i) {
			s.written[i] = true
		}
	}
	if c.Op != "write" {
		for _, p := range s.g.pieces(c.Off, c.Len) {
			if s.reachable(p.member) {
				clear(s.data[p.devOff : p.devOff+p.n])
			}
		}
	}
}

// nextSettle: every member is reachable and in sync afterwards. After a
// crash the lowest in-sync member of a mirror serves and the rest are
// copied from it; without one, members rejoin as Rejoin does.
func (c *modelCmd) nextSettle(s *modelState) {
	for i := range s.g.members() {
		switch {
		case c.Op != "settle":
			// A new engine (after a crash, or a membership change's
			// clean stop), and the crash copy's commit flushed what it
			// copied.
			s.written[i] = false
		case !s.inSync(i) && (s.missed[i] || s.full[i]):
			s.written[i] = false // the copy's commit flushed the member
		}
		s.server[i], s.link[i] = true, linkUp
		s.full[i], s.wiped[i], s.missed[i] = false, false, false
	}
	s.core = newModelCore(s.g)
}
