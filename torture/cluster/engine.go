package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"dst/internal/proc"
	"dst/storage/admin"
	"dst/storage/engine"
	"dst/storage/spec"
)

// Bounds of the engine handle.
const (
	// stopTimeout bounds a graceful stop when the caller's context has no
	// deadline (dst serve itself bounds its final flush to 10 s).
	stopTimeout = 15 * time.Second
	// waitInSyncTimeout bounds WaitInSync when ctx has no deadline.
	waitInSyncTimeout = time.Minute
	// pollInterval is how often WaitInSync polls the status.
	pollInterval = 50 * time.Millisecond
	// httpTimeout bounds one admin request.
	httpTimeout = 5 * time.Second
)

// ErrNotInSync is wrapped by WaitInSync's error when the members did not
// all come in sync in time.
var ErrNotInSync = errors.New("cluster: members not in sync")

// Engine is the `dst serve` process. Its NBD and admin addresses are
// fixed by the first start and kept across restarts. Its methods are safe
// for concurrent use.
type Engine struct {
	c      *Cluster
	config string
	log    string
	lg     *slog.Logger
	http   *http.Client

	mu sync.Mutex // serialises starts and stops; guards p
	p  *proc.Process

	addrMu sync.Mutex // guards the addresses, fixed by the first start
	listen string
	admin  string
}

// Addr returns the NBD address clients dial, "127.0.0.1:PORT".
func (e *Engine) Addr() string {
	e.addrMu.Lock()
	defer e.addrMu.Unlock()
	return e.listen
}

// AdminAddr returns the admin HTTP address.
func (e *Engine) AdminAddr() string {
	e.addrMu.Lock()
	defer e.addrMu.Unlock()
	return e.admin
}

// Config returns the path of the engine's configuration file.
func (e *Engine) Config() string { return e.config }

// Log returns the path of the engine's log.
func (e *Engine) Log() string { return e.log }

// Alive reports whether the engine process runs.
func (e *Engine) Alive() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.p != nil && e.p.Alive()
}

// Pid returns the engine's PID, or 0 if it does not run.
func (e *Engine) Pid() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.p == nil || !e.p.Alive() {
		return 0
	}
	return e.p.Pid()
}

// Start starts the engine unless it runs: it writes the configuration
// (with the ports of the first start) and waits until the engine serves.
// An existing storage is assembled from its members' superblocks.
func (e *Engine) Start(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.p != nil && e.p.Alive() {
		return nil
	}
	listen, adm := e.Addr(), e.AdminAddr()
	if listen == "" {
		listen, adm = "127.0.0.1:0", "127.0.0.1:0"
	}
	if err := os.WriteFile(e.config, []byte(e.c.serveConfig(listen, adm)), 0o644); err != nil {
		return fmt.Errorf("cluster: engine config: %w", err)
	}
	argv := []string{e.c.o.Binary, "serve", "--config", e.config}
	p, got, err := startProc(ctx, "engine", argv, e.log, []string{"listening on ", "admin on "})
	if err != nil {
		return err
	}
	e.p = p
	if listen == "127.0.0.1:0" {
		e.addrMu.Lock()
		e.listen, e.admin = got[0], got[1]
		e.addrMu.Unlock()
		// Later starts must come back on the same ports.
		if err := os.WriteFile(e.config, []byte(e.c.serveConfig(got[0], got[1])), 0o644); err != nil {
			return fmt.Errorf("cluster: engine config: %w", err)
		}
	}
	e.lg.Info("engine started", "pid", p.Pid(), "addr", got[0], "admin", got[1])
	return nil
}

// Kill kills the engine with SIGKILL and waits until it was reaped.
func (e *Engine) Kill() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.p == nil || !e.p.Alive() {
		return nil
	}
	err := e.p.Kill()
	e.lg.Info("engine killed", "pid", e.p.Pid())
	return err
}

// Stop shuts the engine down gracefully: SIGTERM, then a wait until ctx
// ends (at most 15 s without a deadline), then SIGKILL. It returns an
// error if the engine had to be killed or exited with a failure.
func (e *Engine) Stop(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.p == nil || !e.p.Alive() {
		return nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, stopTimeout)
		defer cancel()
	}
	err := e.p.Terminate(ctx)
	e.lg.Info("engine stopped", "pid", e.p.Pid(), "exit", e.p.Exit())
	return err
}

// Status returns the engine's GET /status.
func (e *Engine) Status(ctx context.Context) (admin.Status, error) {
	c, err := e.adminClient()
	if err != nil {
		return admin.Status{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, httpTimeout)
	defer cancel()
	st, _, err := c.Status(ctx)
	return st, err
}

// Suspend takes member i out of service for maintenance (POST
// /members/{i}/suspend); a refusal is an *admin.HTTPError.
func (e *Engine) Suspend(ctx context.Context, i int) error {
	c, err := e.adminClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, httpTimeout)
	defer cancel()
	return c.Suspend(ctx, i)
}

// Resume brings suspended member i back (POST /members/{i}/resume); it
// returns once the rejoin started: poll Status or WaitInSync for the end
// of its resync.
func (e *Engine) Resume(ctx context.Context, i int) error {
	c, err := e.adminClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, httpTimeout)
	defer cancel()
	return c.Resume(ctx, i)
}

// Replace puts the node at url in member i's position online (POST
// /members/{i}/replace, with force: also over a member in sync); it
// returns once the new node holds the position: poll Status or
// WaitInSync for the end of its copy. A refusal is an *admin.HTTPError.
func (e *Engine) Replace(ctx context.Context, i int, url string) error {
	c, err := e.adminClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, replaceTimeout)
	defer cancel()
	return c.Replace(ctx, i, url, true)
}

// AddMember adds the node at url as a replica of the mirror at path
// online (POST /members/add, with force); it returns once the replica is
// a member: poll Status or WaitInSync for the end of its copy.
func (e *Engine) AddMember(ctx context.Context, path, url string) (admin.ChangeResult, error) {
	c, err := e.adminClient()
	if err != nil {
		return admin.ChangeResult{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, replaceTimeout)
	defer cancel()
	return c.AddMember(ctx, path, url, true)
}

// RemoveMember removes mirror replica i online (POST /members/{i}/remove).
func (e *Engine) RemoveMember(ctx context.Context, i int) (admin.ChangeResult, error) {
	c, err := e.adminClient()
	if err != nil {
		return admin.ChangeResult{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, replaceTimeout)
	defer cancel()
	return c.RemoveMember(ctx, i)
}

// replaceTimeout bounds a replace call: the member's pieces in flight
// drain first, within the node's retry budget.
const replaceTimeout = time.Minute

// Scrub compares the replicas of every mirror online (POST /scrub) and
// returns the result; it repairs nothing.
func (e *Engine) Scrub(ctx context.Context) (*engine.ScrubResult, error) {
	c, err := e.adminClient()
	if err != nil {
		return nil, err
	}
	return c.Scrub(ctx, false, 0)
}

// adminClient is a client of the engine's admin endpoint.
func (e *Engine) adminClient() (*admin.Client, error) {
	addr := e.AdminAddr()
	if addr == "" {
		return nil, errors.New("cluster: engine was never started")
	}
	return admin.NewClient(addr, e.http)
}

// InSync reports whether every member of st is in sync with nothing
// dirty.
func InSync(st admin.Status) bool {
	if len(st.Members) == 0 {
		return false
	}
	for _, m := range st.Members {
		if m.State != engine.InSync.String() || m.DirtyRegions != 0 {
			return false
		}
	}
	return true
}

// WaitInSync polls the status until every member is in sync with no dirty
// region, within ctx (at most a minute without a deadline). It returns how
// long that took and the last status; on timeout the error wraps
// ErrNotInSync and describes the members.
func (e *Engine) WaitInSync(ctx context.Context) (time.Duration, admin.Status, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, waitInSyncTimeout)
		defer cancel()
	}
	start := time.Now()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var last admin.Status
	var lastErr error
	for {
		st, err := e.Status(ctx)
		if err == nil {
			last, lastErr = st, nil
			if InSync(st) {
				return time.Since(start), st, nil
			}
		} else {
			lastErr = err
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return time.Since(start), last, fmt.Errorf("%w after %v (%w): %s; last status error: %v",
				ErrNotInSync, time.Since(start).Round(time.Millisecond), ctx.Err(), describeMembers(last), lastErr)
		}
	}
}

// describeMembers renders the members of st in one line.
func describeMembers(st admin.Status) string {
	var b strings.Builder
	fmt.Fprintf(&b, "health %q", st.Health)
	for _, m := range st.Members {
		fmt.Fprintf(&b, "; member %d (%s) %s dirty %d resynced %d", m.Index, m.URL, m.State, m.DirtyRegions, m.ResyncedBytes)
		if m.LastError != "" {
			fmt.Fprintf(&b, " error %q", m.LastError)
		}
	}
	return b.String()
}

// serveConfig renders Dir/engine/serve.yaml.
func (c *Cluster) serveConfig(listen, adm string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# written by torture/cluster for %s\n", c.o.Topology.String())
	fmt.Fprintf(&b, "listen: %s\nadmin: %s\nstorage:\n", listen, adm)
	c.writeSpec(&b, &c.o.Topology.Storage, "  ")
	e := c.o.Topology.Engine
	var node []string
	if e.RequestTimeout > 0 {
		node = append(node, "request_timeout: "+e.RequestTimeout.String())
	}
	switch {
	case e.Retries > 0:
		node = append(node, fmt.Sprintf("retries: %d", e.Retries))
	case e.Retries < 0:
		node = append(node, "retries: 0")
	}
	if e.BackoffMax > 0 {
		node = append(node, "backoff_max: "+e.BackoffMax.String())
		if e.BackoffMax < 50*time.Millisecond {
			node = append(node, "backoff_min: "+e.BackoffMax.String())
		}
	}
	switch {
	case e.PingInterval > 0:
		node = append(node, "ping_interval: "+e.PingInterval.String())
	case e.PingInterval < 0:
		node = append(node, "ping_interval: off")
	}
	if e.ConnectTimeout > 0 {
		node = append(node, "connect_timeout: "+e.ConnectTimeout.String())
	}
	writeSection(&b, "node", node)
	var resync []string
	switch {
	case e.ResyncRate > 0:
		resync = append(resync, fmt.Sprintf("rate: %d", e.ResyncRate))
	case e.ResyncRate < 0:
		resync = append(resync, "rate: unlimited")
	}
	if e.ResyncInterval > 0 {
		resync = append(resync, "interval: "+e.ResyncInterval.String())
	}
	writeSection(&b, "resync", resync)
	fmt.Fprintf(&b, "region_size: %d\n", e.regionSize())
	if e.AllowDegraded {
		b.WriteString("allow_degraded: true\n")
	}
	if e.ScrubInterval > 0 {
		fmt.Fprintf(&b, "scrub: {interval: %v}\n", e.ScrubInterval)
	}
	return b.String()
}

func writeSection(b *strings.Builder, name string, lines []string) {
	if len(lines) == 0 {
		return
	}
	fmt.Fprintf(b, "%s:\n", name)
	for _, l := range lines {
		fmt.Fprintf(b, "  %s\n", l)
	}
}

// writeSpec writes the fields of a layout node at indent.
func (c *Cluster) writeSpec(b *strings.Builder, s *spec.Tree, indent string) {
	fmt.Fprintf(b, "%slayout: %s\n", indent, s.Kind)
	if s.Chunk > 0 {
		fmt.Fprintf(b, "%schunk: %d\n", indent, s.Chunk)
	}
	fmt.Fprintf(b, "%smembers:\n", indent)
	for i := range s.Members {
		m := &s.Members[i]
		if m.IsLeaf() {
			fmt.Fprintf(b, "%s  - %s\n", indent, c.nodes[m.Leaf].URL())
			continue
		}
		// "- " then the nested fields, aligned two columns in.
		var nested strings.Builder
		c.writeSpec(&nested, m, indent+"    ")
		text := nested.String()
		fmt.Fprintf(b, "%s  - %s", indent, strings.TrimPrefix(text, indent+"    "))
	}
}
