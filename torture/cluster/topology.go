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

	"dst/storage/config"
	"dst/storage/layout"
	"dst/storage/meta"
)

// Layouts of StorageSpec.Layout.
const (
	Linear = "linear"
	Stripe = "stripe"
	Mirror = "mirror"
)

// ErrTopology is wrapped by every error of Topology.Validate.
var ErrTopology = errors.New("cluster: invalid topology")

// Topology is what a scenario asks for: the nodes, the storage tree over
// them and how the engine behaves.
type Topology struct {
	// Nodes are the exports, each backed by its own image file.
	Nodes []NodeSpec
	// Storage is the layout tree; its leaves name nodes, each exactly once.
	Storage StorageSpec
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

// StorageSpec is a node of the storage tree: a layout over Members, or a
// leaf naming a node.
type StorageSpec struct {
	// Layout is Linear, Stripe or Mirror; empty for a leaf.
	Layout string
	// Chunk is the stripe chunk in bytes (stripes only, required there).
	Chunk int64
	// Members are the children of a layout.
	Members []StorageSpec
	// Node is the node name of a leaf.
	Node string
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
	if len(t.Nodes) > config.MaxMembers {
		bad("%d nodes, at most %d", len(t.Nodes), config.MaxMembers)
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
	if t.Storage.Layout == "" {
		bad("storage: the root must be a layout (write linear(%s) for a single node)", t.Storage.Node)
	}
	used := map[string]bool{}
	t.Storage.validate("storage", sizes, used, 1, bad)
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

func (s *StorageSpec) validate(field string, sizes map[string]int64, used map[string]bool, depth int,
	bad func(string, ...any)) {
	if depth > config.MaxDepth {
		bad("%s: nested deeper than %d", field, config.MaxDepth)
		return
	}
	if s.Layout == "" {
		switch {
		case s.Node == "":
			bad("%s: a leaf needs a node name (or give a layout)", field)
		case len(s.Members) != 0 || s.Chunk != 0:
			bad("%s: leaf %q cannot have members or a chunk", field, s.Node)
		case sizes[s.Node] == 0:
			bad("%s: unknown node %q", field, s.Node)
		case used[s.Node]:
			bad("%s: node %q used twice", field, s.Node)
		}
		used[s.Node] = true
		return
	}
	switch {
	case s.Layout != Linear && s.Layout != Stripe && s.Layout != Mirror:
		bad("%s: layout %q is not linear, stripe or mirror", field, s.Layout)
	case s.Node != "":
		bad("%s: a %s layout cannot name a node (%q); make it a member", field, s.Layout, s.Node)
	case len(s.Members) == 0:
		bad("%s: empty %s", field, s.Layout)
	case s.Layout == Stripe && s.Chunk <= 0:
		bad("%s: stripe without a chunk size", field)
	case s.Layout != Stripe && s.Chunk != 0:
		bad("%s: chunk is for stripes only, not %s", field, s.Layout)
	case s.Layout == Mirror && len(s.Members) > layout.MaxReplicas:
		bad("%s: %d replicas, at most %d", field, len(s.Members), layout.MaxReplicas)
	}
	for i := range s.Members {
		s.Members[i].validate(fmt.Sprintf("%s.members[%d]", field, i), sizes, used, depth+1, bad)
	}
}

// Leaves returns the node names in leaf order (depth first), which is the
// engine's member order.
func (s StorageSpec) Leaves() []string {
	if s.Layout == "" {
		return []string{s.Node}
	}
	var out []string
	for i := range s.Members {
		out = append(out, s.Members[i].Leaves()...)
	}
	return out
}

// String renders the tree in one line, e.g. "linear(mirror(a,b),c)" or
// "stripe/64KiB(a,b)".
func (s StorageSpec) String() string {
	if s.Layout == "" {
		return s.Node
	}
	parts := make([]string, len(s.Members))
	for i := range s.Members {
		parts[i] = s.Members[i].String()
	}
	k := s.Layout
	if s.Layout == Stripe {
		k += "/" + formatBytes(s.Chunk)
	}
	return k + "(" + strings.Join(parts, ",") + ")"
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
		fmt.Fprintf(&b, " %s%s=%s", n.Name, star, formatBytes(n.Size))
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

// formatBytes writes n with the largest binary unit that divides it.
func formatBytes(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	u := 0
	for u+1 < len(units) && n != 0 && n%1024 == 0 {
		n /= 1024
		u++
	}
	return fmt.Sprintf("%d%s", n, units[u])
}
