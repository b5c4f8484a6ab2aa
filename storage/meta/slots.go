package meta

import (
	"errors"
	"fmt"
)

// SlotOffset is the member offset of the superblock slot that a superblock
// of the given generation is written to: slot Generation%2, at 0 or
// SuperblockSize. Every superblock write bumps the generation, so writes
// alternate between the slots and never overwrite the newest copy: a torn
// write loses at most the update being written, never the member identity.
// Creating a member writes the same superblock to both slots (bitmap
// first, then slot 0, then slot 1).
func SlotOffset(generation uint64) int64 {
	return int64(generation%SuperblockSlots) * SuperblockSize
}

// Newest decodes both slots (the SuperblockSize bytes at member offsets 0
// and SuperblockSize) and returns the valid one with the higher generation
// and its slot number. On equal generations it returns the copy in slot
// SlotOffset(generation), where a write of that generation goes.
//
// If only one slot is valid it is returned: the other is blank, foreign or
// torn. If both are valid but name a different storage or member id (a
// member re-created over an old one and interrupted), the error wraps
// ErrCorrupt: which one is current cannot be known. (The member index may
// differ: a change of membership renumbers the members.)
//
// If neither is valid: ErrBlank if both are blank, ErrForeign if both are
// blank or foreign (no dst superblock at all), otherwise the errors of the
// slots that hold a damaged dst superblock (ErrChecksum, ErrVersion,
// ErrCorrupt, ErrTruncated), never also ErrBlank or ErrForeign.
func Newest(slot0, slot1 []byte) (Superblock, int, error) {
	a, errA := UnmarshalSuperblock(slot0)
	b, errB := UnmarshalSuperblock(slot1)
	switch {
	case errA == nil && errB == nil:
		if a.StorageID != b.StorageID || a.MemberID != b.MemberID {
			return Superblock{}, -1, fmt.Errorf(
				"%w: superblock slots disagree: slot 0 storage %s member %s index %d generation %d, slot 1 storage %s member %s index %d generation %d",
				ErrCorrupt, a.StorageID, a.MemberID, a.MemberIndex, a.Generation,
				b.StorageID, b.MemberID, b.MemberIndex, b.Generation)
		}
		switch {
		case a.Generation > b.Generation:
			return a, 0, nil
		case b.Generation > a.Generation:
			return b, 1, nil
		case a.Generation%SuperblockSlots == 0:
			return a, 0, nil
		default:
			return b, 1, nil
		}
	case errA == nil:
		return a, 0, nil
	case errB == nil:
		return b, 1, nil
	}
	noDST := func(err error) bool { return errors.Is(err, ErrBlank) || errors.Is(err, ErrForeign) }
	switch {
	case errors.Is(errA, ErrBlank) && errors.Is(errB, ErrBlank):
		return Superblock{}, -1, fmt.Errorf("%w: both superblock slots", ErrBlank)
	case noDST(errA) && noDST(errB):
		return Superblock{}, -1, fmt.Errorf("%w: slot 0: %v; slot 1: %v", ErrForeign, errA, errB)
	case noDST(errA):
		return Superblock{}, -1, fmt.Errorf("slot 1: %w (slot 0: %v)", errB, errA)
	case noDST(errB):
		return Superblock{}, -1, fmt.Errorf("slot 0: %w (slot 1: %v)", errA, errB)
	default:
		return Superblock{}, -1, fmt.Errorf("slot 0: %w; slot 1: %w", errA, errB)
	}
}
