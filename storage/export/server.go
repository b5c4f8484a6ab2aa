// Package export serves nodes (storage/node) over NBD: regular files and
// block devices it opens itself (node.File), or any node.Node it is given
// (a memory node, a remote node, later an assembled storage). It decides
// who may use them (ACL), secures the link (LoadTLS) and runs the listener
// (Server). Node, engine and operating system errors become NBD error
// codes in one place, nbd.ErrnoOf, which every nbd.Server applies.
package export

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"dst/storage/nbd"
	"dst/storage/node"
)

// Defaults of Config.
const (
	DefaultShutdownTimeout = 10 * time.Second
	DefaultMaxConns        = 128
)

// Sentinel errors of Server, checked with errors.Is.
var (
	// ErrConfig is wrapped by every error New returns for a bad Config.
	ErrConfig = errors.New("export: bad configuration")
	// ErrServerClosed is returned by Serve after Shutdown or Close.
	ErrServerClosed = errors.New("export: server closed")
)

// ExportConfig describes one export.
type ExportConfig struct {
	// Name is the export name clients ask for. Names are unique within a
	// server; a lone export also answers to the empty default name.
	Name string
	// Description is sent to clients that ask for it; may be empty.
	Description string
	// Path is the regular file or block device to serve, opened with
	// node.OpenFile when the server is created and closed with it. Either
	// Path or Node is set.
	Path string
	// Size is passed to node.OpenFile (see node.FileOptions); it must be
	// zero with Node.
	Size int64
	// ReadOnly opens Path read-only and serves the export read-only to
	// every peer, whatever its ACL rule says.
	ReadOnly bool
	// Node, if set instead of Path, is served as it is: its Size and Flags
	// are read once when the server is created. The caller owns it: the
	// server never closes it, and the caller closes it only after Close.
	Node node.Node
	// Volatile, with Path, puts a volatile write cache in front of the
	// file (node.Volatile): the export then stands for a disk whose
	// machine can lose power (Server.PowerCut). nil writes through.
	Volatile *node.VolatileOptions
	// Faults, with Path, names a JSON file of media-fault rules
	// (node.ParseFaultRules) injected between the cache and the file;
	// Server.ReloadFaults reads it again. An empty file injects nothing.
	Faults string
	// Allow decides which peers may use the export and how. The zero ACL
	// lets everyone read and write; a peer matching no rule is refused
	// with NBD_REP_ERR_POLICY. ReadOnly overrides a rule's rw.
	Allow ACL
}

// Config configures a Server. Zero values are documented per field.
type Config struct {
	// Listen is the TCP address to listen on, such as "127.0.0.1:10809"
	// or ":0". Required by Listen and Run, unused by Serve.
	Listen string
	// Exports are the devices to serve; at least one.
	Exports []ExportConfig
	// TLS enables STARTTLS (see LoadTLS); nil serves plain TCP only.
	TLS *tls.Config
	// TLSRequired refuses clients that do not start TLS. Needs TLS.
	TLSRequired bool
	// MaxConns bounds the connections served at once; further ones are
	// closed at accept. Zero means DefaultMaxConns.
	MaxConns int
	// MaxInFlight, MaxPayload and BufferBytes bound requests per
	// connection, request size and payload memory; zero takes the nbd
	// package defaults (see nbd.ServerOptions).
	MaxInFlight int
	MaxPayload  int
	BufferBytes int64
	// ShutdownTimeout bounds the graceful shutdown Serve performs when its
	// context ends. Zero means DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// BootID is the boot id sent to clients that ask (the engine's
	// check for a restarted machine); empty sends the kernel's.
	BootID string
	// Logger receives the server's events; nil discards them.
	Logger *slog.Logger
}

// Server serves the exports of a Config. New opens the devices and starts
// nothing; Serve (or Run) accepts connections; Shutdown drains them; Close
// releases everything. All methods are safe for concurrent use.
type Server struct {
	cfg   Config
	log   *slog.Logger
	nbd   *nbd.Server
	files []node.Node                  // opened by New from ExportConfig.Path; closed by Close
	power []*node.Volatile             // the volatile caches among files
	media []mediaFaults                // the fault injectors among files
	allow map[*nbd.Export]exportPolicy // read-only after New

	connCtx    context.Context // ends every connection when cancelled
	cancelConn context.CancelFunc

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     int
	closing   bool
	wg        sync.WaitGroup // connection goroutines
	closeOnce sync.Once
	closeErr  error
}

type exportPolicy struct {
	acl      ACL
	readOnly bool
}

// New validates cfg and opens every export's file. On error nothing it
// opened stays open. Errors wrap ErrConfig or the errors of node.OpenFile,
// and name the export.
func New(cfg Config) (*Server, error) {
	if len(cfg.Exports) == 0 {
		return nil, fmt.Errorf("%w: no export", ErrConfig)
	}
	if cfg.TLSRequired && cfg.TLS == nil {
		return nil, fmt.Errorf("%w: TLS required but no certificate given", ErrConfig)
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log, allow: map[*nbd.Export]exportPolicy{}, listeners: map[net.Listener]struct{}{}}
	names := map[string]bool{}
	exports := make([]*nbd.Export, 0, len(cfg.Exports))
	for _, ec := range cfg.Exports {
		if names[ec.Name] || names[ec.Name+node.DigestSuffix] {
			s.closeFiles()
			return nil, fmt.Errorf("%w: two exports named %q", ErrConfig, ec.Name)
		}
		if strings.HasSuffix(ec.Name, node.DigestSuffix) {
			s.closeFiles()
			return nil, fmt.Errorf("%w: export %q: names ending in %q are the digest exports dst export adds", ErrConfig, ec.Name, node.DigestSuffix)
		}
		names[ec.Name] = true
		n, err := s.open(ec)
		if err != nil {
			s.closeFiles()
			return nil, err
		}
		e := &nbd.Export{
			Name:        ec.Name,
			Description: ec.Description,
			Size:        n.Size(),
			Flags:       n.Flags(),
			Backend:     n,
		}
		exports = append(exports, e)
		s.allow[e] = exportPolicy{acl: ec.Allow, readOnly: ec.ReadOnly}
		// The digests of its blocks, for a scrub that compares replicas
		// without reading them over the network (node.Digests): hidden,
		// read-only, to whoever may read the export.
		d := node.NewDigests(n)
		de := &nbd.Export{Name: ec.Name + node.DigestSuffix, Description: "CRC-32C of each 4 KiB block of " + ec.Name,
			Size: d.Size(), Flags: d.Flags(), Backend: d, Hidden: true}
		exports = append(exports, de)
		s.allow[de] = exportPolicy{acl: ec.Allow, readOnly: true}
		if len(cfg.Exports) == 1 && ec.Name != "" {
			// A lone export answers to the default name: its digests
			// to the default name's.
			alias := *de
			alias.Name = node.DigestSuffix
			exports = append(exports, &alias)
			s.allow[&alias] = s.allow[de]
		}
		log.Info("export ready", "export", ec.Name, "node", n.String(), "size", n.Size(),
			"read_only", ec.ReadOnly, "allow", aclText(ec.Allow), "flags", e.Flags)
	}
	srv, err := nbd.NewServer(nbd.ServerOptions{
		Exports:     exports,
		Authorize:   s.authorize,
		TLS:         cfg.TLS,
		TLSRequired: cfg.TLSRequired,
		MaxInFlight: cfg.MaxInFlight,
		MaxPayload:  cfg.MaxPayload,
		BufferBytes: cfg.BufferBytes,
		BootID:      cfg.BootID,
		Logger:      log,
	})
	if err != nil {
		s.closeFiles()
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	s.nbd = srv
	s.connCtx, s.cancelConn = context.WithCancel(context.Background())
	return s, nil
}

// open returns the node an export serves: ec.Node, or the file at ec.Path
// (which it records for Close).
func (s *Server) open(ec ExportConfig) (node.Node, error) {
	switch {
	case ec.Node != nil && (ec.Path != "" || ec.Size != 0):
		return nil, fmt.Errorf("%w: export %q has a node and a path or size", ErrConfig, ec.Name)
	case ec.Node != nil:
		return ec.Node, nil
	case ec.Node != nil && (ec.Volatile != nil || ec.Faults != ""):
		return nil, fmt.Errorf("%w: export %q: a volatile cache and media faults need a path", ErrConfig, ec.Name)
	case ec.Path == "":
		return nil, fmt.Errorf("%w: export %q has no path", ErrConfig, ec.Name)
	}
	var rules *node.FaultRules
	if ec.Faults != "" {
		var err error
		if rules, err = readFaultRules(ec.Faults); err != nil {
			return nil, fmt.Errorf("%w: export %q: %w", ErrConfig, ec.Name, err)
		}
	}
	f, err := node.OpenFile(ec.Path, node.FileOptions{ReadOnly: ec.ReadOnly, Size: ec.Size})
	if err != nil {
		return nil, fmt.Errorf("export %q: %w", ec.Name, err)
	}
	var n node.Node = f
	if ec.Faults != "" {
		fy := node.NewFaulty(n, nil, func(op node.Op, a node.Action) {
			s.log.Warn("media fault injected", "export", ec.Name, "op", op.Kind.String(), "offset", op.Off,
				"length", op.Len, "action", a.Kind.String(), "bit", a.Bit)
		})
		setRules(fy, rules)
		s.media = append(s.media, mediaFaults{name: ec.Name, path: ec.Faults, node: fy, rules: rules})
		n = fy
	}
	if ec.Volatile != nil {
		v, err := node.NewVolatile(n, *ec.Volatile)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%w: export %q: %w", ErrConfig, ec.Name, err)
		}
		s.power = append(s.power, v)
		n = v
	}
	s.files = append(s.files, n)
	return n, nil
}

func aclText(a ACL) string {
	if a.Empty() {
		return "everyone=rw"
	}
	return a.String()
}

// authorize is the nbd.ServerOptions.Authorize of the server.
func (s *Server) authorize(e *nbd.Export, p nbd.Peer) (nbd.Access, error) {
	pol, ok := s.allow[e]
	if !ok {
		panic(fmt.Sprintf("export: authorize called for unknown export %q", e.Name))
	}
	a := pol.acl.AccessOf(p.Addr)
	if a == nbd.AccessDenied {
		host := "?"
		if addr, ok := peerAddr(p.Addr); ok {
			host = addr.Unmap().String()
		}
		s.log.Info("peer refused", "peer", p.Addr, "export", e.Name)
		return nbd.AccessDenied, fmt.Errorf("peer %s is not allowed to use export %q", host, e.Name)
	}
	if pol.readOnly {
		a = nbd.AccessReadOnly
	}
	return a, nil
}

// Listen opens a TCP listener on Config.Listen.
func (s *Server) Listen(ctx context.Context) (net.Listener, error) {
	if s.cfg.Listen == "" {
		return nil, fmt.Errorf("%w: no listen address", ErrConfig)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	return ln, nil
}

// Run listens on Config.Listen, calls ready (if not nil) with the actual
// address, and serves until ctx ends; see Serve.
func (s *Server) Run(ctx context.Context, ready func(net.Addr)) error {
	ln, err := s.Listen(ctx)
	if err != nil {
		return err
	}
	if ready != nil {
		ready(ln.Addr())
	}
	return s.Serve(ctx, ln)
}

// Serve accepts connections on ln and serves them. When ctx ends it shuts
// the whole server down gracefully, within Config.ShutdownTimeout, and
// returns nil (or the error of Shutdown). It returns ErrServerClosed if
// Shutdown or Close ran first, and the error of ln if accepting fails for
// good (transient errors such as EMFILE are retried with backoff); it
// closes ln in every case. Serve may run on several listeners at once.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	s.log.Info("listening", "addr", ln.Addr(), "tls", s.cfg.TLS != nil, "tls_required", s.cfg.TLSRequired)

	accepted := make(chan error, 1)
	go func() { accepted <- s.acceptLoop(ln) }()
	select {
	case err := <-accepted:
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	err := s.Shutdown(sctx)
	<-accepted
	return err
}

// acceptLoop accepts until ln fails or is closed by Shutdown.
func (s *Server) acceptLoop(ln net.Listener) error {
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			if retryable(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed, retrying", "addr", ln.Addr(), "delay", delay, "err", err)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("export: accept on %v: %w", ln.Addr(), err)
		}
		delay = 0
		s.mu.Lock()
		switch {
		case s.closing:
			s.mu.Unlock()
			conn.Close()
			return ErrServerClosed
		case s.conns >= s.cfg.MaxConns:
			s.mu.Unlock()
			s.log.Warn("connection refused: too many connections", "peer", conn.RemoteAddr(), "max_conns", s.cfg.MaxConns)
			conn.Close()
			continue
		}
		s.conns++
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(conn)
	}
}

// retryable reports whether an accept error is transient: a timeout, or
// running out of descriptors or memory for a moment.
func retryable(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

// serveConn serves one connection until it ends.
func (s *Server) serveConn(conn net.Conn) {
	defer func() {
		s.mu.Lock()
		s.conns--
		s.mu.Unlock()
		s.wg.Done()
	}()
	peer := conn.RemoteAddr()
	s.log.Debug("connection accepted", "peer", peer)
	if err := s.nbd.ServeConn(s.connCtx, conn); err != nil && !errors.Is(err, nbd.ErrClosed) {
		s.log.Warn("connection failed", "peer", peer, "err", err)
		return
	}
	s.log.Debug("connection closed", "peer", peer)
}

// Shutdown stops accepting, lets requests in flight complete (new ones get
// ESHUTDOWN), and closes every connection. If ctx ends first, the remaining
// connections are closed at once and an error wrapping ctx's error is
// returned. Serve calls then return ErrServerClosed. Shutdown does not
// close the files: call Close.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		ln.Close()
	}
	clear(s.listeners)
	s.mu.Unlock()

	err := s.nbd.Shutdown(ctx)
	if err == nil {
		s.wg.Wait() // connections accepted but not yet handed to nbd end at once
		s.log.Info("shut down")
		return nil
	}
	s.log.Warn("shutdown timed out; connections with requests in flight were closed", "err", err)
	s.cancelConn()
	s.wg.Wait()
	return fmt.Errorf("export: shutdown timed out, connections with requests in flight were closed: %w", err)
}

// Close ends every connection at once, waits for them, and closes the
// files New opened (not the nodes given in ExportConfig.Node). It is safe
// to call more than once and after Shutdown.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closing = true
		for ln := range s.listeners {
			ln.Close()
		}
		clear(s.listeners)
		s.mu.Unlock()
		s.cancelConn()
		s.wg.Wait()
		s.closeErr = s.closeFiles()
	})
	return s.closeErr
}

// PowerCut takes the power from every export with a volatile cache: each
// keeps a seeded tornPercent in 100 of its unflushed units and loses the
// rest, and fails every later request (node.Volatile.PowerCut). It
// returns the units kept and lost over all exports. The process is meant
// to exit at once afterwards, as a machine without power does.
func (s *Server) PowerCut(tornPercent int) (kept, lost int64, err error) {
	var errs []error
	for _, v := range s.power {
		k, l, err := v.PowerCut(context.Background(), tornPercent)
		kept, lost = kept+k, lost+l
		errs = append(errs, err)
	}
	return kept, lost, errors.Join(errs...)
}

// Crash stands for the death of the process on a machine that keeps
// power: every volatile cache is written to its file, not flushed, and
// fails later requests (node.Volatile.Crash). The process is meant to
// exit at once afterwards.
func (s *Server) Crash() error {
	var errs []error
	for _, v := range s.power {
		errs = append(errs, v.Crash(context.Background()))
	}
	return errors.Join(errs...)
}

// mediaFaults is an export's fault injector and the file of its rules.
type mediaFaults struct {
	name, path string
	node       *node.Faulty
	rules      *node.FaultRules // the rules in force, nil for none
}

// ReloadFaults reads every export's fault-rules file again and injects
// what it now says (an empty file: nothing). On an error the export keeps
// its previous rules and the error names the file.
func (s *Server) ReloadFaults() error {
	var errs []error
	for i := range s.media {
		m := &s.media[i]
		rules, err := readFaultRules(m.path)
		if err != nil {
			errs = append(errs, fmt.Errorf("export %q: %w", m.name, err))
			continue
		}
		setRules(m.node, rules)
		var hits []int // how often each replaced rule struck: did a fault happen?
		if m.rules != nil {
			hits = m.rules.Hits()
		}
		m.rules = rules
		n := 0
		if rules != nil {
			n = len(rules.Rules)
		}
		s.log.Info("media fault rules loaded", "export", m.name, "file", m.path, "rules", n, "previous_hits", hits)
	}
	return errors.Join(errs...)
}

// readFaultRules reads a rules file; an empty one gives nil.
func readFaultRules(path string) (*node.FaultRules, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	rules, err := node.ParseFaultRules(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return rules, nil
}

func setRules(f *node.Faulty, rules *node.FaultRules) {
	if rules == nil {
		f.SetInjector(nil)
		return
	}
	f.SetInjector(rules)
}

func (s *Server) closeFiles() error {
	var errs []error
	for _, f := range s.files {
		errs = append(errs, f.Close())
	}
	s.files = nil
	return errors.Join(errs...)
}
