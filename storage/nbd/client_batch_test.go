// Batched sends: a submitter may return before its request is on the
// wire (another goroutine's writev carries it), so the client must not
// hand an op back (Done) while a writev may still read its buffer.
package nbd_test

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	. "dst/storage/nbd"

	"dst/internal/testkit"
)

// gatedConn holds every Write, once gated, until open is closed, and
// records whether a Write is still running.
type gatedConn struct {
	net.Conn
	gated   atomic.Bool
	open    chan struct{}
	blocked chan struct{} // closed when the first gated Write waits
	once    sync.Once
	writing atomic.Int32
}

func (g *gatedConn) Write(p []byte) (int, error) {
	g.writing.Add(1)
	defer g.writing.Add(-1)
	if g.gated.Load() {
		g.once.Do(func() { close(g.blocked) })
		<-g.open
	}
	return g.Conn.Write(p)
}

// Close leaves a gated Write waiting, as a writev copying a big payload
// goes on for a while after the socket was closed.
func (g *gatedConn) Close() error { return g.Conn.Close() }

func TestClientSweepWaitsForTheSendInProgress(t *testing.T) {
	_, addr := singleExport(t, 1<<20)
	raw, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	g := &gatedConn{Conn: raw, open: make(chan struct{}), blocked: make(chan struct{})}
	c, err := NewClient(testkit.Context(t, 30*time.Second), g, ClientOptions{})
	require.NoError(t, err)
	defer c.Close()

	// done records, per op, whether a Write was running when Done came.
	type outcome struct {
		err         error
		duringWrite bool
	}
	results := make(chan outcome, 2)
	newOp := func(off int64) *Op {
		return &Op{Cmd: CmdWrite, Offset: off, Length: 4096, Data: make([]byte, 4096),
			Done: func(_ *Op, err error) { results <- outcome{err, g.writing.Load() > 0} }}
	}
	g.gated.Store(true)
	a, b := newOp(0), newOp(4096)
	go func() { _ = c.Submit(testkit.Context(t, 30*time.Second), a) }() // becomes the sender and waits in Write
	select {
	case <-g.blocked:
	case <-time.After(10 * time.Second):
		t.Fatal("the first submit never wrote")
	}
	require.NoError(t, c.Submit(testkit.Context(t, 30*time.Second), b)) // queued behind the send in progress
	raw.(*net.TCPConn).CloseRead()                                      // the connection breaks under the send
	raw.Close()
	select {
	case r := <-results:
		t.Fatalf("an op was completed (%v) while its send may still read its buffer", r.err)
	case <-time.After(200 * time.Millisecond):
	}
	close(g.open)
	for range 2 {
		select {
		case r := <-results:
			require.ErrorIs(t, r.err, ErrClosed)
			require.False(t, r.duringWrite, "completed during a write")
		case <-time.After(10 * time.Second):
			t.Fatal("ops never completed after the send ended")
		}
	}
}
