// Package serve is `dst serve` as a library: from a parsed config it opens
// the members (node.Open), assembles the storage (engine.Assemble),
// exports it over NBD (export.Server) and serves the admin endpoint
// (admin.Handler), and shuts all of that down in order. cmd/dst keeps only
// the flags and the output; the harness and tests can run a storage in
// their own process with it. The export server serves a gate in front of
// the engine, so that a membership change (dst member add, dst member
// remove: change.go) can swap the storage under connected clients.
//
// Durability is the engine's (see package engine): a write is durable once
// acknowledged with FUA or once a later FLUSH is acknowledged. Run's
// shutdown lets requests in flight complete, then flushes the storage and
// marks its superblocks clean (Storage.Close), so a clean stop restarts
// without a resync; all of it within the config's shutdown_timeout. A
// request still waiting on a member at the first third is abandoned (its
// client gets no reply: it was never acknowledged), and a member that does
// not answer the final FLUSH leaves service where a replica stands in,
// recorded on the others, so the next start copies to it what it may
// have missed.
package serve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"dst/storage/admin"
	"dst/storage/config"
	"dst/storage/engine"
	"dst/storage/export"
	"dst/storage/node"
)

// Server is an assembled storage, listening for NBD clients and (unless
// the config turns it off) admin requests.
type Server struct {
	cfg *config.Config
	log *slog.Logger
	// st is the storage that serves; a membership change replaces it
	// (nil after one that could assemble neither membership).
	stMu    sync.Mutex
	st      *engine.Storage
	gate    *gate // what the export server serves: st's engine
	srv     *export.Server
	ln      net.Listener
	aln     net.Listener // nil without admin
	h       atomic.Pointer[admin.Handler]
	started time.Time

	// adminMu is held shared by every admin request but the membership
	// changes, and exclusively while a change swaps the storage, so no
	// request acts on a storage that no longer serves.
	adminMu  sync.RWMutex
	changeMu sync.Mutex      // one membership change at a time
	changes  chan *changeReq // to the monitor loop (Run), which makes them
	stopped  chan struct{}   // closed when the monitor loop ends

	closeOnce sync.Once
	closeErr  error
}

// Start assembles the storage cfg describes and opens its listeners; the
// storage serves nothing until Run. log nil discards logs. On error
// everything Start opened is closed again.
func Start(ctx context.Context, cfg *config.Config, log *slog.Logger) (_ *Server, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log, started: time.Now(), changes: make(chan *changeReq), stopped: make(chan struct{})}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	// A third of the shutdown bound for requests in flight, the rest for
	// the storage's close (Close).
	ecfg := export.Config{Listen: cfg.Listen, TLSRequired: cfg.Export.TLS.Required, Logger: log,
		ShutdownTimeout: cfg.ShutdownTimeout / 3}
	if cfg.Export.TLS.Enabled() {
		if ecfg.TLS, err = export.LoadTLS(cfg.Export.TLS.Files()); err != nil {
			return nil, fmt.Errorf("%s: export.tls: %w", cfg.Export.TLS.Where, err)
		}
	}

	openOpts := cfg.Node.OpenOptions()
	openOpts.Remote.Logger = log
	// A degraded start may go on without a member that does not answer:
	// its node dials on, and the member joins when it answers as the
	// member the others record (engine.Storage).
	openOpts.Background = cfg.AllowDegraded
	open := func(ctx context.Context, url string) (node.Node, error) { return node.Open(ctx, url, openOpts) }
	// A scrub compares replicas behind dst exports by their digests; a
	// node without them (a foreign server) is found out within a second.
	digestOpts := openOpts
	digestOpts.Background, digestOpts.ConnectTimeout = false, time.Second
	openDigests := func(ctx context.Context, url string) (node.Node, error) { return node.Open(ctx, url, digestOpts) }
	if cfg.Scrub.NoDigests {
		openDigests = nil
	}
	eo := cfg.EngineOptions()
	eo.Logger = log
	s.st, err = engine.Assemble(ctx, cfg.Storage, engine.AssembleOptions{
		Open:          open,
		OpenDigests:   openDigests,
		RegionSize:    cfg.RegionSize,
		AllowDegraded: cfg.AllowDegraded,
		Replace:       cfg.Replace,
		Engine:        eo,
		Monitor:       cfg.MonitorOptions(),
		Logger:        log,
	})
	if err != nil {
		if errors.Is(err, node.ErrUnavailable) && !cfg.AllowDegraded {
			err = fmt.Errorf("%w (a mirror may start without a member that does not answer, with allow_degraded: true)", err)
		}
		return nil, err
	}
	s.gate = newGate(s.st.Engine())
	ecfg.Exports = []export.ExportConfig{{
		Name: cfg.Export.Name, Description: cfg.Export.Description, ReadOnly: cfg.Export.ReadOnly,
		Node: s.gate, Allow: cfg.Export.Allow,
	}}
	if s.srv, err = export.New(ecfg); err != nil {
		return nil, err
	}
	if s.ln, err = s.srv.Listen(ctx); err != nil {
		return nil, err
	}
	if cfg.Admin != "" {
		var lc net.ListenConfig
		if s.aln, err = lc.Listen(ctx, "tcp", cfg.Admin); err != nil {
			return nil, fmt.Errorf("admin: %w", err)
		}
		s.h.Store(s.newHandler(s.st))
	}
	return s, nil
}

// newHandler is the admin handler of st.
func (s *Server) newHandler(st *engine.Storage) *admin.Handler {
	eng := st.Engine()
	tree := st.Tree()
	members := make([]admin.Member, len(tree.Leaves()))
	for i := range members {
		members[i].URL, members[i].Node = st.Member(i)
		members[i].DataOffset = st.DataOffset(i)
	}
	return admin.NewHandler(admin.Options{
		Storage: eng, Layout: tree.String(), Listen: s.ln.Addr().String(), Export: s.cfg.Export.Name,
		Members: members, Generation: st.Generation, Requests: eng.Requests(), Started: s.started,
		Control: eng, Replacer: st, Changer: s,
	})
}

// ServeHTTP serves the admin endpoint with the handler of the storage
// that serves now; a membership change waits for the other requests.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !isChange(r) {
		s.adminMu.RLock()
		defer s.adminMu.RUnlock()
	}
	s.h.Load().ServeHTTP(w, r)
}

// Addr is the NBD address clients connect to.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// AdminAddr is the admin endpoint's address, nil when the config turns it
// off.
func (s *Server) AdminAddr() net.Addr {
	if s.aln == nil {
		return nil
	}
	return s.aln.Addr()
}

// Storage is the assembled storage that serves now (a membership change
// replaces it; nil after one that could assemble neither membership).
func (s *Server) Storage() *engine.Storage {
	s.stMu.Lock()
	defer s.stMu.Unlock()
	return s.st
}

// Run serves NBD clients, the resync monitor and the admin endpoint until
// ctx ends or one of them fails, then shuts down (Close). It returns the
// first failure, nil after ctx ended.
func (s *Server) Run(ctx context.Context) error {
	st := s.Storage()
	s.log.Info("storage serving", "layout", st.Tree().String(), "size", st.Engine().Size(),
		"generation", st.Generation(), "listen", s.ln.Addr(), "admin", s.AdminAddr())
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		err := s.srv.Serve(gctx, s.ln)
		switch {
		case errors.Is(err, export.ErrServerClosed):
			return nil
		case gctx.Err() != nil && errors.Is(err, context.DeadlineExceeded):
			// The stop went on without the requests still in flight
			// (logged by the export server): they were never
			// acknowledged, and the stop is what was asked.
			return nil
		}
		return err
	})
	g.Go(func() error { return s.monitor(gctx) })
	if s.aln != nil {
		g.Go(func() error { return admin.Serve(gctx, s.aln, s, s.log) })
	}
	// When the grace for requests in flight ends, a member still busy is
	// hung: it leaves service (where a replica stands in) and its requests
	// are aborted, so the export server's shutdown need not wait for its
	// node's budget.
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-stopped:
			return
		case <-gctx.Done():
		}
		select {
		case <-stopped:
		case <-time.After(s.cfg.ShutdownTimeout / 3):
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout/3)
			defer cancel()
			st := s.Storage()
			if st == nil {
				return
			}
			if n := st.Engine().FailBusy(ctx, 100*time.Millisecond); n > 0 {
				s.log.Warn("stopping: members still busy after the grace for requests in flight left service", "members", n)
			}
		}
	}()
	err := g.Wait()
	if err == nil && ctx.Err() != nil {
		s.log.Info("shutting down")
	}
	s.Close() // a failed close is logged; the storage restarts with a resync
	return err
}

// Close stops the listeners and the export server, then flushes the
// storage and marks its superblocks clean, within two thirds of the
// config's shutdown_timeout (Run's graceful stop of the export server took
// the first third): a member that does not answer the final FLUSH in half
// of that leaves service where a replica stands in, so the others are
// marked clean in time (engine.Storage.Close). Run calls it; call it
// instead of Run after a Start that is not run.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		if s.aln != nil {
			s.aln.Close()
		}
		if s.ln != nil {
			s.ln.Close()
		}
		if s.srv != nil {
			s.srv.Close()
		}
		// A membership change in progress ends first (within its bound).
		s.changeMu.Lock()
		defer s.changeMu.Unlock()
		if st := s.Storage(); st != nil {
			cctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout*2/3)
			defer cancel()
			if err := st.Close(cctx); err != nil {
				s.log.Warn("closing the storage", "err", err)
				s.closeErr = err
			}
		}
	})
	return s.closeErr
}
