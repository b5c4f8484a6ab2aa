// Package serve is `dst serve` as a library: from a parsed config it opens
// the members (node.Open), assembles the storage (engine.Assemble),
// exports it over NBD (export.Server) and serves the admin endpoint
// (admin.Handler), and shuts all of that down in order. cmd/dst keeps only
// the flags and the output; the harness and tests can run a storage in
// their own process with it.
//
// Durability is the engine's (see package engine): a write is durable once
// acknowledged with FUA or once a later FLUSH is acknowledged. Run's
// shutdown lets requests in flight complete, then flushes the storage and
// marks its superblocks clean (Storage.Close), so a clean stop restarts
// without a resync.
package serve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"dst/storage/admin"
	"dst/storage/config"
	"dst/storage/engine"
	"dst/storage/export"
	"dst/storage/node"
)

// CloseTimeout bounds the final flush and superblock write at shutdown.
const CloseTimeout = 10 * time.Second

// Server is an assembled storage, listening for NBD clients and (unless
// the config turns it off) admin requests.
type Server struct {
	cfg     *config.Config
	log     *slog.Logger
	st      *engine.Storage
	srv     *export.Server
	ln      net.Listener
	aln     net.Listener // nil without admin
	h       *admin.Handler
	started time.Time

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
	s := &Server{cfg: cfg, log: log, started: time.Now()}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	ecfg := export.Config{Listen: cfg.Listen, TLSRequired: cfg.Export.TLS.Required, Logger: log}
	if cfg.Export.TLS.Enabled() {
		if ecfg.TLS, err = export.LoadTLS(cfg.Export.TLS.Files()); err != nil {
			return nil, fmt.Errorf("%s: export.tls: %w", cfg.Export.TLS.Where, err)
		}
	}

	// Open members through node.Open, remembering each node for the admin
	// endpoint (remote counters, sizes).
	var mu sync.Mutex
	opened := map[string]node.Node{}
	openOpts := cfg.Node.OpenOptions()
	openOpts.Remote.Logger = log
	open := func(ctx context.Context, url string) (node.Node, error) {
		n, err := node.Open(ctx, url, openOpts)
		if err == nil {
			mu.Lock()
			opened[url] = n
			mu.Unlock()
		}
		return n, err
	}
	eo := cfg.EngineOptions()
	eo.Logger = log
	s.st, err = engine.Assemble(ctx, cfg.Storage, engine.AssembleOptions{
		Open:          open,
		RegionSize:    cfg.RegionSize,
		AllowDegraded: cfg.AllowDegraded,
		Replace:       cfg.Replace,
		Engine:        eo,
		Monitor:       cfg.MonitorOptions(),
		Logger:        log,
	})
	if err != nil {
		return nil, err
	}
	eng := s.st.Engine()
	ecfg.Exports = []export.ExportConfig{{
		Name: cfg.Export.Name, Description: cfg.Export.Description, ReadOnly: cfg.Export.ReadOnly,
		Node: eng, Allow: cfg.Export.Allow,
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
		leaves := cfg.Storage.Leaves()
		members := make([]admin.Member, len(leaves))
		mu.Lock()
		for i, u := range leaves {
			members[i] = admin.Member{URL: u, Node: opened[u], DataOffset: s.st.DataOffset(i)}
		}
		mu.Unlock()
		s.h = admin.NewHandler(admin.Options{
			Storage: eng, Layout: cfg.Storage.String(), Listen: s.ln.Addr().String(), Export: cfg.Export.Name,
			Members: members, Generation: s.st.Generation, Requests: eng.Requests(), Started: s.started,
			Control: eng,
		})
	}
	return s, nil
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

// Storage is the assembled storage.
func (s *Server) Storage() *engine.Storage { return s.st }

// Run serves NBD clients, the resync monitor and the admin endpoint until
// ctx ends or one of them fails, then shuts down (Close). It returns the
// first failure, nil after ctx ended.
func (s *Server) Run(ctx context.Context) error {
	s.log.Info("storage serving", "layout", s.cfg.Storage.String(), "size", s.st.Engine().Size(),
		"generation", s.st.Generation(), "listen", s.ln.Addr(), "admin", s.AdminAddr())
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		err := s.srv.Serve(gctx, s.ln)
		if errors.Is(err, export.ErrServerClosed) {
			return nil
		}
		return err
	})
	g.Go(func() error { return s.st.Run(gctx) })
	if s.aln != nil {
		g.Go(func() error { return admin.Serve(gctx, s.aln, s.h, s.log) })
	}
	err := g.Wait()
	if err == nil && ctx.Err() != nil {
		s.log.Info("shutting down")
	}
	s.Close() // a failed close is logged; the storage restarts with a resync
	return err
}

// Close stops the listeners and the export server, then flushes the
// storage and marks its superblocks clean (bounded by CloseTimeout). Run
// calls it; call it instead of Run after a Start that is not run.
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
		if s.st != nil {
			cctx, cancel := context.WithTimeout(context.Background(), CloseTimeout)
			defer cancel()
			if err := s.st.Close(cctx); err != nil {
				s.log.Warn("closing the storage", "err", err)
				s.closeErr = err
			}
		}
	})
	return s.closeErr
}
