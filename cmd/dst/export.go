package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"dst/internal/size"
	"dst/storage/export"
	"dst/storage/node"
)

// exitMachineLost is the exit status of dst export after a power cut or a
// crash signal (see the help of dst export).
const exitMachineLost = 3

// handleMachineSignals turns the power-cut, crash and reload signals into
// calls on srv (see the help of dst export) until stop is called.
func handleMachineSignals(srv *export.Server, log *slog.Logger, tornPercent int) (stop func()) {
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, syscall.SIGPWR, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			var sig os.Signal
			select {
			case sig = <-ch:
			case <-done:
				return
			}
			switch sig {
			case syscall.SIGHUP:
				if err := srv.ReloadFaults(); err != nil {
					log.Error("media fault rules not reloaded", "err", err)
				}
				continue
			case syscall.SIGUSR1:
				err := srv.Crash()
				log.Warn("crash: the volatile cache was written back; exiting at once", "err", err)
			default:
				torn := 0
				if sig == syscall.SIGUSR2 {
					torn = tornPercent
				}
				kept, lost, err := srv.PowerCut(torn)
				log.Warn("power cut: unflushed writes lost; exiting at once", "kept_units", kept, "lost_units", lost,
					"torn_percent", torn, "err", err)
			}
			os.Exit(exitMachineLost)
		}
	}()
	return func() { signal.Stop(ch); close(done) }
}

var exportCommand = command{
	name:    "export",
	summary: "serve local files or block devices over NBD",
	help: `Serve regular files or block devices to NBD clients (qemu, nbdkit's
tools, the kernel, fio, another dst). Give one --file per export; a lone
export also answers to the default (empty) export name.

When it listens, it prints one line "listening on ADDR" on standard output;
logs go to standard error. SIGINT or SIGTERM shut it down gracefully:
requests in flight complete, then connections close (at most
--shutdown-timeout); a second signal kills it at once.

Power loss and bad media, for torture runs (see dst torture): with
--volatile-cache every export keeps writes that are neither FUA nor
followed by a FLUSH in a volatile cache, as a disk's write cache does, and
these signals stand for what can happen to its machine:
  SIGPWR   power cut: unflushed writes are lost; exits at once (status 3)
  SIGUSR2  torn power cut: --torn-percent of the unflushed 4 KiB units
           survive, seeded, the rest are lost; exits at once (status 3)
  SIGUSR1  crash of the process alone: the cache reaches the file (as a
           page cache survives a killed process); exits at once (status 3)
SIGTERM and SIGINT flush the cache before they shut down. Restart a node
after a power cut with a new --boot-id, as a rebooted machine reports one.
With --faults FILE, media faults are injected below the cache as the JSON
rules in FILE say (EIO on reads, writes or flushes, a flipped bit, a lost
write); SIGHUP reads FILE again. Example rules:
  {"seed": 7, "rules": [{"op": "read", "offset": 1048576, "length": 65536,
   "action": "eio"}, {"op": "write", "action": "flip", "count": 1}]}

Sizes take SI suffixes (K, M, G, T: powers of 1000) and IEC suffixes
(KiB, MiB, GiB, TiB: powers of 1024).

Examples:
  dst export --listen 127.0.0.1:0 --file disk.img --size 64MiB
  dst export --listen :10809 --file a=/dev/sdb --file b=/srv/b.img \
      --allow 10.0.0.0/8=rw --allow b=10.0.0.0/8=ro --allow 127.0.0.1=rw`,
	setup: setupExport,
}

// exportFlags are the flags of dst export.
type exportFlags struct {
	listen          string
	files           multiFlag
	name            string
	sizes           multiFlag
	readOnly        bool
	allows          multiFlag
	tlsCert         string
	tlsKey          string
	tlsCA           string
	tlsRequired     bool
	logLevel        string
	shutdownTimeout time.Duration
	maxConns        int
	volatileCache   string
	volatileSeed    uint64
	tornPercent     int
	bootID          string
	faults          string
}

func setupExport(stdout, stderr io.Writer) (*flag.FlagSet, func(context.Context) error) {
	o := &exportFlags{}
	fs := flag.NewFlagSet("export", flag.ContinueOnError)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:10809", "TCP `ADDR` to listen on, HOST:PORT; port 0 picks a free port")
	fs.Var(&o.files, "file", "serve the regular file or block device PATH as export NAME: `[NAME=]PATH`\n(repeatable); NAME defaults to --name, else the base name of PATH")
	fs.StringVar(&o.name, "name", "", "export `NAME` of a lone --file PATH")
	fs.Var(&o.sizes, "size", "export SIZE bytes of export NAME, or of all: `[NAME=]SIZE` (repeatable); creates a\nmissing file, grows a smaller regular file, serves only the first SIZE bytes of a larger one")
	fs.BoolVar(&o.readOnly, "read-only", false, "export every file read-only")
	fs.Var(&o.allows, "allow", "let peers in CIDR use export NAME, or all, read-only or read-write:\n`[NAME=]CIDR=ro|rw[,CIDR=ro|rw...]` (repeatable); the longest matching prefix wins, peers\nmatching no rule are refused; without any rule everyone may read and write")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "server certificate `FILE` (PEM); enables TLS")
	fs.StringVar(&o.tlsKey, "tls-key", "", "private key `FILE` (PEM) of --tls-cert")
	fs.StringVar(&o.tlsCA, "tls-ca", "", "CA bundle `FILE` (PEM): require client certificates signed by it")
	fs.BoolVar(&o.tlsRequired, "tls-required", false, "refuse clients that do not start TLS")
	fs.StringVar(&o.logLevel, "log-level", "info", "log `LEVEL`: debug, info, warn or error")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", export.DefaultShutdownTimeout, "how long a graceful shutdown waits for requests in flight (a `DURATION` like 10s)")
	fs.IntVar(&o.maxConns, "max-conns", export.DefaultMaxConns, "serve at most `N` client connections at once")
	fs.StringVar(&o.volatileCache, "volatile-cache", "", "keep unflushed writes in a volatile cache of at most `SIZE` bytes that a power cut\n(SIGPWR, SIGUSR2) loses; empty: write through")
	fs.Uint64Var(&o.volatileSeed, "volatile-seed", 1, "`SEED` of the volatile cache's destaging and of torn power cuts")
	fs.IntVar(&o.tornPercent, "torn-percent", 50, "`PERCENT` of unflushed 4 KiB units a torn power cut (SIGUSR2) keeps")
	fs.StringVar(&o.bootID, "boot-id", "", "boot `ID` reported to clients (default: the kernel's); change it after a power cut")
	fs.StringVar(&o.faults, "faults", "", "inject the media faults of the JSON rules in `FILE`; SIGHUP reads it again")
	return fs, func(ctx context.Context) error { return runExport(ctx, o, stdout, stderr) }
}

// runExport wires the flags into an export.Server and runs it until ctx
// ends.
func runExport(ctx context.Context, o *exportFlags, stdout, stderr io.Writer) error {
	cfg, err := o.config()
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, o.logLevel)
	if err != nil {
		return err
	}
	cfg.Logger = log
	for _, e := range cfg.Exports {
		if e.Size%512 != 0 {
			log.Warn("size is not a multiple of 512 bytes; some clients round it down", "export", e.Name, "size", e.Size)
		}
	}
	if o.tlsCert != "" {
		cfg.TLS, err = export.LoadTLS(export.TLSFiles{CertFile: o.tlsCert, KeyFile: o.tlsKey, CAFile: o.tlsCA})
		if err != nil {
			return err
		}
	}
	srv, err := export.New(cfg)
	if err != nil {
		return err
	}
	defer srv.Close()
	if o.volatileCache != "" || o.faults != "" {
		stop := handleMachineSignals(srv, log, o.tornPercent)
		defer stop()
	}
	return srv.Run(ctx, func(addr net.Addr) { fmt.Fprintf(stdout, "listening on %s\n", addr) })
}

// config turns the flags into an export.Config; every error is a usage
// error naming the flag.
func (o *exportFlags) config() (export.Config, error) {
	cfg := export.Config{Listen: o.listen, TLSRequired: o.tlsRequired, ShutdownTimeout: o.shutdownTimeout, MaxConns: o.maxConns}
	switch {
	case len(o.files) == 0:
		return cfg, usagef("no --file given")
	case o.listen == "":
		return cfg, usagef("--listen is empty")
	case (o.tlsCert == "") != (o.tlsKey == ""):
		return cfg, usagef("--tls-cert and --tls-key go together")
	case o.tlsCert == "" && o.tlsCA != "":
		return cfg, usagef("--tls-ca needs --tls-cert and --tls-key")
	case o.tlsCert == "" && o.tlsRequired:
		return cfg, usagef("--tls-required needs --tls-cert and --tls-key")
	case o.shutdownTimeout <= 0:
		return cfg, usagef("--shutdown-timeout %v: must be positive", o.shutdownTimeout)
	case o.maxConns <= 0:
		return cfg, usagef("--max-conns %d: must be positive", o.maxConns)
	case o.tornPercent < 0 || o.tornPercent > 100:
		return cfg, usagef("--torn-percent %d: must be within 0..100", o.tornPercent)
	case len(o.bootID) > 64:
		return cfg, usagef("--boot-id %q: at most 64 bytes", o.bootID)
	}
	cfg.BootID = o.bootID
	var volatile *node.VolatileOptions
	if o.volatileCache != "" {
		n, err := size.Parse(o.volatileCache)
		switch {
		case err != nil:
			return cfg, usagef("--volatile-cache: %v", err)
		case n < node.VolatileUnit:
			return cfg, usagef("--volatile-cache %q: must be at least %d bytes", o.volatileCache, node.VolatileUnit)
		}
		volatile = &node.VolatileOptions{Seed: o.volatileSeed, MaxBytes: n}
	}
	if _, _, err := net.SplitHostPort(o.listen); err != nil {
		return cfg, usagef("--listen %q: %v", o.listen, err)
	}
	if _, err := newLogger(io.Discard, o.logLevel); err != nil {
		return cfg, err
	}
	if o.name != "" && len(o.files) > 1 {
		return cfg, usagef("--name names a lone --file; with several, write --file NAME=PATH")
	}
	index := map[string]int{}
	for _, v := range o.files {
		name, path, named := strings.Cut(v, "=")
		switch {
		case !named:
			path, name = v, o.name
			if name == "" {
				name = filepath.Base(path)
			}
		case o.name != "":
			return cfg, usagef("--file %q names its export and --name %q too", v, o.name)
		case name == "":
			return cfg, usagef("--file %q: empty export name", v)
		}
		if path == "" {
			return cfg, usagef("--file %q: empty path", v)
		}
		if _, dup := index[name]; dup {
			return cfg, usagef("--file %q: a second export named %q (write --file NAME=PATH)", v, name)
		}
		index[name] = len(cfg.Exports)
		cfg.Exports = append(cfg.Exports, export.ExportConfig{Name: name, Path: path, ReadOnly: o.readOnly,
			Volatile: volatile, Faults: o.faults})
	}
	if err := o.applySizes(&cfg, index); err != nil {
		return cfg, err
	}
	if err := o.applyAllows(&cfg, index); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// applySizes sets the size of each export from --size.
func (o *exportFlags) applySizes(cfg *export.Config, index map[string]int) error {
	var all int64
	named := map[string]int64{}
	for _, v := range o.sizes {
		name, text, forOne := strings.Cut(v, "=")
		if !forOne {
			name, text = "", v
		}
		n, err := size.Parse(text)
		switch {
		case err != nil && forOne:
			return usagef("--size %q: %v", v, err)
		case err != nil:
			return usagef("--size: %v", err)
		case n == 0:
			return usagef("--size %q: must be at least 1 byte", v)
		}
		if !forOne {
			if all != 0 {
				return usagef("--size %q: a size for all exports was already given", v)
			}
			all = n
			continue
		}
		if _, ok := index[name]; !ok {
			return usagef("--size %q: no export named %q", v, name)
		}
		if _, dup := named[name]; dup {
			return usagef("--size %q: export %q already has a size", v, name)
		}
		named[name] = n
	}
	for i := range cfg.Exports {
		e := &cfg.Exports[i]
		e.Size = all
		if n, ok := named[e.Name]; ok {
			e.Size = n
		}
	}
	return nil
}

// applyAllows builds the access list of each export from --allow: rules
// for all exports, overridden per prefix by rules for one export.
func (o *exportFlags) applyAllows(cfg *export.Config, index map[string]int) error {
	var all []export.Rule
	named := map[string][]export.Rule{}
	for _, v := range o.allows {
		name, rules := "", v
		// A name is there when the first rule has two '=': NAME=CIDR=rw.
		firstRule, _, _ := strings.Cut(v, ",")
		if strings.Count(firstRule, "=") == 2 {
			name, rules, _ = strings.Cut(v, "=")
			if _, ok := index[name]; !ok {
				return usagef("--allow %q: no export named %q", v, name)
			}
		}
		acl, err := export.ParseACL(rules)
		if err != nil {
			return usagef("--allow %q: %v", v, err)
		}
		if acl.Empty() {
			return usagef("--allow %q: no rule", v)
		}
		if name == "" {
			all = append(all, acl.Rules()...)
		} else {
			named[name] = append(named[name], acl.Rules()...)
		}
	}
	global, err := export.NewACL(all...)
	if err != nil {
		return usagef("--allow: %v", err)
	}
	for i := range cfg.Exports {
		e := &cfg.Exports[i]
		own, err := export.NewACL(named[e.Name]...)
		if err != nil {
			return usagef("--allow for export %q: %v", e.Name, err)
		}
		e.Allow = global.Override(own)
	}
	return nil
}
