// A change of membership at a start: the config adds a replica to a
// mirror, or removes one, against the membership the superblocks record
// (md's --grow of a RAID1 with --add or --fail/--remove, by editing the
// config and restarting).
//
// The config is the source of truth. Assemble finds the newest member's
// superblock; if its layout and member count are not the config's, it
// looks for the one change that explains the difference, matching the
// config's positions to the recorded ones by the member ids their
// superblocks carry:
//
//   - Added: the config has one leaf more, under a mirror, and without it
//     the config is the recorded layout. The new position's media must
//     answer; it is blank (or a member this storage removed earlier, or
//     listed under replace) and is copied whole from an in-sync replica
//     while the storage serves, as a replacement is.
//   - Removed: the recorded layout without one replica of a mirror is the
//     config. The mirror must keep an in-sync replica (else nothing
//     serves its data and the start is refused).
//
// Either way the storage keeps its size (a replica added must be at
// least as large as the mirror; a replica removed must not be the only
// smallest), and the first superblocks written (before anything is
// served) record the new membership at a new generation: the new member
// ids table, every member's new position and the new layout. A crash
// while they are written leaves some superblocks in the old numbering;
// the next start takes them by their member ids (meta.Classify rule 3),
// with either config: the new one as recorded, the old one as the change
// undone (a replica added and not yet copied is removed again; a replica
// removed comes back stale or is copied whole). A member removed is not
// in any later table, so it never comes back as in sync: listed again,
// it is a replica added and copied whole.
//
// Anything else (two changes at once, moved or swapped members, a
// replica removed from a linear or stripe) is refused with what the
// members record and where the config's members were found.
//
// Durability: a change loses nothing acknowledged. A replica added serves
// no read before its copy is complete and flushed; a replica removed
// takes no data with it that an in-sync replica does not hold.
package engine

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"dst/storage/layout"
	"dst/storage/meta"
	"dst/storage/spec"
)

// change is a membership change found at a start.
type change struct {
	// recorded maps each config position to its recorded position, -1
	// for the one added (meta.Options.Recorded).
	recorded []int
	// size is the storage's size as recorded, which the new layout keeps.
	size int64
	// layout is the recorded layout.
	layout string
	what   string // for logs
}

// findChange compares the config tree with the membership the newest
// member of the storage records. Nil when they agree, or when no member
// carries a readable superblock of one storage (Classify then decides).
func findChange(tree spec.Tree, probes []meta.Probe) (*change, error) {
	ref := newestSuper(probes)
	if ref == nil {
		return nil, nil
	}
	leaves := tree.Leaves()
	n, shape := len(leaves), tree.Shape()
	if ref.MemberCount == n && ref.Layout == shape {
		return nil, nil
	}
	table := ref.Members[:ref.MemberCount]
	// at[p] is where the table records the member config position p
	// carries: -1 for none (blank, unreadable, not in the table).
	at := make([]int, n)
	for p, pr := range probes {
		at[p] = -1
		if pr.Err == nil && pr.Super.StorageID == ref.StorageID {
			at[p] = slices.Index(table, pr.Super.MemberID)
		}
	}
	fits := func(m []int) bool {
		for p := range m {
			if at[p] >= 0 && at[p] != m[p] {
				return false
			}
		}
		return true
	}
	recTree, err := spec.ParseShape(ref.Layout)
	if err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	var found []*change
	switch n {
	case ref.MemberCount + 1:
		for k := range n {
			without, err := tree.WithoutLeaf(k)
			if err != nil || without.Shape() != ref.Layout {
				continue
			}
			m := make([]int, n)
			for p := range m {
				m[p] = p - btoi(p > k)
			}
			m[k] = -1
			if !fits(m) || !reachedProbe(probes[k]) {
				continue
			}
			found = append(found, &change{recorded: m, what: fmt.Sprintf("member %d (%s) added", k, leaves[k])})
		}
		if len(found) == 0 {
			for k := range n {
				if without, err := tree.WithoutLeaf(k); err == nil && without.Shape() == ref.Layout && !reachedProbe(probes[k]) {
					return nil, fmt.Errorf("engine: the config adds member %d (%s) to the storage, and it does not answer: "+
						"a replica added must answer at the start that adds it (%v)", k, leaves[k], probes[k].Err)
				}
			}
		}
	case ref.MemberCount - 1:
		for j := range ref.MemberCount {
			without, err := recTree.WithoutLeaf(j)
			if err != nil || without.Shape() != shape {
				continue
			}
			m := make([]int, n)
			for p := range m {
				m[p] = p + btoi(p >= j)
			}
			if fits(m) {
				found = append(found, &change{recorded: m, what: fmt.Sprintf("recorded member %d (%s) removed", j, table[j])})
			}
		}
	}
	if len(found) != 1 {
		return nil, differs(tree, ref, at, len(found))
	}
	c := found[0]
	c.layout = ref.Layout
	// The recorded size, from the table's raw sizes.
	l, err := recTree.Build(func(j int) (layout.Layout, error) {
		if ref.RawSizes[j] == 0 {
			return nil, errors.New("the superblocks do not record the members' sizes (written by an older dst): " +
				"start once with the config that matches them, then change it")
		}
		a, err := meta.Plan(ref.RawSizes[j], ref.RegionSize)
		if err != nil {
			return nil, err
		}
		return layout.NewLeaf(j, a.DataOffset, a.DataSize)
	})
	if err != nil {
		return nil, fmt.Errorf("engine: %s: %w", c.what, err)
	}
	c.size = l.Size()
	return c, nil
}

// differs explains a config that no single change makes the recorded
// membership: what the members record, and where the config's members
// are in it.
func differs(tree spec.Tree, ref *meta.Superblock, at []int, candidates int) error {
	var b strings.Builder
	fmt.Fprintf(&b, "the config names %d members as %s; the members record %d as %s at generation %d",
		len(at), tree.Shape(), ref.MemberCount, ref.Layout, ref.Generation)
	if candidates > 1 {
		b.WriteString(", and more than one member could be the one the config adds or removes: start with the members that answer")
	} else {
		b.WriteString(" (a start changes the membership by one replica of a mirror, added or removed)")
	}
	for p, u := range tree.Leaves() {
		if at[p] >= 0 {
			fmt.Fprintf(&b, "\n  %s: recorded member %d", u, at[p])
		} else {
			fmt.Fprintf(&b, "\n  %s: not in the recorded members", u)
		}
	}
	return errors.New(b.String())
}

// newestSuper is the newest superblock of the storage most members carry
// (nil if there is none, or a tie: Classify reports it).
func newestSuper(probes []meta.Probe) *meta.Superblock {
	id, tie := meta.Majority(probes)
	if id.IsZero() || tie {
		return nil
	}
	var ref *meta.Superblock
	for i, p := range probes {
		if p.Err == nil && p.Super.StorageID == id && (ref == nil || p.Super.Generation > ref.Generation) {
			ref = &probes[i].Super
		}
	}
	return ref
}

// reachedProbe: the media answered (a superblock, or a verdict on what it
// holds instead), not a read that failed.
func reachedProbe(p meta.Probe) bool {
	return p.Err == nil || errors.Is(p.Err, meta.ErrBlank) || errors.Is(p.Err, meta.ErrForeign) || isDamage(p.Err)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
