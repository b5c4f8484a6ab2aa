package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"dst/internal/proc"
	"dst/storage/nbd/nbdproxy"
	"dst/storage/node"
)

// Node is one node: a `dst export` process serving the node's image file.
// Its address (and the proxy's, if any) stays the same across restarts,
// since the engine's configuration names it, until a new machine takes
// its position (StartReplacement, Adopt: an online replacement). Its
// methods are safe for concurrent use.
type Node struct {
	c    *Cluster
	spec NodeSpec
	file string
	log  string
	ns   *netns // nil unless netns mode
	lg   *slog.Logger

	proxy     *nbdproxy.Proxy
	proxyDone chan error

	mu sync.Mutex // serialises starts and stops; guards p
	p  *proc.Process

	addrMu sync.Mutex // guards listen, file and proxy, so they are read while a start waits
	listen string     // the export's address, fixed by the first start
	// machines counts the replacement machines the node's position got
	// (StartReplacement), under mu.
	machines int

	boots int // power cuts so far, under mu: the boot id is NAME-boot-N
}

// VolatileCache is the volatile cache of a node with NodeSpec.Volatile.
const VolatileCache = "64MiB"

// TornPercent is the share of unflushed 4 KiB units a torn power cut
// keeps (dst export --torn-percent).
const TornPercent = 50

// Name returns the node's name.
func (n *Node) Name() string { return n.spec.Name }

// Spec returns the node's spec.
func (n *Node) Spec() NodeSpec { return n.spec }

// File returns the path of the node's image.
func (n *Node) File() string {
	n.addrMu.Lock()
	defer n.addrMu.Unlock()
	return n.file
}

// Log returns the path of the node's log.
func (n *Node) Log() string { return n.log }

// Addr returns the export's address, HOST:PORT.
func (n *Node) Addr() string {
	n.addrMu.Lock()
	defer n.addrMu.Unlock()
	return n.listen
}

// URL returns the member URL the engine uses: the proxy's address when
// the node has a proxy, else the export's.
func (n *Node) URL() string {
	if p := n.Proxy(); p != nil {
		return "nbd://" + p.Addr()
	}
	return "nbd://" + n.Addr()
}

// Proxy returns the node's fault proxy, or nil if it has none.
func (n *Node) Proxy() *nbdproxy.Proxy {
	n.addrMu.Lock()
	defer n.addrMu.Unlock()
	return n.proxy
}

// Alive reports whether the export process runs (a stopped one counts).
func (n *Node) Alive() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.p != nil && n.p.Alive()
}

// Pid returns the export's PID, or 0 if it does not run.
func (n *Node) Pid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.p == nil || !n.p.Alive() {
		return 0
	}
	return n.p.Pid()
}

// Start starts the export unless it runs, on the address of its first
// start, serving the same file.
func (n *Node) Start(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.startLocked(ctx)
}

func (n *Node) startLocked(ctx context.Context) error {
	if n.p != nil && n.p.Alive() {
		return nil
	}
	listen := n.Addr()
	if listen == "" {
		listen = n.freshListen()
	}
	p, addr, err := n.startExport(ctx, listen, n.File())
	if err != nil {
		return err
	}
	n.p = p
	n.addrMu.Lock()
	if n.listen == "" {
		n.listen = addr
	}
	n.addrMu.Unlock()
	n.lg.Info("node started", "pid", p.Pid(), "addr", addr)
	return nil
}

// freshListen is the address a new machine of the node listens on: any
// loopback port, or in netns mode the namespace's address on a port of
// its own per machine. Call with mu held.
func (n *Node) freshListen() string {
	if n.ns != nil {
		return fmt.Sprintf("%s:%d", n.ns.nsIP, netnsPort+n.machines)
	}
	return "127.0.0.1:0"
}

// startExport starts a dst export of file on listen and returns it with
// its address. Call with mu held.
func (n *Node) startExport(ctx context.Context, listen, file string) (*proc.Process, string, error) {
	argv := []string{n.c.o.Binary, "export", "--listen", listen, "--file", file, "--name", n.spec.Name,
		"--shutdown-timeout", "2s"}
	if n.spec.Volatile {
		argv = append(argv, "--volatile-cache", VolatileCache, "--torn-percent", fmt.Sprint(TornPercent),
			"--volatile-seed", fmt.Sprint(n.boots+1), "--boot-id", n.BootID())
	}
	if n.spec.MediaFaults {
		argv = append(argv, "--faults", n.faultsFile())
	}
	if n.ns != nil {
		argv = n.ns.exec(argv)
	}
	p, got, err := startProc(ctx, "node "+n.spec.Name, argv, n.log, []string{"listening on "})
	if err != nil {
		return nil, "", err
	}
	return p, got[0], nil
}

// Kill kills the export with SIGKILL and waits until it was reaped. A
// node that does not run is left alone.
func (n *Node) Kill() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.killLocked()
}

func (n *Node) killLocked() error {
	if n.p == nil || !n.p.Alive() {
		return nil
	}
	if n.spec.Volatile {
		// A killed process on a machine that keeps power leaves its
		// writes in the page cache: the volatile cache is written back.
		err := n.p.ExitOn(syscall.SIGUSR1)
		n.lg.Info("node killed (cache kept, as a page cache survives a killed process)", "pid", n.p.Pid())
		return err
	}
	err := n.p.Kill()
	n.lg.Info("node killed", "pid", n.p.Pid())
	return err
}

// BootID is the boot id the node reports: it changes with every power
// cut, as a restarted machine's does.
func (n *Node) BootID() string { return fmt.Sprintf("%s-boot-%d", n.spec.Name, n.boots) }

// PowerCut takes the power from the node's machine (NodeSpec.Volatile):
// its unflushed writes are lost — or, with torn, a seeded half of their
// 4 KiB units survive — and the export exits at once. The next Start
// reports a new boot. It returns what the node logged of the cut.
func (n *Node) PowerCut(torn bool) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.spec.Volatile {
		return fmt.Errorf("cluster: node %s has no volatile cache to lose", n.spec.Name)
	}
	if n.p == nil || !n.p.Alive() {
		return fmt.Errorf("cluster: node %s is not running: no power to cut", n.spec.Name)
	}
	sig := syscall.SIGPWR
	if torn {
		sig = syscall.SIGUSR2
	}
	err := n.p.ExitOn(sig)
	n.boots++
	n.lg.Info("node power cut", "pid", n.p.Pid(), "torn", torn, "next_boot", n.BootID())
	return err
}

// faultsFile is where the node's media-fault rules are.
func (n *Node) faultsFile() string {
	return filepath.Join(n.c.o.Dir, "nodes", n.spec.Name+".faults.json")
}

// SetMediaFaults makes the node (NodeSpec.MediaFaults) inject rules from
// now on, replacing earlier ones; no rules heal the media. The rules
// survive restarts of the node until changed.
func (n *Node) SetMediaFaults(seed uint64, rules ...node.FaultRule) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.spec.MediaFaults {
		return fmt.Errorf("cluster: node %s takes no media faults", n.spec.Name)
	}
	var data []byte
	if len(rules) > 0 {
		var err error
		if data, err = json.Marshal(node.FaultRules{Seed: seed, Rules: rules}); err != nil {
			return err
		}
	}
	// Written aside and renamed: the node may still be reading the file
	// for the previous SIGHUP, and must never see it half written.
	tmp := n.faultsFile() + ".new"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("cluster: node %s: %w", n.spec.Name, err)
	}
	if err := os.Rename(tmp, n.faultsFile()); err != nil {
		return fmt.Errorf("cluster: node %s: %w", n.spec.Name, err)
	}
	if n.p == nil || !n.p.Alive() {
		return nil // read at the next start
	}
	if err := n.p.Signal(syscall.SIGHUP); err != nil {
		return err
	}
	n.lg.Info("node media faults set", "rules", len(rules))
	return nil
}

// Restart kills the export if it runs and starts it again.
func (n *Node) Restart(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.killLocked(); err != nil {
		return err
	}
	return n.startLocked(ctx)
}

// Stop freezes the export with SIGSTOP: its connections stay open, nothing
// answers.
func (n *Node) Stop() error { return n.signal(syscall.SIGSTOP) }

// Cont thaws a stopped export with SIGCONT.
func (n *Node) Cont() error { return n.signal(syscall.SIGCONT) }

func (n *Node) signal(sig syscall.Signal) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.p == nil {
		return fmt.Errorf("cluster: node %s was never started", n.spec.Name)
	}
	if err := n.p.Signal(sig); err != nil {
		return err
	}
	n.lg.Info("node signalled", "pid", n.p.Pid(), "signal", sig.String())
	return nil
}

// Stopped reports whether the export was frozen by Stop and not thawed.
func (n *Node) Stopped() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.p != nil && n.p.Stopped()
}

// ReplaceMedia gives the node a new disk: it kills the export, replaces
// the image by a blank sparse file of the same size and starts the export
// again. A running engine finds blank media on a known member by itself
// and copies the member whole (no replace: entry needed for blank media).
func (n *Node) ReplaceMedia(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.killLocked(); err != nil {
		return err
	}
	file := n.File()
	if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("cluster: node %s: remove media: %w", n.spec.Name, err)
	}
	if err := createImage(file, n.spec.Size); err != nil {
		return err
	}
	n.lg.Info("node media replaced", "file", file)
	return n.startLocked(ctx)
}

// Replacement is a new machine for a node's position (an online
// replacement, dst member replace): a dst export over a blank image on
// an address of its own, behind a fault proxy of its own if the node has
// one. The node stays the old machine until Adopt.
type Replacement struct {
	n         *Node
	file      string
	p         *proc.Process
	listen    string
	proxy     *nbdproxy.Proxy
	proxyDone chan error
}

// URL is the member URL of the replacement.
func (r *Replacement) URL() string {
	if r.proxy != nil {
		return "nbd://" + r.proxy.Addr()
	}
	return "nbd://" + r.listen
}

// StartReplacement starts a new machine for the node's position: a blank
// image of the node's size, its export on a new address (a new boot id)
// and a proxy if the node has one.
func (n *Node) StartReplacement(ctx context.Context) (*Replacement, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.machines++
	n.boots++ // another machine, another boot
	r := &Replacement{n: n, file: filepath.Join(n.c.o.Dir, "nodes", fmt.Sprintf("%s.m%d.img", n.spec.Name, n.machines))}
	if err := createImage(r.file, n.spec.Size); err != nil {
		return nil, err
	}
	var err error
	if r.p, r.listen, err = n.startExport(ctx, n.freshListen(), r.file); err != nil {
		os.Remove(r.file)
		return nil, err
	}
	if n.spec.Proxy {
		if r.proxy, err = nbdproxy.New("tcp", r.listen, nbdproxy.Options{Logger: n.lg.With("proxy", true)}); err != nil {
			r.p.Kill()
			os.Remove(r.file)
			return nil, fmt.Errorf("cluster: proxy of node %s's replacement: %w", n.spec.Name, err)
		}
		done, px := make(chan error, 1), r.proxy
		r.proxyDone = done
		go func() { done <- px.Run(n.c.proxyCtx) }()
	}
	n.lg.Info("replacement machine started", "pid", r.p.Pid(), "addr", r.listen, "url", r.URL(), "file", r.file)
	return r, nil
}

// Adopt makes r the node: the old machine's export is killed (if it
// still runs), its proxy closed and its image removed; from now on the
// node's address, proxy and image are r's (the engine's next config names
// r's URL).
func (n *Node) Adopt(r *Replacement) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	err := n.killLocked()
	n.addrMu.Lock()
	oldProxy, oldDone, oldFile := n.proxy, n.proxyDone, n.file
	n.p, n.listen, n.file, n.proxy, n.proxyDone = r.p, r.listen, r.file, r.proxy, r.proxyDone
	n.addrMu.Unlock()
	if oldProxy != nil {
		oldProxy.Close()
		if perr := <-oldDone; perr != nil && err == nil {
			err = fmt.Errorf("cluster: old proxy of node %s: %w", n.spec.Name, perr)
		}
	}
	if rerr := os.Remove(oldFile); rerr != nil && err == nil {
		err = fmt.Errorf("cluster: node %s: remove the old image: %w", n.spec.Name, rerr)
	}
	n.lg.Info("node replaced by a new machine", "addr", r.listen, "url", r.URL(), "file", r.file)
	return err
}

// Discard stops a replacement that did not take the position and
// removes its image.
func (r *Replacement) Discard() error {
	err := r.p.Kill()
	if r.proxy != nil {
		r.proxy.Close()
		<-r.proxyDone
	}
	return errors.Join(err, os.Remove(r.file))
}

// createImage creates a sparse file of size bytes at path, or keeps an
// existing one of that size.
func createImage(path string, size int64) error {
	if fi, err := os.Stat(path); err == nil {
		if fi.Size() != size {
			return fmt.Errorf("cluster: image %s exists with %d bytes, want %d", path, fi.Size(), size)
		}
		return nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("cluster: create image: %w", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cluster: size image %s: %w", path, err)
	}
	return nil
}
