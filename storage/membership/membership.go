// Package membership holds the rules by which dst's engine moves the
// members of its mirrors in and out of service, as a pure state machine in
// etcd-io/raft's habit: events in, decisions out, no I/O, no goroutines,
// no clock. The engine feeds a Core what happened (a piece failed, a probe
// answered, a superblock record was written or not, a resync finished, a
// watchdog tick) under one lock and executes what it decides (mark the
// regions active now as missed, write the membership to the superblocks,
// copy a member whole or only what it missed, abort a stalled node). The
// engine model test and the simulator step the same Core, so the rules
// exist once.
//
// The rules (each is covered by a script in testdata):
//
//  1. A member leaves service (Failed) after an I/O error — a failed
//     piece, a stall, a superblock it could not take, a failed FLUSH — only
//     when another in-sync replica stands in for it (Redundant). Replicas
//     failing together never take each other out: the last one stays in
//     service and its error goes to the client.
//  2. A member whose media changed or whose resync failed leaves service
//     whether or not a replica stands in.
//  3. A member leaving service with writes not yet flushed has the regions
//     active now marked as missed by it (MarkActive), so if its machine
//     loses them the return copies them.
//  4. A member whose FLUSH failed, or whose media changed, is copied whole
//     when it returns (Whole), also when it was out of service already.
//  5. A member whose machine restarted while it held unflushed writes has
//     the regions active now marked as missed (or, where a mirror above it
//     keeps no activity log, is copied whole) and leaves service by rule 1;
//     if no replica stands in it stays, and nothing is copied.
//  6. Every change of who is in service is recorded in the superblocks
//     (Record) before the request that caused it is answered. A record
//     that failed leaves the change pending; a pending change is recorded
//     before a FLUSH that flushed something is acknowledged, and at every
//     monitor tick.
//  7. Suspend needs a replica that stands in. Release turns a suspended
//     member into a failed one, which the monitor probes; only failed
//     members are probed.
//  8. Rejoin takes a failed or suspended member to Resyncing: it gets
//     writes at once and is copied whole if asked or due (rule 4), else
//     what it missed. Where no other replica of a mirror above it is in
//     service and every other one lost its media (copied whole on
//     return), it is that mirror's source instead (Promote): the regions
//     it missed are taken as they are on it.
//  9. A resync that finished with the member still resyncing puts it in
//     sync (Record). One that failed takes it out by rule 2; one it left
//     during (a failed write) stands. Either way a whole copy that did not
//     finish is still due.
//  10. After an unclean stop of the engine, each mirror keeps one child as
//     its source (the one holding the assembly's source member, else the
//     first whose members are all served) and every member under another
//     child is copied from it (UncleanCopies).
//  11. A member under a mirror that takes writes, with pieces other than
//     FLUSH pending and none finished for the failover time, is stalled
//     (Stall): it leaves by rule 1 and its node's requests are aborted.
package membership

import (
	"errors"
	"fmt"
	"strings"
)

// State is the state of a member.
type State int32

// Member states.
const (
	// InSync members serve reads and writes.
	InSync State = iota
	// Resyncing members receive writes and the copy of what they missed,
	// and serve no reads until the copy is complete.
	Resyncing
	// Failed members receive nothing; what they miss is recorded.
	Failed
	// Suspended members are out for maintenance; like Failed, but by choice.
	Suspended
)

func (s State) String() string {
	switch s {
	case InSync:
		return "in-sync"
	case Resyncing:
		return "resyncing"
	case Failed:
		return "failed"
	case Suspended:
		return "suspended"
	}
	return fmt.Sprintf("state(%d)", int32(s))
}

// out reports whether a member in state s is out of service.
func (s State) out() bool { return s == Failed || s == Suspended }

// ErrBusy is returned when a member is asked to rejoin or be released in a
// state that does not allow it.
var ErrBusy = errors.New("engine: member is not out of service")

// ErrNotRedundant is returned when a member asked to leave service by
// choice is the last readable replica of some range.
var ErrNotRedundant = errors.New("no in-sync replica stands in for it")

// Cause says why a member is asked to leave service.
type Cause int8

// Causes, by rule.
const (
	// PieceFailed: a read or write piece failed (rule 1).
	PieceFailed Cause = iota
	// Stalled: the failover watchdog found it stalled (rules 1, 11).
	Stalled
	// RecordFailed: its superblock could not be written (rule 1).
	RecordFailed
	// FlushFailed: a FLUSH on it failed (rules 1, 4).
	FlushFailed
	// Rebooted: its machine restarted while it held unflushed writes
	// (rule 5).
	Rebooted
	// MediaChanged: it answers with other media (rules 2, 4).
	MediaChanged
	// ResyncFailed: the copy to it failed (rule 2).
	ResyncFailed
)

var causeNames = [...]string{"piece-failed", "stalled", "record-failed", "flush-failed", "rebooted", "media-changed", "resync-failed"}

func (c Cause) String() string {
	if int(c) < len(causeNames) {
		return causeNames[c]
	}
	return fmt.Sprintf("cause(%d)", int8(c))
}

// regardless reports whether the cause takes a member out even when no
// replica stands in for it.
func (c Cause) regardless() bool { return c == MediaChanged || c == ResyncFailed }

// Facts are what the engine knows about a member at an event.
type Facts struct {
	// Unflushed: it completed a write since its last flush, or a FLUSH to
	// it is in flight.
	Unflushed bool
	// Logged: every mirror above it keeps an activity log.
	Logged bool
}

// Decision is what the engine must do after an event. The zero value
// beyond Member, From and To asks nothing.
type Decision struct {
	Event  string
	Member int
	// From and To are the member's state before and after.
	From, To State
	// MarkActive: mark the regions active now as missed by the member,
	// before its new state is visible.
	MarkActive bool
	// Whole: a whole copy is due when it returns (set by this event).
	Whole bool
	// Record: write the membership to the superblocks before answering.
	Record bool
	// Abort: end its node's requests in flight.
	Abort bool
	// CopyWhole: Rejoin copies it whole.
	CopyWhole bool
	// Promote are the mirrors (by index) of which the member is the source
	// now (rule 8).
	Promote []int
	// Left: a resync finished after the member left service during it.
	Left bool
}

// Out reports whether the member is out of service afterwards (Failed or
// Suspended).
func (d Decision) Out() bool { return d.To.out() }

// Changed reports whether the decision changed the member's state.
func (d Decision) Changed() bool { return d.From != d.To }

// String is the decision in the scripts' golden form.
func (d Decision) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %d: %v", d.Event, d.Member, d.From)
	if d.Changed() {
		fmt.Fprintf(&b, " -> %v", d.To)
	}
	for _, f := range []struct {
		on   bool
		name string
	}{{d.MarkActive, "mark-active"}, {d.Whole, "whole-due"}, {d.Record, "record"}, {d.Abort, "abort"},
		{d.CopyWhole, "copy-whole"}, {d.Left, "left-during-resync"}} {
		if f.on {
			b.WriteString(" " + f.name)
		}
	}
	if len(d.Promote) > 0 {
		fmt.Fprintf(&b, " promote%v", d.Promote)
	}
	return b.String()
}

// ancestor is a mirror above a member and the child of it the member is
// under.
type ancestor struct{ mirror, child int }

// Core is the membership of one storage. It is not safe for concurrent
// use: the engine holds one lock around every call.
type Core struct {
	state []State
	// whole: the member must be copied whole when it returns.
	whole []bool
	// copyingWhole: the resync in progress copies it whole.
	copyingWhole []bool
	mirrors      [][][]int // per mirror, per child, the members under it
	ancestors    [][]ancestor
	pending      bool
}

// New returns the membership of n members, all in sync; mirrors lists,
// outermost first, the members under each child of each mirror.
func New(n int, mirrors [][][]int) (*Core, error) {
	c := &Core{state: make([]State, n), whole: make([]bool, n), copyingWhole: make([]bool, n),
		mirrors: mirrors, ancestors: make([][]ancestor, n)}
	for mi, children := range mirrors {
		for ci, leaves := range children {
			for _, l := range leaves {
				if l < 0 || l >= n {
					return nil, fmt.Errorf("membership: mirror %d child %d: no member %d (there are %d)", mi, ci, l, n)
				}
				c.ancestors[l] = append(c.ancestors[l], ancestor{mi, ci})
			}
		}
	}
	return c, nil
}

// Clone returns an independent copy (the model test's states are values).
func (c *Core) Clone() *Core {
	d := *c
	d.state = append([]State(nil), c.state...)
	d.whole = append([]bool(nil), c.whole...)
	d.copyingWhole = append([]bool(nil), c.copyingWhole...)
	return &d
}

// Members returns how many members there are.
func (c *Core) Members() int { return len(c.state) }

// State returns member i's state.
func (c *Core) State(i int) State { return c.state[i] }

// WholeDue reports whether member i is to be copied whole on return.
func (c *Core) WholeDue(i int) bool { return c.whole[i] }

// Pending reports whether a change of membership is not yet recorded on
// every member in service (rule 6).
func (c *Core) Pending() bool { return c.pending }

// Recorded takes the outcome of a superblock record: records each write
// the state of their own moment, so the last one decides (rule 6).
func (c *Core) Recorded(ok bool) { c.pending = !ok }

// Redundant reports whether another in-sync replica can stand in for
// member i: under some mirror above it, another child's members are all
// in sync.
func (c *Core) Redundant(i int) bool {
	for _, a := range c.ancestors[i] {
		for ci, leaves := range c.mirrors[a.mirror] {
			if ci != a.child && c.allInSync(leaves) {
				return true
			}
		}
	}
	return false
}

func (c *Core) allInSync(leaves []int) bool {
	for _, l := range leaves {
		if c.state[l] != InSync {
			return false
		}
	}
	return true
}

func (c *Core) decision(event string, i int) Decision {
	s := c.state[i]
	return Decision{Event: event, Member: i, From: s, To: s}
}

func (c *Core) set(d *Decision, s State) {
	c.state[d.Member], d.To = s, s
	d.Record = true
}

// Fail is the event "member i is to leave service for cause" (rules 1-5).
func (c *Core) Fail(i int, cause Cause, f Facts) Decision {
	d := c.decision(cause.String(), i)
	if !d.Out() && (cause.regardless() || c.Redundant(i)) {
		c.set(&d, Failed)
		d.MarkActive = f.Unflushed
	}
	if cause == Rebooted {
		d.MarkActive = true
	}
	if d.Out() && (cause == FlushFailed || cause == MediaChanged || (cause == Rebooted && !f.Logged)) {
		c.whole[i], d.Whole = true, true
	}
	d.Abort = cause == Stalled && d.Out()
	return d
}

// Suspend takes member i out of service by an operator's choice (rule 7).
func (c *Core) Suspend(i int, f Facts) (Decision, error) {
	d := c.decision("suspend", i)
	if d.From == Suspended {
		return d, nil
	}
	if !c.Redundant(i) {
		return d, fmt.Errorf("member %d: %w", i, ErrNotRedundant)
	}
	c.set(&d, Suspended)
	d.MarkActive = f.Unflushed
	return d, nil
}

// Release ends member i's suspension without a copy yet: it is failed, and
// the monitor rejoins it at its next probe (rule 7).
func (c *Core) Release(i int) (Decision, error) {
	d := c.decision("release", i)
	if d.From != Suspended {
		return d, fmt.Errorf("%w: member %d is %v, not suspended", ErrBusy, i, d.From)
	}
	c.state[i], d.To = Failed, Failed
	return d, nil
}

// Probed reports whether the monitor probes member i (rule 7).
func (c *Core) Probed(i int) bool { return c.state[i] == Failed }

// Rejoin is the event "member i comes back" (a probe answered, or an
// operator resumed it); full asks for a whole copy (rule 8).
func (c *Core) Rejoin(i int, full bool) (Decision, error) {
	d := c.decision("rejoin", i)
	if !d.Out() {
		return d, fmt.Errorf("%w: member %d is %v", ErrBusy, i, d.From)
	}
	c.state[i], d.To = Resyncing, Resyncing
	d.CopyWhole = full || c.whole[i]
	c.whole[i], c.copyingWhole[i] = false, d.CopyWhole
	if !d.CopyWhole {
		for _, a := range c.ancestors[i] {
			if c.othersLost(a) {
				d.Promote = append(d.Promote, a.mirror)
			}
		}
	}
	return d, nil
}

// othersLost reports whether no child of a's mirror but a's own is in
// service or holds media worth keeping: every member under each of them
// is out of service and due a whole copy.
func (c *Core) othersLost(a ancestor) bool {
	for ci, leaves := range c.mirrors[a.mirror] {
		if ci == a.child {
			continue
		}
		for _, l := range leaves {
			if c.state[l] == InSync || !c.whole[l] {
				return false
			}
		}
	}
	return true
}

// ResyncDone is the event "the copy to member i ended", ok or not (rule 9).
func (c *Core) ResyncDone(i int, ok bool, f Facts) Decision {
	if !ok {
		c.whole[i] = c.whole[i] || c.copyingWhole[i]
		d := c.Fail(i, ResyncFailed, f)
		d.Event = "resync-failed"
		return d
	}
	d := c.decision("resync-done", i)
	if d.From == Resyncing {
		c.set(&d, InSync)
		return d
	}
	d.Left = true
	if c.copyingWhole[i] {
		c.whole[i], d.Whole = true, true
	}
	return d
}

// Start is how an assembly starts member i.
type Start int8

// Start actions.
const (
	// Serve: in sync as it is.
	Serve Start = iota
	// CopyDirty: out of service until the regions it missed (recorded, or
	// marked by an activity log after an unclean stop) are copied.
	CopyDirty
	// CopyWhole: out of service until it is copied whole.
	CopyWhole
	// Skip: out of service; it is not usable now.
	Skip
)

// Started sets member i's state at an assembly.
func (c *Core) Started(i int, s Start) {
	c.state[i], c.whole[i] = InSync, s == CopyWhole
	if s != Serve {
		c.state[i] = Failed
	}
}

// UncleanCopies says which members an unclean restart copies from a
// source (rule 10) and each mirror's source child (-1 where none): served
// are the members the assembly serves as they are, source the
// assembly's source member. Members under no mirror have no replica to
// differ from and are served as they are.
func (c *Core) UncleanCopies(source int, served []bool) (copies []bool, sources []int) {
	sources = make([]int, len(c.mirrors))
	for mi := range sources {
		sources[mi] = -1
	}
	for _, a := range c.ancestors[source] {
		sources[a.mirror] = a.child
	}
	for mi, children := range c.mirrors {
		for ci, leaves := range children {
			if sources[mi] >= 0 {
				break
			}
			all := true
			for _, l := range leaves {
				all = all && served[l]
			}
			if all {
				sources[mi] = ci
			}
		}
	}
	copies = make([]bool, len(c.state))
	for i, anc := range c.ancestors {
		for _, a := range anc {
			if sources[a.mirror] != a.child {
				copies[i] = true
			}
		}
	}
	return copies, sources
}
