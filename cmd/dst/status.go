package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"

	"dst/storage/admin"
	"dst/storage/config"
	"dst/storage/engine"
)

var statusCommand = command{
	name:    "status",
	summary: "show the state of a running storage and its members",
	help: `Ask a running 'dst serve' for its status through its admin address and
print it: the storage, then one line per member with its state (in-sync,
resyncing, failed, suspended), its connection, the requests in flight on
it, the regions it misses, and how much resync copied to it. --json prints
the status document as the server sends it (see package dst/storage/admin).

Examples:
  dst status
  dst status --admin 127.0.0.1:10810 --json`,
	setup: setupStatus,
}

// statusFlags are the flags of dst status.
type statusFlags struct {
	admin   string
	json    bool
	timeout time.Duration
}

func setupStatus(stdout, _ io.Writer) (*flag.FlagSet, func(context.Context) error) {
	o := &statusFlags{}
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.StringVar(&o.admin, "admin", config.DefaultAdmin, "admin `ADDR` of the storage (HOST:PORT or an http:// URL)")
	fs.BoolVar(&o.json, "json", false, "print the status as JSON")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "give up after `DURATION`")
	return fs, func(ctx context.Context) error { return runStatus(ctx, o, stdout) }
}

func runStatus(ctx context.Context, o *statusFlags, stdout io.Writer) error {
	if o.admin == "" {
		return usagef("--admin is empty")
	}
	if o.timeout <= 0 {
		return usagef("--timeout %v: must be positive", o.timeout)
	}
	c, err := admin.NewClient(o.admin, nil)
	if err != nil {
		return usagef("--admin %q: %v", o.admin, err)
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	st, body, err := c.Status(ctx)
	if err != nil {
		return fmt.Errorf("no status from %s: %w", o.admin, err)
	}
	if o.json {
		_, err := stdout.Write(body)
		return err
	}
	return printStatus(stdout, &st)
}

// printStatus prints st as a table.
func printStatus(w io.Writer, st *admin.Status) error {
	gen := "-"
	if st.Generation != 0 {
		gen = fmt.Sprint(st.Generation)
	}
	fmt.Fprintf(w, "storage     %s, %s (%d bytes)\n", st.Layout, humanize.IBytes(uint64(max(st.Size, 0))), st.Size)
	fmt.Fprintf(w, "health      %s\n", st.Health)
	fmt.Fprintf(w, "listening   %s, export %q\n", st.Listen, st.Export)
	fmt.Fprintf(w, "generation  %s\n", gen)
	fmt.Fprintf(w, "uptime      %v\n", (time.Duration(st.UptimeSeconds * float64(time.Second))).Round(time.Second))
	fmt.Fprintf(w, "in flight   %d\n", st.InFlight)
	if a := st.Activity; a != nil {
		fmt.Fprintf(w, "activity    %d of %d regions active (%s each), %d metadata writes (%.1f/s)\n",
			a.ActiveRegions, a.MaxRegions, humanize.IBytes(uint64(max(a.RegionSize, 0))), a.MetadataWrites, a.MetadataWritesPerSec)
		if a.CrashResyncRegions > 0 || a.CrashFullCopies > 0 {
			fmt.Fprintf(w, "last start  unclean: %d regions (%s) copied from the activity log, %d members copied whole\n",
				a.CrashResyncRegions, humanize.IBytes(uint64(max(int64(a.CrashResyncRegions)*a.RegionSize, 0))), a.CrashFullCopies)
		}
	}
	if sc := st.Scrub; sc != nil {
		printScrubStatus(w, sc)
	}
	fmt.Fprintln(w)

	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tSTATE\tCONNECTION\tIN FLIGHT\tDIRTY REGIONS\tRESYNCED\tZEROED\tRETRIES\tRECONNECTS\tURL")
	var errs []string
	for _, m := range st.Members {
		conn, retries, reconnects := "local", "-", "-"
		if m.Remote != nil {
			conn = m.Connection
			retries, reconnects = fmt.Sprint(m.Remote.Retries), fmt.Sprint(m.Remote.Reconnects)
		}
		url := m.URL
		if url == "" {
			url = m.Node
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n", m.Index, m.State, conn, m.Pending, m.DirtyRegions,
			humanize.IBytes(uint64(max(m.ResyncedBytes, 0))), humanize.IBytes(uint64(max(m.ResyncZeroedBytes, 0))), retries, reconnects, url)
		if m.LastError != "" {
			errs = append(errs, fmt.Sprintf("member %d: %s", m.Index, m.LastError))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, m := range st.Members {
		if c := m.Copy; c != nil {
			eta := "unknown yet"
			if c.ETASeconds >= 0 {
				eta = (time.Duration(c.ETASeconds * float64(time.Second))).Round(time.Second).String()
			}
			fmt.Fprintf(w, "\nmember %d    copying: %.1f%%, %s done, %s left at %s/s, ETA %s\n", m.Index, c.Percent,
				humanize.IBytes(uint64(c.DoneBytes)), humanize.IBytes(uint64(c.LeftBytes)), humanize.IBytes(uint64(c.BytesPerSecond)), eta)
		}
	}
	if len(errs) > 0 {
		fmt.Fprintf(w, "\nlast errors:\n  %s\n", strings.Join(errs, "\n  "))
	}
	return nil
}

// printScrubStatus prints the scrub lines of the status: the one running,
// the last result, the next scheduled start.
func printScrubStatus(w io.Writer, sc *engine.ScrubStatus) {
	if sc.Running {
		fmt.Fprintf(w, "scrub       running: %d of %d regions compared\n", sc.Done, sc.Total)
	}
	if l := sc.Last; l != nil {
		what := "the replicas agreed"
		switch {
		case l.Error != "":
			what = "ended early: " + l.Error
		case l.MismatchCount > 0 && l.Repair:
			what = fmt.Sprintf("%d ranges differed (repaired)", l.MismatchCount)
		case l.MismatchCount > 0:
			what = fmt.Sprintf("%d ranges differ (dst scrub --repair)", l.MismatchCount)
		}
		fmt.Fprintf(w, "last scrub  %s, %s\n", l.Finished.Format(time.RFC3339), what)
	}
	if sc.Next != nil {
		fmt.Fprintf(w, "next scrub  %s (in %v)\n", sc.Next.Format(time.RFC3339), time.Until(*sc.Next).Round(time.Second))
	}
}
