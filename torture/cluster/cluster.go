package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"dst/storage/nbd/nbdproxy"
)

// closeTimeout bounds Close when its context has no deadline.
const closeTimeout = 30 * time.Second

// Options configure Start.
type Options struct {
	// Binary is the path of the dst binary; required.
	Binary string
	// Dir is the work directory; required. Start makes Dir/nodes (the
	// images NAME.img), Dir/engine (serve.yaml) and Dir/logs (NAME.log,
	// engine.log). Images already there with the right size are kept.
	Dir string
	// Topology is what to start; it must pass Validate.
	Topology Topology
	// Logger receives the cluster's events (starts, kills, faults); nil
	// discards them.
	Logger *slog.Logger
}

// Cluster is a running topology. Close stops everything it started.
type Cluster struct {
	o     Options
	lg    *slog.Logger
	geo   *geometry
	nodes map[string]*Node
	order []*Node // in Topology.Nodes order
	eng   *Engine

	proxyCtx    context.Context
	proxyCancel context.CancelFunc
	spaces      []*netns

	closeOnce sync.Once
	closeErr  error
}

// Start builds the work directory, starts every node (in its namespace in
// netns mode), the proxies and the engine, and checks that the engine's
// geometry (size, data offsets, node sizes) is the one Where and Converged
// assume. On error everything started is stopped again.
func Start(ctx context.Context, o Options) (c *Cluster, err error) {
	if o.Binary == "" || o.Dir == "" {
		return nil, errors.New("cluster: Options.Binary and Options.Dir are required")
	}
	if err := o.Topology.Validate(); err != nil {
		return nil, err
	}
	geo, err := o.Topology.build()
	if err != nil {
		return nil, err
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	for _, d := range []string{"nodes", "engine", "logs"} {
		if err := os.MkdirAll(filepath.Join(o.Dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("cluster: work directory: %w", err)
		}
	}
	c = &Cluster{o: o, lg: o.Logger, geo: geo, nodes: map[string]*Node{}}
	c.proxyCtx, c.proxyCancel = context.WithCancel(context.WithoutCancel(ctx))
	c.eng = &Engine{c: c, config: filepath.Join(o.Dir, "engine", "serve.yaml"),
		log: filepath.Join(o.Dir, "logs", "engine.log"), lg: c.lg.With("engine", "serve"),
		http: &http.Client{Timeout: httpTimeout}}
	defer func() {
		if err != nil {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
			defer cancel()
			c.Close(cctx)
			c = nil
		}
	}()
	if o.Topology.Netns {
		if err := NetnsSupported(ctx); err != nil {
			return c, err
		}
	}
	if err := c.startNodes(ctx); err != nil {
		return c, err
	}
	if err := c.eng.Start(ctx); err != nil {
		return c, err
	}
	if err := c.checkGeometry(ctx); err != nil {
		return c, err
	}
	c.lg.Info("cluster started", "topology", o.Topology.String(), "size", c.Size(), "addr", c.eng.Addr())
	return c, nil
}

// startNodes makes the namespaces, images, exports and proxies.
func (c *Cluster) startNodes(ctx context.Context) error {
	t := &c.o.Topology
	var subnets []int
	var tag string
	if t.Netns {
		var err error
		if tag, err = newTag(); err != nil {
			return err
		}
		if subnets, err = freeSubnets(ctx, len(t.Nodes)); err != nil {
			return err
		}
	}
	for i, spec := range t.Nodes {
		n := &Node{c: c, spec: spec, file: filepath.Join(c.o.Dir, "nodes", spec.Name+".img"),
			log: filepath.Join(c.o.Dir, "logs", spec.Name+".log"), lg: c.lg.With("node", spec.Name)}
		c.nodes[spec.Name], c.order = n, append(c.order, n)
		if t.Netns {
			ns, err := addNetns(ctx, tag, i, subnets[i])
			if err != nil {
				return err
			}
			c.spaces = append(c.spaces, ns)
			n.ns = ns
		}
		if err := createImage(n.file, spec.Size); err != nil {
			return err
		}
		if spec.MediaFaults {
			if err := os.WriteFile(n.faultsFile(), nil, 0o644); err != nil {
				return fmt.Errorf("cluster: node %s: %w", spec.Name, err)
			}
		}
		if err := n.Start(ctx); err != nil {
			return err
		}
		if spec.Proxy {
			p, err := nbdproxy.New("tcp", n.Addr(), nbdproxy.Options{Logger: n.lg.With("proxy", true)})
			if err != nil {
				return fmt.Errorf("cluster: proxy of node %s: %w", spec.Name, err)
			}
			done := make(chan error, 1) // not n.proxyDone in the goroutine: a replacement changes it
			n.proxy, n.proxyDone = p, done
			go func() { done <- p.Run(c.proxyCtx) }()
		}
	}
	return nil
}

// checkGeometry compares the engine's status with the geometry the
// cluster computed.
func (c *Cluster) checkGeometry(ctx context.Context) error {
	st, err := c.eng.Status(ctx)
	if err != nil {
		return err
	}
	if st.Size != c.Size() {
		return fmt.Errorf("cluster: engine serves %d bytes, the layout %s has %d", st.Size, c.geo.root.l, c.Size())
	}
	if len(st.Members) != len(c.geo.leaves) {
		return fmt.Errorf("cluster: engine has %d members, the topology %d", len(st.Members), len(c.geo.leaves))
	}
	for i, m := range st.Members {
		a, n := c.geo.areas[i], c.leaf(i)
		if m.DataOffset != a.DataOffset || m.NodeSize != a.RawSize {
			return fmt.Errorf("cluster: member %d (node %s): engine has data offset %d of %d bytes, cluster planned %d of %d",
				i, n.spec.Name, m.DataOffset, m.NodeSize, a.DataOffset, a.RawSize)
		}
	}
	return nil
}

// Node returns the named node, or nil.
func (c *Cluster) Node(name string) *Node { return c.nodes[name] }

// Nodes returns the nodes in Topology.Nodes order.
func (c *Cluster) Nodes() []*Node { return append([]*Node(nil), c.order...) }

// Leaf returns the node of member index i (leaf order), or nil.
func (c *Cluster) Leaf(i int) *Node {
	if i < 0 || i >= len(c.geo.leaves) {
		return nil
	}
	return c.leaf(i)
}

// Engine returns the engine.
func (c *Cluster) Engine() *Engine { return c.eng }

// Topology returns the topology the cluster runs.
func (c *Cluster) Topology() Topology { return c.o.Topology }

// Dir returns the work directory.
func (c *Cluster) Dir() string { return c.o.Dir }

// Logs returns the paths of every log file: the engine's, then the
// nodes'.
func (c *Cluster) Logs() []string {
	out := []string{c.eng.log}
	for _, n := range c.order {
		out = append(out, n.log)
	}
	return out
}

// Close stops everything: it thaws stopped nodes and heals the proxies'
// link faults so the engine can flush, stops the engine gracefully (killing
// it if it does not exit in time), kills every node, closes the proxies
// and removes the namespaces. Without a deadline on ctx it takes at most
// about 30 s. It returns every problem met, after doing all it could; a
// second call returns the first call's result.
func (c *Cluster) Close(ctx context.Context) error {
	c.closeOnce.Do(func() { c.closeErr = c.close(ctx) })
	return c.closeErr
}

func (c *Cluster) close(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, closeTimeout)
		defer cancel()
	}
	var errs []error
	for _, n := range c.order {
		if n.Stopped() {
			errs = append(errs, n.Cont())
		}
		if p := n.Proxy(); p != nil {
			p.Blackhole(false)
			p.Refuse(false)
			p.Delay(0)
		}
	}
	sctx, cancel := context.WithTimeout(ctx, stopTimeout)
	errs = append(errs, c.eng.Stop(sctx))
	cancel()
	for _, n := range c.order {
		errs = append(errs, n.Kill())
	}
	c.proxyCancel()
	for _, n := range c.order {
		n.addrMu.Lock()
		p, done := n.proxy, n.proxyDone
		n.addrMu.Unlock()
		if p == nil {
			continue
		}
		p.Close()
		select {
		case err := <-done:
			if err != nil {
				errs = append(errs, fmt.Errorf("cluster: proxy of node %s: %w", n.spec.Name, err))
			}
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("cluster: proxy of node %s did not stop: %w", n.spec.Name, ctx.Err()))
		}
	}
	for _, ns := range c.spaces {
		errs = append(errs, ns.remove(context.WithoutCancel(ctx)))
	}
	c.lg.Info("cluster closed")
	return errors.Join(errs...)
}
