package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"dst/storage/attach"
	"dst/storage/node"
)

var attachCommand = command{
	name:    "attach",
	summary: "attach a storage to this kernel as a block device",
	help: `Attach the storage at --url — a dst serve, any NBD server, or a local file —
to this kernel as a block device, and print the device (e.g. /dev/loop3).

Where the kernel has the nbd driver the device is /dev/nbdX; elsewhere
(--mode fuse, or auto without the driver) the storage is one file of a
FUSE file system mounted at STATE-DIR/NAME, and a loop device is bound to
it. fsync of the device reaches the storage as NBD FLUSH.

Without --foreground the command starts a background process (its log in
STATE-DIR/NAME.log, its state in STATE-DIR/NAME.json), waits until the
device is ready or the process failed, prints the device and exits; the
process serves the device until 'dst detach' or SIGTERM. With
--foreground it serves in this process and detaches on SIGINT or SIGTERM.
A name whose attach process died (a crash) is cleaned up and attached
again; one that is alive is refused. Needs root.

Examples:
  dst attach --url nbd://10.0.0.1:10809 --name dst0
  dst attach --url file:/srv/disk.img --name scratch --mode fuse --read-only
  dst detach --name dst0`,
	setup: setupAttach,
}

var detachCommand = command{
	name:    "detach",
	summary: "detach a storage attached with dst attach",
	help: `Stop the attach process of --name (or of --device): SIGTERM, then SIGKILL if
it does not stop within --timeout; then clean what is left (loop devices,
a dead FUSE mount, the state file) and print what was detached. It also
cleans up after an attach process that crashed.

Examples:
  dst detach --name dst0
  dst detach --device /dev/loop3`,
	setup: setupDetach,
}

// attachFlags are the flags of dst attach.
type attachFlags struct {
	url        string
	name       string
	stateDir   string
	readOnly   bool
	mode       string
	foreground bool
	timeout    time.Duration
	logLevel   string
}

func setupAttach(stdout, stderr io.Writer) (*flag.FlagSet, func(context.Context) error) {
	o := &attachFlags{}
	fs := flag.NewFlagSet("attach", flag.ContinueOnError)
	fs.StringVar(&o.url, "url", "", "the storage: `URL` nbd://HOST:PORT[/EXPORT], nbd+unix:///EXPORT?socket=PATH or file:/PATH; required")
	fs.StringVar(&o.name, "name", "dst0", "`NAME` of the attachment in the state directory")
	fs.StringVar(&o.stateDir, "state-dir", "/run/dst", "`DIR` of state files, logs and FUSE mountpoints")
	fs.BoolVar(&o.readOnly, "read-only", false, "attach read-only")
	fs.StringVar(&o.mode, "mode", "auto", "`MODE`: kernel (/dev/nbdX), fuse (FUSE file and loop device), or auto")
	fs.BoolVar(&o.foreground, "foreground", false, "serve in this process until SIGINT or SIGTERM")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "how long to wait for the storage and the device (a `DURATION`)")
	fs.StringVar(&o.logLevel, "log-level", "info", "log `LEVEL`: debug, info, warn or error")
	return fs, func(ctx context.Context) error { return runAttach(ctx, o, stdout, stderr) }
}

// check validates the flags; every error is a usage error.
func (o *attachFlags) check() (attach.Mode, error) {
	switch {
	case o.url == "":
		return 0, usagef("--url is required")
	case o.name == "" || o.name != filepath.Base(o.name) || o.name == "." || o.name == ".." || strings.ContainsAny(o.name, " \t\n"):
		return 0, usagef("--name %q: want a plain name like dst0", o.name)
	case o.stateDir == "":
		return 0, usagef("--state-dir is empty")
	case o.timeout <= 0:
		return 0, usagef("--timeout %v: must be positive", o.timeout)
	}
	mode, err := attach.ParseMode(o.mode)
	if err != nil {
		return 0, usagef("--mode %q: want auto, fuse or kernel", o.mode)
	}
	if _, err := newLogger(io.Discard, o.logLevel); err != nil {
		return 0, err
	}
	return mode, nil
}

// runAttach attaches in this process (--foreground) or in a background
// one.
func runAttach(ctx context.Context, o *attachFlags, stdout, stderr io.Writer) error {
	mode, err := o.check()
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, o.logLevel)
	if err != nil {
		return err
	}
	reg := attach.Registry{Dir: o.stateDir}
	if o.foreground {
		return attachForeground(ctx, o, mode, reg, log, stdout)
	}
	// A dead attachment of the name is cleaned now, so that the error of a
	// live one comes from here and not from the background process.
	if err := reg.CleanStale(ctx, o.name, log); err != nil {
		return err
	}
	return attachBackground(ctx, o, reg, stdout)
}

// attachForeground serves the attachment until ctx ends.
func attachForeground(ctx context.Context, o *attachFlags, mode attach.Mode, reg attach.Registry, log *slog.Logger, stdout io.Writer) error {
	lock, err := reg.Lock(o.name)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	dev, err := node.Open(ctx, o.url, node.OpenOptions{ReadOnly: o.readOnly, ConnectTimeout: o.timeout})
	if err != nil {
		return err
	}
	defer dev.Close()
	actx, cancel := context.WithTimeout(ctx, o.timeout)
	a, err := attach.Attach(actx, dev, attach.Options{
		Dir: reg.Mountpoint(o.name), Name: o.name, ReadOnly: o.readOnly, Logger: log, Mode: mode,
	})
	cancel()
	if err != nil {
		return err
	}
	detach := func() error {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), attach.CloseTimeout)
		defer cancel()
		return errors.Join(a.Close(cctx), reg.Remove(o.name))
	}
	st := attach.State{Name: o.name, PID: os.Getpid(), URL: o.url, Mode: a.Mode().String(), File: a.File(), Device: a.Device()}
	if a.File() != "" {
		st.Mountpoint = reg.Mountpoint(o.name)
	}
	if err := reg.Write(st); err != nil {
		return errors.Join(err, detach())
	}
	fmt.Fprintln(stdout, a.Device())
	if err := attach.NotifyReady(a.Device()); err != nil {
		return errors.Join(err, detach())
	}
	<-ctx.Done()
	log.Info("stopping: detaching", "device", a.Device())
	return detach()
}

// attachBackground runs dst attach --foreground as a background process
// (attach.Registry.StartBackground) and prints its device.
func attachBackground(ctx context.Context, o *attachFlags, reg attach.Registry, stdout io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	args := []string{"attach", "--foreground", "--url", o.url, "--name", o.name, "--state-dir", o.stateDir,
		"--read-only=" + strconv.FormatBool(o.readOnly), "--mode", o.mode, "--timeout", o.timeout.String(), "--log-level", o.logLevel}
	ready := o.timeout + 15*time.Second // the connect, then mount and loop device
	dev, err := reg.StartBackground(ctx, o.name, exe, args, ready)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, dev)
	return nil
}

// detachFlags are the flags of dst detach.
type detachFlags struct {
	name     string
	device   string
	stateDir string
	timeout  time.Duration
	logLevel string
}

func setupDetach(stdout, stderr io.Writer) (*flag.FlagSet, func(context.Context) error) {
	o := &detachFlags{}
	fs := flag.NewFlagSet("detach", flag.ContinueOnError)
	fs.StringVar(&o.name, "name", "", "`NAME` of the attachment (default dst0 unless --device is given)")
	fs.StringVar(&o.device, "device", "", "detach the attachment of block `DEVICE` (e.g. /dev/loop3) instead")
	fs.StringVar(&o.stateDir, "state-dir", "/run/dst", "`DIR` of state files, as given to dst attach")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "how long the attach process may take to stop before it is killed (a `DURATION`)")
	fs.StringVar(&o.logLevel, "log-level", "info", "log `LEVEL`: debug, info, warn or error")
	return fs, func(ctx context.Context) error { return runDetach(ctx, o, stdout, stderr) }
}

// runDetach stops the attachment and prints what it detached.
func runDetach(ctx context.Context, o *detachFlags, stdout, stderr io.Writer) error {
	switch {
	case o.name != "" && o.device != "":
		return usagef("give --name or --device, not both")
	case o.stateDir == "":
		return usagef("--state-dir is empty")
	case o.timeout <= 0:
		return usagef("--timeout %v: must be positive", o.timeout)
	}
	log, err := newLogger(stderr, o.logLevel)
	if err != nil {
		return err
	}
	reg := attach.Registry{Dir: o.stateDir}
	name := o.name
	if o.device != "" {
		s, err := reg.Find(o.device)
		if err != nil {
			return err
		}
		name = s.Name
	}
	if name == "" {
		name = "dst0"
	}
	dctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	s, err := reg.Detach(dctx, name, log)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "detached %s (%s)\n", s.Device, name)
	return nil
}
