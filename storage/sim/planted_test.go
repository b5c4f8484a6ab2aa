package sim_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"dst/internal/bugs"
)

// TestSimCatchesPlantedBugs builds this test binary with the planted bugs
// (build tag dstbugs) and requires the random simulation to fail within
// 300 sequences from seed 1 for every bug of bugs.Sim, each a different
// kind: a FLUSH that skips a member, a restart with lost writes ignored,
// writes unmarked in the activity log, a resync that clears marks before
// its copy is durable, a server that does not fence a stale connection.
func TestSimCatchesPlantedBugs(t *testing.T) {
	if bugs.Enabled {
		t.Skip("this binary is the one with the bugs")
	}
	if testing.Short() {
		t.Skip("builds a test binary")
	}
	bin := filepath.Join(t.TempDir(), "sim.test")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", "test", "-c", "-tags", "dstbugs", "-o", bin, "dst/storage/sim").CombinedOutput(); err != nil {
		t.Fatalf("go test -c -tags dstbugs: %v\n%s", err, out)
	}
	for _, b := range bugs.Sim {
		t.Run(b, func(t *testing.T) {
			cmd := exec.CommandContext(ctx, bin, "-test.run", "^TestSimMirror$", "-test.failfast", "-sim.seqs=300", "-sim.seed=1")
			cmd.Env = append(os.Environ(), bugs.Env+"="+b)
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), "invariant broken") {
				t.Fatalf("the simulation did not catch %s in 300 sequences (err %v):\n%s", b, err, out)
			}
			seed := ""
			for _, l := range strings.Split(string(out), "\n") {
				if _, s, ok := strings.Cut(l, "--- FAIL: TestSimMirror/"); ok && seed == "" {
					seed = strings.Fields(s)[0]
				}
				if strings.Contains(l, "--- FAIL: TestSimMirror/") || strings.Contains(l, "sequences,") {
					t.Log(strings.TrimSpace(l))
				}
			}
			// How often the failing seed's replay command shows the same
			// trace: ten replays against the first run.
			cmd = exec.CommandContext(ctx, bin, "-test.run", "^TestSimTraceReplays$", "-test.v", "-sim.replays=1", "-sim.runs=11", "-sim.seed="+seed)
			cmd.Env = append(os.Environ(), bugs.Env+"="+b)
			out, _ = cmd.CombinedOutput()
			for _, l := range strings.Split(string(out), "\n") {
				if strings.Contains(l, "replays:") || strings.Contains(l, "first divergence") {
					t.Logf("seed %s %s", seed, strings.TrimSpace(l[strings.Index(l, ": ")+2:]))
				}
			}
		})
	}
}
