// The cluster launcher drives real dst processes through every fault it
// offers — SIGKILL and restart of a mirror node under writes, new media,
// SIGSTOP/SIGCONT, a proxy cut, suspend/resume, an engine kill and restart
// — and after each one the data written through the engine reads back,
// the members come in sync and the image files of the replicas are
// identical; Locate is checked against the bytes found in the image files.
package cluster

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/storage/admin"
	"dst/storage/engine"
	"dst/storage/spec"
)

// oddSize is a node size that is a multiple of neither 512 nor 4096.
const oddSize = 3<<20 + 123

func linearOfMirror() Topology {
	return Topology{
		Nodes: []NodeSpec{{Name: "a", Size: oddSize}, {Name: "b", Size: oddSize}, {Name: "c", Size: 2<<20 + 77, Proxy: true}},
		Storage: spec.Tree{Kind: spec.KindLinear, Members: []spec.Tree{
			{Kind: spec.KindMirror, Members: []spec.Tree{spec.Member("a"), spec.Member("b")}},
			spec.Member("c"),
		}},
		Engine: fastEngine,
	}
}

// requireLocated checks that the bytes the writer wrote are in the image
// files where Where says: every byte of every slot, on every replica.
func requireLocated(t *testing.T, c *Cluster, w *writer) {
	t.Helper()
	files := map[string]*os.File{}
	for _, n := range c.Nodes() {
		f, err := os.Open(n.File())
		require.NoError(t, err)
		defer f.Close()
		files[n.File()] = f
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	one := make([]byte, 1)
	for off, want := range w.want {
		for i := range int64(len(want)) {
			locs := c.Where(off + i)
			require.NotEmpty(t, locs, "device offset %#x", off+i)
			for _, l := range locs {
				_, err := files[l.File].ReadAt(one, l.Offset)
				require.NoError(t, err)
				require.Equal(t, want[i], one[0], "device offset %#x: %s", off+i, c.Locate(off+i))
			}
		}
	}
}

// requireState requires that member i is in state want.
func requireState(t *testing.T, ctx context.Context, c *Cluster, i int, want engine.State) {
	t.Helper()
	st, err := c.Engine().Status(ctx)
	require.NoError(t, err)
	require.Equal(t, want.String(), st.Members[i].State, "member %d: %s", i, describeMembers(st))
}

// TestStartFailureCleansUp: a Start that fails after it started a node
// (the second node's image exists with another size) stops that node
// again: no process of the cluster's directory is left.
func TestStartFailureCleansUp(t *testing.T) {
	if testing.Short() {
		t.Skip("starts dst processes; skipped in -short mode")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "nodes"), 0o755))
	require.NoError(t, createImage(filepath.Join(dir, "nodes", "b.img"), 1<<20))
	c, err := Start(ctx, Options{Binary: dstBinary, Dir: dir, Topology: linearOfMirror()})
	require.ErrorContains(t, err, "exists with 1048576 bytes")
	require.Nil(t, c)
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	require.NoError(t, err)
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil {
			require.NotContains(t, string(b), dir, "%s: a process of the failed cluster is left", p)
		}
	}
	log, err := os.ReadFile(filepath.Join(dir, "logs", "a.log"))
	require.NoError(t, err)
	require.Contains(t, string(log), "exit: signal: killed", "node a was started, then killed")
}

func TestClusterFaults(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var pids []int
	t.Cleanup(func() {
		// Registered before the cluster, so it runs after the cluster's
		// Close: nothing the cluster started is left.
		for _, pid := range pids {
			require.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "pid %d still exists", pid)
		}
	})
	c := startCluster(t, ctx, linearOfMirror())
	eng := c.Engine()
	a, b, cn := c.Node("a"), c.Node("b"), c.Node("c")
	require.NotNil(t, cn.Proxy())
	require.Nil(t, a.Proxy())
	pids = []int{eng.Pid(), a.Pid(), b.Pid(), cn.Pid()}
	for _, pid := range pids {
		require.Positive(t, pid)
	}

	st, err := eng.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, "ok", st.Health)
	require.Len(t, st.Members, 3)
	mirrorSize := c.geo.areas[0].DataSize
	require.Equal(t, []int64{mirrorSize}, c.Boundaries(), "one linear edge: where the mirror ends")
	require.Contains(t, c.Locate(mirrorSize), "leaf 2 node c (nbd://"+cn.Proxy().Addr()+") at member offset")
	require.Contains(t, c.Locate(mirrorSize-1), "leaf 0 node a")
	require.Contains(t, c.Locate(mirrorSize-1), "leaf 1 node b")

	cl := dial(t, ctx, c)
	require.Equal(t, c.Size(), cl.Size())
	w := newWriter(cl, c.Size(), c.Boundaries(), 4096, 24, uint64(time.Now().UnixNano()))
	w.fill(t, ctx)
	require.NoError(t, cl.Flush(ctx))
	w.verify(t, ctx, "after fill")
	requireLocated(t, c, w)

	t.Log("kill -9 of a mirror node under writes, restart, resync")
	w.start(ctx)
	w.waitWrites(t, 20, "before the kill")
	require.NoError(t, a.Kill())
	require.False(t, a.Alive())
	require.Zero(t, a.Pid())
	w.waitWrites(t, 50, "with node a dead")
	requireState(t, ctx, c, 0, engine.Failed)
	require.NoError(t, a.Restart(ctx))
	w.waitWrites(t, 20, "after node a returned")
	w.halt(t)
	took, st, err := eng.WaitInSync(ctx)
	require.NoError(t, err)
	t.Logf("in sync %v after the restart; member 0 resynced %d bytes", took, st.Members[0].ResyncedBytes)
	require.Positive(t, st.Members[0].ResyncedBytes, "node a missed writes and got them back")
	requireConverged(t, ctx, c)
	w.verify(t, ctx, "after the kill of a")

	t.Log("new media for b: copied whole (data copied, holes zeroed)")
	resyncedBefore := st.Members[1].ResyncedBytes + st.Members[1].ResyncZeroedBytes
	require.NoError(t, b.ReplaceMedia(ctx))
	require.Eventually(t, func() bool {
		st, err := eng.Status(ctx)
		return err == nil && InSync(st) && st.Members[1].ResyncedBytes+st.Members[1].ResyncZeroedBytes >= resyncedBefore+mirrorSize
	}, 30*time.Second, 50*time.Millisecond, "member 1 copied whole")
	requireConverged(t, ctx, c)
	w.verify(t, ctx, "after new media for b")
	requireLocated(t, c, w)

	t.Log("SIGSTOP of a under writes, SIGCONT")
	w.start(ctx)
	w.waitWrites(t, 10, "before the stop")
	require.NoError(t, a.Stop())
	require.True(t, a.Stopped())
	require.True(t, a.Alive())
	w.waitWrites(t, 30, "with node a stopped")
	requireState(t, ctx, c, 0, engine.Failed)
	require.NoError(t, a.Cont())
	w.waitWrites(t, 10, "after node a continued")
	w.halt(t)
	_, _, err = eng.WaitInSync(ctx)
	require.NoError(t, err)
	requireConverged(t, ctx, c)
	w.verify(t, ctx, "after the stop of a")

	t.Log("proxy cut of c under writes")
	st, err = eng.Status(ctx)
	require.NoError(t, err)
	require.NotNil(t, st.Members[2].Remote)
	reconnects := st.Members[2].Remote.Reconnects
	w.start(ctx)
	w.waitWrites(t, 10, "before the cut")
	cn.Proxy().Cut()
	w.waitWrites(t, 30, "after the cut")
	w.halt(t)
	st, err = eng.Status(ctx)
	require.NoError(t, err)
	require.Greater(t, st.Members[2].Remote.Reconnects, reconnects, "the engine reconnected to c")
	w.verify(t, ctx, "after the cut")

	t.Log("suspend and resume a mirror member")
	require.NoError(t, eng.Suspend(ctx, 0))
	st, err = eng.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, engine.Suspended.String(), st.Members[0].State)
	w.start(ctx)
	w.waitWrites(t, 20, "with member 0 suspended")
	w.halt(t)
	var herr *admin.HTTPError
	require.ErrorAs(t, eng.Suspend(ctx, 2), &herr, "c has no replica to stand in for it")
	require.NoError(t, eng.Resume(ctx, 0))
	requireConverged(t, ctx, c)
	w.verify(t, ctx, "after suspend and resume")

	t.Log("graceful engine stop and start on the same ports")
	addr, adminAddr := eng.Addr(), eng.AdminAddr()
	require.NoError(t, eng.Stop(ctx))
	require.False(t, eng.Alive())
	require.NoError(t, eng.Start(ctx))
	require.Equal(t, addr, eng.Addr())
	require.Equal(t, adminAddr, eng.AdminAddr())
	pids = append(pids, eng.Pid(), a.Pid(), b.Pid())
	require.NoError(t, c.checkGeometry(ctx))
	cl.Close()
	w.cl = dial(t, ctx, c)
	w.verify(t, ctx, "after the engine restart")
	requireConverged(t, ctx, c)
	require.Len(t, c.Logs(), 4)
}

// TestClusterEngineKill: the engine is killed with SIGKILL after a flush
// and started again on the same ports; it must re-assemble from the
// superblocks and serve the flushed data, and the replicas converge.
func TestClusterEngineKill(t *testing.T) {
	mirrorOfStripe := Topology{
		Nodes: []NodeSpec{{Name: "a", Size: oddSize}, {Name: "b", Size: oddSize}, {Name: "c", Size: 2*oddSize + 5}},
		Storage: spec.Tree{Kind: spec.KindMirror, Members: []spec.Tree{
			{Kind: spec.KindStripe, Chunk: 64 << 10, Members: []spec.Tree{spec.Member("a"), spec.Member("b")}}, spec.Member("c"),
		}},
		Engine: fastEngine,
	}
	for _, tc := range []struct {
		name string
		topo Topology
	}{
		{name: "mirror", topo: Topology{
			Nodes:   []NodeSpec{{Name: "a", Size: oddSize}, {Name: "b", Size: oddSize + 4096}},
			Storage: spec.Tree{Kind: spec.KindMirror, Members: []spec.Tree{spec.Member("a"), spec.Member("b")}},
			Engine:  fastEngine,
		}},
		// A linear leaf has no replica and a stripe is a whole mirror
		// child: an unclean restart must serve both as they are (the
		// engine once refused to start, or failed the whole stripe).
		{name: "linear leaf", topo: linearOfMirror()},
		{name: "mirror of stripe", topo: mirrorOfStripe},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			c := startCluster(t, ctx, tc.topo)
			cl := dial(t, ctx, c)
			w := newWriter(cl, c.Size(), c.Boundaries(), 4096, 16, uint64(time.Now().UnixNano()))
			w.fill(t, ctx)
			require.NoError(t, cl.Flush(ctx))
			addr := c.Engine().Addr()
			require.NoError(t, c.Engine().Kill())
			require.False(t, c.Engine().Alive())
			require.NoError(t, c.Engine().Start(ctx))
			require.Equal(t, addr, c.Engine().Addr())
			require.NoError(t, c.checkGeometry(ctx))
			cl.Close()
			w.cl = dial(t, ctx, c)
			w.verify(t, ctx, "after the engine restart")
			requireConverged(t, ctx, c)
		})
	}
}

// TestClusterCompositeMirror: in mirror(stripe(a,b),c) Locate agrees with
// the image files at the stripe's chunk edges, the replicas converge, and
// a byte changed behind the engine's back in one replica's file is
// reported by Converged at its device offset.
func TestClusterCompositeMirror(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	topo := Topology{
		Nodes: []NodeSpec{{Name: "a", Size: 1<<20 + 333}, {Name: "b", Size: 1<<20 + 4097}, {Name: "c", Size: 2<<20 + 999}},
		Storage: spec.Tree{Kind: spec.KindMirror, Members: []spec.Tree{
			{Kind: spec.KindStripe, Chunk: 64 << 10, Members: []spec.Tree{spec.Member("a"), spec.Member("b")}},
			spec.Member("c"),
		}},
		Engine: fastEngine,
	}
	c := startCluster(t, ctx, topo)
	bounds := c.Boundaries()
	require.NotEmpty(t, bounds)
	require.Equal(t, int64(64<<10), bounds[0], "the first chunk edge")
	for _, b := range bounds {
		require.Zero(t, b%(64<<10), "stripe boundaries are chunk edges")
	}

	cl := dial(t, ctx, c)
	w := newWriter(cl, c.Size(), bounds, 3000, 16, uint64(time.Now().UnixNano()))
	w.fill(t, ctx)
	require.NoError(t, cl.Flush(ctx))
	requireLocated(t, c, w)
	requireConverged(t, ctx, c)

	// Kill b, write, bring it back: the stripe half of the mirror resyncs.
	require.NoError(t, c.Node("b").Kill())
	w.start(ctx)
	w.waitWrites(t, 30, "with node b dead")
	w.halt(t)
	require.NoError(t, c.Node("b").Start(ctx))
	requireConverged(t, ctx, c)
	w.verify(t, ctx, "after b returned")

	// One byte of c's replica changes behind the engine.
	off := bounds[len(bounds)-1] + 5
	var inC Location
	for _, l := range c.Where(off) {
		if l.Node == "c" {
			inC = l
		}
	}
	require.Equal(t, "c", inC.Node, "%s", c.Locate(off))
	f, err := os.OpenFile(inC.File, os.O_RDWR, 0)
	require.NoError(t, err)
	one := make([]byte, 1)
	_, err = f.ReadAt(one, inC.Offset)
	require.NoError(t, err)
	one[0] ^= 0xff
	_, err = f.WriteAt(one, inC.Offset)
	require.NoError(t, errors.Join(err, f.Close()))
	div, err := c.Converged(ctx)
	require.NoError(t, err)
	require.Len(t, div, 1, "%v", div)
	d := div[0]
	t.Logf("found: %v", d)
	require.Equal(t, "mirror(stripe/64KiB(a, b), c)", d.Mirror)
	require.Equal(t, "c", d.B)
	require.Equal(t, off, d.DeviceOffset)
	require.Equal(t, off, d.Offset)
	require.Equal(t, inC, d.BWhere)
	require.Equal(t, 1, d.Differing)
}
