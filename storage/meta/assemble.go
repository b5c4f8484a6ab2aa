package meta

import (
	"errors"
	"fmt"
	"slices"
)

// Probe is what the engine read from one member position: the result of
// Newest on the two superblock slots, or the error of reading them.
type Probe struct {
	// Super is valid when Err is nil.
	Super Superblock
	// Err is nil, or an error wrapping ErrBlank, ErrForeign, a damage class
	// (ErrChecksum, ErrVersion, ErrCorrupt, ErrTruncated), or anything else
	// (an I/O error, an unreachable node), which means the member is absent.
	Err error
}

// Options steer Classify. The zero value infers everything and replaces
// nothing.
type Options struct {
	// StorageID is the storage being assembled. Zero: the id carried by
	// the most members with a valid superblock (a tie is ErrAmbiguous).
	StorageID ID
	// Layout is the expected layout description. Empty: the one of the
	// newest member.
	Layout string
	// Replace[i] allows member i to be overwritten (full resync) if it is
	// foreign, damaged or mismatched. Shorter than the probes: false.
	Replace []bool
	// AllowDegraded assembles even when a member of the newest in-sync set
	// is absent or damaged, accepting that it may have held newer data.
	AllowDegraded bool
	// Recorded, if set, maps each position to the position the newest
	// member's table records its member at, or -1 for a position added
	// since: the positions are those of a new membership (a mirror replica
	// added or removed, see the engine's Assemble), the superblocks those
	// of the old one. Members are then checked against their recorded
	// positions, Layout is the recorded layout, and a position added is
	// copied whole. Nil is the identity.
	Recorded []int
}

// State is what Classify found on a member.
type State uint8

const (
	// StateUnknown: not classified, because Classify failed before it
	// reached this member (the zero State).
	StateUnknown State = iota
	// StateInSync: holds all data of the newest generation.
	StateInSync
	// StateStale: was complete at an older generation and has since left
	// the in-sync set; it missed writes recorded in the bitmap.
	StateStale
	// StateRebuilding: same storage, but its own superblock says it was
	// being fully resynced (not in its own InSync).
	StateRebuilding
	// StateBlank: no superblock (new or wiped media).
	StateBlank
	// StateForeign: not a dst member, or a member of another storage.
	StateForeign
	// StateMismatch: this storage, but the wrong member index, member
	// count, layout or region size for this position.
	StateMismatch
	// StateDamaged: a dst superblock that cannot be read (checksum,
	// version, corrupt in both slots).
	StateDamaged
	// StateAbsent: the superblock could not be read at all.
	StateAbsent
)

var stateNames = [...]string{"unknown", "in-sync", "stale", "rebuilding", "blank", "foreign", "mismatch", "damaged", "absent"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// Action is what the engine must do with a member.
type Action uint8

const (
	// ActionRefuse: do not touch it; the assembly fails. It is the zero
	// Action, so an undecided member is never used.
	ActionRefuse Action = iota
	// ActionServe: use the member for reads and writes.
	ActionServe
	// ActionResyncDirty: copy the regions dirty in the source bitmap to
	// it, then it joins the in-sync set.
	ActionResyncDirty
	// ActionResyncFull: write a new superblock (not in its own InSync),
	// copy every region, then it joins the in-sync set.
	ActionResyncFull
	// ActionSkip: run without it (it is absent) and probe it again later.
	ActionSkip
)

var actionNames = [...]string{"refuse", "serve", "resync-dirty", "resync-full", "skip"}

func (a Action) String() string {
	if int(a) < len(actionNames) {
		return actionNames[a]
	}
	return fmt.Sprintf("Action(%d)", uint8(a))
}

// Verdict is Classify's decision for one member position.
type Verdict struct {
	State  State
	Action Action
	// Reason says why, for logs and errors.
	Reason string
}

// Assembly is the outcome of Classify.
type Assembly struct {
	StorageID ID
	// Generation is the newest generation among the members of this
	// storage; the engine's next superblock write uses a larger one.
	Generation uint64
	// InSync is the in-sync set recorded at Generation.
	InSync Mask
	// Layout and RegionSize are those of the newest member.
	Layout     string
	RegionSize int64
	// Source is the member to resync from and whose bitmap lists the dirty
	// regions (the lowest index serving at Generation, else the lowest
	// serving); -1 if no member serves.
	Source int
	// Clean: every serving member is at Generation with FlagClean, so the
	// serving members are identical. Otherwise the engine resyncs the
	// regions dirty in the source bitmap to the other serving members.
	Clean bool
	// Members has one verdict per probe, in order.
	Members []Verdict
}

// Classify decides, from the superblocks read from each member position
// (probes[i] is position i, MemberCount is len(probes)), what the engine
// does with each member. The rules, in order:
//
//  1. Probe errors: ErrBlank -> Blank, full resync (new media, no operator
//     step). ErrForeign -> Foreign. ErrChecksum/ErrVersion/ErrCorrupt/
//     ErrTruncated -> Damaged. Any other error -> Absent, skipped.
//  2. The storage id is Options.StorageID, else the one most members carry.
//     A valid superblock of another storage -> Foreign.
//  3. A member of this storage with MemberIndex != i, MemberCount !=
//     len(probes), or a Layout other than Options.Layout -> Mismatch
//     (with Options.Recorded: its recorded position, and the newest
//     member's count). Except a member older than the newest that the
//     newest member's table records at this position: it is taken as it
//     is (a change of membership renumbered the positions, and the
//     change's superblock writes did not reach it before a crash). At a
//     position added, a member of this storage that the table does not
//     hold (removed earlier, or an add interrupted) -> Rebuilding, full
//     resync; one the table holds elsewhere -> Mismatch.
//  4. G is the highest Generation among the remaining members; all of them
//     at G must record the same InSync set M (else ErrSplitBrain). The
//     newest member fixes Layout and RegionSize; a member that differs ->
//     Mismatch.
//     4a. A member complete in its own superblock whose MemberID is not
//     the one the newest member's table records at its position was
//     replaced there -> Mismatch (its data stopped when it left).
//  5. A member not in its own InSync -> Rebuilding, full resync.
//     Otherwise a member in M -> InSync (served; if its Generation is below
//     G only its superblock lags, its data does not), and a member not in
//     M -> Stale, resync of the regions dirty in the source bitmap.
//  6. Foreign, Damaged and Mismatch members are refused unless
//     Options.Replace allows a full resync over them.
//  7. No serving member -> ErrNoSource; ErrUnformatted instead if no member
//     carries a dst superblock at all (valid or damaged) and one is blank.
//  8. A member of M that is Absent may hold data newer than G (it may have
//     run on alone): ErrDegraded unless Options.AllowDegraded. A member
//     that left M before going away is no such risk.
//
// The Assembly is returned even with an error, so every verdict can be
// reported; a member Classify did not reach is StateUnknown, ActionRefuse.
//
// The rules expect the engine to bump Generation on every superblock write,
// to write the same InSync to all members it writes at a generation, to
// drop a member from InSync before it stops writing to it, to add a member
// to InSync only once its resync is complete (writing that member's
// superblock first), to leave a stale member's superblock alone until its
// resync is complete, and to clear a bitmap bit only when every member of
// the storage holds the region.
func Classify(probes []Probe, opt Options) (as Assembly, err error) {
	n := len(probes)
	as = Assembly{Source: -1, Members: make([]Verdict, n)}
	defer func() {
		for i := range as.Members {
			if err != nil && as.Members[i].State == StateUnknown {
				as.Members[i].Reason = "not classified: " + err.Error()
			}
		}
	}()
	if n < 1 || n > MaxMembers {
		return as, fmt.Errorf("%w: %d members, want 1 to %d", ErrInvalid, n, MaxMembers)
	}
	replace := func(i int) bool { return i < len(opt.Replace) && opt.Replace[i] }
	set := func(i int, s State, a Action, format string, args ...any) {
		as.Members[i] = Verdict{State: s, Action: a, Reason: fmt.Sprintf(format, args...)}
	}
	// Refusable states become full resyncs where replacement is allowed.
	refuse := func(i int, s State, format string, args ...any) {
		if replace(i) {
			set(i, s, ActionResyncFull, "replacing: "+format, args...)
		} else {
			set(i, s, ActionRefuse, format, args...)
		}
	}

	// Rule 1 and the census for rule 2.
	valid := make([]bool, n)
	anyBlank, anyDamaged := false, false
	votes := map[ID]int{}
	for i, p := range probes {
		switch {
		case p.Err == nil:
			valid[i] = true
			votes[p.Super.StorageID]++
		case errors.Is(p.Err, ErrBlank):
			anyBlank = true
			set(i, StateBlank, ActionResyncFull, "blank media: %v", p.Err)
		case errors.Is(p.Err, ErrForeign):
			refuse(i, StateForeign, "%v", p.Err)
		case errors.Is(p.Err, ErrChecksum), errors.Is(p.Err, ErrVersion),
			errors.Is(p.Err, ErrCorrupt), errors.Is(p.Err, ErrTruncated):
			anyDamaged = true
			refuse(i, StateDamaged, "%v", p.Err)
		default:
			set(i, StateAbsent, ActionSkip, "unreadable: %v", p.Err)
		}
	}

	// Rule 2.
	as.StorageID = opt.StorageID
	if as.StorageID.IsZero() {
		var best int
		var tie bool
		as.StorageID, best, tie = majority(votes)
		if tie {
			return as, fmt.Errorf("%w: members carry %d storages, the largest groups tie at %d members; name the storage id",
				ErrAmbiguous, len(votes), best)
		}
	}

	// Rule 3, and G over the members left.
	var ref *Superblock // the newest member of the storage, wherever it is
	for i, p := range probes {
		if valid[i] && p.Super.StorageID == as.StorageID && (ref == nil || p.Super.Generation > ref.Generation) {
			ref = &probes[i].Super
		}
	}
	rec := func(i int) int { return i }
	count := n
	if opt.Recorded != nil {
		if len(opt.Recorded) != n {
			return as, fmt.Errorf("%w: %d recorded positions for %d members", ErrInvalid, len(opt.Recorded), n)
		}
		rec = func(i int) int { return opt.Recorded[i] }
		if ref != nil {
			count = ref.MemberCount
		}
	}
	// lags: s's superblock is older than the newest, whose table records
	// s at position r (a change of membership renumbered the positions and
	// its superblock writes did not reach s before a crash).
	lags := func(s *Superblock, r int) bool {
		return s.Generation < ref.Generation && !ref.Members[r].IsZero() && ref.Members[r] == s.MemberID
	}
	newest := -1
	for i, p := range probes {
		if !valid[i] {
			continue
		}
		s := &p.Super
		r := rec(i)
		switch {
		case s.StorageID != as.StorageID:
			valid[i] = false
			refuse(i, StateForeign, "member of storage %s, not %s", s.StorageID, as.StorageID)
		case r < 0:
			// A position added: any superblock of this storage here is of
			// a member no longer in the table (removed, or an add that was
			// interrupted), so nothing on it is trusted.
			valid[i] = false
			if slices.Contains(ref.Members[:], s.MemberID) {
				refuse(i, StateMismatch, "member %s is recorded at another position (%d of the table), not new here",
					s.MemberID, slices.Index(ref.Members[:], s.MemberID))
				break
			}
			set(i, StateRebuilding, ActionResyncFull, "position added: member %s of this storage is not in the member table of generation %d; copied whole",
				s.MemberID, ref.Generation)
		case (s.MemberIndex != r || s.MemberCount != count) && lags(s, r):
			if newest < 0 || s.Generation > probes[newest].Super.Generation {
				newest = i
			}
		case s.MemberIndex != r || s.MemberCount != count:
			valid[i] = false
			refuse(i, StateMismatch, "member %d of %d found at position %d of %d", s.MemberIndex, s.MemberCount, r, count)
		case opt.Layout != "" && s.Layout != opt.Layout:
			valid[i] = false
			refuse(i, StateMismatch, "layout %q, want %q", s.Layout, opt.Layout)
		case newest < 0 || s.Generation > probes[newest].Super.Generation:
			newest = i
		}
	}
	if newest < 0 {
		if len(votes) == 0 {
			if anyBlank && !anyDamaged {
				return as, fmt.Errorf("%w: no member carries a dst superblock", ErrUnformatted)
			}
			return as, refusedOr(as, fmt.Errorf("%w: no member has a readable superblock", ErrNoSource))
		}
		return as, refusedOr(as, fmt.Errorf("%w: no member of storage %s fits this layout", ErrNoSource, as.StorageID))
	}

	// Rule 4.
	ref = &probes[newest].Super
	as.Generation, as.InSync, as.Layout, as.RegionSize = ref.Generation, ref.InSync, ref.Layout, ref.RegionSize
	for i, p := range probes {
		if !valid[i] {
			continue
		}
		s := &p.Super
		r := rec(i)
		switch {
		case !ref.Members[r].IsZero() && ref.Members[r] != s.MemberID && s.Complete():
			// Rule 4a: the medium was replaced at this position (online, or
			// wiped and copied anew) and would be trusted with data it
			// never received.
			valid[i] = false
			refuse(i, StateMismatch, "member %s, but since generation %d or earlier position %d holds member %s (a replacement): "+
				"put the replacement's URL at this position, or list this one under replace to copy it whole",
				s.MemberID, ref.Generation, i, ref.Members[r])
		case s.Generation == as.Generation && s.InSync != as.InSync:
			return as, fmt.Errorf("%w: at generation %d member %d records in-sync %s, member %d records %s",
				ErrSplitBrain, as.Generation, newest, as.InSync, i, s.InSync)
		case s.Layout != as.Layout && !lags(s, r):
			valid[i] = false
			refuse(i, StateMismatch, "layout %q, newest member %d has %q", s.Layout, newest, as.Layout)
		case s.RegionSize != as.RegionSize:
			valid[i] = false
			refuse(i, StateMismatch, "region size %d, newest member %d has %d", s.RegionSize, newest, as.RegionSize)
		}
	}

	// Rule 5.
	as.Clean = true
	for i, p := range probes {
		if !valid[i] {
			continue
		}
		s := &p.Super
		switch {
		case !s.Complete():
			set(i, StateRebuilding, ActionResyncFull, "generation %d: full resync was not finished", s.Generation)
		case as.InSync.Has(rec(i)):
			set(i, StateInSync, ActionServe, "generation %d of %d, in-sync %s", s.Generation, as.Generation, as.InSync)
			if as.Source < 0 || s.Generation == as.Generation && probes[as.Source].Super.Generation != as.Generation {
				as.Source = i
			}
			as.Clean = as.Clean && s.Clean() && s.Generation == as.Generation
		default:
			set(i, StateStale, ActionResyncDirty, "generation %d, left in-sync set %s of generation %d",
				s.Generation, as.InSync, as.Generation)
		}
	}
	if as.Source < 0 {
		as.Clean = false
	}

	// Rule 6.
	if err := refusedOr(as, nil); err != nil {
		return as, err
	}

	// Rule 7.
	if as.Source < 0 {
		return as, fmt.Errorf("%w: no member of storage %s holds generation %d data (in-sync %s)",
			ErrNoSource, as.StorageID, as.Generation, as.InSync)
	}

	// Rule 8.
	if !opt.AllowDegraded {
		for i, v := range as.Members {
			if rec(i) >= 0 && as.InSync.Has(rec(i)) && v.State == StateAbsent {
				return as, fmt.Errorf("%w: member %d is %s and was in sync at generation %d; it may hold newer data",
					ErrDegraded, i, v.State, as.Generation)
			}
		}
	}
	return as, nil
}

// Majority is the storage id that most probes' superblocks carry (rule 2
// of Classify), and whether the largest groups tie; zero if none does.
func Majority(probes []Probe) (id ID, tie bool) {
	votes := map[ID]int{}
	for _, p := range probes {
		if p.Err == nil {
			votes[p.Super.StorageID]++
		}
	}
	id, _, tie = majority(votes)
	return id, tie
}

func majority(votes map[ID]int) (id ID, best int, tie bool) {
	for v, c := range votes {
		switch {
		case c > best:
			id, best, tie = v, c, false
		case c == best:
			tie = true
		}
	}
	return id, best, tie
}

// refusedOr returns ErrRefused naming the first refused member, or err.
func refusedOr(as Assembly, err error) error {
	count, first := 0, -1
	for i, v := range as.Members {
		if v.Action == ActionRefuse {
			if first < 0 {
				first = i
			}
			count++
		}
	}
	if count == 0 {
		return err
	}
	return fmt.Errorf("%w: %d member(s); member %d is %s: %s", ErrRefused, count, first,
		as.Members[first].State, as.Members[first].Reason)
}
