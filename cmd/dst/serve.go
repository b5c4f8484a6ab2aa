package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
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

// serveCloseTimeout bounds the final flush and superblock write at
// shutdown.
const serveCloseTimeout = 10 * time.Second

var serveCommand = command{
	name:    "serve",
	summary: "assemble a storage from its members and serve it over NBD",
	help: `Assemble the storage a config file describes — a tree of linear, stripe
and mirror layouts over local files and remote NBD nodes — and serve it to
NBD clients. A new storage (every member blank) is created; an existing
one is assembled from its members' superblocks, and members that missed
writes are resynced in the background. Status and Prometheus metrics are
served over HTTP on the admin address (see 'dst status').

When it listens, it prints "listening on ADDR" and then "admin on ADDR" on
standard output; logs go to standard error. SIGINT or SIGTERM shut it down
gracefully: requests in flight complete, the storage is flushed and its
superblocks marked clean; a second signal kills it at once.

A config file:

  listen: 127.0.0.1:10809
  admin: 127.0.0.1:10810
  storage:
    layout: mirror
    members:
      - nbd://10.0.0.2:10809
      - file:/srv/dst/local.img
      - layout: stripe
        chunk: 64KiB
        members: [nbd://10.0.0.3:10809, nbd://10.0.0.4:10809]

The reference of every field is in the documentation of package
dst/storage/config ('go doc dst/storage/config').

Example:
  dst serve --config storage.yaml`,
	setup: setupServe,
}

// serveFlags are the flags of dst serve.
type serveFlags struct {
	config   string
	logLevel string
}

func setupServe(stdout, stderr io.Writer) (*flag.FlagSet, func(context.Context) error) {
	o := &serveFlags{}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.StringVar(&o.config, "config", "", "the storage's config `FILE` (YAML); required")
	fs.StringVar(&o.logLevel, "log-level", "info", "log `LEVEL`: debug, info, warn or error")
	return fs, func(ctx context.Context) error { return runServe(ctx, o, stdout, stderr) }
}

// runServe assembles the storage, serves it and its admin endpoint until
// ctx ends, then shuts everything down in order.
func runServe(ctx context.Context, o *serveFlags, stdout, stderr io.Writer) error {
	if o.config == "" {
		return usagef("--config is required")
	}
	log, err := newLogger(stderr, o.logLevel)
	if err != nil {
		return err
	}
	cfg, err := config.Load(o.config)
	if err != nil {
		return err
	}
	var tlsFiles *export.TLSFiles
	if cfg.Export.TLS.Enabled() {
		f := cfg.Export.TLS.Files()
		tlsFiles = &f
	}
	ecfg := export.Config{Listen: cfg.Listen, TLSRequired: cfg.Export.TLS.Required, Logger: log}
	if tlsFiles != nil {
		if ecfg.TLS, err = export.LoadTLS(*tlsFiles); err != nil {
			return fmt.Errorf("%s: export.tls: %w", cfg.Export.TLS.Where, err)
		}
	}

	// Open members through node.Open, remembering each node for the
	// admin endpoint (remote counters, sizes).
	var mu sync.Mutex
	opened := map[string]node.Node{}
	openOpts := cfg.Node.OpenOptions()
	open := func(ctx context.Context, url string) (node.Node, error) {
		oo := openOpts
		oo.Remote.Logger = log
		n, err := node.Open(ctx, url, oo)
		if err == nil {
			mu.Lock()
			opened[url] = n
			mu.Unlock()
		}
		return n, err
	}
	started := time.Now()
	st, err := engine.Assemble(ctx, cfg.Storage, engine.AssembleOptions{
		Open:          open,
		RegionSize:    cfg.RegionSize,
		AllowDegraded: cfg.AllowDegraded,
		Replace:       cfg.Replace,
		Engine:        withLogger(cfg.EngineOptions(), log),
		Monitor:       cfg.MonitorOptions(),
		Logger:        log,
	})
	if err != nil {
		return err
	}
	// Close flushes and marks the superblocks clean; it runs after every
	// server below has stopped.
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), serveCloseTimeout)
		defer cancel()
		if err := st.Close(cctx); err != nil {
			log.Warn("closing the storage", "err", err)
		}
	}()
	eng := st.Engine()
	name := "storage " + cfg.Storage.String()
	dev := admin.Instrument(eng, name, nil)
	ecfg.Exports = []export.ExportConfig{{
		Name: cfg.Export.Name, Description: cfg.Export.Description, ReadOnly: cfg.Export.ReadOnly,
		Node: dev, Allow: cfg.Export.Allow,
	}}
	srv, err := export.New(ecfg)
	if err != nil {
		return err
	}
	defer srv.Close()
	ln, err := srv.Listen(ctx)
	if err != nil {
		return err
	}
	var aln net.Listener
	if cfg.Admin != "" {
		var lc net.ListenConfig
		if aln, err = lc.Listen(ctx, "tcp", cfg.Admin); err != nil {
			ln.Close()
			return fmt.Errorf("admin: %w", err)
		}
	}
	fmt.Fprintf(stdout, "listening on %s\n", ln.Addr())
	if aln != nil {
		fmt.Fprintf(stdout, "admin on %s\n", aln.Addr())
	}
	log.Info("storage serving", "layout", cfg.Storage.String(), "size", eng.Size(), "generation", st.Generation(),
		"listen", ln.Addr(), "admin", cfg.Admin)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		err := srv.Serve(gctx, ln)
		if errors.Is(err, export.ErrServerClosed) {
			return nil
		}
		return err
	})
	g.Go(func() error { return st.Run(gctx) })
	if aln != nil {
		leaves := cfg.Storage.Leaves()
		members := make([]admin.Member, len(leaves))
		mu.Lock()
		for i, u := range leaves {
			members[i] = admin.Member{URL: u, Node: opened[u], DataOffset: st.DataOffset(i)}
		}
		mu.Unlock()
		h := admin.NewHandler(admin.Options{
			Storage: eng, Layout: cfg.Storage.String(), Listen: ln.Addr().String(), Export: cfg.Export.Name,
			Members: members, Generation: st.Generation, Requests: dev.Requests(), Started: started,
			Control: eng,
		})
		g.Go(func() error { return admin.Serve(gctx, aln, h, log) })
	}
	err = g.Wait()
	if err == nil && ctx.Err() != nil {
		log.Info("shutting down")
	}
	return err
}

// withLogger returns o logging to log.
func withLogger(o engine.Options, log *slog.Logger) engine.Options {
	o.Logger = log
	return o
}
