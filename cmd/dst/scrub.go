package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"

	"dst/internal/size"
	"dst/storage/admin"
	"dst/storage/config"
	"dst/storage/engine"
)

var scrubCommand = command{
	name:    "scrub",
	summary: "compare the replicas of a running storage, and repair them",
	help: `Ask a running 'dst serve' to compare the replicas of each of its mirrors
region by region (DRBD's verify, md's check), through its admin address,
and print every range where a replica differs from the first in-sync one,
with the mirror, the child and its members. With --repair the differing
ranges are rewritten from that first replica. Client writes go on meanwhile:
a region is compared while no write to it runs, so a write never shows as
a difference. --rate bounds the bytes read per second over all replicas.

It exits 0 when the replicas agree (or every difference was repaired), 1
when differences remain, 2 on a usage error.

Examples:
  dst scrub --admin 127.0.0.1:10810
  dst scrub --admin 127.0.0.1:10810 --repair --rate 200MiB`,
	setup: setupScrub,
}

// scrubFlags are the flags of dst scrub.
type scrubFlags struct {
	admin   string
	repair  bool
	rate    string
	json    bool
	timeout time.Duration
}

func setupScrub(stdout, _ io.Writer) (*flag.FlagSet, func(context.Context) error) {
	o := &scrubFlags{}
	fs := flag.NewFlagSet("scrub", flag.ContinueOnError)
	fs.StringVar(&o.admin, "admin", config.DefaultAdmin, "admin `ADDR` of the storage (HOST:PORT or an http:// URL)")
	fs.BoolVar(&o.repair, "repair", false, "rewrite differing ranges from the first in-sync replica")
	fs.StringVar(&o.rate, "rate", "unlimited", "read at most `BYTES` per second over all replicas (\"unlimited\" lifts it)")
	fs.BoolVar(&o.json, "json", false, "print the result as JSON")
	fs.DurationVar(&o.timeout, "timeout", 24*time.Hour, "give up after `DURATION`")
	return fs, func(ctx context.Context) error { return runScrub(ctx, o, stdout) }
}

// errDiffer is dst scrub's exit status 1: replicas still differ.
var errDiffer = errors.New("replicas differ")

func runScrub(ctx context.Context, o *scrubFlags, stdout io.Writer) error {
	if o.admin == "" {
		return usagef("--admin is empty")
	}
	if o.timeout <= 0 {
		return usagef("--timeout %v: must be positive", o.timeout)
	}
	var rate int64
	if o.rate != "unlimited" && o.rate != "0" {
		n, err := size.Parse(strings.TrimSuffix(o.rate, "/s"))
		if err != nil || n <= 0 {
			return usagef("--rate %q: a positive size per second (200MiB) or unlimited", o.rate)
		}
		rate = n
	}
	c, err := admin.NewClient(o.admin, nil)
	if err != nil {
		return usagef("--admin %q: %v", o.admin, err)
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	res, err := c.Scrub(ctx, o.repair, rate)
	if res == nil {
		return fmt.Errorf("no scrub from %s: %w", o.admin, err)
	}
	if o.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if jerr := enc.Encode(res); jerr != nil {
			return jerr
		}
	} else if perr := printScrub(stdout, res); perr != nil {
		return perr
	}
	if err != nil {
		return err
	}
	if res.MismatchCount > 0 && !res.Repair {
		return errDiffer // with --repair, a failed repair is err above
	}
	return nil
}

// printScrub prints a scrub result as text.
func printScrub(w io.Writer, res *engine.ScrubResult) error {
	took := res.Finished.Sub(res.Started).Round(time.Millisecond)
	fmt.Fprintf(w, "scrub       %d regions compared, %d skipped (fewer than two in-sync replicas), %s read in %v\n",
		res.Regions, res.Skipped, humanize.IBytes(uint64(max(res.BytesRead, 0))), took)
	if res.DigestedBytes > 0 {
		fmt.Fprintf(w, "digests     %s of it compared by the digests the members' nodes computed (%s of digests sent instead)\n",
			humanize.IBytes(uint64(res.DigestedBytes)), humanize.IBytes(uint64(max(res.DigestBytes, 0))))
	}
	if res.MismatchCount == 0 {
		fmt.Fprintln(w, "result      the replicas agree")
		return nil
	}
	verb := "differ"
	if res.Repair {
		verb = "differed (repaired)"
	}
	fmt.Fprintf(w, "result      %d ranges %s\n\n", res.MismatchCount, verb)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MIRROR\tCHILD\tMEMBERS\tSOURCE\tOFFSET\tLENGTH\tREPAIRED")
	for _, m := range res.Mismatches {
		fmt.Fprintf(tw, "%d\t%d\t%v\t%d\t%d\t%d\t%v\n", m.Mirror, m.Child, m.Members, m.Source, m.Offset, m.Length, m.Repaired)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if n := res.MismatchCount - len(res.Mismatches); n > 0 {
		fmt.Fprintf(w, "(and %d more)\n", n)
	}
	return nil
}
