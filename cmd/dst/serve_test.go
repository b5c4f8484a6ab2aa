// dst serve assembles a storage from a config file and serves it: a mirror
// over two dst export processes keeps taking writes while one is killed
// with SIGKILL, resyncs it when it comes back on the same port, and ends
// with byte-identical data areas; a linear storage over three odd-sized
// members (a file, a dst export, nbdkit) maps across member boundaries and
// reassembles after a restart; dst status reports it all as a table or
// JSON. Checked by running the binary built in TestMain with qemu-io as
// the client, and by calling run in-process for usage errors.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/admin"
	"dst/storage/engine"
	"dst/storage/meta"
)

// startExport runs dst export serving file on listen.
func startExport(t *testing.T, listen, file string, extra ...string) *child {
	args := append([]string{"export", "--listen", listen, "--file", file, "--log-level", "warn"}, extra...)
	return startProc(t, []string{"listening on "}, dstBinary, args...)
}

// startServe runs dst serve with the config at path; addrs[0] is the NBD
// address, addrs[1] the admin address.
func startServe(t *testing.T, path string) *child {
	return startProc(t, []string{"listening on ", "admin on "}, dstBinary, "serve", "--config", path, "--log-level", "debug")
}

// qemuIO runs qemu-io commands on url and fails the test if one fails
// (qemu-io exits non-zero on an I/O error or a pattern mismatch).
func qemuIO(t *testing.T, url string, cmds ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.CommandContext(ctx, "qemu-io", append(args, url)...).CombinedOutput()
	require.NoError(t, err, "qemu-io %v %s:\n%s", cmds, url, out)
	require.NotContains(t, string(out), "failed", "qemu-io %v:\n%s", cmds, out)
	return string(out)
}

// status runs dst status --json in-process.
func status(t *testing.T, adminAddr string) admin.Status {
	t.Helper()
	code, out, errOut := runDst(t, "status", "--admin", adminAddr, "--json")
	require.Equal(t, exitOK, code, errOut)
	var st admin.Status
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	return st
}

// waitStatus polls the status until ok accepts it, for at most d.
func waitStatus(t *testing.T, adminAddr string, d time.Duration, what string, ok func(admin.Status) bool) admin.Status {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		st := status(t, adminAddr)
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v; last status: %+v", what, d, st)
		}
		<-tick.C
	}
}

func allInSync(st admin.Status) bool {
	for _, m := range st.Members {
		if m.State != engine.InSync.String() {
			return false
		}
	}
	return len(st.Members) > 0
}

func memberState(i int, state engine.State) func(admin.Status) bool {
	return func(st admin.Status) bool { return i < len(st.Members) && st.Members[i].State == state.String() }
}

func writeConfig(t *testing.T, dir, text string) string {
	t.Helper()
	p := filepath.Join(dir, "storage.yaml")
	require.NoError(t, os.WriteFile(p, []byte(text), 0o644))
	return p
}

// fastNodes make node loss quick to notice in tests.
const fastNodes = `node:
  request_timeout: 1s
  retries: 2
  backoff_min: 10ms
  backoff_max: 200ms
  ping_interval: 200ms
  connect_timeout: 10s
resync:
  interval: 100ms
  rate: unlimited
`

// mirrorOfExports starts two dst export processes over fresh images of
// size bytes (extraA: more flags for the first) and writes the config of
// a mirror of them, with 64 KiB regions and the config text extra.
func mirrorOfExports(t *testing.T, size int64, extra string, extraA ...string) (cfg string, a, b *child, fileA, fileB string) {
	t.Helper()
	fileA, fileB = testkit.Image(t, "a.img", size), testkit.Image(t, "b.img", size)
	a = startExport(t, "127.0.0.1:0", fileA, extraA...)
	b = startExport(t, "127.0.0.1:0", fileB)
	cfg = writeConfig(t, t.TempDir(), fmt.Sprintf(`listen: 127.0.0.1:0
admin: 127.0.0.1:0
storage:
  layout: mirror
  members:
    - nbd://%s
    - nbd://%s
region_size: 64KiB
%s`, a.addrs[0], b.addrs[0], extra))
	return cfg, a, b, fileA, fileB
}

// requireSameDataAreas compares the data areas of two member images byte
// for byte (their processes stopped).
func requireSameDataAreas(t *testing.T, fileA, fileB string, offA, offB, size int64) {
	t.Helper()
	dataA, err := os.ReadFile(fileA)
	require.NoError(t, err)
	dataB, err := os.ReadFile(fileB)
	require.NoError(t, err)
	areaA, areaB := dataA[offA:offA+size], dataB[offB:offB+size]
	if !bytes.Equal(areaA, areaB) {
		for i := range areaA {
			if areaA[i] != areaB[i] {
				t.Fatalf("data areas differ first at data offset %d: %#x vs %#x", i, areaA[i], areaB[i])
			}
		}
	}
}

func TestServeMirrorSurvivesNodeLoss(t *testing.T) {
	testkit.Need(t, "qemu-io")
	start := time.Now()
	cfg, a, b, fileA, fileB := mirrorOfExports(t, 32<<20, fastNodes)
	s := startServe(t, cfg)
	url, adminAddr := "nbd://"+s.addrs[0], s.addrs[1]

	qemuIO(t, url, "write -P 0x5a 0 4M", "flush", "read -P 0x5a 0 4M")
	st := status(t, adminAddr)
	require.Len(t, st.Members, 2)
	require.True(t, allInSync(st), "%+v", st)
	require.Equal(t, "ok", st.Health)
	require.Greater(t, st.Requests["write"].Count, uint64(0))
	t.Logf("mirror up, first writes done: %v", time.Since(start))

	// Kill member 0 hard; writes go on without a client error.
	require.NoError(t, a.Kill())
	qemuIO(t, url, "write -P 0x66 8M 2M", "write -P 0x67 30M 1M", "flush", "read -P 0x66 8M 2M")
	st = waitStatus(t, adminAddr, 30*time.Second, "member 0 failed", memberState(0, engine.Failed))
	require.Equal(t, "degraded", st.Health)
	require.Positive(t, st.Members[0].DirtyRegions, "what member 0 missed is recorded")
	qemuIO(t, url, "write -P 0x68 12M 1M") // more writes while degraded
	t.Logf("member 0 failed, writes went on: %v", time.Since(start))

	// Restart it on the same port with the same file: it is resynced.
	a2 := startExport(t, a.addrs[0], fileA)
	st = waitStatus(t, adminAddr, 60*time.Second, "both members in sync", allInSync)
	require.Zero(t, st.Members[0].DirtyRegions)
	require.Positive(t, st.Members[0].ResyncedBytes)
	require.NotNil(t, st.Members[0].Remote)
	require.Positive(t, st.Members[0].Remote.Reconnects)
	t.Logf("member 0 back in sync after copying %d bytes: %v", st.Members[0].ResyncedBytes, time.Since(start))
	qemuIO(t, url, "read -P 0x5a 0 4M", "read -P 0x66 8M 2M", "read -P 0x68 12M 1M", "read -P 0x67 30M 1M")

	// The human table says the same.
	code, table, errOut := runDst(t, "status", "--admin", adminAddr)
	require.Equal(t, exitOK, code, errOut)
	require.Contains(t, table, "health      ok")
	require.Equal(t, 2, strings.Count(table, " in-sync "), table)

	// Stop everything, then compare the members' data areas byte for byte.
	offA, offB, size := st.Members[0].DataOffset, st.Members[1].DataOffset, st.Size
	require.Positive(t, offA, "the data area follows the metadata")
	require.Equal(t, exitOK, s.stop(t, syscall.SIGTERM), s.output())
	require.Equal(t, exitOK, a2.stop(t, syscall.SIGTERM), a2.output())
	require.Equal(t, exitOK, b.stop(t, syscall.SIGTERM), b.output())
	dataA, err := os.ReadFile(fileA)
	require.NoError(t, err)
	require.Equal(t, bytes.Repeat([]byte{0x66}, 2<<20), dataA[offA+8<<20:offA+10<<20], "member 0 got what it missed")
	requireSameDataAreas(t, fileA, fileB, offA, offB, size)
	t.Logf("data areas identical (%d bytes): %v", size, time.Since(start))
}

func TestServeLinearOverFileExportAndNbdkit(t *testing.T) {
	testkit.Need(t, "qemu-io", "nbdkit")
	dir := t.TempDir()
	// Odd sizes: data areas end inside a 4 KiB page and a region.
	const sizeFile, sizeExport, sizeKit = 3<<20 + 1536, 2<<20 + 512, 4<<20 + 3584
	file := testkit.Image(t, "local.img", sizeFile)
	exported := testkit.Image(t, "exported.img", sizeExport)
	e := startExport(t, "127.0.0.1:0", exported)
	sock := filepath.Join(dir, "nbdkit.sock")
	pidFile := filepath.Join(dir, "nbdkit.pid")
	kit := exec.Command("nbdkit", "-f", "--exit-with-parent", "-U", sock, "-P", pidFile, "memory", fmt.Sprint(sizeKit))
	kitErr := &testkit.Buffer{}
	kit.Stderr = kitErr
	require.NoError(t, kit.Start())
	t.Cleanup(func() {
		kit.Process.Kill()
		kit.Wait()
	})
	// nbdkit writes its pid file once it accepts connections.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(pidFile); err == nil {
			break
		}
		require.True(t, time.Now().Before(deadline), "nbdkit did not start: %s", kitErr.String())
		time.Sleep(20 * time.Millisecond)
	}
	kitURL := "nbd+unix:///?socket=" + sock
	cfg := writeConfig(t, dir, fmt.Sprintf(`listen: 127.0.0.1:0
admin: 127.0.0.1:0
storage:
  layout: linear
  members:
    - file:%s
    - nbd://%s
    - %s
export:
  name: lin
  allow: [127.0.0.0/8=rw]
%s`, file, e.addrs[0], kitURL, fastNodes))
	s := startServe(t, cfg)
	url, adminAddr := "nbd://"+s.addrs[0]+"/lin", s.addrs[1]
	st := status(t, adminAddr)
	require.Len(t, st.Members, 3)
	require.True(t, allInSync(st))
	var sum int64
	raw := []int64{sizeFile, sizeExport, sizeKit}
	for i, m := range st.Members {
		require.Positive(t, m.DataOffset)
		require.Equal(t, raw[i], m.NodeSize, "member %d", i)
		sum += raw[i] - m.DataOffset
	}
	require.Equal(t, sum, st.Size, "a linear storage is its members' data areas end to end")
	require.Equal(t, "lin", st.Export)
	data0 := sizeFile - st.Members[0].DataOffset
	data1 := sizeExport - st.Members[1].DataOffset

	// Writes that cross both member boundaries, and the storage's last
	// bytes.
	b1, b2 := data0-1024, data0+data1-512
	qemuIO(t, url,
		fmt.Sprintf("write -P 0xa1 %d 2048", b1),
		fmt.Sprintf("write -P 0xa2 %d 1024", b2),
		fmt.Sprintf("write -P 0xa3 %d 512", st.Size-512),
		"flush",
		fmt.Sprintf("read -P 0xa1 %d 2048", b1),
		fmt.Sprintf("read -P 0xa2 %d 1024", b2),
		fmt.Sprintf("read -P 0xa3 %d 512", st.Size-512))

	// Each piece landed on its member at its data offset.
	local, err := os.ReadFile(file)
	require.NoError(t, err)
	off0 := st.Members[0].DataOffset + b1
	require.Equal(t, bytes.Repeat([]byte{0xa1}, 1024), local[off0:off0+1024])
	qemuIO(t, kitURL,
		fmt.Sprintf("read -P 0xa2 %d 512", st.Members[2].DataOffset),
		fmt.Sprintf("read -P 0xa3 %d 512", sizeKit-512))

	// A restart (after SIGINT) reassembles the storage from its
	// superblocks.
	gen := st.Generation
	require.Equal(t, exitOK, s.stop(t, syscall.SIGINT), s.output())
	s = startServe(t, cfg)
	url, adminAddr = "nbd://"+s.addrs[0]+"/lin", s.addrs[1]
	st2 := status(t, adminAddr)
	require.Equal(t, st.Size, st2.Size)
	require.Greater(t, st2.Generation, gen, "reassembly bumps the generation")
	require.True(t, allInSync(st2))
	qemuIO(t, url, fmt.Sprintf("read -P 0xa1 %d 2048", b1), fmt.Sprintf("read -P 0xa2 %d 1024", b2))
	require.Equal(t, exitOK, s.stop(t, syscall.SIGTERM), s.output())
	require.Contains(t, s.output(), "shutting down")
}

func TestServeErrors(t *testing.T) {
	dir := t.TempDir()
	bad := writeConfig(t, dir, "storage:\n  layout: mirror\n  members:\n    - file:/a\n    - layout: stripe\n      chunk: 64KB\n      members: [file:/b]\n")
	code, out, errOut := runDst(t, "serve", "--config", bad)
	require.Equal(t, exitRuntime, code)
	require.Empty(t, out)
	require.Contains(t, errOut, bad+`:6: storage.members[1].chunk: "64KB" is not a size (use 64KiB)`)

	missing := filepath.Join(dir, "missing.img")
	cfg := filepath.Join(dir, "m.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte("listen: 127.0.0.1:0\nadmin: off\nstorage: {layout: linear, members: [file:"+missing+"]}\n"), 0o644))
	code, _, errOut = runDst(t, "serve", "--config", cfg)
	require.Equal(t, exitRuntime, code)
	require.Contains(t, errOut, "file:"+missing)
	require.Contains(t, errOut, "does not exist")

	tlsCfg := filepath.Join(dir, "tls.yaml")
	require.NoError(t, os.WriteFile(tlsCfg, []byte("storage: {layout: linear, members: [file:/x]}\nexport:\n  tls: {cert: c.pem, key: k.pem}\n"), 0o644))
	code, _, errOut = runDst(t, "serve", "--config", tlsCfg)
	require.Equal(t, exitRuntime, code)
	require.Contains(t, errOut, tlsCfg+":3: export.tls: ")
	require.Contains(t, errOut, filepath.Join(dir, "c.pem"), "paths are relative to the config's folder")

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve"}, "--config is required"},
		{[]string{"serve", "--config", bad, "--log-level", "loud"}, `--log-level "loud"`},
		{[]string{"serve", "--config", bad, "extra"}, `unexpected argument "extra"`},
		{[]string{"status", "--timeout", "0s"}, "--timeout 0s: must be positive"},
		{[]string{"status", "--admin", ""}, "--admin is empty"},
	} {
		code, _, errOut := runDst(t, tc.args...)
		require.Equal(t, exitUsage, code, "%v: %s", tc.args, errOut)
		require.Contains(t, errOut, tc.want, "%v", tc.args)
	}
	code, _, errOut = runDst(t, "serve", "--config", filepath.Join(dir, "nope.yaml"))
	require.Equal(t, exitRuntime, code)
	require.Contains(t, errOut, "nope.yaml")

	// Nothing listens there.
	code, _, errOut = runDst(t, "status", "--admin", "127.0.0.1:1", "--timeout", "2s")
	require.Equal(t, exitRuntime, code)
	require.Contains(t, errOut, "no status from 127.0.0.1:1")
}

func TestStatusPrints(t *testing.T) {
	st := admin.Status{Size: 64 << 20, Layout: "mirror(nbd://a, file:/b)", Listen: "127.0.0.1:10809", Export: "",
		Generation: 7, UptimeSeconds: 61.4, Health: "resyncing", InFlight: 3,
		Members: []admin.MemberStatus{
			{MemberStatus: engine.MemberStatus{Index: 0, Node: "nbd://a", State: "resyncing", Pending: 2, DirtyRegions: 5,
				ResyncedBytes: 3 << 20, LastError: "node unavailable"},
				URL: "nbd://a", Connection: "connected", Remote: &admin.RemoteStatus{Retries: 4, Reconnects: 1}},
			{MemberStatus: engine.MemberStatus{Index: 1, Node: "/b", State: "in-sync"}, URL: "file:/b"},
		}}
	body, err := json.Marshal(st)
	require.NoError(t, err)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		w.Write(body)
	}))
	defer srv.Close()

	code, out, errOut := runDst(t, "status", "--admin", srv.URL)
	require.Equal(t, exitOK, code, errOut)
	for _, want := range []string{
		"storage     mirror(nbd://a, file:/b), 64 MiB (67108864 bytes)",
		"health      resyncing",
		"generation  7",
		"uptime      1m1s",
		"in flight   3",
		"MEMBER  STATE      CONNECTION  IN FLIGHT  DIRTY REGIONS  RESYNCED  ZEROED  RETRIES  RECONNECTS  URL",
		"0       resyncing  connected   2          5              3.0 MiB   0 B     4        1           nbd://a",
		"1       in-sync    local       0          0              0 B       0 B     -        -           file:/b",
		"member 0: node unavailable",
	} {
		assert.Contains(t, out, want)
	}

	code, out, errOut = runDst(t, "status", "--admin", strings.TrimPrefix(srv.URL, "http://"), "--json")
	require.Equal(t, exitOK, code, errOut)
	require.JSONEq(t, string(body), out)

	notDst := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "<html>") }))
	defer notDst.Close()
	code, _, errOut = runDst(t, "status", "--admin", notDst.URL)
	require.Equal(t, exitRuntime, code)
	require.Contains(t, errOut, "is not a dst status")
}

func TestServeAndStatusHelp(t *testing.T) {
	for cmd, flags := range map[string][]string{
		"serve":  {"--config", "--log-level"},
		"status": {"--admin", "--json", "--timeout"},
	} {
		code, out, errOut := runDst(t, cmd, "--help")
		require.Equal(t, exitOK, code, errOut)
		require.Contains(t, out, "Usage: dst "+cmd)
		for _, f := range flags {
			require.Contains(t, out, "  "+f, "dst %s --help lists %s", cmd, f)
		}
	}
	_, out, _ := runDst(t, "--help")
	require.Contains(t, out, "  serve ")
	require.Contains(t, out, "  status ")
}

// TestServeStopsWithAMemberHung: SIGTERM while one replica's machine hangs
// (SIGSTOP) and a client write waits on it: dst serve exits within its
// shutdown_timeout, marks the other member clean, and records the hung one
// as out of sync, so the next start copies to it and reads what was
// flushed.
func TestServeStopsWithAMemberHung(t *testing.T) {
	testkit.Need(t, "qemu-io")
	// Default node timeouts: a request may wait 30 s for a node.
	cfg, a, b, fileA, fileB := mirrorOfExports(t, 32<<20, `shutdown_timeout: 3s
resync: {interval: 100ms, rate: unlimited}
`)
	s := startServe(t, cfg)
	url := "nbd://" + s.addrs[0]
	qemuIO(t, url, "write -P 0x5a 0 4M", "flush")

	require.NoError(t, b.Signal(syscall.SIGSTOP))
	defer b.Signal(syscall.SIGCONT)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Into regions marked already: no bitmap page to write first, so a
	// takes the data and the piece for b waits.
	stuck := exec.CommandContext(ctx, "qemu-io", "-f", "raw", "-c", "write -P 0x77 0 1M", url)
	require.NoError(t, stuck.Start())
	time.Sleep(500 * time.Millisecond) // let the write reach the engine and wait on b

	begin := time.Now()
	code := s.stop(t, syscall.SIGTERM)
	took := time.Since(begin)
	t.Logf("dst serve stopped in %v with a member hung (exit %d)", took, code)
	require.Equal(t, exitOK, code, s.output())
	require.Less(t, took, 3*time.Second+2*time.Second, "within shutdown_timeout (3s) and process exit")
	require.Contains(t, s.output(), "member failed; mirror degraded")
	_ = stuck.Wait() // its write was never acknowledged

	require.NoError(t, b.Signal(syscall.SIGCONT))
	s2 := startServe(t, cfg)
	st := waitStatus(t, s2.addrs[1], 30*time.Second, "both members in sync", allInSync)
	require.Zero(t, st.Members[0].ResyncedBytes+st.Members[0].ResyncZeroedBytes, "the member that answered was marked clean")
	require.Positive(t, st.Members[1].ResyncedBytes+st.Members[1].ResyncZeroedBytes, "the hung member is copied what it may have missed; first run:\n%s\nsecond:\n%s", s.output(), s2.output())
	qemuIO(t, "nbd://"+s2.addrs[0], "read -P 0x5a 1M 3M") // the first MiB: the unacknowledged write, or not
	offA, offB, size := st.Members[0].DataOffset, st.Members[1].DataOffset, st.Size
	s2.stopOK(t)
	a.stopOK(t)
	b.stopOK(t)
	requireSameDataAreas(t, fileA, fileB, offA, offB, size)
}

// TestServeCorrectsReadErrors: a member whose media fails a read (a dst
// export with a read EIO rule over bytes that rotted) is read around and
// the range rewritten on it from the other replica: the client sees its
// data, the member stays in sync, its image holds the data again, and
// dst status counts the correction.
func TestServeCorrectsReadErrors(t *testing.T) {
	testkit.Need(t, "qemu-io")
	area, err := meta.Plan(16<<20, 64<<10)
	require.NoError(t, err)
	// Member 0's media under 1M+64K..+8K of the storage fails its first
	// read (the rule is there from the start: nothing reads the range
	// before the test does).
	at := area.DataOffset + 1<<20 + 64<<10
	rules := filepath.Join(t.TempDir(), "a.faults.json")
	require.NoError(t, os.WriteFile(rules, fmt.Appendf(nil, `{"rules": [{"op": "read", "offset": %d, "length": 8192, "action": "eio", "count": 1}]}`, at), 0o644))
	cfg, a, b, fileA, _ := mirrorOfExports(t, 16<<20, fastNodes, "--faults", rules)
	s := startServe(t, cfg)
	url, adminAddr := "nbd://"+s.addrs[0], s.addrs[1]
	require.Equal(t, area.DataOffset, status(t, adminAddr).Members[0].DataOffset)
	qemuIO(t, url, "write -P 0x3c 1M 1M", "flush")

	// The bytes rot under the rule.
	img, err := os.OpenFile(fileA, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = img.WriteAt(make([]byte, 8192), at)
	require.NoError(t, err)
	require.NoError(t, img.Close())

	qemuIO(t, url, "read -P 0x3c 1M 1M")
	st := status(t, adminAddr)
	require.Equal(t, engine.InSync.String(), st.Members[0].State, "the member stays in service")
	require.Equal(t, int64(1), st.Members[0].ReadErrorsCorrected)
	resp, err := http.Get("http://" + adminAddr + "/metrics")
	require.NoError(t, err)
	metrics, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Contains(t, string(metrics), `dst_member_read_errors_corrected_total{member="0"`)
	s.stopOK(t)
	a.stopOK(t)
	b.stopOK(t)
	data, err := os.ReadFile(fileA)
	require.NoError(t, err)
	require.Equal(t, bytes.Repeat([]byte{0x3c}, 8192), data[at:at+8192], "the bad range was rewritten on member 0")
}

// TestScrubFindsAFlippedSector: a sector flipped on one replica's image
// behind dst's back is what dst scrub reports (mirror, child, member,
// range; exit 1), --repair rewrites it from the other replica, and a
// second scrub finds the replicas agree.
func TestScrubFindsAFlippedSector(t *testing.T) {
	testkit.Need(t, "qemu-io")
	cfg, a, b, _, fileB := mirrorOfExports(t, 16<<20, fastNodes)
	s := startServe(t, cfg)
	url, adminAddr := "nbd://"+s.addrs[0], s.addrs[1]
	qemuIO(t, url, "write -P 0x71 0 8M", "flush")
	off := status(t, adminAddr).Members[1].DataOffset

	// One sector of member 1's image, at storage offset 5 MiB + 512, rots.
	rotSector(t, fileB, off+5<<20+512, 0x8e)

	code, out, errOut := runDst(t, "scrub", "--admin", adminAddr, "--json")
	require.Equal(t, exitRuntime, code, "differences remain: exit 1\n%s%s", out, errOut)
	var res engine.ScrubResult
	require.NoError(t, json.Unmarshal([]byte(out), &res), out)
	require.Equal(t, []engine.ScrubMismatch{{Mirror: 0, Child: 1, Source: 0, Members: []int{1}, Offset: 5 << 20, Length: 4096}}, res.Mismatches)
	require.Positive(t, res.DigestedBytes, "dst exports compare by digests")
	require.Less(t, res.DigestedBytes, res.BytesRead, "the region that differs is read")

	code, out, errOut = runDst(t, "scrub", "--admin", adminAddr, "--repair")
	require.Equal(t, exitOK, code, out+errOut)
	require.Contains(t, out, "1 ranges differed (repaired)")
	code, out, errOut = runDst(t, "scrub", "--admin", adminAddr)
	require.Equal(t, exitOK, code, out+errOut)
	require.Contains(t, out, "the replicas agree")
	require.Contains(t, out, "compared by the digests the members' nodes computed")
	st := status(t, adminAddr)
	require.NotNil(t, st.Scrub)
	require.Equal(t, uint64(2), st.Scrub.Mismatches)
	s.stopOK(t)
	a.stopOK(t)
	b.stopOK(t)
	dataB, err := os.ReadFile(fileB)
	require.NoError(t, err)
	require.Equal(t, bytes.Repeat([]byte{0x71}, 4096), dataB[off+5<<20:off+5<<20+4096], "repaired on member 1")
}

// rotSector overwrites the 512 bytes at off of a member image behind
// dst's back with b (a sector that rots).
func rotSector(t *testing.T, file string, off int64, b byte) {
	t.Helper()
	img, err := os.OpenFile(file, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = img.WriteAt(bytes.Repeat([]byte{b}, 512), off)
	require.NoError(t, err)
	require.NoError(t, img.Close())
}

// TestScheduledScrubRepairs: with scrub: {interval: 1s, repair: true} the
// storage scrubs by itself: a sector flipped on one replica's image is
// found and repaired by a scheduled scrub, a later one finds the replicas
// agree, and dst status shows the last result and the next start.
func TestScheduledScrubRepairs(t *testing.T) {
	testkit.Need(t, "qemu-io")
	cfg, a, b, _, fileB := mirrorOfExports(t, 16<<20, fastNodes+"scrub: {interval: 1s, repair: true}\n")
	s := startServe(t, cfg)
	url, adminAddr := "nbd://"+s.addrs[0], s.addrs[1]
	qemuIO(t, url, "write -P 0x5e 0 4M", "flush")
	st := status(t, adminAddr)
	require.NotNil(t, st.Scrub)
	require.NotNil(t, st.Scrub.Next, "a scrub is scheduled")
	off := st.Members[1].DataOffset
	rotSector(t, fileB, off+3<<20, 0xa1)

	// The scrub that found it, then a clean one after it.
	st = waitStatus(t, adminAddr, 20*time.Second, "a scheduled scrub that found the sector", func(st admin.Status) bool {
		return st.Scrub != nil && st.Scrub.Last != nil && st.Scrub.Last.MismatchCount == 1
	})
	found := st.Scrub.Last
	require.Equal(t, int64(3<<20), found.Mismatches[0].Offset)
	require.True(t, found.Mismatches[0].Repaired)
	waitStatus(t, adminAddr, 20*time.Second, "a later scheduled scrub that is clean", func(st admin.Status) bool {
		l := st.Scrub.Last
		return l != nil && l.Started.After(found.Started) && l.MismatchCount == 0
	})
	code, table, errOut := runDst(t, "status", "--admin", adminAddr)
	require.Equal(t, exitOK, code, errOut)
	require.Contains(t, table, "last scrub")
	require.Contains(t, table, "the replicas agreed")
	require.Contains(t, table, "next scrub")
	s.stopOK(t)
	a.stopOK(t)
	b.stopOK(t)
	dataB, err := os.ReadFile(fileB)
	require.NoError(t, err)
	require.Equal(t, bytes.Repeat([]byte{0x5e}, 4096), dataB[off+3<<20:off+3<<20+4096], "repaired on member 1")
}
