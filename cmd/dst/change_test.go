// A change of membership by the config, end to end with dst export
// processes: a third replica listed in the config at a restart is copied
// whole while the storage serves and then holds the same bytes; a
// replica dropped from the config is gone, and listed again it is copied
// whole, not trusted; a config that changes two things at once is refused
// with what the members record.
package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/engine"
)

func TestProofMembershipChangeByConfig(t *testing.T) {
	testkit.Need(t, "qemu-io")
	start := time.Now()
	r := newRig(t, 90*time.Second)
	const memberBytes = 8 << 20
	files := []string{testkit.Image(t, "a.img", memberBytes), testkit.Image(t, "b.img", memberBytes), testkit.Image(t, "c.img", memberBytes)}
	var urls []string
	for i, f := range files {
		urls = append(urls, "nbd://"+r.export("export-"+string(rune('a'+i)), "127.0.0.1:0", f).addrs[0])
	}
	s := r.serve("serve-2", storageConfigNodes(fastNodes, "mirror", urls[0], urls[1]))
	r.qemuIO("nbd://"+s.addrs[0]+"/", "write -P 0x11 0 4M")
	s.stopOK(t)

	// Added: c is copied whole while the storage serves.
	s = r.serve("serve-3", storageConfigNodes(fastNodes, "mirror", urls[0], urls[1], urls[2]))
	uri, adminAddr := "nbd://"+s.addrs[0]+"/", s.addrs[1]
	r.qemuIO(uri, "write -P 0x22 1M 64k", "read -P 0x11 0 1M")
	st := waitStatus(t, adminAddr, 30*time.Second, "member 2 in sync", allInSync)
	require.Len(t, st.Members, 3)
	require.Equal(t, st.Size, st.Members[2].ResyncedBytes+st.Members[2].ResyncZeroedBytes, "the replica added is copied whole")
	r.qemuIO(uri, "read -P 0x11 0 1M", "read -P 0x22 1M 64k", "read -P 0x11 1088k 2944k")
	s.stopOK(t)
	for i := 1; i < 3; i++ {
		requireSameBytes(t, dataArea(t, files[0], st.Members[0], st.Size), dataArea(t, files[i], st.Members[i], st.Size), "data areas")
	}
	r.note("third replica added and copied: %v", time.Since(start))

	// Two changes at once: refused, naming what the members record.
	path := filepath.Join(r.dir, "two.yaml")
	require.NoError(t, os.WriteFile(path, []byte(storageConfigNodes(fastNodes, "mirror", urls[0])), 0o644))
	code, out, errOut := runDst(t, "serve", "--config", path)
	require.Equal(t, exitRuntime, code, "%s%s", out, errOut)
	require.Contains(t, errOut, "the members record 3 as mirror(#0,#1,#2)")

	// Removed: b. The others serve; b listed again is copied whole.
	s = r.serve("serve-removed", storageConfigNodes(fastNodes, "mirror", urls[0], urls[2]))
	st = status(t, s.addrs[1])
	require.Len(t, st.Members, 2)
	require.Equal(t, engine.InSync.String(), st.Members[1].State)
	r.qemuIO("nbd://"+s.addrs[0]+"/", "write -P 0x33 2M 64k")
	s.stopOK(t)
	s = r.serve("serve-readded", storageConfigNodes(fastNodes, "mirror", urls[0], urls[1], urls[2]))
	st = waitStatus(t, s.addrs[1], 30*time.Second, "member 1 in sync", allInSync)
	require.Equal(t, st.Size, st.Members[1].ResyncedBytes+st.Members[1].ResyncZeroedBytes, "a replica removed is never trusted again")
	r.qemuIO("nbd://"+s.addrs[0]+"/", "read -P 0x33 2M 64k")
	s.stopOK(t)
	requireSameBytes(t, dataArea(t, files[0], st.Members[0], st.Size), dataArea(t, files[1], st.Members[1], st.Size), "data areas")
	t.Logf("membership changes by config: %v", time.Since(start))
}
