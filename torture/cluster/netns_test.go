// In netns mode each node runs in its own network namespace behind a veth
// pair and the engine reaches it at its own 10.199.N.2 address: a mirror
// serves writes there, survives a kill -9 and restart of one node (behind
// a proxy) and converges, and Close leaves no namespace, interface or
// process behind — checked with real namespaces, ip(8) and kill(pid, 0).
package cluster

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"dst/storage/spec"

	"github.com/stretchr/testify/require"
)

func TestClusterNetns(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := NetnsSupported(ctx); err != nil {
		t.Skipf("netns mode unavailable: %v", err)
	}
	topo := Topology{
		Nodes:   []NodeSpec{{Name: "a", Size: oddSize, Proxy: true}, {Name: "b", Size: oddSize}},
		Storage: spec.Tree{Kind: spec.KindMirror, Members: []spec.Tree{spec.Member("a"), spec.Member("b")}},
		Netns:   true,
		Engine:  fastEngine,
	}
	c := startCluster(t, ctx, topo)
	var names, veths []string
	for _, ns := range c.spaces {
		names, veths = append(names, ns.name), append(veths, ns.hostVeth)
	}
	require.Len(t, names, 2)
	a, b := c.Node("a"), c.Node("b")
	require.True(t, strings.HasPrefix(a.Addr(), "10.199."), a.Addr())
	require.True(t, strings.HasPrefix(b.Addr(), "10.199."), b.Addr())
	require.Contains(t, c.Locate(0), "leaf 1 node b (nbd://"+b.Addr()+")")
	list, err := runIP(ctx, "netns", "list")
	require.NoError(t, err)
	for _, n := range names {
		require.Contains(t, list, n)
	}

	cl := dial(t, ctx, c)
	w := newWriter(cl, c.Size(), nil, 4096, 16, uint64(time.Now().UnixNano()))
	w.fill(t, ctx)
	require.NoError(t, cl.Flush(ctx))
	requireLocated(t, c, w)

	pids := []int{a.Pid(), b.Pid(), c.Engine().Pid()}
	w.start(ctx)
	w.waitWrites(t, 10, "before the kill")
	require.NoError(t, a.Kill())
	w.waitWrites(t, 30, "with node a dead")
	require.NoError(t, a.Start(ctx))
	w.halt(t)
	pids = append(pids, a.Pid())
	requireConverged(t, ctx, c)
	w.verify(t, ctx, "after the kill of a")

	cl.Close()
	require.NoError(t, c.Close(ctx))
	for _, pid := range pids {
		require.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "pid %d still exists", pid)
	}
	list, err = runIP(ctx, "netns", "list")
	require.NoError(t, err)
	links, err := runIP(ctx, "-o", "link", "show")
	require.NoError(t, err)
	for i := range names {
		require.NotContains(t, list, names[i])
		require.NotContains(t, links, veths[i])
	}
}
