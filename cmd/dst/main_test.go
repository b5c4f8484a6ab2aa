// The dst command lists every flag in its help, rejects each bad flag with
// a message naming it and status 2, reports unusable files and addresses
// with status 1, serves what its flags describe and shuts down cleanly on
// SIGINT and SIGTERM; checked by calling run in-process and by executing
// the binary, built once in TestMain.
package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/storage/nbd"

	"dst/internal/dstbin"
	"dst/internal/testkit"
)

// dstBinary is the dst binary built by TestMain.
var dstBinary string

func TestMain(m *testing.M) { os.Exit(dstbin.Run(m, &dstBinary)) }

// runDst runs the command in-process with a deadline and returns its exit
// status, standard output and standard error.
func runDst(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestHelpListsEveryFlag(t *testing.T) {
	fs, _ := setupExport(io.Discard, io.Discard)
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, "--"+f.Name) })
	require.Contains(t, names, "--tls-required")

	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}, {"export", "--help"}, {"help", "export"}} {
		code, out, errOut := runDst(t, args...)
		require.Equal(t, exitOK, code, "%v: %s", args, errOut)
		for _, n := range names {
			require.Contains(t, out, "  "+n, "dst %v lists %s", args, n)
		}
		require.Contains(t, out, "Usage: dst export")
	}
	code, _, errOut := runDst(t)
	require.Equal(t, exitUsage, code, "no command")
	require.Contains(t, errOut, "Usage: dst <command>")
}

func TestUsageErrors(t *testing.T) {
	img := testkit.Image(t, "disk.img", 1<<20)
	other := testkit.Image(t, "disk.img", 1<<20) // same base name, other dir
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"nonsense"}, `unknown command "nonsense"`},
		{[]string{"export"}, "no --file given"},
		{[]string{"export", "--file", img, "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"export", "--file", img, "--read-only=maybe"}, "read-only"},
		{[]string{"export", "--file", img, "stray"}, `unexpected argument "stray"`},
		{[]string{"export", "--file", img, "--size", "abc"}, `--size: "abc" is not a size`},
		{[]string{"export", "--file", "a=" + img, "--size", "a=10GB"}, `--size "a=10GB": "10GB" is not a size (use 10GiB)`},
		{[]string{"export", "--file", img, "--volatile-cache", "1MB"}, `--volatile-cache: "1MB" is not a size (use 1MiB)`},
		{[]string{"export", "--file", img, "--size", "0"}, `--size "0": must be at least 1 byte`},
		{[]string{"export", "--file", img, "--size", "1MiB", "--size", "2MiB"}, `--size "2MiB": a size for all exports was already given`},
		{[]string{"export", "--file", img, "--size", "nope=1MiB"}, `--size "nope=1MiB": no export named "nope"`},
		{[]string{"export", "--file", "a=" + img, "--size", "a=1MiB", "--size", "a=2MiB"}, `export "a" already has a size`},
		{[]string{"export", "--file", img, "--allow", "10.0.0/8=rw"}, `--allow "10.0.0/8=rw"`},
		{[]string{"export", "--file", img, "--allow", "10.0.0.0/8=rx"}, `access "rx" is neither ro nor rw`},
		{[]string{"export", "--file", img, "--allow", "zz=10.0.0.0/8=rw"}, `--allow "zz=10.0.0.0/8=rw": no export named "zz"`},
		{[]string{"export", "--file", img, "--allow", "10.0.0.0/8=rw", "--allow", "10.0.0.0/8=ro"}, "two rules for 10.0.0.0/8"},
		{[]string{"export", "--file", img, "--allow", ","}, `--allow ",": no rule`},
		{[]string{"export", "--file", img, "--tls-key", "k.pem"}, "--tls-cert and --tls-key go together"},
		{[]string{"export", "--file", img, "--tls-ca", "ca.pem"}, "--tls-ca needs --tls-cert"},
		{[]string{"export", "--file", img, "--tls-required"}, "--tls-required needs --tls-cert"},
		{[]string{"export", "--file", img, "--log-level", "loud"}, `--log-level "loud"`},
		{[]string{"export", "--file", img, "--listen", "nowhere"}, `--listen "nowhere"`},
		{[]string{"export", "--file", img, "--listen", ""}, "--listen is empty"},
		{[]string{"export", "--file", img, "--shutdown-timeout", "0s"}, "--shutdown-timeout 0s"},
		{[]string{"export", "--file", img, "--max-conns", "0"}, "--max-conns 0"},
		{[]string{"export", "--file", img, "--file", other}, `a second export named "disk.img"`},
		{[]string{"export", "--file", img, "--file", other, "--name", "x"}, "--name names a lone --file"},
		{[]string{"export", "--file", "a=" + img, "--name", "x"}, "names its export and --name"},
		{[]string{"export", "--file", "=" + img}, "empty export name"},
		{[]string{"export", "--file", "a="}, "empty path"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, errOut := runDst(t, tc.args...)
			require.Equal(t, exitUsage, code, "stderr: %s", errOut)
			require.Contains(t, errOut, tc.want)
			require.Empty(t, out, "nothing on standard output")
		})
	}
}

func TestRuntimeErrors(t *testing.T) {
	dir := t.TempDir()
	img := testkit.Image(t, "disk.img", 1<<20)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing file", []string{"export", "--file", filepath.Join(dir, "nope.img")}, "nope.img does not exist (give a size to create it)"},
		{"directory", []string{"export", "--file", dir}, "not a regular file or block device"},
		{"read-only cannot grow", []string{"export", "--file", img, "--read-only", "--size", "2MiB"}, "opened read-only"},
		{"missing certificate", []string{"export", "--file", img, "--tls-cert", filepath.Join(dir, "c.pem"), "--tls-key", filepath.Join(dir, "k.pem")}, "c.pem"},
		{"address in use", []string{"export", "--file", img, "--listen", busy.Addr().String()}, "address already in use"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := runDst(t, tc.args...)
			require.Equal(t, exitRuntime, code, "stderr: %s", errOut)
			require.Contains(t, errOut, tc.want)
			require.True(t, strings.HasPrefix(errOut, "dst export: ") || strings.Contains(errOut, "\ndst export: "), errOut)
		})
	}
}

// lineWriter hands the first line written to it to a channel and keeps
// the rest.
type lineWriter struct {
	first chan string
	buf   bytes.Buffer
	sent  bool
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf.Write(p)
	if !w.sent {
		if line, _, ok := strings.Cut(w.buf.String(), "\n"); ok {
			w.sent = true
			w.first <- line
		}
	}
	return len(p), nil
}

func TestExportServesInProcess(t *testing.T) {
	a := filepath.Join(t.TempDir(), "a.img") // created by --size
	b := testkit.Image(t, "b.img", 4<<20)
	stdout := &lineWriter{first: make(chan string, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	var stderr bytes.Buffer
	go func() {
		done <- run(ctx, []string{"export", "--listen", "127.0.0.1:0", "--log-level", "warn",
			"--file", "a=" + a, "--file", "b=" + b, "--size", "a=2MiB", "--size", "b=1MiB",
			"--allow", "127.0.0.0/8=rw", "--allow", "b=127.0.0.1=ro"}, stdout, &stderr)
	}()
	var addr string
	select {
	case line := <-stdout.first:
		var ok bool
		addr, ok = strings.CutPrefix(line, "listening on ")
		require.True(t, ok, line)
	case code := <-done:
		t.Fatalf("exited %d before listening: %s", code, stderr.String())
	case <-time.After(10 * time.Second):
		t.Fatal("no listening line within 10 s")
	}
	require.NotEqual(t, "127.0.0.1:0", addr, "the real port is printed")

	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	ca, err := nbd.Dial(dctx, "tcp", addr, nbd.ClientOptions{ExportName: "a"})
	require.NoError(t, err)
	require.Equal(t, int64(2<<20), ca.Size())
	require.NoError(t, ca.WriteAt(dctx, []byte("hello"), 0, nbd.CmdFlagFUA))
	ca.Close()
	cb, err := nbd.Dial(dctx, "tcp", addr, nbd.ClientOptions{ExportName: "b"})
	require.NoError(t, err)
	require.Equal(t, int64(1<<20), cb.Size(), "--size limits a larger file")
	require.NotZero(t, cb.Info().Flags&nbd.FlagReadOnly, "per-export rule overrides the global one")
	cb.Close()

	cancel()
	select {
	case code := <-done:
		require.Equal(t, exitOK, code, stderr.String())
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return within 10 s of its context ending")
	}
	data, err := os.ReadFile(a)
	require.NoError(t, err)
	require.Equal(t, "hello", string(data[:5]))
	require.Len(t, data, 2<<20, "the missing file was created with --size")
}

func TestBinarySignals(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			img := testkit.Image(t, "disk.img", 1<<20)
			p := startProc(t, []string{"listening on "}, dstBinary, "export", "--listen", "127.0.0.1:0", "--file", img)
			addr := p.addrs[0]
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := nbd.Dial(ctx, "tcp", addr, nbd.ClientOptions{})
			require.NoError(t, err)
			defer c.Close()
			require.NoError(t, c.WriteAt(ctx, []byte("x"), 0, 0))

			require.Equal(t, exitOK, p.stop(t, sig), p.output())
			require.Contains(t, p.output(), `msg="shut down"`, "a graceful shutdown")
			select {
			case <-c.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("the client was not disconnected")
			}
		})
	}
}

func TestBinaryNbdinfo(t *testing.T) {
	testkit.Need(t, "nbdinfo")
	img := testkit.Image(t, "disk.img", 1<<20)
	p := startProc(t, []string{"listening on "}, dstBinary, "export", "--listen", "127.0.0.1:0", "--file", img, "--size", "64MiB", "--read-only=false")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nbdinfo", "--size", "nbd://"+p.addrs[0]).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Equal(t, "67108864", strings.TrimSpace(string(out)), "--size grew the file")
	p.stopOK(t)
	var ee *exec.ExitError
	require.ErrorAs(t, exec.CommandContext(ctx, dstBinary, "export", "--bogus").Run(), &ee)
	require.Equal(t, exitUsage, ee.ExitCode(), "the binary exits 2 on a bad flag")
}

// TestBinaryLinksNoTestPackages: the dst binary carries no test code — the
// fault proxy it runs in torture is a production package (nbdproxy), and
// neither package testing nor a test-helper package is linked.
func TestBinaryLinksNoTestPackages(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool on PATH")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, goTool, "list", "-deps", "dst/cmd/dst").CombinedOutput()
	require.NoError(t, err, "%s", out)
	deps := strings.Fields(string(out))
	require.Contains(t, deps, "dst/storage/nbd/nbdproxy", "the sanity of the check: torture's proxy is linked")
	for _, d := range deps {
		require.NotEqual(t, "testing", d, "package testing is linked into dst")
		require.False(t, strings.HasPrefix(d, "dst/") && strings.HasSuffix(d, "test"), "test package %s is linked into dst", d)
	}
}
