// The engine's proofs, run in CI against the real binary and real NBD
// peers on loopback: a mirror of two dst exports under fio randwrite with
// crc32c verification loses one export to SIGKILL mid-write with no client
// error, resyncs it when it returns on the same port and ends with
// byte-identical data areas; a member whose file is swapped for blank
// media behind a restarted export is never read from, is copied whole and
// ends identical; a linear storage fails I/O to the range of a killed
// export only and serves it again, without a restart of dst serve, once
// the export returns; qemu-nbd serves a mirror member through an nbdcopy
// round trip, a SIGKILL and a resync; and a dst serve is a member of
// another dst serve, with an image copied through the tree by nbdcopy
// coming back with the same sha256 — each checked by running dst export,
// dst serve, qemu-nbd, fio, qemu-io and nbdcopy as processes (stopped by
// PID, logs in files printed on failure), polling dst status --json in
// bounded loops, and comparing the member files after a clean shutdown.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/admin"
	"dst/storage/engine"
)

// rig runs the processes of one proof. Each process's standard output and
// error go to a log file in the test's directory; every process and tool
// run is bounded by the rig's deadline, and processes still running when
// the test ends are killed by PID. When the test fails the rig prints what
// reproduces it: its notes (addresses, files, seeds) and every log.
type rig struct {
	t   *testing.T
	dir string
	ctx context.Context

	wg sync.WaitGroup // async work, waited for when the test ends

	mu    sync.Mutex
	logs  []string
	notes []string
}

// newRig returns a rig whose processes and tool runs all end within
// budget.
func newRig(t *testing.T, budget time.Duration) *rig {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	r := &rig{t: t, dir: t.TempDir(), ctx: ctx}
	// Registered first, so it runs last: after every process was stopped
	// and its log is complete.
	t.Cleanup(func() {
		cancel()
		r.wg.Wait()
		if t.Failed() {
			r.dump()
		}
	})
	return r
}

// async runs f on its own goroutine; when the test ends the rig ends its
// deadline (stopping the tools f runs) and waits for f. f must not call
// the test's Fatal or FailNow.
func (r *rig) async(f func()) {
	r.wg.Go(f)
}

// note records a fact that helps reproduce a failure and logs it.
func (r *rig) note(format string, args ...any) {
	r.t.Helper()
	s := fmt.Sprintf(format, args...)
	r.mu.Lock()
	r.notes = append(r.notes, s)
	r.mu.Unlock()
	r.t.Log(s)
}

// logFile creates a new log file for name; it is printed if the test
// fails.
func (r *rig) logFile(name string) (*os.File, string, error) {
	r.mu.Lock()
	path := filepath.Join(r.dir, fmt.Sprintf("%02d-%s.log", len(r.logs), name))
	r.logs = append(r.logs, path)
	r.mu.Unlock()
	f, err := os.Create(path)
	return f, path, err
}

func (r *rig) dump() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.t.Logf("to reproduce: %s", strings.Join(r.notes, "; "))
	for _, path := range r.logs {
		b, err := os.ReadFile(path)
		if err != nil {
			r.t.Logf("--- %s: %v", path, err)
			continue
		}
		const keep = 24 << 10 // the end of a long log tells most
		if len(b) > keep {
			b = append([]byte(fmt.Sprintf("[... %d bytes cut ...]\n", len(b)-keep)), b[len(b)-keep:]...)
		}
		r.t.Logf("--- %s:\n%s", path, b)
	}
}

// start runs bin with args, its output in a log the rig prints on
// failure, killed when the rig's deadline or the test ends, and waits
// until its standard output printed a line starting with each prefix, in
// order.
func (r *rig) start(name string, prefixes []string, bin string, args ...string) *child {
	t := r.t
	t.Helper()
	f, path, err := r.logFile(name)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	p := startChild(t, path, prefixes, append([]string{bin}, args...)...)
	stop := context.AfterFunc(r.ctx, func() { p.Kill() })
	t.Cleanup(func() { stop() })
	r.note("%s: pid %d %v, log %s", name, p.Pid(), p.addrs, filepath.Base(path))
	return p
}

// export runs dst export serving file on listen.
func (r *rig) export(name, listen, file string) *child {
	r.t.Helper()
	return r.start(name, []string{"listening on "}, dstBinary,
		"export", "--listen", listen, "--file", file, "--log-level", "info")
}

// serve writes config to a file and runs dst serve with it; addrs[0] is
// the NBD address, addrs[1] the admin address.
func (r *rig) serve(name, config string) *child {
	r.t.Helper()
	f, path, err := r.logFile(name + "-config")
	require.NoError(r.t, err)
	_, err = f.WriteString(config)
	require.NoError(r.t, errors.Join(err, f.Close()))
	r.note("%s config %s", name, path)
	return r.start(name, []string{"listening on ", "admin on "}, dstBinary,
		"serve", "--config", path, "--log-level", "debug")
}

// run runs a tool within timeout (and the rig's deadline), records its
// command line and output in a log, and returns the output.
func (r *rig) run(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(r.ctx, timeout)
	defer cancel()
	f, _, err := r.logFile(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fmt.Fprintf(f, "# %s %s\n", name, strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = r.dir // fio leaves verify state files in its directory
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	f.Write(out)
	fmt.Fprintf(f, "# exit: %v\n", err)
	return string(out), err
}

// qemuIO runs qemu-io commands on url and requires all of them to succeed
// (qemu-io exits non-zero when one fails, and reports a pattern mismatch
// as a failure).
// nbdcopyRoundTrip copies a seeded random image of n bytes into url and the
// whole export back out with nbdcopy, and returns both.
func (r *rig) nbdcopyRoundTrip(t *testing.T, url string, n int) (in, out []byte) {
	seed := uint64(time.Now().UnixNano())
	r.note("image seed %d", seed)
	inFile := randomFile(t, r.dir, "in.img", n, seed)
	r.mustRun(time.Minute, "nbdcopy", "--flush", inFile, url)
	outFile := filepath.Join(r.dir, "out.img")
	r.mustRun(time.Minute, "nbdcopy", url, outFile)
	in, err := os.ReadFile(inFile)
	require.NoError(t, err)
	out, err = os.ReadFile(outFile)
	require.NoError(t, err)
	return in, out
}

func (r *rig) qemuIO(url string, cmds ...string) {
	r.t.Helper()
	out, err := r.run(time.Minute, "qemu-io", qemuIOArgs(url, cmds)...)
	require.NoError(r.t, err, "qemu-io %v %s:\n%s", cmds, url, out)
	require.NotContains(r.t, out, "failed", "qemu-io %v %s", cmds, url)
}

// qemuIOFails runs qemu-io commands on url and reports whether one of them
// failed, with the output.
func (r *rig) qemuIOFails(url string, cmds ...string) (bool, string) {
	out, err := r.run(time.Minute, "qemu-io", qemuIOArgs(url, cmds)...)
	return err != nil || strings.Contains(out, "failed"), out
}

func qemuIOArgs(url string, cmds []string) []string {
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	return append(args, url)
}

// mustRun runs a tool and requires exit status 0.
func (r *rig) mustRun(timeout time.Duration, name string, args ...string) string {
	r.t.Helper()
	out, err := r.run(timeout, name, args...)
	require.NoError(r.t, err, "%s %s:\n%s", name, strings.Join(args, " "), out)
	return out
}

// storageConfig is a dst serve config of one layout over members, with
// fastNodes.
func storageConfig(layout string, members ...string) string {
	return storageConfigNodes(fastNodes, layout, members...)
}

// storageConfigNodes is storageConfig with other node and resync settings.
func storageConfigNodes(nodes, layout string, members ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nstorage:\n  layout: %s\n  members:\n", layout)
	for _, m := range members {
		fmt.Fprintf(&b, "    - %s\n", m)
	}
	b.WriteString("region_size: 64KiB\n")
	b.WriteString(nodes)
	return b.String()
}

// dataArea returns the data area of member i of a stopped storage: the
// bytes of file from its data offset on, size of them.
func dataArea(t *testing.T, file string, m admin.MemberStatus, size int64) []byte {
	t.Helper()
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	require.Positive(t, m.DataOffset, "member %d: the data area follows the metadata", m.Index)
	require.LessOrEqual(t, m.DataOffset+size, int64(len(b)), "member %d (%s)", m.Index, file)
	return b[m.DataOffset : m.DataOffset+size]
}

// requireSameBytes fails with the first differing offset and the count of
// differing 4 KiB blocks.
func requireSameBytes(t *testing.T, want, got []byte, what string) {
	t.Helper()
	require.Equal(t, len(want), len(got), what)
	if bytes.Equal(want, got) {
		return
	}
	first, blocks := -1, 0
	for off := 0; off < len(want); off += 4096 {
		end := min(off+4096, len(want))
		if !bytes.Equal(want[off:end], got[off:end]) {
			blocks++
			if first < 0 {
				for i := off; i < end; i++ {
					if want[i] != got[i] {
						first = i
						break
					}
				}
			}
		}
	}
	t.Fatalf("%s: %d of %d 4 KiB blocks differ, first at offset %d (%#x vs %#x)",
		what, blocks, (len(want)+4095)/4096, first, want[first], got[first])
}

// fioReport is the part of fio's JSON output the proofs check.
type fioReport struct {
	Jobs []struct {
		Error int `json:"error"`
		Read  struct {
			IOBytes int64 `json:"io_bytes"`
		} `json:"read"`
		Write struct {
			IOBytes int64 `json:"io_bytes"`
		} `json:"write"`
	} `json:"jobs"`
}

// fioResult is how a fio run ended: its output and error.
type fioResult struct {
	out string
	err error
}

// fioRun is a fio run started by fioVerify: done gets its end.
type fioRun struct {
	report string // the path of fio's JSON report
	n      int
	done   <-chan fioResult
}

// fioVerify starts fio writing n bytes at random (4 KiB, queue depth 16)
// through uri at most at rate (fio's notation, such as 16m) for at most
// runtime, then verifying every block's crc32c.
func (r *rig) fioVerify(name, uri string, n int, rate string, runtime time.Duration) *fioRun {
	report := filepath.Join(r.dir, name+"-fio.json")
	done := make(chan fioResult, 1)
	r.async(func() {
		out, err := r.run(runtime+10*time.Second, "fio", "--name="+name, "--ioengine=nbd", "--uri="+uri,
			"--rw=randwrite", "--bs=4k", "--iodepth=16", fmt.Sprintf("--size=%d", n),
			"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--rate=,"+rate,
			fmt.Sprintf("--runtime=%d", int(runtime.Seconds())), "--output-format=json", "--output="+report)
		done <- fioResult{out, err}
	})
	return &fioRun{report: report, n: n, done: done}
}

// wait waits at most timeout for fio to end and requires that it ended
// well: no error, and its one job wrote and verified all n bytes.
func (f *fioRun) wait(t *testing.T, timeout time.Duration) {
	t.Helper()
	var res fioResult
	select {
	case res = <-f.done:
	case <-time.After(timeout):
		t.Fatalf("fio did not end within %v", timeout)
	}
	require.NoError(t, res.err, "fio:\n%s", res.out)
	raw, err := os.ReadFile(f.report)
	require.NoError(t, err)
	var rep fioReport
	require.NoError(t, json.Unmarshal(raw, &rep), "%s", raw)
	require.Len(t, rep.Jobs, 1)
	require.Zero(t, rep.Jobs[0].Error, "fio job error")
	require.Equal(t, int64(f.n), rep.Jobs[0].Write.IOBytes, "fio wrote the whole size")
	require.Equal(t, int64(f.n), rep.Jobs[0].Read.IOBytes, "fio verified the whole size")
}

// TestProofMirrorFioSurvivesKill9: fio writes 32 MiB at random through a
// mirror of two dst exports and verifies every block's crc32c; one export
// is killed with SIGKILL during the write phase; fio must see no error,
// and after the export returns on the same port with the same file the
// mirror resyncs it and the two data areas are byte-identical.
func TestProofMirrorFioSurvivesKill9(t *testing.T) {
	testkit.Need(t, "fio")
	start := time.Now()
	r := newRig(t, 80*time.Second)
	const memberBytes, fioBytes, blockBytes = 36 << 20, 32 << 20, 4096
	fileA, fileB := testkit.Image(t, "a.img", memberBytes), testkit.Image(t, "b.img", memberBytes)
	r.note("member files %s %s", fileA, fileB)
	a := r.export("export-a", "127.0.0.1:0", fileA)
	b := r.export("export-b", "127.0.0.1:0", fileB)
	s := r.serve("serve", storageConfig("mirror", "nbd://"+a.addrs[0], "nbd://"+b.addrs[0]))
	uri, adminAddr := "nbd://"+s.addrs[0]+"/", s.addrs[1]
	st := status(t, adminAddr)
	require.True(t, allInSync(st), "%+v", st)
	require.GreaterOrEqual(t, st.Size, int64(fioBytes))

	// The write phase is throttled to 16 MiB/s (about 2 s) so that the
	// kill lands inside it; the verify phase reads at full speed.
	fio := r.fioVerify("proof", uri, fioBytes, "16m", 60*time.Second)

	// Kill export A once a quarter of fio's writes completed.
	const writesTotal = fioBytes / blockBytes
	deadline := time.Now().Add(30 * time.Second)
	var writesAtKill uint64
	for {
		st := status(t, adminAddr)
		if n := st.Requests["write"].Count; n >= writesTotal/4 {
			writesAtKill = n
			break
		}
		select {
		case res := <-fio.done:
			t.Fatalf("fio ended before a quarter of its writes were seen: %v\n%s", res.err, res.out)
		default:
		}
		require.True(t, time.Now().Before(deadline), "fio wrote too slowly: %+v", st.Requests)
		time.Sleep(20 * time.Millisecond)
	}
	require.NoError(t, a.Kill())
	r.note("export-a killed with SIGKILL after %d of %d writes, at %v", writesAtKill, writesTotal, time.Since(start))
	require.Less(t, writesAtKill, uint64(writesTotal), "the kill landed in fio's write phase")

	fio.wait(t, 75*time.Second)
	st = status(t, adminAddr)
	require.Zero(t, st.Requests["write"].Errors, "no write failed")
	require.Zero(t, st.Requests["read"].Errors, "no read failed")
	require.Equal(t, engine.Failed.String(), st.Members[0].State, "%+v", st.Members[0])
	require.Positive(t, st.Members[0].DirtyRegions, "what member 0 missed is recorded")
	t.Logf("fio wrote and verified %d MiB with member 0 gone: %v", fioBytes>>20, time.Since(start))

	// Export A returns on the same port with the same file: resynced.
	r.export("export-a-again", a.addrs[0], fileA)
	st = waitStatus(t, adminAddr, 30*time.Second, "both members in sync", allInSync)
	require.Zero(t, st.Members[0].DirtyRegions)
	require.Positive(t, st.Members[0].ResyncedBytes)
	t.Logf("member 0 in sync after copying %d bytes: %v", st.Members[0].ResyncedBytes, time.Since(start))

	s.stopOK(t)
	areaA := dataArea(t, fileA, st.Members[0], st.Size)
	areaB := dataArea(t, fileB, st.Members[1], st.Size)
	requireSameBytes(t, areaB, areaA, "member data areas")
	t.Logf("data areas identical (%d bytes): %v", st.Size, time.Since(start))
}

// TestProofMirrorResyncsBlankMedia: member 0's export is stopped, its
// file replaced by a blank one of the same size, and the export restarted
// on the same port, with no I/O to the storage meanwhile; the engine must
// notice the new media by itself — no read may return its blank bytes,
// although an idle mirror reads from member 0 first — copy the whole
// storage to it, and end with identical data areas.
func TestProofMirrorResyncsBlankMedia(t *testing.T) {
	testkit.Need(t, "qemu-io")
	start := time.Now()
	r := newRig(t, 60*time.Second)
	const memberBytes = 16 << 20
	fileA, fileB := testkit.Image(t, "a.img", memberBytes), testkit.Image(t, "b.img", memberBytes)
	r.note("member files %s %s", fileA, fileB)
	a := r.export("export-a", "127.0.0.1:0", fileA)
	b := r.export("export-b", "127.0.0.1:0", fileB)
	s := r.serve("serve", storageConfig("mirror", "nbd://"+a.addrs[0], "nbd://"+b.addrs[0]))
	url, adminAddr := "nbd://"+s.addrs[0], s.addrs[1]
	st := status(t, adminAddr)
	size := st.Size
	tail := size - 1<<20
	reads := []string{"read -P 0x5a 0 4M", fmt.Sprintf("read -P 0xa5 %d 1M", tail)}
	r.qemuIO(url, "write -P 0x5a 0 4M", fmt.Sprintf("write -P 0xa5 %d 1M", tail), "flush")

	// New media for member 0: same size, every byte zero.
	a.stopOK(t)
	require.NoError(t, os.Truncate(fileA, 0))
	require.NoError(t, os.Truncate(fileA, memberBytes))
	r.export("export-a-blank", a.addrs[0], fileA)
	r.note("member 0 replaced by blank media at %v", time.Since(start))

	// Reads never see the blank media, whichever replica they go to.
	for range 3 {
		r.qemuIO(url, reads...)
	}
	// Copied whole: the 5 MiB of data copied, the holes between written
	// as zeroes (the source's block status says they read zeroes).
	st = waitStatus(t, adminAddr, 30*time.Second, "member 0 copied whole and in sync", func(st admin.Status) bool {
		return allInSync(st) && st.Members[0].ResyncedBytes+st.Members[0].ResyncZeroedBytes >= size
	})
	m0 := st.Members[0]
	require.Zero(t, m0.DirtyRegions)
	require.LessOrEqual(t, m0.ResyncedBytes+m0.ResyncZeroedBytes, size+size/8, "one full copy, not several")
	require.LessOrEqual(t, m0.ResyncedBytes, int64(5<<20+2*64<<10), "only the data is copied")
	t.Logf("member 0 resynced %d bytes and zeroed %d (storage %d): %v", m0.ResyncedBytes, m0.ResyncZeroedBytes, size, time.Since(start))
	r.qemuIO(url, reads...)

	s.stopOK(t)
	areaA := dataArea(t, fileA, st.Members[0], size)
	areaB := dataArea(t, fileB, st.Members[1], size)
	require.Equal(t, bytes.Repeat([]byte{0x5a}, 4<<20), areaA[:4<<20], "member 0 got the data back")
	requireSameBytes(t, areaB, areaA, "member data areas")
	t.Logf("data areas identical: %v", time.Since(start))
}

// TestProofLinearNodeLossIsLocal: a linear storage over three dst exports
// loses the middle one to SIGKILL; reads and writes of its range fail,
// the other ranges keep working, and when the export returns on the same
// port its range serves again with the same dst serve process.
func TestProofLinearNodeLossIsLocal(t *testing.T) {
	testkit.Need(t, "qemu-io")
	start := time.Now()
	r := newRig(t, 60*time.Second)
	const memberBytes = 8 << 20
	var files []string
	var exports []*child
	var members []string
	for i := range 3 {
		f := testkit.Image(t, fmt.Sprintf("m%d.img", i), memberBytes)
		e := r.export(fmt.Sprintf("export-%d", i), "127.0.0.1:0", f)
		files, exports, members = append(files, f), append(exports, e), append(members, "nbd://"+e.addrs[0])
	}
	r.note("member files %v", files)
	// One try of 1 s per request: a request to the dead member fails
	// after 1 s.
	nodes := strings.Replace(fastNodes, "retries: 2", "retries: 0", 1)
	s := r.serve("serve", storageConfigNodes(nodes, "linear", members...))
	url, adminAddr := "nbd://"+s.addrs[0], s.addrs[1]
	st := status(t, adminAddr)
	require.Len(t, st.Members, 3)
	// Member i's range of the storage: [starts[i], starts[i+1]).
	starts := []int64{0}
	for _, m := range st.Members {
		starts = append(starts, starts[len(starts)-1]+m.NodeSize-m.DataOffset)
	}
	require.Equal(t, st.Size, starts[3])
	// 64 KiB in the middle of each member's range.
	at := func(i int) int64 { return (starts[i] + starts[i+1]) / 2 &^ 4095 }
	for i := range 3 {
		r.qemuIO(url, fmt.Sprintf("write -P %#x %d 64k", 0x11*(i+1), at(i)))
	}
	r.qemuIO(url, "flush")
	readOf := func(i int) string { return fmt.Sprintf("read -P %#x %d 64k", 0x11*(i+1), at(i)) }

	require.NoError(t, exports[1].Kill())
	r.note("export-1 killed with SIGKILL at %v", time.Since(start))
	failed, out := r.qemuIOFails(url, readOf(1))
	require.True(t, failed, "a read of the dead member's range fails:\n%s", out)
	require.Contains(t, out, "read failed: Input/output error", "the read reached dst serve and failed there")
	failed, out = r.qemuIOFails(url, fmt.Sprintf("write -P 0x99 %d 4k", at(1)))
	require.True(t, failed, "a write to the dead member's range fails:\n%s", out)
	require.Contains(t, out, "write failed: Input/output error")
	r.qemuIO(url, readOf(0), readOf(2), fmt.Sprintf("write -P 0x44 %d 4k", starts[3]-4096),
		fmt.Sprintf("read -P 0x44 %d 4k", starts[3]-4096))
	t.Logf("member 1 gone: its range fails, the others work: %v", time.Since(start))

	r.export("export-1-again", exports[1].addrs[0], files[1])
	deadline := time.Now().Add(20 * time.Second)
	for tries := 1; ; tries++ {
		failed, out := r.qemuIOFails(url, readOf(1))
		if !failed {
			t.Logf("member 1's range reads again after %d tries: %v", tries, time.Since(start))
			break
		}
		require.True(t, time.Now().Before(deadline), "member 1's range did not read again within 20 s:\n%s", out)
		time.Sleep(100 * time.Millisecond)
	}
	require.True(t, s.Alive(), "dst serve was not restarted")
	r.qemuIO(url, fmt.Sprintf("write -P 0x55 %d 4k", at(1)), fmt.Sprintf("read -P 0x55 %d 4k", at(1)), readOf(0), readOf(2))
	st = status(t, adminAddr)
	require.True(t, allInSync(st), "%+v", st)
	require.NotNil(t, st.Members[1].Remote)
	require.Positive(t, st.Members[1].Remote.Reconnects)
	s.stopOK(t)
}

// startQemuNBD serves file with qemu-nbd on the Unix socket sock and
// waits until it accepts connections; it returns the process and the
// member URL.
func (r *rig) startQemuNBD(name, sock, file string) (*child, string) {
	t := r.t
	t.Helper()
	p := r.start(name, nil, "qemu-nbd", "--format=raw", "--persistent", "--shared=8", "--export-name=disk",
		"--cache=writeback", "--socket="+sock, file)
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			break
		}
		require.True(t, p.Alive(), "qemu-nbd exited; log %s", p.Log())
		require.True(t, time.Now().Before(deadline), "qemu-nbd did not listen on %s within 20 s: %v", sock, err)
		time.Sleep(20 * time.Millisecond)
	}
	url := "nbd+unix:///disk?socket=" + sock
	r.note("%s serves %s at %s", name, file, url)
	return p, url
}

// TestProofQemuNBDMember: a mirror of a dst export and a qemu-nbd over a
// raw file (on a Unix socket) takes qemu-io patterns and an nbdcopy round
// trip; qemu-nbd killed with SIGKILL and restarted on the same socket is
// resynced; and the qemu-nbd file's data area ends identical to the dst
// export's.
func TestProofQemuNBDMember(t *testing.T) {
	testkit.Need(t, "qemu-io", "qemu-nbd", "nbdcopy")
	start := time.Now()
	r := newRig(t, 60*time.Second)
	const memberBytes, imageBytes = 16 << 20, 8 << 20
	fileA, fileQ := testkit.Image(t, "a.img", memberBytes), testkit.Image(t, "q.img", memberBytes)
	a := r.export("export-a", "127.0.0.1:0", fileA)
	sock := filepath.Join(r.dir, "qemu-nbd.sock")
	q, qURL := r.startQemuNBD("qemu-nbd", sock, fileQ)
	s := r.serve("serve", storageConfig("mirror", "nbd://"+a.addrs[0], qURL))
	url, adminAddr := "nbd://"+s.addrs[0], s.addrs[1]
	st := status(t, adminAddr)
	require.True(t, allInSync(st), "%+v", st)
	require.Equal(t, int64(memberBytes), st.Members[1].NodeSize)
	size := st.Size

	// Patterns beyond the image: odd 512-byte offsets and lengths, and
	// the storage's last sector.
	odd := int64(imageBytes + 3*512)
	r.qemuIO(url,
		fmt.Sprintf("write -P 0x3c %d 70144", odd),
		fmt.Sprintf("write -P 0xc3 %d 512", size-512),
		"flush",
		fmt.Sprintf("read -P 0x3c %d 70144", odd),
		fmt.Sprintf("read -P 0xc3 %d 512", size-512))

	want, out := r.nbdcopyRoundTrip(t, url, imageBytes)
	require.Len(t, out, int(size))
	requireSameBytes(t, want, out[:imageBytes], "nbdcopy round trip")
	require.Equal(t, bytes.Repeat([]byte{0x3c}, 70144), out[odd:odd+70144])
	t.Logf("qemu-io patterns and an nbdcopy round trip of %d MiB: %v", imageBytes>>20, time.Since(start))

	// qemu-nbd dies; the mirror goes on with the dst export; qemu-nbd
	// comes back on the same socket with the same file and is resynced.
	require.NoError(t, q.Kill())
	late := int64(imageBytes + 2<<20)
	r.qemuIO(url, fmt.Sprintf("write -P 0x6b %d 1M", late), "flush")
	waitStatus(t, adminAddr, 10*time.Second, "member 1 failed", memberState(1, engine.Failed))
	q, _ = r.startQemuNBD("qemu-nbd-again", sock, fileQ)
	st = waitStatus(t, adminAddr, 30*time.Second, "both members in sync", allInSync)
	require.Positive(t, st.Members[1].ResyncedBytes)
	r.qemuIO(url, fmt.Sprintf("read -P 0x6b %d 1M", late), fmt.Sprintf("read -P 0x3c %d 70144", odd))
	t.Logf("qemu-nbd member killed, restarted and resynced (%d bytes): %v", st.Members[1].ResyncedBytes, time.Since(start))

	s.stopOK(t)
	q.stopOK(t)
	areaA := dataArea(t, fileA, st.Members[0], size)
	areaQ := dataArea(t, fileQ, st.Members[1], size)
	requireSameBytes(t, areaA, areaQ, "dst export and qemu-nbd data areas")
	requireSameBytes(t, want, areaQ[:imageBytes], "the image on the qemu-nbd member")
	require.Equal(t, bytes.Repeat([]byte{0x6b}, 1<<20), areaQ[late:late+1<<20], "the qemu-nbd member got what it missed")
}

// randomFile writes size bytes drawn from seed to dir/name.
func randomFile(t *testing.T, dir, name string, size int, seed uint64) string {
	t.Helper()
	b := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{0: byte(seed), 1: byte(seed >> 8), 2: byte(seed >> 16), 3: byte(seed >> 24),
		4: byte(seed >> 32), 5: byte(seed >> 40), 6: byte(seed >> 48), 7: byte(seed >> 56)})
	rng.Read(b)
	path := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(path, b, 0o644))
	return path
}

// TestProofTreeStacking: dst serve A (a mirror of two dst exports) is the
// first member of dst serve TOP (linear over A and a third export); a
// random 16 MiB image copied into TOP by nbdcopy, across the boundary of
// its members, comes back with the same sha256, and each byte sits where
// the two layouts put it on the export files.
func TestProofTreeStacking(t *testing.T) {
	testkit.Need(t, "nbdcopy")
	start := time.Now()
	r := newRig(t, 60*time.Second)
	const mirrorBytes, thirdBytes, imageBytes = 12 << 20, 8 << 20, 16 << 20
	file1, file2, file3 := testkit.Image(t, "a1.img", mirrorBytes), testkit.Image(t, "a2.img", mirrorBytes), testkit.Image(t, "e3.img", thirdBytes)
	r.note("member files %s %s %s", file1, file2, file3)
	e1 := r.export("export-a1", "127.0.0.1:0", file1)
	e2 := r.export("export-a2", "127.0.0.1:0", file2)
	e3 := r.export("export-3", "127.0.0.1:0", file3)
	sa := r.serve("serve-a", storageConfig("mirror", "nbd://"+e1.addrs[0], "nbd://"+e2.addrs[0]))
	top := r.serve("serve-top", storageConfig("linear", "nbd://"+sa.addrs[0], "nbd://"+e3.addrs[0]))
	url := "nbd://" + top.addrs[0]
	stA, stTop := status(t, sa.addrs[1]), status(t, top.addrs[1])
	require.Equal(t, stA.Size, stTop.Members[0].NodeSize, "serve A is TOP's member 0")
	data0 := stTop.Members[0].NodeSize - stTop.Members[0].DataOffset
	require.Less(t, data0, int64(imageBytes), "the image crosses TOP's member boundary")
	require.GreaterOrEqual(t, stTop.Size, int64(imageBytes))

	want, out := r.nbdcopyRoundTrip(t, url, imageBytes)
	require.Len(t, out, int(stTop.Size))
	wantSum, gotSum := sha256.Sum256(want), sha256.Sum256(out[:imageBytes])
	require.Equal(t, fmt.Sprintf("%x", wantSum), fmt.Sprintf("%x", gotSum), "sha256 of the image in and out")
	t.Logf("%d MiB in and out through the tree, sha256 %x: %v", imageBytes>>20, wantSum[:8], time.Since(start))

	top.stopOK(t)
	sa.stopOK(t)
	// The image's head is in A's data area at TOP's member-0 data offset,
	// on both replicas; its tail at the third export's data offset.
	head := data0
	for i, f := range []string{file1, file2} {
		area := dataArea(t, f, stA.Members[i], stA.Size)
		off := stTop.Members[0].DataOffset
		requireSameBytes(t, want[:head], area[off:off+head], fmt.Sprintf("image head on %s", f))
	}
	area3 := dataArea(t, file3, stTop.Members[1], imageBytes-head)
	requireSameBytes(t, want[head:], area3, "image tail on the third export")
}
