package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"dst/storage/config"
	"dst/storage/serve"
)

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
// ctx ends, then shuts everything down in order (package serve).
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
	srv, err := serve.Start(ctx, cfg, log)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "listening on %s\n", srv.Addr())
	if a := srv.AdminAddr(); a != nil {
		fmt.Fprintf(stdout, "admin on %s\n", a)
	}
	return srv.Run(ctx)
}
