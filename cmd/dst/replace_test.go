package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/admin"
)

// TestProofReplaceKilledMemberDuringFio: fio writes and verifies 32 MiB
// through a mirror of two dst exports; export A is killed during the write
// phase and a new blank export C takes its position with 'dst member
// replace' while fio runs. fio must see no error, C is copied whole and
// joins, and its data area is byte-identical to B's. The old config then
// refuses A's medium at that position and says what to change; the config
// naming C starts in sync. Bad requests get clear errors and change
// nothing.
func TestProofReplaceKilledMemberDuringFio(t *testing.T) {
	testkit.Need(t, "fio")
	start := time.Now()
	r := newRig(t, 100*time.Second)
	const memberBytes, fioBytes, blockBytes = 36 << 20, 32 << 20, 4096
	fileA, fileB := testkit.Image(t, "a.img", memberBytes), testkit.Image(t, "b.img", memberBytes)
	fileC := testkit.Image(t, "c.img", memberBytes+(4<<20)) // larger media do
	a := r.export("export-a", "127.0.0.1:0", fileA)
	b := r.export("export-b", "127.0.0.1:0", fileB)
	c := r.export("export-c", "127.0.0.1:0", fileC)
	urlA, urlB, urlC := "nbd://"+a.addrs[0], "nbd://"+b.addrs[0], "nbd://"+c.addrs[0]
	s := r.serve("serve", storageConfig("mirror", urlA, urlB))
	uri, adminAddr := "nbd://"+s.addrs[0]+"/", s.addrs[1]

	// Refusals first: nothing changes.
	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{"replace", "--admin", adminAddr, "0", urlC}, "in sync and healthy; replace it anyway with force"},
		{[]string{"replace", "--admin", adminAddr, "2", urlC}, "members 0 to 1"},
		{[]string{"replace", "--admin", adminAddr, "--force", "0", urlB}, "member 1 already"},
		{[]string{"replace", "--admin", adminAddr, "--force", "0", "nbd://127.0.0.1:1/none"}, "cannot take the position"},
	} {
		code, out, errOut := runDst(t, append([]string{"member"}, tc.args...)...)
		require.Equal(t, exitRuntime, code, "%v: %s%s", tc.args, out, errOut)
		require.Contains(t, errOut, tc.says, "%v", tc.args)
	}
	code, _, errOut := runDst(t, "member", "replace", "--admin", adminAddr, "0")
	require.Equal(t, exitUsage, code, errOut)
	require.True(t, allInSync(status(t, adminAddr)))

	fio := r.fioVerify("replace", uri, fioBytes, "8m", 70*time.Second)
	const writesTotal = fioBytes / blockBytes
	deadline := time.Now().Add(30 * time.Second)
	for status(t, adminAddr).Requests["write"].Count < writesTotal/5 {
		require.True(t, time.Now().Before(deadline), "fio wrote too slowly")
		time.Sleep(20 * time.Millisecond)
	}
	require.NoError(t, a.Kill())
	waitStatus(t, adminAddr, 30*time.Second, "member 0 failed", func(st admin.Status) bool { return st.Members[0].State == "failed" })
	code, out, errOut := runDst(t, "member", "replace", "--admin", adminAddr, "0", urlC)
	require.Equal(t, exitOK, code, "%s%s", out, errOut)
	require.Contains(t, out, "change member 0's URL in the config to "+urlC)
	writesAtReplace := status(t, adminAddr).Requests["write"].Count
	r.note("export-a killed, export-c took member 0 after %d of %d writes, at %v", writesAtReplace, writesTotal, time.Since(start))
	require.Less(t, writesAtReplace, uint64(writesTotal), "the replace landed in fio's write phase")

	fio.wait(t, 85*time.Second)
	st := waitStatus(t, adminAddr, 30*time.Second, "the replacement in sync", allInSync)
	require.Equal(t, urlC, st.Members[0].URL)
	require.Zero(t, st.Requests["write"].Errors)
	require.Positive(t, st.Members[0].ResyncedBytes)
	t.Logf("fio wrote and verified %d MiB; member 0 replaced and copied (%d bytes copied, %d zeroed): %v",
		fioBytes>>20, st.Members[0].ResyncedBytes, st.Members[0].ResyncZeroedBytes, time.Since(start))
	s.stopOK(t)
	requireSameBytes(t, dataArea(t, fileB, st.Members[1], st.Size), dataArea(t, fileC, st.Members[0], st.Size), "data areas of B and the replacement")

	// The old config: A's medium is refused at its position, with what to
	// change (A's export is started again on its file to offer it).
	a2 := r.export("export-a-again", a.addrs[0], fileA)
	_ = a2
	old := filepath.Join(r.dir, "old.yaml")
	require.NoError(t, os.WriteFile(old, []byte(storageConfig("mirror", urlA, urlB)), 0o644))
	code, _, errOut = runDst(t, "serve", "--config", old)
	require.NotEqual(t, exitOK, code)
	require.Contains(t, errOut, "put the replacement's URL at this position", errOut)
	s2 := r.serve("serve-new-config", storageConfig("mirror", urlC, urlB))
	st = status(t, s2.addrs[1])
	require.True(t, allInSync(st), "%+v", st)
	require.True(t, strings.HasPrefix(st.Members[0].URL, urlC))
	s2.stopOK(t)
}

// TestProofMemberAddRemoveDuringFio: fio writes and verifies 32 MiB
// through a mirror of two dst exports; while it writes, 'dst member add'
// grows the mirror by a blank export C (copied whole, then in sync) and
// 'dst member remove' takes export A out. fio must see no error; C's
// data area ends byte-identical to B's, and the config naming B and C
// starts in sync. Bad requests get clear errors and change nothing.
func TestProofMemberAddRemoveDuringFio(t *testing.T) {
	testkit.Need(t, "fio")
	start := time.Now()
	r := newRig(t, 100*time.Second)
	const memberBytes, fioBytes, blockBytes = 36 << 20, 32 << 20, 4096
	fileA, fileB, fileC := testkit.Image(t, "a.img", memberBytes), testkit.Image(t, "b.img", memberBytes), testkit.Image(t, "c.img", memberBytes)
	small := testkit.Image(t, "small.img", memberBytes/2)
	a := r.export("export-a", "127.0.0.1:0", fileA)
	b := r.export("export-b", "127.0.0.1:0", fileB)
	c := r.export("export-c", "127.0.0.1:0", fileC)
	d := r.export("export-small", "127.0.0.1:0", small)
	urlA, urlB, urlC, urlSmall := "nbd://"+a.addrs[0], "nbd://"+b.addrs[0], "nbd://"+c.addrs[0], "nbd://"+d.addrs[0]
	s := r.serve("serve", storageConfig("mirror", urlA, urlB))
	uri, adminAddr := "nbd://"+s.addrs[0]+"/", s.addrs[1]

	for _, tc := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"add", "--admin", adminAddr, urlC}, exitUsage, "add needs --mirror PATH"},
		{[]string{"remove", "--admin", adminAddr, "--mirror", "/", "0"}, exitUsage, "--mirror is for add"},
		{[]string{"add", "--admin", adminAddr, "--mirror", "/", urlB}, exitRuntime, "appears twice"},
		{[]string{"add", "--admin", adminAddr, "--mirror", "/1", urlC}, exitRuntime, "the storage's mirrors: / (members 0 1)"},
		{[]string{"add", "--admin", adminAddr, "--mirror", "/", urlSmall}, exitRuntime, "at least as large as its mirror"},
		{[]string{"remove", "--admin", adminAddr, "2"}, exitRuntime, "no member 2"},
	} {
		code, out, errOut := runDst(t, append([]string{"member"}, tc.args...)...)
		require.Equal(t, tc.code, code, "%v: %s%s", tc.args, out, errOut)
		require.Contains(t, errOut, tc.says, "%v", tc.args)
	}
	st := status(t, adminAddr)
	require.True(t, allInSync(st))
	require.Len(t, st.Members, 2, "nothing changed")

	fio := r.fioVerify("add-remove", uri, fioBytes, "8m", 70*time.Second)
	const writesTotal = fioBytes / blockBytes
	deadline := time.Now().Add(30 * time.Second)
	for status(t, adminAddr).Requests["write"].Count < writesTotal/5 {
		require.True(t, time.Now().Before(deadline), "fio wrote too slowly")
		time.Sleep(20 * time.Millisecond)
	}
	code, out, errOut := runDst(t, "member", "add", "--admin", adminAddr, "--mirror", "/", urlC)
	require.Equal(t, exitOK, code, "%s%s", out, errOut)
	require.Contains(t, out, "member 2 ("+urlC+") added")
	require.Contains(t, out, "the storage is mirror("+urlA+", "+urlB+", "+urlC+") now")
	r.note("added export-c after %d of %d writes: %s", status(t, adminAddr).Requests["write"].Count, writesTotal, strings.TrimSpace(out))
	st = waitStatus(t, adminAddr, 30*time.Second, "the replica added in sync", func(st admin.Status) bool { return len(st.Members) == 3 && allInSync(st) })
	code, out, errOut = runDst(t, "member", "remove", "--admin", adminAddr, "0")
	require.Equal(t, exitOK, code, "%s%s", out, errOut)
	require.Contains(t, out, "member 0 ("+urlA+") removed")
	writesAtRemove := status(t, adminAddr).Requests["write"].Count
	r.note("removed export-a after %d of %d writes: %s", writesAtRemove, writesTotal, strings.TrimSpace(out))
	require.Less(t, writesAtRemove, uint64(writesTotal), "the changes landed in fio's write phase")

	fio.wait(t, 85*time.Second)
	st = waitStatus(t, adminAddr, 30*time.Second, "two members in sync", func(st admin.Status) bool { return len(st.Members) == 2 && allInSync(st) })
	require.Equal(t, "mirror("+urlB+", "+urlC+")", st.Layout)
	require.Zero(t, st.Requests["write"].Errors)
	t.Logf("fio wrote and verified %d MiB through an add and a remove: %v", fioBytes>>20, time.Since(start))
	s.stopOK(t)
	requireSameBytes(t, dataArea(t, fileB, st.Members[0], st.Size), dataArea(t, fileC, st.Members[1], st.Size), "data areas of B and C")

	s2 := r.serve("serve-new-config", storageConfig("mirror", urlB, urlC))
	st = status(t, s2.addrs[1])
	require.True(t, allInSync(st), "%+v", st)
	s2.stopOK(t)
}
