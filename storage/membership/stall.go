package membership

import "time"

// Stall is the failover watchdog's memory (rule 11): per member, its
// count of finished pieces at the last change and when that was. Time is
// passed in; Stall reads no clock.
type Stall struct {
	failover time.Duration
	last     []uint64
	since    []time.Time
}

// NewStall returns the watchdog memory of n members that stall after
// failover without progress.
func NewStall(n int, failover time.Duration) *Stall {
	return &Stall{failover: failover, last: make([]uint64, n), since: make([]time.Time, n)}
}

// Progress is what the watchdog sees of a member at a tick.
type Progress struct {
	// Watched: it is under a mirror and takes writes.
	Watched bool
	// Done counts the pieces it finished, either way.
	Done uint64
	// Busy counts its pieces pending, FLUSHes not counted (a long FLUSH
	// alone is no stall).
	Busy int32
}

// Tick reports whether member i is stalled at now and for how long it
// was quiet. A stalled member's next verdict comes after another failover
// time, not at every tick.
func (s *Stall) Tick(now time.Time, i int, p Progress) (stalled bool, quiet time.Duration) {
	if !p.Watched || p.Busy <= 0 || p.Done != s.last[i] || s.since[i].IsZero() {
		s.last[i], s.since[i] = p.Done, now
		return false, 0
	}
	quiet = now.Sub(s.since[i])
	if quiet < s.failover {
		return false, quiet
	}
	s.since[i] = now
	return true, quiet
}
