package raw

import "encoding/json"

// LedgerDump is the expected state for a failure bundle, bounded in size:
// counts, the ranges whose expectations are not simply "the durable
// write", and the writes not settled into a single durable state.
type LedgerDump struct {
	Seed      uint64 `json:"seed"`
	Size      int64  `json:"size"`
	Writes    int    `json:"writes"`
	InFlight  int    `json:"in_flight"`
	Unflushed int    `json:"unflushed"`
	Losses    int    `json:"losses"`
	Segments  int    `json:"segments"`
	// Ranges are the first ranges (by offset) with more than one
	// candidate or a candidate that is not durable; RangesTotal counts
	// them all.
	Ranges      []RangeDump `json:"ranges"`
	RangesTotal int         `json:"ranges_total"`
	// Open are the first writes that failed or are not durable yet;
	// OpenTotal counts them all.
	Open      []WriteInfo `json:"open"`
	OpenTotal int         `json:"open_total"`
}

// RangeDump is one range of the ledger: what it may hold now and after a
// loss event.
type RangeDump struct {
	Off     int64    `json:"off"`
	End     int64    `json:"end"`
	Now     []uint64 `json:"now"`
	Loss    []uint64 `json:"loss"`
	Durable uint64   `json:"durable"`
}

// Dump summarises the ledger, keeping at most max ranges and max writes.
func (l *Ledger) Dump(max int) LedgerDump {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := LedgerDump{Seed: l.seed, Size: l.size, Writes: len(l.recs), InFlight: l.inflight,
		Unflushed: len(l.unflushed), Losses: l.losses, Ranges: []RangeDump{}, Open: []WriteInfo{}}
	for _, b := range l.buckets {
		d.Segments += len(b)
		for _, s := range b {
			if len(s.cur) == 1 && len(s.loss) == 1 && s.cur[0] == s.durable {
				continue
			}
			d.RangesTotal++
			if len(d.Ranges) < max {
				d.Ranges = append(d.Ranges, RangeDump{Off: s.off, End: s.end, Now: s.cur, Loss: s.loss, Durable: s.durable})
			}
		}
	}
	for i := range l.recs {
		r := &l.recs[i]
		if r.durable {
			continue
		}
		d.OpenTotal++
		if len(d.Open) < max {
			d.Open = append(d.Open, r.info())
		}
	}
	return d
}

// MarshalJSON writes Dump(1000).
func (l *Ledger) MarshalJSON() ([]byte, error) { return json.Marshal(l.Dump(1000)) }
