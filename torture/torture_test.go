// The harness on the real path, as CI runs it: short scenarios start dst
// export and dst serve processes, attach the storage through FUSE and a
// loop device, run ext4 cycles and raw self-describing sectors while nodes
// are killed and hung and the engine itself is killed, and must pass with
// converged replicas and readable reports; a sector corrupted behind the
// engine's back on one node must fail the run with a diagnosis naming
// that node, the offset and the write that belonged there.
package torture

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/reports"
	"dst/scenarios"
	"dst/torture/cluster"
	"dst/torture/raw"
	"dst/torture/scenario"

	"dst/internal/dstbin"
	"dst/internal/testkit"
)

// dstBinary is the dst binary the tests run: $DST_BINARY, or built once.
var dstBinary string

func TestMain(m *testing.M) { os.Exit(dstbin.Run(m, &dstBinary)) }

func parse(t *testing.T, text string) *scenario.Scenario {
	t.Helper()
	sc, err := scenario.Parse(t.Name()+".yaml", []byte(text))
	require.NoError(t, err)
	return sc
}

// run runs sc and returns the result; the run's folder is printed when the
// test fails.
func run(t *testing.T, sc *scenario.Scenario, seed uint64, h hooks, with ...func(*Options)) (*Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	out := t.TempDir()
	if keep := os.Getenv("DST_TEST_OUT"); keep != "" {
		// Keep the run folders (with the work tree) for a post-mortem.
		out = filepath.Join(keep, t.Name())
	}
	o := Options{Scenario: sc, Seed: seed, Binary: dstBinary, Out: out, KeepWork: os.Getenv("DST_TEST_OUT") != "",
		Logger: slog.New(slog.NewTextHandler(testkit.LogWriter(t), &slog.HandlerOptions{Level: slog.LevelInfo})),
		Replay: fmt.Sprintf("go test ./torture -run '%s'", t.Name()), hooks: h}
	for _, w := range with {
		w(&o)
	}
	res, err := Run(ctx, o)
	if res != nil {
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("run folder: %s", res.Dir)
				if data, err := os.ReadFile(filepath.Join(res.Dir, "events.jsonl")); err == nil {
					t.Logf("events:\n%s", data)
				}
			}
		})
	}
	return res, err
}

// requireReports checks the run's report files: the HTML has its charts,
// the summary and the JUnit file parse and agree with the run.
func requireReports(t *testing.T, res *Result) {
	t.Helper()
	html, err := os.ReadFile(filepath.Join(res.Dir, reports.HTMLFile))
	require.NoError(t, err)
	require.Contains(t, string(html), "<svg")
	f, err := os.Open(filepath.Join(res.Dir, reports.SummaryFile))
	require.NoError(t, err)
	defer f.Close()
	sum, err := reports.ReadSummary(f)
	require.NoError(t, err)
	require.Equal(t, res.Run.Result, sum.Result)
	data, err := os.ReadFile(filepath.Join(res.Dir, reports.JUnitFile))
	require.NoError(t, err)
	var suites struct {
		Suites []struct {
			Tests    int `xml:"tests,attr"`
			Failures int `xml:"failures,attr"`
		} `xml:"testsuite"`
	}
	require.NoError(t, xml.Unmarshal(data, &suites))
	require.Len(t, suites.Suites, 1)
	require.Positive(t, suites.Suites[0].Tests)
	events, err := os.ReadFile(filepath.Join(res.Dir, reports.EventsFile))
	require.NoError(t, err)
	evs, err := reports.ReadEvents(strings.NewReader(string(events)))
	require.NoError(t, err)
	require.NotEmpty(t, evs)
}

// TestShortRunWithFaults is the short kernel-filesystem and kill/resync
// run of make test: ext4 cycles on FUSE + loop over linear(mirror(a,b),c)
// and raw sectors at the node boundaries, while a and b are killed and
// hung; every byte verifies, faults heal within the bound and the mirror
// converges.
func TestShortRunWithFaults(t *testing.T) {
	testkit.NeedAttach(t, "mkfs.ext4", "e2fsck")
	sc := parse(t, `name: short
description: ext4 and raw sectors on linear(mirror(a,b),c) while a and b are killed and hung
duration: 25s
topology:
  nodes:
    - {name: a, size: 40MiB+1234}
    - {name: b, size: 40MiB+4321}
    - {name: c, size: 24MiB+777}
  storage:
    layout: linear
    members: [{layout: mirror, members: [a, b]}, c]
  engine: {request_timeout: 1s, retries: 3, backoff_max: 200ms, ping_interval: 300ms, resync_interval: 200ms}
workload:
  filesystems: [ext4]
  rebuild_every: 2
  write_budget: 4MiB
  raw: {every: 1, ops: 300, concurrency: 4, flush_every: 20, fua_percent: 10}
faults:
  interval: 5s
  kinds:
    - {kind: kill, targets: [a, b], downtime: 1s..2s}
    - {kind: hang, targets: [a, b], downtime: 500ms..3s}
checks:
  resync_within: 40s
`)
	res, err := run(t, sc, 11, hooks{})
	require.NoError(t, err)
	require.Equal(t, reports.ResultPass, res.Run.Result)
	c := res.Run.Counters
	require.Positive(t, c.Cycles)
	require.Positive(t, c.FaultsInjected, "a fault every 2.5s to 7.5s must hit a 25s run")
	require.Positive(t, c.BytesVerified)
	for _, f := range res.Run.Faults {
		_, ok := f.Recovery()
		require.True(t, ok, "fault %s %s recovered", f.Kind, f.Target)
	}
	names := map[string]bool{}
	for _, ch := range res.Run.Checks {
		require.True(t, ch.Passed, "%s: %s", ch.Name, ch.Message)
		names[ch.Name] = true
	}
	require.Contains(t, names, "mirror replicas byte-identical")
	require.Contains(t, names, "online scrub finds no difference")
	requireReports(t, res)
}

// TestSmokeScenario runs the README's main job as CI runs it: the embedded
// smoke scenario for its full two minutes must pass, with at least one
// node killed, degraded and resynced, and a report whose charts are there.
func TestSmokeScenario(t *testing.T) {
	testkit.NeedAttach(t, "mkfs.ext4", "e2fsck")
	testkit.Need(t, "mkfs.xfs", "mkfs.btrfs")
	sc, err := scenarios.Lookup("smoke")
	require.NoError(t, err)
	res, err := run(t, sc, 20261125, hooks{})
	require.NoError(t, err)
	require.Equal(t, reports.ResultPass, res.Run.Result)
	require.Positive(t, res.Run.Counters.FaultsInjected, "the first fault comes within 75 s")
	require.NotEmpty(t, res.Run.Resyncs, "a kill longer than the retry budget degrades the mirror and resyncs it")
	requireReports(t, res)
	html, err := os.ReadFile(filepath.Join(res.Dir, reports.HTMLFile))
	require.NoError(t, err)
	require.Contains(t, string(html), "Throughput")
	require.Contains(t, string(html), "kill")
}

// TestEngineCrashShort kills the engine with SIGKILL in the middle of raw
// writes and after a filesystem sync: flushed sectors and synced files
// survive, the rest is old or new, never other bytes, and ext4 fscks
// clean after the restart.
func TestEngineCrashShort(t *testing.T) {
	testkit.NeedAttach(t, "mkfs.ext4", "e2fsck")
	sc := parse(t, `name: crash
description: engine SIGKILL mid-write and after a sync
cycles: 2
topology:
  nodes:
    - {name: a, size: 40MiB+77}
    - {name: b, size: 40MiB+4095}
    - {name: c, size: 24MiB+5}
  storage:
    layout: linear
    members: [{layout: mirror, members: [a, b]}, c]
  engine: {request_timeout: 1s, retries: 3, backoff_max: 200ms, ping_interval: 300ms, resync_interval: 200ms}
workload:
  filesystems: [ext4]
  rebuild_every: 2
  write_budget: 4MiB
  engine_crash: true
  raw: {every: 1, ops: 400, concurrency: 4, flush_every: 25, fua_percent: 10}
`)
	res, err := run(t, sc, 12, hooks{})
	require.NoError(t, err)
	require.Equal(t, reports.ResultPass, res.Run.Result)
	require.EqualValues(t, 2, res.Run.Counters.Cycles)
	require.GreaterOrEqual(t, res.Run.Counters.FaultsInjected, int64(3), "two filesystem kills and one raw kill")
	requireCrashResyncs(t, res, "engine-kill")
	requireReports(t, res)
}

// requireCrashResyncs: every crash of kind reports what its resync copied
// from the activity log (a whole copy would have failed the run), and
// some crash copied something.
func requireCrashResyncs(t *testing.T, res *Result, kind string) {
	t.Helper()
	n := 0
	for _, f := range res.Run.Faults {
		if f.Kind == kind {
			n++
			require.Contains(t, f.Note, "crash resync copies", "%+v", f)
			t.Logf("%s: %s", kind, f.Note)
		}
	}
	require.Positive(t, n)
	require.Positive(t, res.Run.Counters.CrashResyncBytes)
}

// TestPlantedCorruptionIsDiagnosed flips one byte in node b's image after
// the raw writes: the run must fail, and the diagnosis must name node b,
// the device sector and the write that belonged there.
func TestPlantedCorruptionIsDiagnosed(t *testing.T) {
	testkit.NeedAttach(t, "mkfs.ext4", "e2fsck")
	sc := parse(t, `name: planted
description: a byte flipped on one node behind the engine's back
cycles: 1
topology:
  nodes:
    - {name: a, size: 3MiB+511}
    - {name: b, size: 5MiB+4097}
  storage: {layout: linear, members: [a, b]}
workload:
  raw: {every: 1, ops: 400, concurrency: 4, flush_every: 20}
`)
	var planted struct {
		off   int64
		write uint64
	}
	h := hooks{afterRawWrites: func(c *cluster.Cluster, l *raw.Ledger) {
		// The first sector of b's range that holds a write.
		start := c.Boundaries()[0]
		for off := (start + 511) &^ 511; off < c.Size(); off += 512 {
			exp := l.Expect(off, raw.Strict)
			if len(exp) == 1 && exp[0].ID != 0 {
				planted.off, planted.write = off, exp[0].ID
				break
			}
		}
		require.NotZero(t, planted.write, "no write landed on b")
		loc := c.Where(planted.off + 100)
		require.Len(t, loc, 1)
		require.Equal(t, "b", loc[0].Node)
		f, err := os.OpenFile(loc[0].File, os.O_RDWR, 0)
		require.NoError(t, err)
		defer f.Close()
		var b [1]byte
		_, err = f.ReadAt(b[:], loc[0].Offset)
		require.NoError(t, err)
		b[0] ^= 0x5a
		_, err = f.WriteAt(b[:], loc[0].Offset)
		require.NoError(t, err)
	}}
	res, err := run(t, sc, 13, h)
	require.ErrorIs(t, err, ErrFailed)
	require.Equal(t, reports.ResultFail, res.Run.Result)
	require.NotEmpty(t, res.Run.Failures)
	f := res.Run.Failures[0]
	require.Equal(t, "raw-verify", f.Phase)
	diag := strings.Join(f.Diagnosis, "\n")
	require.Contains(t, diag, fmt.Sprintf("sector %#x", planted.off), diag)
	require.Contains(t, diag, "node b", diag)
	require.Contains(t, diag, fmt.Sprintf("write %d", planted.write), diag)
	require.NotEmpty(t, f.Bundle)
	for _, name := range []string{"README.txt", "replay.sh", "raw-expected.json", "events.jsonl"} {
		_, err := os.Stat(filepath.Join(f.Bundle, name))
		require.NoError(t, err, name)
	}
	requireReports(t, res)
	require.False(t, errors.Is(err, context.DeadlineExceeded))
}

// TestReplaceOnlineShort replaces the members of a mirror online by new
// machines (blank nodes on new addresses behind new proxies, the old one
// serving or dead) under ext4, raw sectors and engine SIGKILLs: every
// replacement is copied whole and recovers, the engine's restarts name the
// new URLs (the old machines are gone), every byte verifies and the
// replicas and the online scrub agree.
func TestReplaceOnlineShort(t *testing.T) {
	testkit.NeedAttach(t, "mkfs.ext4", "e2fsck")
	res, n, kills := runMembershipFaults(t, "replace-online", "online replacement of mirror members by new machines", "40s", 41)
	t.Logf("%d online replacements, %d engine kills, %d bytes verified", n, kills, res.Run.Counters.BytesVerified)
	require.GreaterOrEqual(t, n, 2, "a fault every 1.5 s to 4.5 s must hit a 40 s run twice")
	require.Positive(t, kills, "the engine restarted after a replacement, from a config naming the new URLs")
	full := 0
	for _, rs := range res.Run.Resyncs {
		if rs.Full {
			full++
		}
	}
	require.Positive(t, full, "replacements are copied whole")
	data, err := os.ReadFile(filepath.Join(res.Dir, reports.EventsFile))
	require.NoError(t, err)
	evs, err := reports.ReadEvents(strings.NewReader(string(data)))
	require.NoError(t, err)
	variants := map[string]int{}
	for _, e := range evs {
		for _, v := range []string{"(old machine serving)", "(old machine dead)"} {
			if strings.Contains(e.Detail, v) {
				variants[v]++
			}
		}
	}
	require.Len(t, variants, 2, "both a hot replacement and one of a dead machine: %v", variants)
	for _, ch := range res.Run.Checks {
		require.True(t, ch.Passed, "%s: %s", ch.Name, ch.Message)
	}
	requireReports(t, res)
}

// TestAddOnlineShort grows the mirror by a new machine and shrinks it
// again online (dst member add, then remove) under ext4, raw sectors and
// engine SIGKILLs: each replica added is copied whole and in sync before
// it is removed, the clients see no error through the changes, every
// byte verifies and the replicas and the online scrub agree.
func TestAddOnlineShort(t *testing.T) {
	testkit.NeedAttach(t, "mkfs.ext4", "e2fsck")
	res, n, kills := runMembershipFaults(t, "add-online", "mirror replicas added and removed online", "30s", 43)
	t.Logf("%d replicas added and removed online, %d engine kills, %d bytes verified", n, kills, res.Run.Counters.BytesVerified)
	require.GreaterOrEqual(t, n, 2, "a fault every 1.5 s to 4.5 s must hit a 30 s run twice")
	require.Positive(t, kills)
	data, err := os.ReadFile(filepath.Join(res.Dir, reports.EventsFile))
	require.NoError(t, err)
	evs, err := reports.ReadEvents(strings.NewReader(string(data)))
	require.NoError(t, err)
	added, removed := 0, 0
	for _, e := range evs {
		added += btoi(strings.Contains(e.Detail, ") added to mirror /"))
		removed += btoi(strings.Contains(e.Detail, ") removed again"))
	}
	require.Equal(t, n, added, "every fault added a replica")
	require.Equal(t, n, removed, "and removed it")
	for _, ch := range res.Run.Checks {
		require.True(t, ch.Passed, "%s: %s", ch.Name, ch.Message)
	}
	requireReports(t, res)
}

// runMembershipFaults runs a passing scenario of one membership fault
// kind on a mirror of two under ext4, raw sectors and engine kills, and
// counts the faults (each recovered) and the engine kills.
func runMembershipFaults(t *testing.T, kind, what, duration string, seed uint64) (res *Result, n, kills int) {
	t.Helper()
	sc := parse(t, `name: `+kind+`
description: `+what+` under ext4, raw sectors and engine kills
duration: `+duration+`
`+powerMirror+`workload:
  filesystems: [ext4]
  write_budget: 4MiB
  engine_crash: true
  raw: {every: 1, ops: 800, concurrency: 4, flush_every: 40, fua_percent: 5}
faults:
  interval: 3s
  kinds:
    - {kind: `+kind+`, targets: [a, b]}
checks:
  resync_within: 40s
`)
	res, err := run(t, sc, seed, hooks{})
	require.NoError(t, err)
	require.Equal(t, reports.ResultPass, res.Run.Result)
	for _, f := range res.Run.Faults {
		switch f.Kind {
		case kind:
			n++
			_, ok := f.Recovery()
			require.True(t, ok, "%s %s recovered", f.Kind, f.Target)
		case "engine-kill":
			kills++
		}
	}
	return res, n, kills
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
