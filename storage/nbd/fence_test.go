// OptFence: a new connection of a session is acknowledged only after the
// session's older connections are closed and their started writes done;
// an older generation is refused; other sessions and clients without a
// fence are left alone.
package nbd_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	. "dst/storage/nbd"

	"dst/internal/testkit"
	"dst/storage/node"
)

func dialFenced(ctx context.Context, addr string, f *Fence) (*Client, error) {
	return Dial(ctx, "tcp", addr, ClientOptions{Fence: f, HandshakeTimeout: 20 * time.Second})
}

// gate holds the writes of a stubborn backend: each one, once started,
// cannot be called off (a disk write in progress) and waits for open,
// ignoring ctx. entered receives one value per write that started.
type gate struct {
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

// newGate returns a closed gate that opens when the test ends.
func newGate(t *testing.T) *gate {
	g := &gate{entered: make(chan struct{}, 16), release: make(chan struct{})}
	t.Cleanup(g.open)
	return g
}

func (g *gate) pass() {
	g.entered <- struct{}{}
	<-g.release
}

func (g *gate) open() { g.once.Do(func() { close(g.release) }) }

// stubborn is a memory backend whose writes wait at a gate.
type stubborn struct {
	*node.Memory
	*gate
}

func (s stubborn) WriteAt(ctx context.Context, p []byte, off int64, f CmdFlags) error {
	s.pass()
	return s.Memory.WriteAt(context.Background(), p, off, f)
}

// rawFenced opens generation 1 of session on a raw connection the test
// can also write requests to by hand, as a peer that held them would
// deliver them.
func rawFenced(t *testing.T, ctx context.Context, addr, export string, session uint64) (net.Conn, *Client) {
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	c, err := NewClient(ctx, conn, ClientOptions{ExportName: export, Fence: &Fence{Session: session, Generation: 1}})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return conn, c
}

// writeRaw sends a WRITE of payload at off on conn, bypassing the client.
func writeRaw(conn net.Conn, cookie uint64, off int64, payload []byte) error {
	var hdr [28]byte
	EncodeRequest(hdr[:], &Request{Cmd: CmdWrite, Cookie: cookie, Offset: uint64(off), Length: uint64(len(payload))})
	_, err := conn.Write(append(hdr[:], payload...))
	return err
}

// bufferedWriteAcrossFence forces the race the fence guards. On a server
// with two request slots and a backend whose writes wait at g, the old
// connection (generation 1 of session) fills both slots with small
// writes and then sends payload at off, which its reader decodes and
// holds buffered, waiting for a slot. Generation 2 connects: the fence
// closes the old connection and waits for the two writes; the gate opens;
// the reader takes a slot for the buffered write — which must be
// dropped. It returns when the fence is through and the reader had time.
func bufferedWriteAcrossFence(t *testing.T, addr, export string, session uint64, g *gate, off int64, payload []byte) {
	ctx := testkit.Context(t, 30*time.Second)
	conn, c1 := rawFenced(t, ctx, addr, export, session)
	for i := range 2 { // both request slots busy
		op := &Op{Cmd: CmdWrite, Offset: int64(i) * 4096, Length: 4096, Data: make([]byte, 4096), Done: func(*Op, error) {}}
		require.NoError(t, c1.Submit(ctx, op))
		<-g.entered
	}
	require.NoError(t, writeRaw(conn, 77, off, payload))
	time.Sleep(100 * time.Millisecond) // the reader has it buffered, waiting for a slot
	fenced := make(chan error, 1)
	go func() {
		c2, err := dialFenced(ctx, addr, &Fence{Session: session, Generation: 2})
		if err == nil {
			c2.Close()
		}
		fenced <- err
	}()
	time.Sleep(100 * time.Millisecond) // the fence waits for the two writes
	g.open()
	require.NoError(t, <-fenced)
	time.Sleep(100 * time.Millisecond)
}

func TestFenceWaitsForOlderConnectionsWrites(t *testing.T) {
	m := stubborn{Memory: node.NewMemory(1 << 16), gate: newGate(t)}
	_, addr := startServer(t, ServerOptions{Exports: []*Export{{Name: "m", Size: 1 << 16, Flags: node.MemoryFlags, Backend: m}},
		BootID: "boot-1"})
	ctx := testkit.Context(t, 30*time.Second)

	c1, err := dialFenced(ctx, addr, &Fence{Session: 7, Generation: 1})
	require.NoError(t, err)
	defer c1.Close()
	require.True(t, c1.Info().Fenced)
	require.Equal(t, "boot-1", c1.Info().BootID, "the fence's answer carries the server machine's boot id")
	wrote := make(chan error, 1)
	op := &Op{Cmd: CmdWrite, Offset: 0, Length: 512, Data: make([]byte, 512), Done: func(_ *Op, err error) { wrote <- err }}
	require.NoError(t, c1.Submit(ctx, op))
	<-m.entered // generation 1 is writing

	type result struct {
		c   *Client
		err error
	}
	second := make(chan result, 1)
	go func() {
		c, err := dialFenced(ctx, addr, &Fence{Session: 7, Generation: 2})
		second <- result{c, err}
	}()
	select {
	case r := <-second:
		t.Fatalf("generation 2 was acknowledged while generation 1 was still writing (err %v)", r.err)
	case <-time.After(200 * time.Millisecond):
	}
	m.open()
	r := <-second
	require.NoError(t, r.err)
	defer r.c.Close()
	require.True(t, r.c.Info().Fenced)
	select {
	case <-c1.Done(): // generation 1 was closed by the fence
	case <-time.After(5 * time.Second):
		t.Fatal("the older connection is still open")
	}
	<-wrote // its write ended (its reply may or may not have made it)

	// An older generation is refused; other sessions and unfenced
	// clients are served.
	_, err = dialFenced(ctx, addr, &Fence{Session: 7, Generation: 1})
	var oe *OptionError
	require.True(t, errors.As(err, &oe), "stale generation: %v", err)
	require.Contains(t, oe.Message, "older connection generation")
	other, err := dialFenced(ctx, addr, &Fence{Session: 8, Generation: 1})
	require.NoError(t, err)
	defer other.Close()
	plain := dial(t, addr, ClientOptions{})
	require.False(t, plain.Info().Fenced)
	require.Empty(t, plain.Info().BootID)
	for _, c := range []*Client{r.c, other, plain} {
		require.NoError(t, c.WriteAt(ctx, make([]byte, 512), 512, 0))
	}
}

// A fenced connection drops the writes it reads after the fence, even
// ones the client sent long before (a peer held them).
func TestFencedConnectionDropsLaterWrites(t *testing.T) {
	m := node.NewMemory(1 << 16)
	_, addr := startServer(t, ServerOptions{Exports: []*Export{{Name: "m", Size: 1 << 16, Flags: node.MemoryFlags, Backend: m}}})
	ctx := testkit.Context(t, 30*time.Second)
	conn, _ := rawFenced(t, ctx, addr, "", 9)
	c2, err := dialFenced(ctx, addr, &Fence{Session: 9, Generation: 2})
	require.NoError(t, err)
	defer c2.Close()
	require.Len(t, c2.Info().BootID, 36, "by default the kernel's boot id, a UUID")
	_ = writeRaw(conn, 1, 4096, make([]byte, 512)) // may fail: the server closed it
	_ = writeRaw(conn, 2, 8192, bytes.Repeat([]byte{0xee}, 512))
	time.Sleep(100 * time.Millisecond)
	require.Equal(t, make([]byte, 512), m.Bytes(8192, 512), "a write of the fenced connection landed")
}

// The race the fence guards, forced on the ordinary path: a write the
// old connection's reader holds buffered, waiting for a request slot
// while every slot is held by writes in progress, must not run once the
// fence that waited for those writes is through.
func TestFenceDropsABufferedWrite(t *testing.T) {
	m := stubborn{Memory: node.NewMemory(1 << 16), gate: newGate(t)}
	_, addr := startServer(t, ServerOptions{MaxInFlight: 2,
		Exports: []*Export{{Name: "m", Size: 1 << 16, Flags: node.MemoryFlags, Backend: m}}})
	bufferedWriteAcrossFence(t, addr, "", 6, m.gate, 16384, bytes.Repeat([]byte{0xee}, 512))
	require.Equal(t, make([]byte, 512), m.Bytes(16384, 512), "the buffered write of the fenced connection ran")
}
