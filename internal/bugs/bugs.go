// Package bugs holds the durability bugs the torture harness must catch,
// planted on purpose: a binary built with the build tag dstbugs turns on
// the bug named by $DST_PLANTED_BUG; any other build has none (On is a
// constant false and the compiler drops the planted code). The tests of
// package torture build such a binary and check that each bug fails a
// short run with the right diagnosis.
//
// The bugs:
//
//	flush-noop        a dst export with a volatile cache acknowledges FLUSH
//	                  without writing its cache (a disk that lies)
//	flush-one-member  the engine sends a client's FLUSH to the first member
//	                  that needs one and forgets the others
//	ignore-boot       the engine trusts a member whose machine restarted
//	                  while it held unflushed writes
//	activity-no-mark  the engine sends mirror writes without marking their
//	                  regions in the activity log, so a crash resync skips
//	                  regions a write in flight reached on one replica only
//	resync-unflushed  a resync clears a region's dirty mark without flushing
//	                  the member it copied to (the bug storage/sim found),
//	                  so a member that loses power after its resync comes
//	                  back in sync without the copy
//	no-fence          a dst server does not close a session's older
//	                  connections when a newer one fences them, so a write
//	                  the network held back lands after newer writes
//
// The simulator (storage/sim) must catch every bug of Sim;
// the torture harness catches flush-noop, flush-one-member and ignore-boot
// with real processes.
package bugs

// Names of the planted bugs.
const (
	FlushNoop       = "flush-noop"
	FlushOneMember  = "flush-one-member"
	IgnoreBoot      = "ignore-boot"
	ActivityNoMark  = "activity-no-mark"
	ResyncUnflushed = "resync-unflushed"
	NoFence         = "no-fence"
)

// All lists the planted bugs.
var All = []string{FlushNoop, FlushOneMember, IgnoreBoot, ActivityNoMark, ResyncUnflushed, NoFence}

// Engine lists the bugs of the engine (the others are of dst export).
var Engine = []string{FlushOneMember, IgnoreBoot, ActivityNoMark, ResyncUnflushed}

// Sim lists the bugs the simulator must catch: the engine's, and the
// server's fence (the simulator's links hold writes back).
var Sim = append(append([]string(nil), Engine...), NoFence)

// Env names the environment variable that picks the planted bug.
const Env = "DST_PLANTED_BUG"
