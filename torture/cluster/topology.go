// Package cluster starts a dst topology as real OS processes — one
// `dst export` per node, one `dst serve` engine over them, optional fault
// proxies in the harness process between the engine and a node, optional
// network namespaces per node — so that the torture harness injects real
// faults (SIGKILL, SIGSTOP, new media, cut links, an engine restart) and
// observes the engine through its admin endpoint and the nodes' image
// files.
//
// A Cluster owns every process, proxy and namespace it creates: Close
// stops them all (by PID), also after a failure halfway through Start.
// Processes are started with SIGKILL as their parent-death signal, so
// they die with the harness even if it is killed before Close.
//
// Use:
//
//	c, err := cluster.Start(ctx, cluster.Options{Binary: dst, Dir: work, Topology: topo, Logger: log})
//	defer c.Close(context.Background())
//	cl, err := nbd.Dial(ctx, "tcp", c.Engine().Addr(), nbd.ClientOptions{})
//	c.Node("a").Kill()              // SIGKILL; Start brings it back on its port
//	c.Node("b").ReplaceMedia(ctx)   // a blank disk: the engine copies it whole
//	c.Node("c").Proxy().Cut()       // nodes with Proxy: true
//	took, st, err := c.Engine().WaitInSync(ctx)
//	divs, err := c.Converged(ctx)   // replicas byte-identical?
//	fmt.Println(c.Locate(off))      // which node and member offset hold a byte
//
// The geometry (data offsets, layout) is computed as the engine computes
// it and checked against the engine's /status at Start.
package cluster

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"dst/internal/size"
	"dst/storage/config"
	"dst/storage/meta"
	"dst/storage/spec"
)

// ErrTopology is wrapped by every error of Topology.Validate.
var ErrTopology = errors.New("cluster: invalid topology")

// Topology is what a scenario asks for: the nodes, the storage tree over
// them and how the engine behaves.
type Topology struct {
	// Nodes are the exports, each backed by its own image file.
	Nodes []NodeSpec
	// Storage is the layout tree; its leaves name nodes, each exactly once.
	Storage spec.Tree
	// Netns runs every node in its own network namespace, reached over a
	// veth pair at its own address (root and iproute2 needed).
	Netns bool
	// Engine tunes the engine's timings; zero fields are dst's defaults.
	Engine EngineSpec
}

// NodeSpec is one node.
type NodeSpec struct {
	// Name names the node in the storage tree, files and logs: letters,
	// digits, '_' and '-', at most 32 characters.
	Name string
	// Size of the node's image in bytes; any count from
	// meta.MinRawSize on (it need not be a multiple of 512).
	Size int64
	// Proxy puts a fault proxy (nbdproxy.Proxy) between the engine and the
	// node.
	Proxy bool
	// Volatile gives the node a volatile write cache (dst export
	// --volatile-cache), so Node.PowerCut can lose its unflushed writes.
	Volatile bool
	// MediaFaults lets Node.SetMediaFaults inject media faults (dst export
	// --faults).
	MediaFaults bool
}

// EngineSpec tunes `dst serve`. A zero field leaves dst's default.
type EngineSpec struct {
	// RequestTimeout is one try of a node request.
	RequestTimeout time.Duration
	// Retries are the resends after the first try; negative means none.
	Retries int
	// BackoffMax bounds the pause between reconnects.
	BackoffMax time.Duration
	// PingInterval pings idle node connections; negative disables pings.
	PingInterval time.Duration
	// ConnectTimeout bounds how long start-up waits for a node.
	ConnectTimeout time.Duration
	// ResyncRate bounds the resync copy in bytes per second; negative
	// lifts the bound.
	ResyncRate int64
	// ResyncInterval is how often gone members are probed.
	ResyncInterval time.Duration
	// RegionSize is the bytes per write-intent bit of a new storage.
	RegionSize int64
	// AllowDegraded lets the engine start a mirror with members missing.
	AllowDegraded bool
	// ScrubInterval schedules the engine's scrubs (none if zero); they
	// repair nothing.
	ScrubInterval time.Duration
}

// regionSize is the region size the engine uses for a new storage.
func (e EngineSpec) regionSize() int64 {
	if e.RegionSize == 0 {
		return config.DefaultRegionSize
	}
	return e.RegionSize
}

var nodeName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

// Validate checks t and returns every problem found, each wrapping
// ErrTopology.
func (t Topology) Validate() error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: %s", ErrTopology, fmt.Sprintf(format, a...)))
	}
	if len(t.Nodes) == 0 {
		bad("no nodes")
	}
	if len(t.Nodes) > spec.MaxMembers {
		bad("%d nodes, at most %d", len(t.Nodes), spec.MaxMembers)
	}
	sizes := map[string]int64{}
	for i, n := range t.Nodes {
		switch {
		case !nodeName.MatchString(n.Name):
			bad("node %d: name %q: use 1 to 32 letters, digits, '_' or '-'", i, n.Name)
			continue
		case sizes[n.Name] != 0:
			bad("node %q: defined twice", n.Name)
			continue
		case n.Size < meta.MinRawSize:
			bad("node %q: size %d bytes: at least %d (metadata and one byte of data)", n.Name, n.Size, meta.MinRawSize)
		}
		sizes[n.Name] = max(n.Size, 1)
	}
	if t.Storage.IsLeaf() {
		bad("storage: the root must be a layout (write linear(%s) for a single node)", t.Storage.Leaf)
	}
	if err := t.Storage.Validate(); err != nil {
		bad("storage %s: %v", t.Storage.String(), err)
	}
	used := map[string]bool{}
	for _, l := range t.Storage.Leaves() {
		if l != "" && sizes[l] == 0 {
			bad("storage: unknown node %q", l)
		}
		used[l] = true
	}
	for _, n := range t.Nodes {
		if sizes[n.Name] != 0 && !used[n.Name] {
			bad("node %q is not used by the storage", n.Name)
		}
	}
	e := t.Engine
	if e.RequestTimeout < 0 || e.BackoffMax < 0 || e.ConnectTimeout < 0 || e.ResyncInterval < 0 {
		bad("engine: negative duration")
	}
	if e.Retries > config.MaxRetries {
		bad("engine: retries %d: at most %d", e.Retries, config.MaxRetries)
	}
	rs := e.regionSize()
	if rs < meta.MinRegionSize || rs > meta.MaxRegionSize || rs&(rs-1) != 0 {
		bad("engine: region size %d: a power of two in [%d, %d]", rs, meta.MinRegionSize, meta.MaxRegionSize)
	}
	if len(errs) == 0 {
		// The layout package has the last word (stripe chunks larger than
		// a child, sizes that overflow).
		if _, err := t.build(); err != nil {
			bad("storage %s: %v", t.Storage.String(), err)
		}
	}
	return errors.Join(errs...)
}

// String renders the topology for reports: the tree, the node sizes and
// the modes, e.g. "linear(mirror(a,b),c) a=3145851B b=3145851B c*=4MiB netns"
// (a star marks a node behind a proxy).
func (t Topology) String() string {
	var b strings.Builder
	b.WriteString(t.Storage.String())
	for _, n := range t.Nodes {
		star := ""
		if n.Proxy {
			star = "*"
		}
		fmt.Fprintf(&b, " %s%s=%s", n.Name, star, size.Format(n.Size))
	}
	if t.Netns {
		b.WriteString(" netns")
	}
	return b.String()
}

// node returns the spec of the named node.
func (t Topology) node(name string) (NodeSpec, bool) {
	for _, n := range t.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return NodeSpec{}, false
}
