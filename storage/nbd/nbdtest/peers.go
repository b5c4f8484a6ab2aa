// Package nbdtest starts real third-party NBD servers (nbdkit, qemu-nbd,
// nbd-server) for tests, each on a Unix socket in the test's temporary
// directory, and stops them when the test ends.
package nbdtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"dst/internal/proc"
	"dst/internal/testkit"
)

// Peer is a running NBD server.
type Peer struct {
	Name    string // nbdkit, qemu-nbd or nbd-server
	Network string // "unix"
	Addr    string // socket path
	Export  string // export name to ask for
	File    string // backing file, if any
}

// start runs name until the test ends (its output in a log in the test's
// directory) and waits until p accepts connections.
func start(t testing.TB, p *Peer, name string, args ...string) *Peer {
	t.Helper()
	testkit.Need(t, name)
	pr, err := proc.Start(proc.Options{Argv: append([]string{name}, args...),
		Log: filepath.Join(t.TempDir(), name+".log"), WaitDelay: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pr.Kill(); err != nil {
			t.Error(err)
		}
	})
	waitListening(t, p, pr, func() string { return pr.Tail(4 << 10) })
	return p
}

// waitListening waits until p accepts connections, failing the test if
// its process pr (nil: none to watch) exits first or 20 seconds pass.
func waitListening(t testing.TB, p *Peer, pr *proc.Process, output func() string) {
	t.Helper()
	var exited <-chan struct{}
	if pr != nil {
		exited = pr.Done()
	}
	deadline := time.Now().Add(20 * time.Second)
	for backoff := time.Millisecond; ; backoff = min(2*backoff, 100*time.Millisecond) {
		c, err := net.Dial(p.Network, p.Addr)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-exited:
			t.Fatalf("%s exited (%s) before listening\n%s", p.Name, pr.Exit(), output())
		case <-time.After(backoff):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not listen on %s within 20s\n%s", p.Name, p.Addr, output())
		}
	}
}

// File creates a sparse file of size bytes in the test's directory.
func File(t testing.TB, size int64) string { return testkit.Image(t, "disk.img", size) }

// Nbdkit serves a file of size bytes with nbdkit's file plugin.
func Nbdkit(t testing.TB, size int64) *Peer {
	file := File(t, size)
	p := &Peer{Name: "nbdkit", Network: "unix", Addr: filepath.Join(t.TempDir(), "nbdkit.sock"), File: file}
	return start(t, p, "nbdkit", "--foreground", "--exit-with-parent", "--unix", p.Addr, "file", "file="+file)
}

// QemuNBD serves a raw file of size bytes with qemu-nbd.
func QemuNBD(t testing.TB, size int64) *Peer {
	file := File(t, size)
	p := &Peer{Name: "qemu-nbd", Network: "unix", Addr: filepath.Join(t.TempDir(), "qemu.sock"), Export: "disk", File: file}
	return start(t, p, "qemu-nbd", "--format=raw", "--persistent", "--shared=16", "--export-name=disk",
		"--discard=unmap", "--socket="+p.Addr, file)
}

// NBDServer serves a file of size bytes with the reference nbd-server.
func NBDServer(t testing.TB, size int64) *Peer {
	file := File(t, size)
	dir := t.TempDir()
	p := &Peer{Name: "nbd-server", Network: "unix", Addr: filepath.Join(dir, "nbd-server.sock"), Export: "disk", File: file}
	conf := filepath.Join(dir, "nbd-server.conf")
	body := fmt.Sprintf("[generic]\n\tunixsock = %s\n\tallowlist = true\n[disk]\n\texportname = %s\n\tflush = true\n\tfua = true\n\ttrim = true\n", p.Addr, file)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	// With -d nbd-server serves a single connection, so it runs as the
	// daemon it wants to be, and its PID file says what to stop.
	pidFile := filepath.Join(dir, "nbd-server.pid")
	testkit.Need(t, "nbd-server")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nbd-server", "-C", conf, "-p", pidFile).CombinedOutput()
	if err != nil {
		t.Fatalf("nbd-server: %v\n%s", err, out)
	}
	t.Cleanup(func() { stopPIDFile(t, pidFile) })
	waitListening(t, p, nil, func() string { return string(out) })
	return p
}

// stopPIDFile ends the daemon whose PID the file holds (SIGTERM, SIGKILL
// after 10 s) and waits for it.
func stopPIDFile(t testing.TB, pidFile string) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Errorf("nbd-server left no PID file: %v", err)
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		t.Errorf("bad PID file %s: %q", pidFile, b)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := proc.StopPID(ctx, pid); err != nil {
		t.Logf("nbd-server: %v", err)
	}
}
