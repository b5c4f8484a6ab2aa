package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strconv"
	"time"

	"dst/storage/admin"
	"dst/storage/config"
)

var memberCommand = command{
	name:    "member",
	summary: "replace, add, remove, suspend or resume a member of a running storage",
	help: `Change a member of a running 'dst serve' through its admin address.

  dst member replace [--admin ADDR] [--force] INDEX URL
      The node at URL (nbd://HOST:PORT/EXPORT, or a file path) takes member
      INDEX's position while the storage serves: the member leaves service
      (recorded on every member first), the new node gets a new member id
      (recorded before it receives anything) and is copied whole from an
      in-sync replica, allocated data only where block status is known; it
      joins when the copy is complete. 'dst status' shows the copy's
      progress and ETA. A member without an in-sync replica (under no
      mirror, or its replicas out of sync) cannot be replaced; a member in
      sync needs --force, as does a node that carries another dst
      storage's superblock. Then change the member's URL in the config:
      the next start refuses the old medium at that position and says so.
  dst member add [--admin ADDR] --mirror PATH [--force] URL
      Add the node at URL as the last replica of the mirror at PATH ("/"
      is the root, "/1" the root's second child, "/1/0" that one's first)
      while the storage serves. Client requests pause while the storage is
      stopped cleanly and assembled with the new membership over the same
      nodes (recorded on every member at a new generation before anything
      is served; typically milliseconds); the new replica is then copied
      whole in the background and joins when done. It must answer, be at
      least as large as its mirror, and offer what the storage offers
      (TRIM); one carrying another dst storage needs --force.
  dst member remove [--admin ADDR] INDEX
      Remove mirror replica INDEX the same way; the other members are
      renumbered. Refused when it is the last in-sync replica of its
      data. A member removed is never taken back as in sync: added again
      it is copied whole.
      After add or remove, name the printed layout in the config's storage:
      a start with the old one changes the membership back (it removes
      the replica added, or adds the one removed and copies it whole).
  dst member suspend [--admin ADDR] INDEX
      Take member INDEX out of service for maintenance (its replicas stand
      in; the regions written meanwhile are recorded).
  dst member resume [--admin ADDR] INDEX
      Bring a suspended member back; it catches up in the background.

It exits 0 when the storage took the change, 1 when it refused (the reason
is printed), 2 on a usage error.

Examples:
  dst member replace --admin 127.0.0.1:10810 1 nbd://10.0.0.7:10809/disk
  dst member add --mirror / nbd://10.0.0.8:10809/disk
  dst member remove 0
  dst member suspend 0`,
	setup: setupMember,
	args:  true,
}

// memberFlags are the flags of dst member.
type memberFlags struct {
	admin   string
	force   bool
	mirror  string
	timeout time.Duration
}

func setupMember(stdout, _ io.Writer) (*flag.FlagSet, func(context.Context) error) {
	o := &memberFlags{}
	fs := flag.NewFlagSet("member", flag.ContinueOnError)
	fs.StringVar(&o.admin, "admin", config.DefaultAdmin, "admin `ADDR` of the storage (HOST:PORT or an http:// URL)")
	fs.BoolVar(&o.force, "force", false, "replace: also a member in sync, or over another dst storage's superblock; add: over another dst storage's superblock")
	fs.StringVar(&o.mirror, "mirror", "", "add: the `PATH` of the mirror to grow (\"/\" the root, \"/1\" its second child)")
	fs.DurationVar(&o.timeout, "timeout", time.Minute, "give up after `DURATION`")
	return fs, func(ctx context.Context) error { return runMember(ctx, fs, o, stdout) }
}

func runMember(ctx context.Context, fs *flag.FlagSet, o *memberFlags, stdout io.Writer) error {
	args := fs.Args()
	if len(args) == 0 {
		return usagef("name an action: replace, add, remove, suspend or resume")
	}
	action := args[0]
	// Flags may follow the action: dst member replace --force 1 URL.
	if err := fs.Parse(args[1:]); err != nil {
		return usagef("%v", err)
	}
	args = fs.Args()
	want := map[string]int{"replace": 2, "add": 1, "remove": 1, "suspend": 1, "resume": 1}
	n, ok := want[action]
	switch {
	case !ok:
		return usagef("unknown action %q: want replace, add, remove, suspend or resume", action)
	case len(args) != n && action == "replace":
		return usagef("replace takes INDEX URL, got %d arguments", len(args))
	case len(args) != n && action == "add":
		return usagef("add takes URL (and --mirror PATH), got %d arguments", len(args))
	case action == "add" && o.mirror == "":
		return usagef("add needs --mirror PATH: the mirror to grow (\"/\" when the storage is one mirror)")
	case action != "add" && o.mirror != "":
		return usagef("--mirror is for add")
	case len(args) != n:
		return usagef("%s takes INDEX, got %d arguments", action, len(args))
	case o.admin == "":
		return usagef("--admin is empty")
	case o.timeout <= 0:
		return usagef("--timeout %v: must be positive", o.timeout)
	}
	i := -1
	if action != "add" {
		var err error
		if i, err = strconv.Atoi(args[0]); err != nil || i < 0 {
			return usagef("member index %q: not a number", args[0])
		}
	} else if args[0] == "" {
		return usagef("the URL to add is empty")
	}
	c, err := admin.NewClient(o.admin, nil)
	if err != nil {
		return usagef("--admin %q: %v", o.admin, err)
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	switch action {
	case "add", "remove":
		var res admin.ChangeResult
		if action == "add" {
			res, err = c.AddMember(ctx, o.mirror, args[0], o.force)
		} else {
			res, err = c.RemoveMember(ctx, i)
		}
		if err != nil {
			if res.Layout != "" {
				fmt.Fprintf(stdout, "the storage serves as %s\n", res.Layout)
			}
			return err
		}
		if action == "add" {
			fmt.Fprintf(stdout, "member %d (%s) added at generation %d; it is copied whole from an in-sync replica (see dst status)\n",
				res.Member, res.URL, res.Generation)
		} else {
			fmt.Fprintf(stdout, "member %d (%s) removed at generation %d; the members after it are renumbered\n", res.Member, res.URL, res.Generation)
		}
		fmt.Fprintf(stdout, "client requests paused for %s\n", time.Duration(res.PausedSeconds*float64(time.Second)).Round(time.Microsecond))
		fmt.Fprintf(stdout, "the storage is %s now: name it so in the config before the next start\n", res.Layout)
	case "replace":
		if args[1] == "" {
			return usagef("the replacement URL is empty")
		}
		if err := c.Replace(ctx, i, args[1], o.force); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "member %d is %s now; it is copied whole from an in-sync replica (see dst status)\n", i, args[1])
		fmt.Fprintf(stdout, "change member %d's URL in the config to %s before the next start\n", i, args[1])
	case "suspend":
		if err := c.Suspend(ctx, i); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "member %d suspended\n", i)
	case "resume":
		if err := c.Resume(ctx, i); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "member %d resuming; it catches up in the background\n", i)
	}
	return nil
}
