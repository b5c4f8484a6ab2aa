package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"dst/internal/testkit"

	"github.com/stretchr/testify/require"
)

// TestProofEngineKillResyncsOnlyActiveRegions: fio writes at random over
// a 1 GiB mirror of two dst exports whose activity log holds at most 64
// regions of 1 MiB; dst serve is killed with SIGKILL in the middle and
// started again. The start must copy only the regions the log marked (at
// most 64 MiB of 1 GiB, nothing whole), be redundant again within
// seconds, and leave the two data areas byte-identical.
func TestProofEngineKillResyncsOnlyActiveRegions(t *testing.T) {
	testkit.Need(t, "fio")
	start := time.Now()
	r := newRig(t, 120*time.Second)
	const memberBytes, bound, region = 1<<30 + 1<<20, 64, 1 << 20
	fileA, fileB := testkit.Image(t, "a.img", memberBytes), testkit.Image(t, "b.img", memberBytes)
	r.note("member files %s %s", fileA, fileB)
	a := r.export("export-a", "127.0.0.1:0", fileA)
	b := r.export("export-b", "127.0.0.1:0", fileB)
	cfg := strings.Replace(storageConfig("mirror", "nbd://"+a.addrs[0], "nbd://"+b.addrs[0]),
		"region_size: 64KiB\n", fmt.Sprintf("region_size: 1MiB\nactivity_log: {regions: %d}\n", bound), 1)
	s := r.serve("serve", cfg)
	uri, adminAddr := "nbd://"+s.addrs[0]+"/", s.addrs[1]
	st := status(t, adminAddr)
	require.True(t, allInSync(st), "%+v", st)
	require.NotNil(t, st.Activity)
	require.Equal(t, bound, st.Activity.MaxRegions)
	size := st.Size

	fioDone := make(chan struct{})
	r.async(func() {
		defer close(fioDone)
		// It fails when its server dies: expected.
		_, _ = r.run(60*time.Second, "fio", "--name=crash", "--ioengine=nbd", "--uri="+uri,
			"--rw=randwrite", "--bs=4k", "--iodepth=16", fmt.Sprintf("--size=%d", size), "--time_based", "--runtime=30")
	})
	var writes uint64
	deadline := time.Now().Add(30 * time.Second)
	for writes < 20000 {
		require.True(t, time.Now().Before(deadline), "fio wrote too slowly")
		time.Sleep(50 * time.Millisecond)
		st = status(t, adminAddr)
		writes = st.Requests["write"].Count
	}
	require.NotNil(t, st.Activity)
	require.LessOrEqual(t, st.Activity.ActiveRegions, bound)
	r.note("%d writes, %d regions active, %d metadata writes before the kill", writes, st.Activity.ActiveRegions, st.Activity.MetadataWrites)
	require.NoError(t, s.Kill())
	<-fioDone
	killed := time.Now()

	s = r.serve("serve-again", cfg)
	adminAddr = s.addrs[1]
	st = waitStatus(t, adminAddr, 60*time.Second, "both members in sync", allInSync)
	redundant := time.Since(killed)
	require.NotNil(t, st.Activity)
	act := st.Activity
	require.Zero(t, act.CrashFullCopies, "no replica copied whole: the logs were readable")
	require.Positive(t, act.CrashResyncRegions, "the kill landed while regions were active")
	// The copy is the union of the two members' logs, each within the
	// bound; a kill between a clear's page write to one member and to the
	// other leaves one with the old regions and one with the new, so the
	// union may hold twice the bound (as the engine model allows: a CI
	// run copied 78 regions of a 64-region log).
	require.LessOrEqual(t, act.CrashResyncRegions, 2*bound, "at most the members' two bounded active sets")
	var copied int64
	for _, m := range st.Members {
		copied += m.ResyncedBytes
	}
	require.LessOrEqual(t, copied, 2*int64(bound)*region)
	t.Logf("killed after %d writes; the restart copied %d regions, %d bytes of %d (%.2f%%), redundant again %v after the kill",
		writes, act.CrashResyncRegions, copied, size, 100*float64(copied)/float64(size), redundant.Round(time.Millisecond))

	s.stopOK(t)
	areaA := dataArea(t, fileA, st.Members[0], size)
	areaB := dataArea(t, fileB, st.Members[1], size)
	requireSameBytes(t, areaA, areaB, "member data areas")
	t.Logf("data areas identical (%d bytes): %v", size, time.Since(start))
}
