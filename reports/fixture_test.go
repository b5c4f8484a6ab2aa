// This file proves nothing by itself: it builds the empty, passing, failing
// and large runs the other tests render, from a fixed seed so every run of
// the tests sees the same data.
package reports

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

var fixtureStart = time.Date(2026, 11, 25, 1, 0, 0, 0, time.UTC)

// nastyDiagnosis is a diagnosis line with every character HTML and XML
// must escape.
const nastyDiagnosis = `sector 0x1f3000 <bad>: want write #812 & got "stale" write #790 from node-2`

func emptyRun() *Run { return &Run{} }

// passingRun is a short run where everything passed.
func passingRun() *Run {
	r := &Run{
		Scenario: "mirror3-ext4-smoke", Description: "three-way mirror, ext4 cycles, one node kill",
		Seed: 42, Replay: "dst torture run --scenario mirror3-ext4-smoke --seed 42",
		Start: fixtureStart, End: fixtureStart.Add(2 * time.Minute), Result: ResultPass,
		StopReason: "duration reached", Topology: "mirror(node-1, node-2, node-3) 1 GiB",
	}
	r.Samples = genSamples(rand.New(rand.NewPCG(1, 2)), fixtureStart, 120, nil)
	r.Faults = []Fault{{Kind: "kill-node", Target: "node-2", Start: fixtureStart.Add(30 * time.Second),
		End: fixtureStart.Add(40 * time.Second), Recovered: fixtureStart.Add(52 * time.Second)}}
	r.Cycles = genCycles(fixtureStart, 3, "ext4", -1)
	r.Resyncs = []Resync{{Member: "node-2", Start: fixtureStart.Add(40 * time.Second), Bytes: 64 << 20, Duration: 12 * time.Second}}
	r.Checks = []Check{{Name: "replicas identical", Passed: true, Duration: 3 * time.Second}}
	r.Counters = Counters{Cycles: 3, BytesWritten: 3 << 30, BytesVerified: 3 << 30, FaultsInjected: 1, Ops: 123456}
	return r
}

// failingRun is a realistic overnight-ish run: faults of several kinds, ext4,
// xfs and raw cycles, a failed verify with a decoded diagnosis, a failure
// that matches no phase and a failed check.
func failingRun(hours float64) *Run {
	start := fixtureStart
	n := int(hours * 3600)
	end := start.Add(time.Duration(n) * time.Second)
	rng := rand.New(rand.NewPCG(7, 7))
	r := &Run{
		Scenario:    "stripe-mirror-xfs-kill",
		Description: "stripe over two mirrors; kill, stop and replace nodes under xfs, ext4 and raw cycles",
		Seed:        1733, Replay: `dst torture run --scenario stripe-mirror-xfs-kill --seed 1733 --only-cycle 7`,
		Start: start, End: end, Result: ResultFail, StopReason: `verify failed in cycle 7 <xfs> & stopped "early"`,
		Topology: "stripe(64 KiB)\n  mirror(node-1 [10.0.0.1:10809], node-2 [10.0.0.2:10809])\n  mirror(node-3 [local /var/lib/dst/n3], node-4 [nbdkit memory])",
	}
	kinds := []string{"kill-node", "stop-node", "cut-link", "delay-link", "replace-media", "restart-engine"}
	for t := 120; t < n-60; t += 300 + rng.IntN(600) {
		k := kinds[rng.IntN(len(kinds))]
		fs := start.Add(time.Duration(t) * time.Second)
		fe := fs.Add(time.Duration(10+rng.IntN(50)) * time.Second)
		f := Fault{Kind: k, Target: fmt.Sprintf("node-%d", 1+rng.IntN(4)), Start: fs, End: fe}
		if rng.IntN(5) > 0 {
			f.Recovered = fe.Add(time.Duration(2+rng.IntN(40)) * time.Second)
		} else {
			f.Note = "resync still running at next fault"
		}
		r.Faults = append(r.Faults, f)
	}
	r.Samples = genSamples(rng, start, n, r.Faults)
	fss := []string{"ext4", "xfs", "raw"}
	for i := 0; i*45 < n && i < 500; i++ {
		cs := genCycles(start.Add(time.Duration(i*45)*time.Second), 1, fss[i%3], -1)
		cs[0].Index = i
		if i == 7 {
			cs = genCycles(start.Add(time.Duration(i*45)*time.Second), 1, "xfs", 7)
			cs[0].Index = i
		}
		r.Cycles = append(r.Cycles, cs[0])
	}
	r.Failures = []Failure{
		{
			Cycle: 7, Phase: "verify", Time: start.Add(7*45*time.Second + 40*time.Second),
			Message: `file /mnt/dst/d03/f0172 differs at offset 1048576 (want <stamp 812>, got "stale")`,
			Diagnosis: []string{
				nastyDiagnosis,
				"  layout: stripe chunk 26, mirror 1, members node-3 node-4",
				"  node-3: sector matches write #812 (ok)",
				"  node-4: sector holds write #790, written 00:05:13 before the node was replaced",
			},
			Bundle: "/var/lib/dst/failures/stripe-mirror-xfs-kill-1733-cycle7",
		},
		{Cycle: -1, Message: "engine log: resync of node-4 restarted 3 times", Diagnosis: []string{"see events.jsonl kind=resync"}},
	}
	r.Resyncs = []Resync{
		{Member: "node-2", Start: start.Add(10 * time.Minute), Bytes: 96 << 20, Duration: 14 * time.Second},
		{Member: "node-4", Start: start.Add(50 * time.Minute), Bytes: 8 << 30, Duration: 95 * time.Second, Full: true},
	}
	r.Checks = []Check{
		{Name: "replicas identical", Passed: false, Message: "mirror 1: 3 regions differ between node-3 and node-4 (first at 0x1f3000)", Duration: 41 * time.Second},
		{Name: "resync within bound", Passed: true, Message: "max 95s <= 120s", Duration: time.Millisecond},
	}
	var written int64
	for i := range r.Samples {
		written += int64(r.Samples[i].WriteBytesPerSec)
	}
	r.Counters = Counters{Cycles: int64(len(r.Cycles)), BytesWritten: written, BytesVerified: written / 2,
		FaultsInjected: int64(len(r.Faults)), Ops: int64(n) * 1800}
	return r
}

// largeRun has the size of an overnight run: 30k samples, 500 cycles.
func largeRun() *Run {
	r := failingRun(30000.0 / 3600)
	for len(r.Cycles) < 500 {
		c := genCycles(r.End, 1, "ext4", -1)
		c[0].Index = len(r.Cycles)
		r.Cycles = append(r.Cycles, c[0])
	}
	return r
}

// genSamples makes n one-second samples: steady throughput with noise that
// drops, and latency that rises, inside fault windows.
func genSamples(rng *rand.Rand, start time.Time, n int, faults []Fault) []Sample {
	out := make([]Sample, n)
	for i := range out {
		t := start.Add(time.Duration(i+1) * time.Second)
		factor := 1.0
		for _, f := range faults {
			if !t.Before(f.Start) && t.Before(f.End) {
				factor = 0.15
			} else if !t.Before(f.End) && t.Before(f.Recovered) {
				factor = math.Min(factor, 0.6)
			}
		}
		wave := 1 + 0.2*math.Sin(float64(i)/300)
		out[i] = Sample{
			T:                t,
			WriteBytesPerSec: factor * wave * (180e6 + rng.Float64()*40e6),
			ReadBytesPerSec:  factor * wave * (90e6 + rng.Float64()*30e6),
			OpsPerSec:        factor * (1800 + rng.Float64()*400),
			LatencyP50:       time.Duration(float64(400*time.Microsecond) / factor * (0.8 + 0.4*rng.Float64())),
			LatencyP99:       time.Duration(float64(4*time.Millisecond) / factor * (0.8 + 0.8*rng.Float64())),
			LatencyMax:       time.Duration(float64(20*time.Millisecond) / factor * (0.5 + rng.Float64())),
		}
	}
	return out
}

// genCycles makes n filesystem (or raw) cycles starting at start; phase
// failAt of the first cycle fails (-1: none).
func genCycles(start time.Time, n int, fs string, failAt int) []Cycle {
	names := []string{"mkfs", "mount", "write", "sync", "umount", "fsck", "mount", "verify", "umount"}
	if fs == "raw" {
		names = []string{"raw-write", "flush", "raw-verify"}
	}
	var out []Cycle
	t := start
	for i := 0; i < n; i++ {
		c := Cycle{Index: i, Filesystem: fs}
		for j, name := range names {
			d := time.Duration(50+j*130+i%7*10) * time.Millisecond
			if name == "write" || name == "raw-write" || name == "verify" {
				d = time.Duration(8+j) * time.Second
			}
			ph := Phase{Name: name, Start: t, Duration: d, Output: name + " ok"}
			if i == 0 && j == failAt {
				ph.Err = "verify: 1 file differs <see diagnosis> & 0 missing"
				ph.Output = "checked 1200 files\nf0172: mismatch at 1048576\n\x00binary\xff junk"
			}
			c.Phases = append(c.Phases, ph)
			t = t.Add(d)
		}
		out = append(out, c)
	}
	return out
}
