package torture

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/bugs"
	"dst/internal/dstbin"
	"dst/internal/testkit"
	"dst/reports"
	"dst/torture/scenario"
)

// powerMirror is a mirror of two nodes with a fast-failing engine, the
// topology of the power-cut runs.
const powerMirror = `topology:
  nodes:
    - {name: a, size: 24MiB+512, proxy: true}
    - {name: b, size: 24MiB+3584, proxy: true}
  storage: {layout: mirror, members: [a, b]}
  engine: {request_timeout: 1s, retries: 3, backoff_max: 200ms, ping_interval: 300ms, resync_interval: 200ms}
`

// TestPowerAndMediaFaultsPass cuts the power of mirror members (plain,
// torn, and with the other replica hung or cut at the same time) and
// fails their media (read, write and flush errors) under raw sectors and
// ext4: an engine that honours FLUSH and boots loses nothing, every byte
// verifies strictly and the replicas converge.
func TestPowerAndMediaFaultsPass(t *testing.T) {
	testkit.NeedAttach(t, "mkfs.ext4", "e2fsck")
	sc := parse(t, `name: power
description: power cuts, torn writes and media errors on the members of a mirror
duration: 45s
`+powerMirror+`workload:
  filesystems: [ext4]
  write_budget: 4MiB
  raw: {every: 1, ops: 1500, concurrency: 4, flush_every: 40, fua_percent: 5}
faults:
  interval: 2s
  kinds:
    - {kind: power-cut, targets: [a, b], downtime: 300ms..1s, weight: 2}
    - {kind: torn-write, targets: [a, b], downtime: 300ms..1s, weight: 2}
    - {kind: torn-write, targets: [a, b], downtime: 1s..2s, partner: hang}
    - {kind: power-cut, targets: [a, b], downtime: 1s..2s, partner: cut}
    - {kind: media-error, targets: [a, b], downtime: 1s..2s, op: read}
    - {kind: media-error, targets: [a, b], downtime: 1s..2s, op: write}
    - {kind: media-error, targets: [a, b], downtime: 1s..2s, op: flush}
checks:
  resync_within: 40s
`)
	res, err := run(t, sc, 31, hooks{})
	require.NoError(t, err)
	require.Equal(t, reports.ResultPass, res.Run.Result)
	kinds := map[string]int{}
	for _, f := range res.Run.Faults {
		kinds[f.Kind]++
	}
	t.Logf("faults: %v, bytes verified %d", kinds, res.Run.Counters.BytesVerified)
	require.Positive(t, kinds["power-cut"]+kinds["torn-write"], "power cuts happened")
	for _, ch := range res.Run.Checks {
		require.True(t, ch.Passed, "%s: %s", ch.Name, ch.Message)
	}
	requireReports(t, res)
}

// TestEnginePowerLossShort makes the engine's host lose power in the
// middle of raw writes and after an ext4 sync: every node's unflushed
// writes are lost (some torn), all restart; flushed sectors and synced
// files survive and ext4 fscks clean.
func TestEnginePowerLossShort(t *testing.T) {
	testkit.NeedAttach(t, "mkfs.ext4", "e2fsck")
	res, err := run(t, powerLossScenario(t), 41, hooks{})
	require.NoError(t, err)
	require.Equal(t, reports.ResultPass, res.Run.Result)
	n := 0
	for _, f := range res.Run.Faults {
		if f.Kind == "power-loss" {
			n++
		}
	}
	require.GreaterOrEqual(t, n, 3, "two filesystem power losses and one raw one")
	requireCrashResyncs(t, res, "power-loss")
	requireReports(t, res)
}

func powerLossScenario(t *testing.T) *scenario.Scenario {
	return parse(t, `name: power-loss
description: the engine's host loses power mid-write and after a sync
cycles: 2
`+powerMirror+`workload:
  filesystems: [ext4]
  rebuild_every: 2
  write_budget: 4MiB
  engine_crash: true
  power_loss: true
  raw: {every: 1, ops: 800, concurrency: 4, flush_every: 25, fua_percent: 5}
`)
}

// bugBinary is a dst binary built with the planted bugs (package bugs),
// built once.
var bugBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "dst-bugs-bin")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "dst")
	return path, dstbin.Build(path, "dstbugs")
})

// runPlanted runs sc with bug planted in every dst process; the run must
// fail.
func runPlanted(t *testing.T, bug string, sc *scenario.Scenario, seed uint64) *Result {
	t.Helper()
	res, caught := tryPlanted(t, bug, sc, seed)
	require.True(t, caught, "planted bug %s was not caught", bug)
	return res
}

// tryPlanted runs sc with bug planted in every dst process and reports
// whether the run failed, as it must when the bug is caught; a failure
// is checked to be a reported one, within two minutes.
func tryPlanted(t *testing.T, bug string, sc *scenario.Scenario, seed uint64) (*Result, bool) {
	t.Helper()
	bin, err := bugBinary()
	require.NoError(t, err)
	t.Setenv(bugs.Env, bug)
	saved := dstBinary
	dstBinary = bin
	defer func() { dstBinary = saved }()
	start := time.Now()
	res, err := run(t, sc, seed, hooks{})
	if err == nil {
		return res, false
	}
	require.ErrorIs(t, err, ErrFailed, "planted bug %s: the run broke instead of failing", bug)
	require.Less(t, time.Since(start), 2*time.Minute, "caught within two minutes")
	require.Equal(t, reports.ResultFail, res.Run.Result)
	require.NotEmpty(t, res.Run.Failures)
	return res, true
}

// diagnosis joins the messages and diagnoses of a run's failures.
func diagnosis(res *Result) string {
	var b strings.Builder
	for _, f := range res.Run.Failures {
		fmt.Fprintf(&b, "%s: %s\n%s\n", f.Phase, f.Message, strings.Join(f.Diagnosis, "\n"))
	}
	return b.String()
}

// powerCutB is a raw run on a mirror whose member b loses power again and
// again: the scenario of the engine's planted bugs.
func powerCutB(t *testing.T) *scenario.Scenario {
	return parse(t, `name: power-b
description: b loses power under raw writes
duration: 40s
`+powerMirror+`workload:
  raw: {every: 1, ops: 3000, concurrency: 4, flush_every: 30, fua_percent: 0}
faults:
  interval: 1s
  kinds:
    - {kind: power-cut, targets: [b], downtime: 200ms..500ms}
checks:
  resync_within: 30s
`)
}

// TestPlantedNodeFlushNoop: nodes that acknowledge FLUSH without writing
// their cache lose flushed sectors when the engine's host loses power; the
// check after the loss names them.
func TestPlantedNodeFlushNoop(t *testing.T) {
	testkit.NeedAttach(t, "mkfs.ext4", "e2fsck")
	sc := parse(t, `name: flush-noop
description: the engine's host loses power mid-write
cycles: 1
`+powerMirror+`workload:
  engine_crash: true
  power_loss: true
  raw: {every: 1, ops: 800, concurrency: 4, flush_every: 25}
`)
	res := runPlanted(t, bugs.FlushNoop, sc, 51)
	f := res.Run.Failures[0]
	require.Equal(t, "raw-verify-after-loss", f.Phase, diagnosis(res))
	diag := diagnosis(res)
	require.Contains(t, diag, "durable", diag)
	require.Contains(t, diag, "power loss of the engine's host", diag)
}

// TestPlantedEngineBugs plants, one at a time, an engine that flushes
// only the first member (b's writes stay in its cache and b's power cut
// loses them while the engine thinks them flushed) and one that trusts a
// member whose machine restarted with unflushed writes (it serves and
// keeps what the cut left on b). Each run must fail naming b and its
// power cut.
func TestPlantedEngineBugs(t *testing.T) {
	testkit.NeedAttach(t, "mkfs.ext4", "e2fsck")
	for _, c := range []struct {
		bug   string
		seeds []uint64
	}{
		// The activity log's own flushes reach every member, which narrows
		// the window in which flush-one-member loses a write b was told to
		// keep: one 40 s run catches it in most runs, not all (3 of 5 on
		// 2026-12-07), so it gets up to three seeds.
		{bugs.FlushOneMember, []uint64{52, 54, 56}},
		{bugs.IgnoreBoot, []uint64{53}},
	} {
		t.Run(c.bug, func(t *testing.T) {
			for i, seed := range c.seeds {
				res, caught := tryPlanted(t, c.bug, powerCutB(t), seed)
				if !caught {
					t.Logf("seed %d did not catch %s (%d of %d)", seed, c.bug, i+1, len(c.seeds))
					continue
				}
				diag := diagnosis(res)
				require.Contains(t, diag, "node b", diag)
				require.Contains(t, diag, "power-cut b", diag)
				return
			}
			t.Fatalf("planted bug %s was not caught with seeds %v", c.bug, c.seeds)
		})
	}
}

// silentFault is a raw run on a mirror whose member b silently corrupts
// one write (kind bit-flip or lost-write) now and then: the node reports
// success, so only the verifiers can find it. Small requests keep most
// sectors from being written again before a verify (a later write over a
// lost one hides it, as on a real disk).
func silentFault(t *testing.T, kind string) *scenario.Scenario {
	return parse(t, `name: `+kind+`
description: b's media `+kind+`s under raw writes
duration: 30s
`+powerMirror+`workload:
  raw: {every: 1, ops: 600, concurrency: 4, flush_every: 30, max_request: 16KiB}
faults:
  interval: 500ms
  kinds:
    - {kind: `+kind+`, targets: [b], downtime: 300ms..600ms}
checks:
  resync_within: 30s
`)
}

// requireFound runs sc, which must fail, and checks that the failure
// names node b and the fault.
func requireFound(t *testing.T, sc *scenario.Scenario, kind string, seed uint64) {
	t.Helper()
	start := time.Now()
	res, err := run(t, sc, seed, hooks{})
	require.ErrorIs(t, err, ErrFailed, "a silent %s was not found", kind)
	require.Less(t, time.Since(start), 2*time.Minute, "found within two minutes")
	require.Equal(t, reports.ResultFail, res.Run.Result)
	diag := diagnosis(res)
	t.Logf("found:\n%s", diag)
	require.Contains(t, diag, "node b", diag)
	require.Contains(t, diag, kind+" b", diag)
}

// TestBitFlipIsFound: a bit that b's media flips on a write, acknowledged
// as written, is found by the verifiers (the replicas differ, or a read
// from b returns the wrong bytes) and the report names b and the fault.
func TestBitFlipIsFound(t *testing.T) {
	testkit.NeedAttach(t, "mkfs.ext4", "e2fsck")
	requireFound(t, silentFault(t, "bit-flip"), "bit-flip", 61)
}

// TestLostWriteIsFound: a write b acknowledges but never makes is found
// the same way.
func TestLostWriteIsFound(t *testing.T) {
	testkit.NeedAttach(t, "mkfs.ext4", "e2fsck")
	requireFound(t, silentFault(t, "lost-write"), "lost-write", 62)
}

// TestScheduledScrubFindsBitFlip: with topology.engine.scrub_interval the
// engine scrubs during the run, and a scrub that finds replicas differing
// fails the run in its own phase: b's media flips bits in long raw cycles
// (whose own verify comes late), and the scheduled scrub names member 1
// (node b) and the fault.
func TestScheduledScrubFindsBitFlip(t *testing.T) {
	testkit.NeedAttach(t, "mkfs.ext4", "e2fsck")
	sc := parse(t, `name: scrub-bit-flip
description: b's media flips bits under long raw cycles; scheduled scrubs every 500 ms
duration: 15s
`+strings.Replace(powerMirror, "resync_interval: 200ms}", "resync_interval: 200ms, scrub_interval: 500ms}", 1)+`workload:
  raw: {every: 1, ops: 50000, concurrency: 4, flush_every: 30, max_request: 16KiB}
faults:
  interval: 1s
  kinds:
    - {kind: bit-flip, targets: [b], downtime: 300ms..600ms}
checks:
  resync_within: 30s
`)
	res, err := run(t, sc, 63, hooks{}, func(o *Options) { o.KeepGoing = true })
	require.ErrorIs(t, err, ErrFailed)
	var scrub []string
	for _, f := range res.Run.Failures {
		if f.Phase == "scrub" {
			scrub = append(scrub, f.Message+": "+strings.Join(f.Diagnosis, "; "))
		}
	}
	require.NotEmpty(t, scrub, "a scheduled scrub failed the run:\n%s", diagnosis(res))
	t.Logf("scheduled scrub failures: %d, first: %s", len(scrub), scrub[0])
	require.Contains(t, scrub[0], "(members [1])")
	require.Contains(t, scrub[0], "bit-flip b")
}
