package meta

import "errors"

// Error classes. Every error returned by this package wraps exactly one of
// these (check with errors.Is); the message adds the field, the value and
// the bound that was violated.
var (
	// ErrTruncated: the buffer is shorter than the structure it must hold.
	ErrTruncated = errors.New("meta: buffer truncated")
	// ErrBlank: the superblock area is all zeros (new or wiped media).
	ErrBlank = errors.New("meta: blank superblock")
	// ErrForeign: the superblock area holds something that is not a dst
	// superblock (wrong magic, not all zeros), e.g. a file system.
	ErrForeign = errors.New("meta: foreign superblock")
	// ErrVersion: a dst superblock of a format version this code does not
	// read.
	ErrVersion = errors.New("meta: unsupported superblock version")
	// ErrChecksum: the CRC32C of a superblock or bitmap page does not
	// match (torn write, bit rot).
	ErrChecksum = errors.New("meta: checksum mismatch")
	// ErrCorrupt: the checksum matches but a field is out of bounds or
	// inconsistent with another field.
	ErrCorrupt = errors.New("meta: corrupt metadata")
	// ErrInvalid: the caller passed values that cannot be planned or
	// encoded (MarshalTo of an inconsistent Superblock, a bad region size).
	ErrInvalid = errors.New("meta: invalid argument")
	// ErrTooSmall: a member cannot hold the metadata plus one byte of data.
	ErrTooSmall = errors.New("meta: member too small")
)

// Assembly error classes, returned by Classify.
var (
	// ErrRefused: a member is foreign, damaged or mismatched and the
	// caller did not allow it to be replaced.
	ErrRefused = errors.New("meta: member refused")
	// ErrUnformatted: no member carries a dst superblock; the storage
	// must be created, not assembled.
	ErrUnformatted = errors.New("meta: storage not formatted")
	// ErrAmbiguous: members carry superblocks of several storages and no
	// storage id was given to choose between them.
	ErrAmbiguous = errors.New("meta: ambiguous storage id")
	// ErrSplitBrain: members at the same newest generation disagree on
	// which members were in sync: two halves ran separately.
	ErrSplitBrain = errors.New("meta: split brain")
	// ErrNoSource: no reachable member holds the newest data.
	ErrNoSource = errors.New("meta: no in-sync member")
	// ErrDegraded: a member of the newest in-sync set is unreachable or
	// unreadable, so it may hold newer data than every reachable member.
	ErrDegraded = errors.New("meta: in-sync member missing")
)
