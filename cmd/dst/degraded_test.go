package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/engine"
)

// TestProofDegradedStart: a mirror of two dst exports stops cleanly and
// export B's machine goes away. Without allow_degraded the start is
// refused (B does not answer; the error names it and the option); with it the storage
// starts after the connect timeout, serves writes on A alone, and when B
// returns on its port as the member recorded it copies only the region it
// missed. The data areas are then byte-identical.
func TestProofDegradedStart(t *testing.T) {
	testkit.Need(t, "qemu-io")
	start := time.Now()
	r := newRig(t, 60*time.Second)
	const memberBytes = 8 << 20
	fileA, fileB := testkit.Image(t, "a.img", memberBytes), testkit.Image(t, "b.img", memberBytes)
	a := r.export("export-a", "127.0.0.1:0", fileA)
	b := r.export("export-b", "127.0.0.1:0", fileB)
	cfg := storageConfigNodes(strings.Replace(fastNodes, "connect_timeout: 10s", "connect_timeout: 1s", 1),
		"mirror", "nbd://"+a.addrs[0], "nbd://"+b.addrs[0])
	s := r.serve("serve", cfg)
	r.qemuIO("nbd://"+s.addrs[0]+"/", "write -P 0x11 0 4M")
	s.stopOK(t)
	require.NoError(t, b.Kill())

	// Refused without allow_degraded, with the reason.
	path := filepath.Join(r.dir, "plain.yaml")
	require.NoError(t, os.WriteFile(path, []byte(cfg), 0o644))
	code, out, errOut := runDst(t, "serve", "--config", path)
	require.Equal(t, exitRuntime, code, "%s%s", out, errOut)
	require.Contains(t, errOut, "member 1 (nbd://"+b.addrs[0]+")")
	require.Contains(t, errOut, "no connection within 1s")
	require.Contains(t, errOut, "allow_degraded: true")

	s = r.serve("serve-degraded", cfg+"allow_degraded: true\n")
	uri, adminAddr := "nbd://"+s.addrs[0]+"/", s.addrs[1]
	st := status(t, adminAddr)
	require.Equal(t, engine.Failed.String(), st.Members[1].State, "%+v", st.Members[1])
	require.Equal(t, engine.InSync.String(), st.Members[0].State)
	r.qemuIO(uri, "write -P 0x22 1M 64k", "read -P 0x11 0 1M", "read -P 0x22 1M 64k")
	r.note("started degraded and wrote 64 KiB: %v", time.Since(start))

	r.export("export-b-again", b.addrs[0], fileB)
	st = waitStatus(t, adminAddr, 30*time.Second, "member 1 in sync", allInSync)
	require.Equal(t, int64(64<<10), st.Members[1].ResyncedBytes+st.Members[1].ResyncZeroedBytes,
		"member 1 copied the one region it missed, not everything")
	r.qemuIO(uri, "read -P 0x11 0 1M", "read -P 0x22 1M 64k", "read -P 0x11 1088k 2944k")
	s.stopOK(t)
	requireSameBytes(t, dataArea(t, fileA, st.Members[0], st.Size), dataArea(t, fileB, st.Members[1], st.Size), "data areas")
	t.Logf("degraded start, return and one-region copy: %v", time.Since(start))
}
