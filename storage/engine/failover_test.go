// Failover: a mirror member whose node stops answering (a hung peer, a
// dead machine behind a long retry budget) is taken out of service by the
// monitor's watchdog after Failover, its requests in flight are aborted,
// and the client's write is acknowledged from the other replica — instead
// of waiting for the node's whole budget. Without the watchdog the same
// write is still waiting.
package engine

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/layout"
	"dst/storage/nbd"
	"dst/storage/node"
)

// remoteMirror2 is a mirror of two Remote nodes, each over an in-process
// NBD server of a Memory; a node request times out and the node gives up
// after budget.
func remoteMirror2(t *testing.T, budget time.Duration) (*Engine, []*node.Memory) {
	return remoteMirror2With(t, budget, nil)
}

// remoteMirror2With is remoteMirror2 with member 1's server backend
// wrapped by wrap (nil: as it is; its Memory then hangs every request).
func remoteMirror2With(t *testing.T, budget time.Duration, wrap func(*node.Memory) nbd.Backend) (*Engine, []*node.Memory) {
	const data = 1 << 20
	var ls []layout.Layout
	var nodes []node.Node
	var mems []*node.Memory
	for i := range 2 {
		mem := node.NewMemory(dataOffset + data)
		var backend nbd.Backend = mem
		switch {
		case i == 1 && wrap != nil:
			backend = wrap(mem)
		case i == 1:
			mem.Block = make(chan struct{}) // member 1 hangs: its server never answers
			t.Cleanup(func() { close(mem.Block) })
		}
		srv, err := nbd.NewServer(nbd.ServerOptions{Exports: []*nbd.Export{{Size: dataOffset + data, Flags: mem.Flags(), Backend: backend}}})
		require.NoError(t, err)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		sctx, stop := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Serve(sctx, ln) }()
		t.Cleanup(func() { stop(); <-done })
		n, err := node.Open(context.Background(), "nbd://"+ln.Addr().String(), node.OpenOptions{
			Remote:         node.RemoteOptions{RequestTimeout: budget, Budget: budget},
			ConnectTimeout: 5 * time.Second})
		require.NoError(t, err)
		t.Cleanup(func() { n.Close() })
		l, err := layout.NewLeaf(i, dataOffset, data)
		require.NoError(t, err)
		ls, nodes, mems = append(ls, l), append(nodes, n), append(mems, mem)
	}
	m, err := layout.NewMirror(ls...)
	require.NoError(t, err)
	e, err := New(m, nodes, Options{RegionSize: 64 << 10})
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	return e, mems
}

// runMonitor runs e's monitor with failover f; probes never find a member
// back, so nothing rejoins during the test.
func runMonitor(t *testing.T, e *Engine, f time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- e.Run(ctx, MonitorOptions{Interval: 50 * time.Millisecond, Failover: f,
			Probe: func(context.Context, int) (bool, bool) { return false, false }})
	}()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
}

func TestFailoverTakesStalledMemberOut(t *testing.T) {
	e, mems := remoteMirror2(t, time.Minute)
	runMonitor(t, e, 200*time.Millisecond)
	ctx := testkit.Context(t, 60*time.Second)
	p := bytes.Repeat([]byte{0x5a}, 8192)
	start := time.Now()
	require.NoError(t, e.WriteAt(ctx, p, 65536, 0))
	took := time.Since(start)
	require.Less(t, took, 5*time.Second, "the write waited for the hung member's budget")
	st := e.Status()
	require.Equal(t, "in-sync", st[0].State)
	require.Equal(t, "failed", st[1].State)
	require.Contains(t, st[1].LastError, "stopped answering")
	require.Equal(t, 1, st[1].DirtyRegions, "what the failed member missed is recorded")
	require.Equal(t, p, mems[0].Bytes(dataOffset+65536, len(p)))
	// Reads and writes go on against the remaining replica at once.
	got := make([]byte, len(p))
	require.NoError(t, e.ReadAt(ctx, got, 65536))
	require.Equal(t, p, got)
	start = time.Now()
	require.NoError(t, e.WriteAt(ctx, p, 0, 0))
	require.Less(t, time.Since(start), time.Second)
	t.Logf("write acknowledged %v after the member hung (failover 200ms)", took.Round(time.Millisecond))
}

// Without the watchdog the write waits for the node's budget (here 2 s;
// 30 s with the defaults) before the member is failed.
func TestFailoverOffWaitsForTheBudget(t *testing.T) {
	e, _ := remoteMirror2(t, 2*time.Second)
	runMonitor(t, e, -1)
	start := time.Now()
	require.NoError(t, e.WriteAt(testkit.Context(t, 60*time.Second), make([]byte, 4096), 0, 0))
	require.GreaterOrEqual(t, time.Since(start), 2*time.Second)
	require.Equal(t, "failed", e.Status()[1].State)
}

// slowFlush is a backend whose FLUSH waits for release (a disk writing
// back a big cache).
type slowFlush struct {
	*node.Memory
	release chan struct{}
}

func (s slowFlush) Flush(ctx context.Context) error {
	<-s.release
	return s.Memory.Flush(ctx)
}

// A FLUSH that takes longer than the failover time is no stall: the
// member stays in service and the flush succeeds.
func TestFailoverLeavesLongFlushAlone(t *testing.T) {
	release := make(chan struct{})
	e, _ := remoteMirror2With(t, time.Minute, func(m *node.Memory) nbd.Backend { return slowFlush{m, release} })
	runMonitor(t, e, 100*time.Millisecond)
	ctx := testkit.Context(t, 60*time.Second)
	require.NoError(t, e.WriteAt(ctx, make([]byte, 4096), 0, 0))
	flushed := make(chan error, 1)
	go func() { flushed <- e.Flush(ctx) }()
	time.Sleep(600 * time.Millisecond) // six failover times
	require.Equal(t, "in-sync", e.Status()[1].State, "a slow flush was taken for a stall")
	close(release)
	require.NoError(t, <-flushed)
	require.Equal(t, "in-sync", e.Status()[1].State)
}
