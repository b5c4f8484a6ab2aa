// A client that closes its connection without NBD_CMD_DISC abandons what
// it had in flight: the server cancels the connection's context, so a
// write waiting in the backend gives up and writes not started yet are
// dropped (a fenced connection's requests must not land after their
// resend elsewhere). After a DISC, requests in flight finish.
package nbd_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	. "dst/storage/nbd"

	"dst/internal/testkit"
	"dst/storage/node"
)

// ctxProbe records the context error a backend write returned with.
type ctxProbe struct {
	*node.Memory
	ended chan error
}

func (p ctxProbe) WriteAt(ctx context.Context, b []byte, off int64, f CmdFlags) error {
	err := p.Memory.WriteAt(ctx, b, off, f)
	p.ended <- err
	return err
}

func TestClientGoneCancelsItsRequests(t *testing.T) {
	for _, disc := range []bool{false, true} {
		m := node.NewMemory(1 << 16)
		m.Block, m.Entered = make(chan struct{}), make(chan struct{}, 4)
		probe := ctxProbe{Memory: m, ended: make(chan error, 4)}
		_, addr := startServer(t, ServerOptions{Exports: []*Export{{Name: "m", Size: 1 << 16, Flags: node.MemoryFlags, Backend: probe}}})
		var release sync.Once
		unblock := func() { release.Do(func() { close(m.Block) }) }
		t.Cleanup(unblock) // runs before the server's shutdown, which waits for the write
		conn, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		c, err := NewClient(testkit.Context(t, 30*time.Second), conn, ClientOptions{})
		require.NoError(t, err)
		op := &Op{Cmd: CmdWrite, Length: 512, Data: make([]byte, 512), Done: func(*Op, error) {}}
		require.NoError(t, c.Submit(testkit.Context(t, 30*time.Second), op))
		<-m.Entered // the write waits in the backend
		if disc {
			go c.Close() // DISC, then close
		} else {
			conn.Close() // gone without a word
		}
		select {
		case err := <-probe.ended:
			require.False(t, disc, "after a DISC the write must be let finish, got %v", err)
			require.ErrorIs(t, err, context.Canceled)
		case <-time.After(300 * time.Millisecond):
			require.True(t, disc, "the server did not abandon the requests of a client that vanished")
			unblock()
			require.NoError(t, <-probe.ended)
			continue
		}
		unblock()
	}
}
