// Topology.Validate refuses each kind of bad topology with an error that
// names the problem, String renders trees for reports, the geometry's
// boundaries are the layout's real leaf changes, and the serve.yaml the
// cluster writes is accepted by storage/config with the same tree —
// table tests over hand-made topologies, no processes.
package cluster

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/storage/config"
	"dst/storage/layout"
	"dst/storage/spec"
)

var leaf = spec.Member

func TestValidate(t *testing.T) {
	nodes := []NodeSpec{{Name: "a", Size: 1 << 20}, {Name: "b", Size: 1 << 20}, {Name: "c", Size: 1 << 20}}
	for _, tc := range []struct {
		name string
		topo Topology
		want string // "" means valid
	}{
		{"valid", Topology{Nodes: nodes, Storage: spec.Tree{Kind: spec.KindLinear, Members: []spec.Tree{
			{Kind: spec.KindMirror, Members: []spec.Tree{leaf("a"), leaf("b")}}, leaf("c")}}}, ""},
		{"unknown node", Topology{Nodes: nodes[:2], Storage: spec.Tree{Kind: spec.KindMirror, Members: []spec.Tree{
			leaf("a"), leaf("x")}}}, `unknown node "x"`},
		{"node used twice", Topology{Nodes: nodes[:2], Storage: spec.Tree{Kind: spec.KindMirror, Members: []spec.Tree{
			leaf("a"), leaf("a"), leaf("b")}}}, "member a appears twice"},
		{"unused node", Topology{Nodes: nodes, Storage: spec.Tree{Kind: spec.KindMirror, Members: []spec.Tree{
			leaf("a"), leaf("b")}}}, `node "c" is not used`},
		{"empty mirror", Topology{Nodes: nodes[:1], Storage: spec.Tree{Kind: spec.KindLinear, Members: []spec.Tree{
			leaf("a"), {Kind: spec.KindMirror}}}}, "a mirror layout needs members"},
		{"stripe without chunk", Topology{Nodes: nodes[:2], Storage: spec.Tree{Kind: spec.KindStripe, Members: []spec.Tree{
			leaf("a"), leaf("b")}}}, "a stripe needs a chunk size"},
		{"chunk on linear", Topology{Nodes: nodes[:2], Storage: spec.Tree{Kind: spec.KindLinear, Chunk: 4096, Members: []spec.Tree{
			leaf("a"), leaf("b")}}}, "only a stripe has a chunk"},
		{"chunk larger than a member", Topology{Nodes: nodes[:2], Storage: spec.Tree{Kind: spec.KindStripe, Chunk: 4 << 20,
			Members: []spec.Tree{leaf("a"), leaf("b")}}}, "stripe"},
		{"unknown layout", Topology{Nodes: nodes[:1], Storage: spec.Tree{Kind: "raid5", Members: []spec.Tree{
			leaf("a")}}}, `layout "raid5"`},
		{"leaf at the root", Topology{Nodes: nodes[:1], Storage: leaf("a")}, "root must be a layout"},
		{"duplicate node", Topology{Nodes: []NodeSpec{nodes[0], nodes[0]}, Storage: spec.Tree{Kind: spec.KindLinear,
			Members: []spec.Tree{leaf("a")}}}, `node "a": defined twice`},
		{"tiny node", Topology{Nodes: []NodeSpec{{Name: "a", Size: 4096}}, Storage: spec.Tree{Kind: spec.KindLinear,
			Members: []spec.Tree{leaf("a")}}}, "size 4096 bytes"},
		{"bad name", Topology{Nodes: []NodeSpec{{Name: "a/b", Size: 1 << 20}}, Storage: spec.Tree{Kind: spec.KindLinear,
			Members: []spec.Tree{leaf("a/b")}}}, `name "a/b"`},
		{"bad region size", Topology{Nodes: nodes[:1], Storage: spec.Tree{Kind: spec.KindLinear,
			Members: []spec.Tree{leaf("a")}}, Engine: EngineSpec{RegionSize: 5000}}, "region size 5000"},
		{"layout naming a node", Topology{Nodes: nodes[:1], Storage: spec.Tree{Kind: spec.KindLinear, Leaf: "a",
			Members: []spec.Tree{leaf("a")}}}, "cannot name a member"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.topo.Validate()
			if tc.want == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrTopology)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func TestString(t *testing.T) {
	topo := Topology{
		Nodes: []NodeSpec{{Name: "a", Size: 3<<20 + 123}, {Name: "b", Size: 4 << 20, Proxy: true}, {Name: "c", Size: 4 << 20}},
		Storage: spec.Tree{Kind: spec.KindLinear, Members: []spec.Tree{
			{Kind: spec.KindMirror, Members: []spec.Tree{leaf("a"), leaf("b")}},
			{Kind: spec.KindStripe, Chunk: 64 << 10, Members: []spec.Tree{leaf("c")}},
		}},
		Netns: true,
	}
	require.Equal(t, "linear(mirror(a, b), stripe/64KiB(c))", topo.Storage.String())
	require.Equal(t, "linear(mirror(a, b), stripe/64KiB(c)) a=3145851B b*=4MiB c=4MiB netns", topo.String())
	require.Equal(t, []string{"a", "b", "c"}, topo.Storage.Leaves())
}

// TestBoundaries checks every boundary against the layout: the leaf
// holding the byte before it differs from the one holding the byte at it.
func TestBoundaries(t *testing.T) {
	topo := Topology{
		Nodes: []NodeSpec{{Name: "a", Size: 1<<20 + 1}, {Name: "b", Size: 1<<20 + 4095}, {Name: "c", Size: 3 << 20},
			{Name: "d", Size: 2<<20 + 7}},
		Storage: spec.Tree{Kind: spec.KindLinear, Members: []spec.Tree{
			{Kind: spec.KindStripe, Chunk: 12345, Members: []spec.Tree{leaf("a"), leaf("b")}},
			{Kind: spec.KindMirror, Members: []spec.Tree{leaf("c"), {Kind: spec.KindLinear, Members: []spec.Tree{leaf("d")}}}},
		}},
	}
	require.NoError(t, topo.Validate())
	g, err := topo.build()
	require.NoError(t, err)
	bs := boundaries(g.root.l)
	stripe := g.root.children[0].l.(*layout.Stripe)
	require.Equal(t, stripe.Size(), bs[len(bs)-1], "the stripe ends where the mirror starts")
	// 3 stripes of 2 chunks at each end, and the linear edge.
	require.Len(t, bs, 2*(3*2)+1)
	leafAt := func(off int64) int { return g.root.l.Map(nil, off, 1, 0, layout.FirstReplica)[0].Member }
	for _, b := range bs {
		require.NotEqual(t, leafAt(b-1), leafAt(b), "boundary %d", b)
	}
}

func TestServeConfig(t *testing.T) {
	topo := Topology{
		Nodes: []NodeSpec{{Name: "a", Size: 1 << 20}, {Name: "b", Size: 1 << 20}, {Name: "c", Size: 1 << 20}},
		Storage: spec.Tree{Kind: spec.KindLinear, Members: []spec.Tree{
			{Kind: spec.KindMirror, Members: []spec.Tree{leaf("a"), {Kind: spec.KindStripe, Chunk: 8192,
				Members: []spec.Tree{leaf("b")}}}},
			leaf("c"),
		}},
		Engine: EngineSpec{RequestTimeout: time.Second, Retries: -1, BackoffMax: 20 * time.Millisecond,
			PingInterval: -1, ResyncRate: 1 << 20, ResyncInterval: 100 * time.Millisecond, RegionSize: 64 << 10,
			AllowDegraded: true, ScrubInterval: 90 * time.Second},
	}
	require.NoError(t, topo.Validate())
	c := &Cluster{o: Options{Topology: topo}, nodes: map[string]*Node{}}
	for i, n := range topo.Nodes {
		c.nodes[n.Name] = &Node{spec: n, listen: "127.0.0.1:" + string(rune('1'+i)) + "0809"}
	}
	text := c.serveConfig("127.0.0.1:7000", "127.0.0.1:7001")
	cfg, err := config.Parse("serve.yaml", []byte(text))
	require.NoError(t, err, "%s", text)
	require.Equal(t, "linear(mirror(nbd://127.0.0.1:10809, stripe/8KiB(nbd://127.0.0.1:20809)), nbd://127.0.0.1:30809)",
		cfg.Storage.String(), "%s", text)
	require.Equal(t, "127.0.0.1:7000", cfg.Listen)
	require.Equal(t, "127.0.0.1:7001", cfg.Admin)
	require.Equal(t, time.Second, cfg.Node.RequestTimeout)
	require.Zero(t, cfg.Node.Retries)
	require.Equal(t, 20*time.Millisecond, cfg.Node.BackoffMax)
	require.Negative(t, cfg.Node.PingInterval)
	require.Equal(t, int64(1<<20), cfg.Resync.RateBytesPerSec)
	require.Equal(t, 100*time.Millisecond, cfg.Resync.Interval)
	require.Equal(t, int64(64<<10), cfg.RegionSize)
	require.True(t, cfg.AllowDegraded)
	require.Equal(t, 90*time.Second, cfg.Scrub.Interval)
	require.False(t, cfg.Scrub.Repair, "a torture run repairs nothing")
}
