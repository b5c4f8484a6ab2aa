package torture

import (
	"fmt"
	"math/rand/v2"
	"time"

	"dst/torture/scenario"
)

// Fault is one planned fault of a run's schedule.
type Fault struct {
	// Index counts faults from 0.
	Index int
	// Gap is the pause before the fault, after the previous one healed and
	// the storage recovered.
	Gap    time.Duration
	Kind   string
	Target string
	// Downtime is how long the fault lasts before it is healed (for
	// replace and reset: unused).
	Downtime time.Duration
	// Delay is the latency a delay fault adds.
	Delay time.Duration
	// Partner (power faults) is the fault its mirror replicas get at the
	// same time: "", hang or cut. Op is a media error's request kind.
	Partner, Op string
	// Seed seeds what the fault draws itself (a media fault's range).
	Seed uint64
}

func (f Fault) String() string {
	s := fmt.Sprintf("fault %d: %s %s", f.Index, f.Kind, f.Target)
	switch f.Kind {
	case "replace", "replace-online", "add-online", "reset":
	case "delay":
		s += fmt.Sprintf(" +%v for %v", f.Delay, f.Downtime)
	default:
		s += fmt.Sprintf(" for %v", f.Downtime)
	}
	if f.Op != "" {
		s += " on " + f.Op
	}
	if f.Partner != "" {
		s += ", its replicas " + f.Partner
	}
	return s
}

// Schedule draws a run's faults from its seed: the same seed and scenario
// give the same faults in the same order, with the same gaps and
// downtimes, however long each one takes to heal. It is an endless
// stream; Next returns the next fault.
type Schedule struct {
	rng   *rand.Rand
	seed  uint64 // seeds each fault's own draws (Fault.Seed)
	f     scenario.Faults
	total int
	n     int
}

// NewSchedule returns the fault schedule of seed for f; f without kinds
// yields no faults.
func NewSchedule(seed uint64, f scenario.Faults) *Schedule {
	s := &Schedule{rng: rand.New(rand.NewPCG(seed, 0xfa0175)), seed: seed, f: f}
	for _, k := range f.Kinds {
		s.total += k.Weight
	}
	return s
}

// Next returns the next fault, or false when the scenario has none.
func (s *Schedule) Next() (Fault, bool) {
	if s.total == 0 {
		return Fault{}, false
	}
	pick := s.rng.IntN(s.total)
	var k scenario.FaultKind
	for _, k = range s.f.Kinds {
		if pick < k.Weight {
			break
		}
		pick -= k.Weight
	}
	f := Fault{
		Index:   s.n,
		Gap:     s.f.Interval/2 + time.Duration(s.rng.Int64N(int64(s.f.Interval)+1)),
		Kind:    k.Kind,
		Target:  k.Targets[s.rng.IntN(len(k.Targets))],
		Delay:   k.Delay,
		Partner: k.Partner,
		Op:      k.Op,
		Seed:    s.seed ^ uint64(s.n+1)*0x9e3779b97f4a7c15,
	}
	f.Downtime = k.DowntimeMin
	if span := k.DowntimeMax - k.DowntimeMin; span > 0 {
		f.Downtime += time.Duration(s.rng.Int64N(int64(span) + 1))
	}
	s.n++
	return f, true
}
