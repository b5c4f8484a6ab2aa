// The two-process ping-pong: the QD1 floor fio and a server actually
// share. BenchmarkTCPPingPong4K runs both ends in one Go process, mostly
// on one CPU; here the echo end is another process (this test binary,
// re-run as TestPingPongEchoServer) and both ends use blocking socket
// calls, no runtime poller: a 32-byte request, a 4 KiB answer, over
// loopback TCP, as cheap as two processes can make a round trip on this
// machine.
package nbd_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

const pingPongEnv = "DST_PINGPONG_ECHO"

// TestPingPongEchoServer is the echo end of BenchmarkTCPPingPong4KProcesses;
// it does nothing unless run by it.
func TestPingPongEchoServer(t *testing.T) {
	if os.Getenv(pingPongEnv) == "" {
		t.Skip("the echo end of BenchmarkTCPPingPong4KProcesses")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	fmt.Printf("listening on %s\n", ln.Addr())
	c, err := ln.Accept()
	require.NoError(t, err)
	ln.Close()
	fd := blockingFd(t, c)
	buf := make([]byte, 4096)
	for {
		if !fullIO(fd, buf[:32], unix.Read) || !fullIO(fd, buf, unix.Write) {
			return
		}
	}
}

func BenchmarkTCPPingPong4KProcesses(b *testing.B) {
	cmd := exec.Command(os.Args[0], "-test.run", "^TestPingPongEchoServer$")
	cmd.Env = append(os.Environ(), pingPongEnv+"=1")
	out, err := cmd.StdoutPipe()
	require.NoError(b, err)
	require.NoError(b, cmd.Start())
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(b, err)
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening on ")
	require.True(b, ok, "echo end said %q", line)
	c, err := net.Dial("tcp", addr)
	require.NoError(b, err)
	require.NoError(b, c.(*net.TCPConn).SetNoDelay(true))
	fd := blockingFd(b, c)
	req, buf := make([]byte, 32), make([]byte, 4096)
	b.SetBytes(4096)
	for b.Loop() {
		if !fullIO(fd, req, unix.Write) || !fullIO(fd, buf, unix.Read) {
			b.Fatal("echo end went away")
		}
	}
}

// blockingFd returns a blocking duplicate of c's socket (c is closed).
func blockingFd(tb testing.TB, c net.Conn) int {
	f, err := c.(*net.TCPConn).File()
	require.NoError(tb, err)
	c.Close()
	fd, err := unix.Dup(int(f.Fd()))
	require.NoError(tb, err)
	f.Close()
	require.NoError(tb, unix.SetNonblock(fd, false))
	tb.Cleanup(func() { unix.Close(fd) })
	return fd
}

// fullIO moves all of p with op (unix.Read or unix.Write) on a blocking fd.
func fullIO(fd int, p []byte, op func(int, []byte) (int, error)) bool {
	for len(p) > 0 {
		n, err := op(fd, p)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			return false
		}
		p = p[n:]
	}
	return true
}
