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
	"dst/storage/nbd/nbdtest"
)

func dialFenced(ctx context.Context, addr string, f *Fence) (*Client, error) {
	return Dial(ctx, "tcp", addr, ClientOptions{Fence: f, HandshakeTimeout: 20 * time.Second})
}

// stubborn is a backend whose writes, once started, cannot be called off
// (a disk write in progress): they wait for release, ignoring ctx.
type stubborn struct {
	*nbdtest.Memory
	entered chan struct{}
	release chan struct{}
}

func (s stubborn) WriteAt(ctx context.Context, p []byte, off int64, f CmdFlags) error {
	s.entered <- struct{}{}
	<-s.release
	return s.Memory.WriteAt(context.Background(), p, off, f)
}

func TestFenceWaitsForOlderConnectionsWrites(t *testing.T) {
	m := stubborn{Memory: nbdtest.NewMemory(1 << 16), entered: make(chan struct{}, 16), release: make(chan struct{})}
	var once sync.Once
	unblock := func() { once.Do(func() { close(m.release) }) }
	_, addr := startServer(t, ServerOptions{Exports: []*Export{{Name: "m", Size: 1 << 16, Flags: nbdtest.AllFlags, Backend: m}},
		BootID: "boot-1"})
	t.Cleanup(unblock)
	ctx := testCtx(t)

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
	unblock()
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
	m := nbdtest.NewMemory(1 << 16)
	_, addr := startServer(t, ServerOptions{Exports: []*Export{{Name: "m", Size: 1 << 16, Flags: nbdtest.AllFlags, Backend: m}}})
	ctx := testCtx(t)
	// Generation 1 on a raw connection whose requests we write by hand
	// after the fence, as a peer that held them would deliver them.
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	c1, err := NewClient(ctx, conn, ClientOptions{Fence: &Fence{Session: 9, Generation: 1}})
	require.NoError(t, err)
	defer c1.Close()
	c2, err := dialFenced(ctx, addr, &Fence{Session: 9, Generation: 2})
	require.NoError(t, err)
	defer c2.Close()
	require.Len(t, c2.Info().BootID, 36, "by default the kernel's boot id, a UUID")
	var hdr [28]byte
	EncodeRequest(hdr[:], &Request{Cmd: CmdWrite, Cookie: 1, Offset: 4096, Length: 512})
	_, _ = conn.Write(append(hdr[:], make([]byte, 512)...)) // may fail: the server closed it
	payload := make([]byte, 512)
	for i := range payload {
		payload[i] = 0xee
	}
	EncodeRequest(hdr[:], &Request{Cmd: CmdWrite, Cookie: 2, Offset: 8192, Length: 512})
	_, _ = conn.Write(append(hdr[:], payload...))
	time.Sleep(100 * time.Millisecond)
	require.Equal(t, make([]byte, 512), m.Bytes(8192, 512), "a write of the fenced connection landed")
}

// The race the fence guards, forced on the ordinary path: a write the
// old connection's reader holds buffered, waiting for a request slot
// while every slot is held by writes in progress, must not run once the
// fence that waited for those writes is through.
func TestFenceDropsABufferedWrite(t *testing.T) {
	m := stubborn{Memory: nbdtest.NewMemory(1 << 16), entered: make(chan struct{}, 4), release: make(chan struct{})}
	var once sync.Once
	unblock := func() { once.Do(func() { close(m.release) }) }
	t.Cleanup(unblock)
	_, addr := startServer(t, ServerOptions{MaxInFlight: 2,
		Exports: []*Export{{Name: "m", Size: 1 << 16, Flags: nbdtest.AllFlags, Backend: m}}})
	ctx := testCtx(t)
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	c1, err := NewClient(ctx, conn, ClientOptions{Fence: &Fence{Session: 6, Generation: 1}})
	require.NoError(t, err)
	defer c1.Close()
	for i := range 2 { // both request slots busy
		op := &Op{Cmd: CmdWrite, Offset: int64(i) * 512, Length: 512, Data: make([]byte, 512), Done: func(*Op, error) {}}
		require.NoError(t, c1.Submit(ctx, op))
		<-m.entered
	}
	var hdr [28]byte
	EncodeRequest(hdr[:], &Request{Cmd: CmdWrite, Cookie: 77, Offset: 8192, Length: 512})
	_, err = conn.Write(append(hdr[:], bytes.Repeat([]byte{0xee}, 512)...))
	require.NoError(t, err)
	time.Sleep(100 * time.Millisecond) // the reader has it buffered, waiting for a slot
	fenced := make(chan error, 1)
	go func() {
		c2, err := dialFenced(ctx, addr, &Fence{Session: 6, Generation: 2})
		if err == nil {
			c2.Close()
		}
		fenced <- err
	}()
	time.Sleep(100 * time.Millisecond) // the fence waits for the two writes
	stop := make(chan struct{})
	defer close(stop)
	go func() { // the third write may reach the backend (the mutant): let it through
		for {
			select {
			case <-m.entered:
			case <-stop:
				return
			}
		}
	}()
	unblock()
	require.NoError(t, <-fenced)
	time.Sleep(100 * time.Millisecond)
	require.Equal(t, make([]byte, 512), m.Bytes(8192, 512), "the buffered write of the fenced connection ran")
}
