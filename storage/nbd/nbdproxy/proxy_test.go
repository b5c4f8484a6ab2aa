// The fault proxy is transparent when no fault is on, and each fault does
// what it promises: every test drives nbd.Client (or qemu-io and nbdinfo,
// or a hand-written handshake) through a Proxy to nbd.Server over
// node.Memory on loopback, turns one fault on, and observes its effect
// on the client, on the backend's bytes and in the proxy's stats, waiting
// on channels and contexts, never on sleeps.
package nbdproxy_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/nbd"
	"dst/storage/nbd/nbdproxy"
	"dst/storage/nbd/nbdtest"
	"dst/storage/node"
)

const memBytes = 1 << 20

var seedFlag = flag.Uint64("proxy.seed", 0, "seed of the random workloads (0: from the clock)")

// seed returns the workload seed and logs it, so a failure replays with
// -seed.
func seed(t *testing.T) uint64 {
	s := *seedFlag
	if s == 0 {
		s = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with -proxy.seed %d)", s, s)
	return s
}

// serve serves m as export "mem" on a loopback port until the test ends.
func serve(t *testing.T, m *node.Memory) string {
	t.Helper()
	srv, err := nbd.NewServer(nbd.ServerOptions{Exports: []*nbd.Export{
		{Name: "mem", Size: m.Size(), Flags: node.MemoryFlags, Backend: m}}})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	})
	return ln.Addr().String()
}

// proxied serves a fresh memory behind a proxy listening on network.
func proxied(t *testing.T, network string) (*node.Memory, *nbdproxy.Proxy) {
	m := node.NewMemory(memBytes)
	return m, nbdtest.StartProxy(t, network, serve(t, m), nbdproxy.Options{UpstreamNetwork: "tcp"})
}

func dialCtx(ctx context.Context, p *nbdproxy.Proxy) (*nbd.Client, error) {
	return nbd.Dial(ctx, p.Network(), p.Addr(), nbd.ClientOptions{ExportName: "mem"})
}

func dial(t *testing.T, p *nbdproxy.Proxy) *nbd.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := dialCtx(ctx, p)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// submit sends an op without waiting; its outcome arrives on the channel.
func submit(t *testing.T, c *nbd.Client, cmd nbd.Command, data []byte, off int64) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	op := &nbd.Op{Cmd: cmd, Offset: off, Length: uint64(len(data)), Data: data,
		Done: func(_ *nbd.Op, err error) { done <- err }}
	require.NoError(t, c.Submit(testkit.Context(t, 30*time.Second), op))
	return done
}

// stalls asserts that nothing arrives on done within d.
func stalls(t *testing.T, done <-chan error, d time.Duration, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	select {
	case err := <-done:
		t.Fatalf("%s completed (err %v) while it should stall", what, err)
	case <-ctx.Done():
	}
}

func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

func TestProxyPassThrough(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			m, p := proxied(t, network)
			c := dial(t, p)
			seed := seed(t)
			model := make([]byte, memBytes)
			const workers, ops = 4, 64
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := range workers {
				wg.Go(func() {
					errs <- randomIO(testkit.Context(t, 30*time.Second), c, model, w*memBytes/workers, memBytes/workers, seed+uint64(w), ops)
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err, "seed %d", seed)
			}
			got := make([]byte, memBytes)
			require.NoError(t, c.ReadAt(testkit.Context(t, 30*time.Second), got, 0))
			require.True(t, bytes.Equal(model, got), "seed %d: read back differs from the model", seed)
			require.True(t, bytes.Equal(model, m.Bytes(0, memBytes)), "seed %d: backend differs from the model", seed)
			st := p.Stats()
			require.Zero(t, st.Unparsed)
			require.Zero(t, st.Errors)
			require.Equal(t, int64(1), st.Accepted)
			require.Greater(t, st.Requests[nbd.CmdWrite], int64(0))
		})
	}
}

// randomIO writes and reads random extents of [base, base+n), checking
// every read against model, which it keeps up to date.
func randomIO(ctx context.Context, c *nbd.Client, model []byte, base, n int, seed uint64, ops int) error {
	rng := rand.New(rand.NewPCG(seed, 0))
	for i := range ops {
		off := base + rng.IntN(n-1)
		length := 1 + rng.IntN(min(n-(off-base), 64<<10))
		if rng.IntN(2) == 0 {
			data := make([]byte, length)
			for j := range data {
				data[j] = byte(rng.Uint32())
			}
			if err := c.WriteAt(ctx, data, int64(off), 0); err != nil {
				return fmt.Errorf("op %d: write %d at %d: %w", i, length, off, err)
			}
			copy(model[off:], data)
			continue
		}
		got := make([]byte, length)
		if err := c.ReadAt(ctx, got, int64(off)); err != nil {
			return fmt.Errorf("op %d: read %d at %d: %w", i, length, off, err)
		}
		if !bytes.Equal(got, model[off:off+length]) {
			return fmt.Errorf("op %d: read %d at %d returned wrong bytes", i, length, off)
		}
	}
	return nil
}

func TestProxyCut(t *testing.T) {
	m := node.NewMemory(memBytes)
	m.Block, m.Entered = make(chan struct{}), make(chan struct{}, 16)
	var unblock sync.Once
	t.Cleanup(func() { unblock.Do(func() { close(m.Block) }) })
	p := nbdtest.StartProxy(t, "tcp", serve(t, m), nbdproxy.Options{})
	c := dial(t, p)

	done := submit(t, c, nbd.CmdWrite, fill('x', 4096), 0)
	<-m.Entered // the server is executing it
	p.Cut()
	require.ErrorIs(t, <-done, nbd.ErrClosed)
	require.ErrorIs(t, c.ReadAt(testkit.Context(t, 30*time.Second), make([]byte, 512), 0), nbd.ErrClosed)
	require.Equal(t, int64(1), p.Stats().Cuts)

	unblock.Do(func() { close(m.Block) })
	c2 := dial(t, p)
	require.NoError(t, c2.WriteAt(testkit.Context(t, 30*time.Second), fill('y', 512), 8192, 0))
	got := make([]byte, 512)
	require.NoError(t, c2.ReadAt(testkit.Context(t, 30*time.Second), got, 8192))
	require.Equal(t, fill('y', 512), got)
}

func TestProxyBlackhole(t *testing.T) {
	m, p := proxied(t, "tcp")
	c := dial(t, p)
	require.NoError(t, c.WriteAt(testkit.Context(t, 30*time.Second), fill('z', 4096), 0, 0))

	p.Blackhole(true)
	got := make([]byte, 4096)
	done := submit(t, c, nbd.CmdRead, got, 0)
	stalls(t, done, 100*time.Millisecond, "a read through the blackhole")
	// A new connection's handshake stalls too.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, err := dialCtx(ctx, p)
	cancel()
	require.Error(t, err, "a handshake through the blackhole")

	p.Blackhole(false)
	require.NoError(t, <-done, "the held request is delivered once the blackhole ends")
	require.Equal(t, fill('z', 4096), got)
	require.NoError(t, c.WriteAt(testkit.Context(t, 30*time.Second), fill('w', 512), 4096, 0), "a fresh request")
	require.Equal(t, fill('w', 512), m.Bytes(4096, 512))
}

// holdFirst holds the first write at off, and only that one.
func holdFirst(p *nbdproxy.Proxy, off uint64) (release func()) {
	var taken atomic.Bool
	return p.HoldWrites(func(r nbd.Request) bool { return r.Offset == off && taken.CompareAndSwap(false, true) })
}

func heldIs(n int64) func(nbdproxy.Stats) bool {
	return func(s nbdproxy.Stats) bool { return s.Held == n }
}

// TestProxyHoldWritesReorders produces the hazard the engine must avoid: an
// old write that lands after a newer write to the same range.
func TestProxyHoldWritesReorders(t *testing.T) {
	m, p := proxied(t, "tcp")
	c := dial(t, p)
	release := holdFirst(p, 0)
	doneA := submit(t, c, nbd.CmdWrite, fill('a', 4096), 0)
	require.NoError(t, p.Wait(testkit.Context(t, 30*time.Second), heldIs(1)))

	require.NoError(t, c.WriteAt(testkit.Context(t, 30*time.Second), fill('b', 4096), 0, 0), "B passes the held A")
	require.Equal(t, fill('b', 4096), m.Bytes(0, 4096))
	stalls(t, doneA, 50*time.Millisecond, "the held write")

	release()
	require.NoError(t, <-doneA)
	require.Equal(t, fill('a', 4096), m.Bytes(0, 4096), "the old write landed last")
	st := p.Stats()
	require.Equal(t, int64(1), st.Released)
	require.Equal(t, int64(2), st.Requests[nbd.CmdWrite])
}

// TestProxyHoldOutlivesClient shows the same hazard across a reconnect: the
// client gives up on a held write and moves to a new connection, and the
// stale write still lands after the newer one, because the proxy keeps the
// old upstream open until what it held was delivered.
func TestProxyHoldOutlivesClient(t *testing.T) {
	m, p := proxied(t, "tcp")
	old := dial(t, p)
	release := holdFirst(p, 0)
	doneA := submit(t, old, nbd.CmdWrite, fill('a', 4096), 0)
	require.NoError(t, p.Wait(testkit.Context(t, 30*time.Second), heldIs(1)))
	old.Close() // NBD_CMD_DISC waits behind the held write
	require.ErrorIs(t, <-doneA, nbd.ErrClosed)

	c := dial(t, p)
	require.NoError(t, c.WriteAt(testkit.Context(t, 30*time.Second), fill('b', 4096), 0, 0))
	require.Equal(t, fill('b', 4096), m.Bytes(0, 4096))
	release()
	// The server closes the old connection once it executed what it got.
	require.NoError(t, p.Wait(testkit.Context(t, 30*time.Second), func(s nbdproxy.Stats) bool { return s.Active == 1 }))
	require.Equal(t, fill('a', 4096), m.Bytes(0, 4096), "the stale write landed after the newer one")
	require.Equal(t, int64(1), p.Stats().Released)
}

func TestProxyHoldDroppedByCut(t *testing.T) {
	m, p := proxied(t, "tcp")
	c := dial(t, p)
	release := holdFirst(p, 0)
	done := submit(t, c, nbd.CmdWrite, fill('a', 4096), 0)
	require.NoError(t, p.Wait(testkit.Context(t, 30*time.Second), heldIs(1)))
	p.Cut()
	require.ErrorIs(t, <-done, nbd.ErrClosed)
	release()
	st := p.Stats()
	require.Equal(t, int64(1), st.HeldDropped)
	require.Zero(t, st.Released)
	require.NoError(t, p.Wait(testkit.Context(t, 30*time.Second), func(s nbdproxy.Stats) bool { return s.Active == 0 }))
	require.Equal(t, make([]byte, 4096), m.Bytes(0, 4096), "a held write dies with its connection")
}

func TestProxyHoldLimits(t *testing.T) {
	m := node.NewMemory(memBytes)
	p := nbdtest.StartProxy(t, "tcp", serve(t, m), nbdproxy.Options{MaxHeldRequests: 1})
	c := dial(t, p)
	release := p.HoldWrites(func(nbd.Request) bool { return true })
	defer release()
	done := submit(t, c, nbd.CmdWrite, fill('a', 512), 0)
	require.NoError(t, p.Wait(testkit.Context(t, 30*time.Second), heldIs(1)))
	require.NoError(t, c.WriteAt(testkit.Context(t, 30*time.Second), fill('b', 512), 512, 0), "over the limit: forwarded")
	require.Equal(t, int64(1), p.Stats().HoldOverflows)
	release()
	require.NoError(t, <-done)
}

func TestProxyDuplicate(t *testing.T) {
	m := node.NewMemory(memBytes)
	m.Entered = make(chan struct{}, 16)
	p := nbdtest.StartProxy(t, "tcp", serve(t, m), nbdproxy.Options{})
	c := dial(t, p)
	p.Duplicate(func(r nbd.Request) bool { return r.Cmd == nbd.CmdWrite })
	require.NoError(t, c.WriteAt(testkit.Context(t, 30*time.Second), fill('d', 4096), 8192, 0))
	require.NoError(t, p.Wait(testkit.Context(t, 30*time.Second), func(s nbdproxy.Stats) bool { return s.DuplicateReplies == 1 }))
	require.Len(t, m.Entered, 2, "the backend executed the write twice")
	p.Duplicate(nil)

	// One reply reached the client: a second one would have carried an
	// unknown cookie and broken the connection.
	got := make([]byte, 4096)
	require.NoError(t, c.ReadAt(testkit.Context(t, 30*time.Second), got, 8192))
	require.Equal(t, fill('d', 4096), got)
	require.NoError(t, c.Err())
	st := p.Stats()
	require.Equal(t, int64(1), st.Duplicated)
	require.Equal(t, int64(1), st.Requests[nbd.CmdWrite])
	require.Equal(t, int64(3), st.Replies, "two to the write, one to the read")

	// Reads are duplicated with their payload and deduplicated too.
	p.Duplicate(func(r nbd.Request) bool { return r.Cmd == nbd.CmdRead })
	require.NoError(t, c.ReadAt(testkit.Context(t, 30*time.Second), got, 8192))
	require.Equal(t, fill('d', 4096), got)
	require.NoError(t, p.Wait(testkit.Context(t, 30*time.Second), func(s nbdproxy.Stats) bool { return s.DuplicateReplies == 2 }))
	p.Duplicate(nil)
	require.NoError(t, c.Flush(testkit.Context(t, 30*time.Second)))
}

func TestProxyDropReplies(t *testing.T) {
	m, p := proxied(t, "tcp")
	c := dial(t, p)
	p.DropReplies(func(r nbd.Request) bool { return r.Cmd == nbd.CmdWrite })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	err := c.WriteAt(ctx, fill('r', 4096), 0, 0)
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.NoError(t, p.Wait(testkit.Context(t, 30*time.Second), func(s nbdproxy.Stats) bool { return s.RepliesDropped == 1 }))
	require.Equal(t, fill('r', 4096), m.Bytes(0, 4096), "the server executed the write whose reply was lost")

	p.DropReplies(nil)
	c2 := dial(t, p)
	require.NoError(t, c2.WriteAt(testkit.Context(t, 30*time.Second), fill('s', 4096), 0, 0), "the resend")
	require.Equal(t, fill('s', 4096), m.Bytes(0, 4096))
}

func TestProxyDelay(t *testing.T) {
	_, p := proxied(t, "tcp")
	c := dial(t, p)
	const d = 40 * time.Millisecond
	p.Delay(d)
	start := time.Now()
	require.NoError(t, c.ReadAt(testkit.Context(t, 30*time.Second), make([]byte, 4096), 0))
	elapsed := time.Since(start)
	require.GreaterOrEqual(t, elapsed, 2*d, "the request and its reply are each delayed")
	require.Less(t, elapsed, 2*d+5*time.Second)
	p.Delay(0)
	require.NoError(t, c.ReadAt(testkit.Context(t, 30*time.Second), make([]byte, 4096), 0))
}

func TestProxyReset(t *testing.T) {
	m, p := proxied(t, "tcp")
	c := dial(t, p)
	before := p.Stats().BytesToServer
	const after = 28 + 100 // the header and 100 bytes of payload
	p.Reset(after)
	require.ErrorIs(t, c.WriteAt(testkit.Context(t, 30*time.Second), fill('t', 4096), 0, 0), nbd.ErrClosed)
	st := p.Stats()
	require.Equal(t, int64(1), st.Resets)
	require.Equal(t, before+after, st.BytesToServer, "exactly `after` bytes went upstream")

	c2 := dial(t, p) // Reset is one-shot
	got := make([]byte, 4096)
	require.NoError(t, c2.ReadAt(testkit.Context(t, 30*time.Second), got, 0))
	require.Equal(t, make([]byte, 4096), got, "a torn write never lands")
	require.Equal(t, make([]byte, 4096), m.Bytes(0, 4096))
}

func TestProxyRefuse(t *testing.T) {
	_, p := proxied(t, "unix")
	c := dial(t, p)
	p.Refuse(true)
	_, err := dialCtx(testkit.Context(t, 30*time.Second), p)
	require.Error(t, err)
	require.NoError(t, c.ReadAt(testkit.Context(t, 30*time.Second), make([]byte, 512), 0), "current connections stay")
	p.Refuse(false)
	dial(t, p)
	st := p.Stats()
	require.Equal(t, int64(1), st.Refused)
	require.Equal(t, int64(2), st.Accepted)
}

// TestProxyExportName drives the legacy NBD_OPT_EXPORT_NAME handshake by
// hand, with and without the zeroes, and checks the proxy found the
// transmission phase after it.
func TestProxyExportName(t *testing.T) {
	for _, noZeroes := range []bool{true, false} {
		t.Run(fmt.Sprintf("noZeroes=%v", noZeroes), func(t *testing.T) {
			_, p := proxied(t, "tcp")
			conn, err := net.Dial(p.Network(), p.Addr())
			require.NoError(t, err)
			defer conn.Close()
			require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
			greeting := make([]byte, 18)
			_, err = io.ReadFull(conn, greeting)
			require.NoError(t, err)
			flags := []byte{0, 0, 0, 1}
			if noZeroes {
				flags[3] |= 2
			}
			opt := []byte("IHAVEOPT\x00\x00\x00\x01\x00\x00\x00\x03mem")
			_, err = conn.Write(append(flags, opt...))
			require.NoError(t, err)
			rep := make([]byte, 10)
			if !noZeroes {
				rep = make([]byte, 10+124)
			}
			_, err = io.ReadFull(conn, rep)
			require.NoError(t, err)
			require.Equal(t, []byte{0, 0, 0, 0, 0, 0x10, 0, 0}, rep[:8], "export size")

			hdr := make([]byte, 28)
			nbd.EncodeRequest(hdr, &nbd.Request{Cmd: nbd.CmdRead, Cookie: 7, Offset: 0, Length: 512})
			_, err = conn.Write(hdr)
			require.NoError(t, err)
			reply := make([]byte, 16+512)
			_, err = io.ReadFull(conn, reply)
			require.NoError(t, err)
			var r nbd.Reply
			require.NoError(t, nbd.DecodeReply(reply[:16], &r))
			require.Equal(t, uint64(7), r.Cookie)
			require.Zero(t, r.Errno)
			st := p.Stats()
			require.Equal(t, int64(1), st.Requests[nbd.CmdRead])
			require.Equal(t, int64(1), st.Replies)
			require.Zero(t, st.Unparsed)
		})
	}
}

// TestProxyStructuredReplies runs qemu-io and nbdinfo, which negotiate
// structured replies, through the proxy.
func TestProxyStructuredReplies(t *testing.T) {
	testkit.Need(t, "qemu-io", "nbdinfo")
	m, p := proxied(t, "tcp")
	c := dial(t, p)
	require.NoError(t, c.WriteAt(testkit.Context(t, 30*time.Second), fill('a', 8192), 0, 0))
	uri := "nbd://" + p.Addr() + "/mem"

	out, err := run(t, "qemu-io", "-f", "raw", uri, "-c", "read -P 0x61 0 8k", "-c", "write -P 0x62 8k 4k",
		"-c", "read -P 0x62 8k 4k")
	require.NoError(t, err, out)
	require.NotContains(t, out, "Pattern verification failed", out)
	// A wrong pattern is noticed, so the pass above is not vacuous.
	out, _ = run(t, "qemu-io", "-f", "raw", uri, "-c", "read -P 0x99 0 4k")
	require.Contains(t, out, "Pattern verification failed", out)
	require.Equal(t, fill('b', 4096), m.Bytes(8192, 4096))
	st := p.Stats()
	require.GreaterOrEqual(t, st.StructuredChunks, int64(3), "qemu's reads came back as structured chunks")
	require.Zero(t, st.Unparsed)

	out, err = run(t, "nbdinfo", uri)
	require.NoError(t, err, out)
	require.Contains(t, out, fmt.Sprint(memBytes), out)
	require.Zero(t, p.Stats().Unparsed)
}

// run runs a tool for at most a minute and returns its combined output.
func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		err = fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return string(out), err
}

// TestProxyCloseWhileBlackholed proves Close ends every goroutine even
// while connections are stalled, and that Run returns.
func TestProxyCloseWhileBlackholed(t *testing.T) {
	m := node.NewMemory(memBytes)
	p, err := nbdproxy.New("tcp", serve(t, m), nbdproxy.Options{})
	require.NoError(t, err)
	ran := make(chan error, 1)
	go func() { ran <- p.Run(context.Background()) }()
	c, err := dialCtx(testkit.Context(t, 30*time.Second), p)
	require.NoError(t, err)
	defer c.Close()
	p.Blackhole(true)
	done := submit(t, c, nbd.CmdRead, make([]byte, 4096), 0)
	require.NoError(t, p.Close())
	require.NoError(t, <-ran)
	require.ErrorIs(t, <-done, nbd.ErrClosed)
	require.Zero(t, p.Stats().Active)
	require.ErrorIs(t, p.Run(context.Background()), net.ErrClosed)
	buf := make([]byte, 1<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	require.NotContains(t, stacks, "nbdtest.(*proxyConn)", "a connection goroutine outlived Close")
	require.NotContains(t, stacks, "nbdtest.(*Proxy)", "a proxy goroutine outlived Close")
}

// TestProxyThirdPartyServers parses the handshakes of nbdkit, qemu-nbd and
// nbd-server: a random workload through the proxy reads back what it wrote
// and the proxy never fell back to byte-for-byte forwarding.
func TestProxyThirdPartyServers(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping a test that runs nbdkit, qemu-nbd and nbd-server")
	}
	const size = 4 << 20
	for _, start := range []func(testing.TB, int64) *nbdtest.Peer{nbdtest.Nbdkit, nbdtest.QemuNBD, nbdtest.NBDServer} {
		t.Run("", func(t *testing.T) {
			peer := start(t, size)
			t.Logf("upstream %s", peer.Name)
			p := nbdtest.StartProxy(t, "tcp", peer.Addr, nbdproxy.Options{UpstreamNetwork: peer.Network})
			ctx := testkit.Context(t, 30*time.Second)
			c, err := nbd.Dial(ctx, p.Network(), p.Addr(), nbd.ClientOptions{ExportName: peer.Export})
			require.NoError(t, err)
			defer c.Close()
			seed := seed(t)
			require.NoError(t, randomIO(ctx, c, make([]byte, size), 0, size, seed, 64), "seed %d", seed)
			require.NoError(t, c.Flush(ctx))
			st := p.Stats()
			require.Zero(t, st.Unparsed)
			require.Zero(t, st.Errors)
			require.Equal(t, st.Requests[nbd.CmdRead]+st.Requests[nbd.CmdWrite]+st.Requests[nbd.CmdFlush], st.Replies)
		})
	}
}

// FuzzProxyStreams sends arbitrary bytes from both ends through a proxy
// with Duplicate and DropReplies on: it must neither panic nor hang, and
// never send a client more than the server sent.
func FuzzProxyStreams(f *testing.F) {
	hs := []byte("\x00\x00\x00\x03IHAVEOPT\x00\x00\x00\x07\x00\x00\x00\x09\x00\x00\x00\x03mem\x00\x00")
	req := make([]byte, 28)
	nbd.EncodeRequest(req, &nbd.Request{Cmd: nbd.CmdRead, Cookie: 1, Length: 8})
	greeting := []byte("NBDMAGICIHAVEOPT\x00\x03")
	ack := []byte("\x00\x03\xe8\x89\x04\x55\x65\xa9\x00\x00\x00\x07\x00\x00\x00\x01\x00\x00\x00\x00")
	simple := []byte("\x67\x44\x66\x98\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01abcdefgh")
	chunk := []byte("\x66\x8e\x33\xef\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\x00\x00abcdefgh")
	f.Add(append(append([]byte{}, hs...), req...), append(append(append([]byte{}, greeting...), ack...), simple...))
	f.Add(append(append([]byte{}, hs...), req...), append(append(append([]byte{}, greeting...), ack...), chunk...))
	f.Add(req, []byte("NBDMAGIC\x00\x00\x42\x02\x81\x86\x12\x53"))
	f.Add([]byte("\x00\x00\x00\x01IHAVEOPT\x00\x00\x00\x01\xff\xff\xff\xff"), greeting)
	f.Fuzz(func(t *testing.T, fromClient, fromServer []byte) {
		// Unix sockets: a fuzzing run would exhaust the loopback ports.
		ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "server.sock"))
		require.NoError(t, err)
		defer ln.Close()
		served := make(chan struct{})
		go func() {
			defer close(served)
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			defer conn.Close()
			go io.Copy(io.Discard, conn) //nolint:errcheck // ends when conn closes
			_, _ = conn.Write(fromServer)
		}()
		p := nbdtest.StartProxy(t, "unix", ln.Addr().String(), nbdproxy.Options{Dir: t.TempDir()})
		p.Duplicate(func(r nbd.Request) bool { return r.Cookie%2 == 1 })
		p.DropReplies(func(r nbd.Request) bool { return r.Cookie%3 == 0 })
		conn, err := net.Dial("unix", p.Addr())
		require.NoError(t, err)
		defer conn.Close()
		require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
		_, _ = conn.Write(fromClient)
		_ = conn.(*net.UnixConn).CloseWrite()
		n, _ := io.Copy(io.Discard, conn)
		<-served
		require.LessOrEqual(t, n, int64(len(fromServer)))
		require.NoError(t, p.Close())
	})
}

func TestProxyMaxInFlight(t *testing.T) {
	m := node.NewMemory(memBytes)
	p := nbdtest.StartProxy(t, "tcp", serve(t, m), nbdproxy.Options{MaxInFlight: 2})
	c := dial(t, p)
	release := p.Hold(func(nbd.Request) bool { return true })
	defer release()
	var done []<-chan error
	for i := range 3 {
		done = append(done, submit(t, c, nbd.CmdRead, make([]byte, 512), int64(i)*512))
	}
	for _, d := range done {
		require.ErrorIs(t, <-d, nbd.ErrClosed, "the third request ends the connection")
	}
	st := p.Stats()
	require.Equal(t, int64(1), st.Errors)
	require.Equal(t, int64(2), st.HeldDropped)
}

// A proxy without a listener serves the connections it is handed and
// dials upstream with Options.Dial: here all in memory, inside a
// testing/synctest bubble (the simulator's use), with a lost reply that
// the client's deadline sees in virtual time and a hold that reorders.
func TestProxyConnsInMemory(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := node.NewMemory(memBytes)
		srv, err := nbd.NewServer(nbd.ServerOptions{Exports: []*nbd.Export{
			{Name: "mem", Size: m.Size(), Flags: node.MemoryFlags, Backend: m}}})
		require.NoError(t, err)
		_, err = nbdproxy.NewConns(nbdproxy.Options{})
		require.ErrorContains(t, err, "Options.Dial")
		p, err := nbdproxy.NewConns(nbdproxy.Options{Dial: func(context.Context) (net.Conn, error) {
			c, s := net.Pipe()
			go func() { _ = srv.ServeConn(context.Background(), s) }()
			return c, nil
		}})
		require.NoError(t, err)
		defer p.Close()
		require.Empty(t, p.Addr())
		connect := func() *nbd.Client {
			c, s := net.Pipe()
			p.ServeConn(s)
			cl, err := nbd.NewClient(context.Background(), c, nbd.ClientOptions{ExportName: "mem"})
			require.NoError(t, err)
			t.Cleanup(func() { cl.Close() })
			return cl
		}
		c := connect()
		ctx := context.Background()
		require.NoError(t, c.WriteAt(ctx, fill('a', 4096), 0, 0))

		p.DropReplies(func(r nbd.Request) bool { return r.Cmd == nbd.CmdWrite })
		start := time.Now()
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		require.ErrorIs(t, c.WriteAt(wctx, fill('b', 4096), 0, 0), context.DeadlineExceeded)
		cancel()
		require.Equal(t, time.Minute, time.Since(start), "the deadline ran in virtual time")
		synctest.Wait()
		require.Equal(t, fill('b', 4096), m.Bytes(0, 4096), "the server executed the write whose reply was lost")
		p.DropReplies(nil)

		c2 := connect()
		release := p.HoldWrites(func(r nbd.Request) bool { return r.Offset == 8192 })
		held := make(chan error, 1)
		go func() { held <- c2.WriteAt(ctx, fill('o', 4096), 8192, 0) }()
		synctest.Wait()
		require.NoError(t, c2.WriteAt(ctx, fill('n', 4096), 16384, 0), "a later write passes the held one")
		require.Equal(t, make([]byte, 4096), m.Bytes(8192, 4096))
		release()
		require.NoError(t, <-held)
		require.Equal(t, fill('o', 4096), m.Bytes(8192, 4096))
		st := p.Stats()
		require.Equal(t, int64(2), st.Accepted)
		require.Equal(t, int64(1), st.RepliesDropped)
		require.Equal(t, int64(1), st.Released)
	})
}
