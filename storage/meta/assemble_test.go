// Classify's generation rules are pinned by one table of member sets, each naming the expected state and action of every member, the error class, the source and the clean verdict.
package meta

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestClassify(t *testing.T) {
	// p is member index i of n at generation gen recording in-sync set in.
	p := func(i, n int, gen uint64, in Mask, mods ...func(*Superblock)) Probe {
		s := testSuper(t, i, n, gen, in)
		for _, m := range mods {
			m(&s)
		}
		return Probe{Super: s}
	}
	clean := func(s *Superblock) { s.Flags |= FlagClean }
	storage := func(id ID) func(*Superblock) { return func(s *Superblock) { s.StorageID = id } }
	layout := func(l string) func(*Superblock) { return func(s *Superblock) { s.Layout = l } }
	region := func(r int64) func(*Superblock) {
		return func(s *Superblock) {
			a, err := Plan(s.RawSize, r)
			require.NoError(t, err)
			s.Area = a
		}
	}
	// table records member ids at positions: the newest writer's member
	// table, with position r given to a replacement.
	table := func(n, r int) func(*Superblock) {
		return func(s *Superblock) {
			for i := range n {
				s.Members[i] = testSuper(t, i, n, 0, 0).MemberID
			}
			s.Members[r] = ID{0xbb, byte(r), 0, 0, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 2}
		}
	}
	replacement := func(r int) func(*Superblock) {
		return func(s *Superblock) { s.MemberID = ID{0xbb, byte(r), 0, 0, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 2} }
	}
	// id is the member id testSuper gives index i; tbl writes a member
	// table, mid a member id.
	id := func(i int) ID { return testSuper(t, i, 1, 0, 0).MemberID }
	newcomer := ID{0xcc, 1, 0, 0, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 3}
	tbl := func(ids ...ID) func(*Superblock) {
		return func(s *Superblock) { s.Members = [MaxMembers]ID{}; copy(s.Members[:], ids) }
	}
	mid := func(v ID) func(*Superblock) { return func(s *Superblock) { s.MemberID = v } }
	failed := func(err error) Probe { return Probe{Err: fmt.Errorf("member: %w", err)} }
	blank, foreign, damaged := failed(ErrBlank), failed(ErrForeign), failed(ErrChecksum)
	absent := failed(io.ErrUnexpectedEOF)

	const (
		in    = StateInSync
		stale = StateStale
		rebld = StateRebuilding
		blnk  = StateBlank
		frgn  = StateForeign
		mism  = StateMismatch
		dmgd  = StateDamaged
		absnt = StateAbsent
		serve = ActionServe
		dirty = ActionResyncDirty
		full  = ActionResyncFull
		skip  = ActionSkip
		rfse  = ActionRefuse
	)
	tests := []struct {
		name    string
		probes  []Probe
		opt     Options
		states  []State
		actions []Action
		err     error
		source  int
		clean   bool
		gen     uint64
		inSync  Mask
	}{
		{name: "single member",
			probes: []Probe{p(0, 1, 3, 0b1, clean)},
			states: []State{in}, actions: []Action{serve}, source: 0, clean: true, gen: 3, inSync: 0b1},
		{name: "all in sync, clean",
			probes: []Probe{p(0, 3, 9, 0b111, clean), p(1, 3, 9, 0b111, clean), p(2, 3, 9, 0b111, clean)},
			states: []State{in, in, in}, actions: []Action{serve, serve, serve}, source: 0, clean: true, gen: 9, inSync: 0b111},
		{name: "all in sync, crashed",
			probes: []Probe{p(0, 2, 9, 0b11, clean), p(1, 2, 9, 0b11)},
			states: []State{in, in}, actions: []Action{serve, serve}, source: 0, gen: 9, inSync: 0b11},
		{name: "member 2 left and came back: stale",
			probes: []Probe{p(0, 3, 6, 0b011, clean), p(1, 3, 6, 0b011, clean), p(2, 3, 5, 0b111, clean)},
			states: []State{in, in, stale}, actions: []Action{serve, serve, dirty}, source: 0, clean: true, gen: 6, inSync: 0b011},
		{name: "superblock update interrupted: lagging member still in sync",
			probes: []Probe{p(0, 2, 6, 0b11), p(1, 2, 5, 0b11, clean)},
			states: []State{in, in}, actions: []Action{serve, serve}, source: 0, gen: 6, inSync: 0b11},
		{name: "source prefers a member at the newest generation",
			probes: []Probe{p(0, 2, 5, 0b11), p(1, 2, 6, 0b11)},
			states: []State{in, in}, actions: []Action{serve, serve}, source: 1, gen: 6, inSync: 0b11},
		{name: "blank media: full resync, no operator step",
			probes: []Probe{p(0, 2, 4, 0b01, clean), blank},
			states: []State{in, blnk}, actions: []Action{serve, full}, source: 0, clean: true, gen: 4, inSync: 0b01},
		{name: "blank media where an in-sync member was: not degraded",
			probes: []Probe{p(0, 2, 4, 0b11), blank},
			states: []State{in, blnk}, actions: []Action{serve, full}, source: 0, gen: 4, inSync: 0b11},
		{name: "interrupted rebuild restarts in full",
			probes: []Probe{p(0, 2, 8, 0b01), p(1, 2, 8, 0b01)},
			states: []State{in, rebld}, actions: []Action{serve, full}, source: 0, gen: 8, inSync: 0b01},
		{name: "rebuilt member wrote first: the other only lags",
			probes: []Probe{p(0, 2, 7, 0b01), p(1, 2, 8, 0b11)},
			states: []State{in, in}, actions: []Action{serve, serve}, source: 1, gen: 8, inSync: 0b11},
		{name: "rebuilding member is newer than every complete one",
			probes: []Probe{p(0, 3, 5, 0b011), p(1, 3, 7, 0b100), absent},
			states: []State{stale, rebld, absnt}, actions: []Action{dirty, full, skip}, err: ErrNoSource, gen: 7, inSync: 0b100},
		{name: "replaced member back at its old position: refused with what to change",
			probes: []Probe{p(0, 2, 9, 0b01, table(2, 1)), p(1, 2, 5, 0b11, clean)},
			states: []State{in, mism}, actions: []Action{serve, rfse}, err: ErrRefused},
		{name: "replaced member back at its old position, replace allowed: copied whole",
			probes: []Probe{p(0, 2, 9, 0b01, table(2, 1)), p(1, 2, 5, 0b11, clean)}, opt: Options{Replace: []bool{false, true}},
			states: []State{in, mism}, actions: []Action{serve, full}, source: 0, gen: 9, inSync: 0b01},
		{name: "the replacement, in sync, with the table",
			probes: []Probe{p(0, 2, 9, 0b11, table(2, 1), clean), p(1, 2, 9, 0b11, table(2, 1), replacement(1), clean)},
			states: []State{in, in}, actions: []Action{serve, serve}, source: 0, clean: true, gen: 9, inSync: 0b11},
		{name: "the replacement in the middle of its copy",
			probes: []Probe{p(0, 2, 9, 0b01, table(2, 1)), p(1, 2, 8, 0b01, replacement(1))},
			states: []State{in, rebld}, actions: []Action{serve, full}, source: 0, gen: 9, inSync: 0b01},
		{name: "not a dst member: refused",
			probes: []Probe{p(0, 2, 4, 0b11), foreign},
			states: []State{in, frgn}, actions: []Action{serve, rfse}, err: ErrRefused},
		{name: "not a dst member, replace allowed",
			probes: []Probe{p(0, 2, 4, 0b11), foreign}, opt: Options{Replace: []bool{false, true}},
			states: []State{in, frgn}, actions: []Action{serve, full}, source: 0, gen: 4, inSync: 0b11},
		{name: "member of another storage: refused",
			probes: []Probe{p(0, 3, 4, 0b111), p(1, 3, 4, 0b111), p(2, 3, 9, 0b111, storage(testOther))},
			states: []State{in, in, frgn}, actions: []Action{serve, serve, rfse}, err: ErrRefused},
		{name: "member of another storage, replace allowed",
			probes: []Probe{p(0, 3, 4, 0b111), p(1, 3, 4, 0b111), p(2, 3, 9, 0b111, storage(testOther))},
			opt:    Options{Replace: []bool{false, false, true}},
			states: []State{in, in, frgn}, actions: []Action{serve, serve, full}, source: 0, gen: 4, inSync: 0b111},
		{name: "damaged superblock: refused",
			probes: []Probe{p(0, 2, 4, 0b11), damaged},
			states: []State{in, dmgd}, actions: []Action{serve, rfse}, err: ErrRefused},
		{name: "damaged superblock, replace allowed",
			probes: []Probe{p(0, 2, 4, 0b11), damaged}, opt: Options{Replace: []bool{false, true}},
			states: []State{in, dmgd}, actions: []Action{serve, full}, source: 0, gen: 4, inSync: 0b11},
		{name: "swapped disks",
			probes: []Probe{p(1, 2, 4, 0b11), p(0, 2, 4, 0b11)},
			states: []State{mism, mism}, actions: []Action{rfse, rfse}, err: ErrRefused},
		{name: "same disk listed twice",
			probes: []Probe{p(0, 2, 4, 0b11), p(0, 2, 4, 0b11)},
			states: []State{in, mism}, actions: []Action{serve, rfse}, err: ErrRefused},
		{name: "wrong member count",
			probes: []Probe{p(0, 2, 4, 0b11), p(1, 2, 4, 0b11), blank},
			states: []State{mism, mism, blnk}, actions: []Action{rfse, rfse, full}, err: ErrRefused},
		{name: "layout other than expected",
			probes: []Probe{p(0, 2, 4, 0b11), p(1, 2, 4, 0b11)}, opt: Options{Layout: "mirror(#0, #1)"},
			states: []State{mism, mism}, actions: []Action{rfse, rfse}, err: ErrRefused},
		{name: "layout as expected",
			probes: []Probe{p(0, 2, 4, 0b11), p(1, 2, 4, 0b11)}, opt: Options{Layout: testLayout},
			states: []State{in, in}, actions: []Action{serve, serve}, source: 0, gen: 4, inSync: 0b11},
		{name: "older member with another layout",
			probes: []Probe{p(0, 2, 4, 0b11), p(1, 2, 3, 0b11, layout("linear(#0, #1)"))},
			states: []State{in, mism}, actions: []Action{serve, rfse}, err: ErrRefused},
		{name: "older member with another region size, replace allowed",
			probes: []Probe{p(0, 2, 4, 0b01), p(1, 2, 3, 0b11, region(1<<16))}, opt: Options{Replace: []bool{false, true}},
			states: []State{in, mism}, actions: []Action{serve, full}, source: 0, gen: 4, inSync: 0b01},
		{name: "absent member that had left",
			probes: []Probe{p(0, 2, 4, 0b01), absent},
			states: []State{in, absnt}, actions: []Action{serve, skip}, source: 0, gen: 4, inSync: 0b01},
		{name: "absent member that was in sync may be newer",
			probes: []Probe{p(0, 2, 4, 0b11), absent},
			states: []State{in, absnt}, actions: []Action{serve, skip}, err: ErrDegraded},
		{name: "absent member that was in sync, degraded allowed",
			probes: []Probe{p(0, 2, 4, 0b11), absent}, opt: Options{AllowDegraded: true},
			states: []State{in, absnt}, actions: []Action{serve, skip}, source: 0, gen: 4, inSync: 0b11},
		{name: "both halves ran alone at the same generation",
			probes: []Probe{p(0, 2, 7, 0b01), p(1, 2, 7, 0b10)},
			states: []State{StateUnknown, StateUnknown}, actions: []Action{rfse, rfse}, err: ErrSplitBrain},
		{name: "two storages, one member each",
			probes: []Probe{p(0, 2, 4, 0b11), p(1, 2, 4, 0b11, storage(testOther))},
			states: []State{StateUnknown, StateUnknown}, actions: []Action{rfse, rfse}, err: ErrAmbiguous},
		{name: "two storages, majority wins",
			probes: []Probe{p(0, 3, 4, 0b111, storage(testOther)), p(1, 3, 4, 0b111), p(2, 3, 4, 0b111)},
			states: []State{frgn, in, in}, actions: []Action{rfse, serve, serve}, err: ErrRefused},
		{name: "two storages, storage named",
			probes: []Probe{p(0, 2, 4, 0b01), p(1, 2, 4, 0b11, storage(testOther))}, opt: Options{StorageID: testStorage},
			states: []State{in, frgn}, actions: []Action{serve, rfse}, err: ErrRefused},
		{name: "named storage on no member",
			probes: []Probe{p(0, 2, 4, 0b11), p(1, 2, 4, 0b11)}, opt: Options{StorageID: testOther},
			states: []State{frgn, frgn}, actions: []Action{rfse, rfse}, err: ErrRefused},
		{name: "all blank",
			probes: []Probe{blank, blank},
			states: []State{blnk, blnk}, actions: []Action{full, full}, err: ErrUnformatted},
		{name: "blank and not dst",
			probes: []Probe{blank, foreign},
			states: []State{blnk, frgn}, actions: []Action{full, rfse}, err: ErrUnformatted},
		{name: "blank and damaged",
			probes: []Probe{blank, damaged},
			states: []State{blnk, dmgd}, actions: []Action{full, rfse}, err: ErrRefused},
		{name: "all absent",
			probes: []Probe{absent, absent},
			states: []State{absnt, absnt}, actions: []Action{skip, skip}, err: ErrNoSource},
		{name: "a replica added at position 1: copied whole",
			probes: []Probe{p(0, 2, 4, 0b11, clean), blank, p(1, 2, 4, 0b11, clean)}, opt: Options{Recorded: []int{0, -1, 1}},
			states: []State{in, blnk, in}, actions: []Action{serve, full, serve}, source: 0, clean: true, gen: 4, inSync: 0b11},
		{name: "a replica added on a disk that a removed member left: copied whole",
			probes: []Probe{p(0, 2, 4, 0b11, tbl(id(0), id(1))), p(1, 3, 2, 0b111, mid(newcomer)), p(1, 2, 4, 0b11, tbl(id(0), id(1)))},
			opt:    Options{Recorded: []int{0, -1, 1}},
			states: []State{in, rebld, in}, actions: []Action{serve, full, serve}, source: 0, gen: 4, inSync: 0b11},
		{name: "a member of the table at a position added: refused",
			probes: []Probe{p(0, 2, 4, 0b11, tbl(id(0), id(1))), p(1, 2, 4, 0b11, tbl(id(0), id(1))), blank},
			opt:    Options{Recorded: []int{0, -1, 1}},
			states: []State{in, mism, blnk}, actions: []Action{serve, rfse, full}, err: ErrRefused},
		{name: "a replica removed: the others serve",
			probes: []Probe{p(0, 3, 5, 0b111, clean), p(2, 3, 5, 0b111, clean)}, opt: Options{Recorded: []int{0, 2}},
			states: []State{in, in}, actions: []Action{serve, serve}, source: 0, clean: true, gen: 5, inSync: 0b111},
		{name: "a replica removed, the recorded positions checked",
			probes: []Probe{p(0, 3, 5, 0b111), p(1, 3, 5, 0b111)}, opt: Options{Recorded: []int{0, 2}},
			states: []State{in, mism}, actions: []Action{serve, rfse}, err: ErrRefused},
		{name: "a change of membership recorded in part: the lagging member renumbered serves",
			probes: []Probe{p(0, 3, 6, 0b101, tbl(id(0), newcomer, id(1))), p(1, 3, 6, 0b101, mid(newcomer), tbl(id(0), newcomer, id(1))),
				p(1, 2, 5, 0b11, clean, layout("mirror(#0,#1)"))},
			states: []State{in, rebld, in}, actions: []Action{serve, full, serve}, source: 0, gen: 6, inSync: 0b101},
		{name: "a renumbered member the table does not name: refused",
			probes: []Probe{p(0, 3, 6, 0b101, tbl(id(0), newcomer, id(2))), p(1, 3, 6, 0b101, mid(newcomer)),
				p(1, 2, 5, 0b11, clean, layout("mirror(#0,#1)"))},
			states: []State{in, rebld, mism}, actions: []Action{serve, full, rfse}, err: ErrRefused},
		{name: "no members", probes: nil, err: ErrInvalid},
		{name: "too many members", probes: make([]Probe, MaxMembers+1), err: ErrInvalid},
	}
	classes := []error{ErrRefused, ErrUnformatted, ErrAmbiguous, ErrSplitBrain, ErrNoSource, ErrDegraded, ErrInvalid}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			as, err := Classify(tt.probes, tt.opt)
			require.Len(t, as.Members, len(tt.probes))
			for i, v := range as.Members {
				t.Logf("member %d: %s, %s: %s", i, v.State, v.Action, v.Reason)
			}
			if tt.states != nil {
				got := make([]State, len(as.Members))
				acts := make([]Action, len(as.Members))
				for i, v := range as.Members {
					got[i], acts[i] = v.State, v.Action
				}
				assert.Equal(t, tt.states, got, "states")
				assert.Equal(t, tt.actions, acts, "actions")
			}
			if tt.err != nil {
				require.ErrorIs(t, err, tt.err)
				for _, c := range classes {
					if !errors.Is(tt.err, c) {
						assert.NotErrorIs(t, err, c, "wraps a second class")
					}
				}
				t.Log(err)
				if tt.inSync != 0 {
					assert.Equal(t, tt.gen, as.Generation)
					assert.Equal(t, tt.inSync, as.InSync)
				}
				return
			}
			require.NoError(t, err)
			assert.Equal(t, testStorage, as.StorageID)
			assert.Equal(t, tt.source, as.Source, "source")
			assert.Equal(t, tt.clean, as.Clean, "clean")
			assert.Equal(t, tt.gen, as.Generation, "generation")
			assert.Equal(t, tt.inSync, as.InSync, "in-sync")
			assert.Equal(t, testLayout, as.Layout)
			assert.Equal(t, int64(DefaultRegionSize), as.RegionSize)
		})
	}
}
