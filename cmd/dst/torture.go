package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"dst/scenarios"
	"dst/torture"
	"dst/torture/scenario"
)

var tortureCommand = command{
	name:    "torture",
	summary: "run a torture scenario: real filesystems and raw sectors on a storage whose nodes fail",
	help: `Run a scenario of the torture harness: start its nodes (dst export) and
its engine (dst serve) as processes of their own, attach the storage to
this kernel (FUSE file and loop device, or /dev/nbdX), and loop mkfs,
mount, write, sync, umount, fsck, mount, verify on ext4, xfs and btrfs,
plus raw self-describing sectors aimed at node and page boundaries, while
a seeded schedule kills, hangs, replaces, suspends and cuts the nodes.
Every byte is checked; mirrors must converge after each fault.

The run's folder (under --out) holds report.html, summary.json,
junit.xml, events.jsonl and, on failure, a bundle with the seed, the
expected state, the engine and node logs and the command that replays it.
The same --seed replays the same schedule and the same data.

Needs root, /dev/fuse, losetup and the filesystem tools ('make deps').
Exit status: 0 when the run passed, 1 when it failed or could not run.

Embedded scenarios: ` + strings.Join(scenarios.Names(), ", ") + `

Examples:
  dst torture --scenario smoke
  dst torture --scenario overnight --duration 8h --keep-going
  dst torture --scenario mirror-failover --seed 42 --cycles 3
  dst torture --file my-scenario.yaml`,
	setup: setupTorture,
}

type tortureFlags struct {
	scenario  string
	file      string
	seed      string
	duration  time.Duration
	cycles    int
	out       string
	keepGoing bool
	keepWork  bool
	list      bool
	logLevel  string
}

func setupTorture(stdout, stderr io.Writer) (*flag.FlagSet, func(context.Context) error) {
	o := &tortureFlags{}
	fs := flag.NewFlagSet("torture", flag.ContinueOnError)
	fs.StringVar(&o.scenario, "scenario", "smoke", "the embedded scenario `NAME` to run")
	fs.StringVar(&o.file, "file", "", "run the scenario in `FILE` instead of an embedded one")
	fs.StringVar(&o.seed, "seed", "", "the run's `SEED` (a positive number); default: a new one, printed")
	fs.DurationVar(&o.duration, "duration", 0, "run this `LONG` instead of the scenario's duration")
	fs.IntVar(&o.cycles, "cycles", 0, "stop after `N` cycles (0: the scenario decides)")
	fs.StringVar(&o.out, "out", "out/torture", "the `FOLDER` under which the run's report folder is made")
	fs.BoolVar(&o.keepGoing, "keep-going", false, "continue after a failure instead of stopping")
	fs.BoolVar(&o.keepWork, "keep-work", false, "keep the node images after a passing run")
	fs.BoolVar(&o.list, "list", false, "list the embedded scenarios and exit")
	fs.StringVar(&o.logLevel, "log-level", "warn", "harness log `LEVEL` on standard error: debug, info, warn or error")
	return fs, func(ctx context.Context) error { return runTorture(ctx, o, stdout, stderr) }
}

func runTorture(ctx context.Context, o *tortureFlags, stdout, stderr io.Writer) error {
	if o.list {
		for _, name := range scenarios.Names() {
			sc, err := scenarios.Lookup(name)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%-16s %-8v %s\n", name, sc.Duration, sc.Description)
		}
		return nil
	}
	log, err := newLogger(stderr, o.logLevel)
	if err != nil {
		return err
	}
	var seed uint64
	if o.seed != "" {
		if seed, err = strconv.ParseUint(o.seed, 10, 63); err != nil || seed == 0 {
			return usagef("--seed %q: want a positive number", o.seed)
		}
	}
	if o.duration < 0 || o.cycles < 0 {
		return usagef("--duration and --cycles cannot be negative")
	}
	var sc *scenario.Scenario
	source := "--scenario " + o.scenario
	if o.file != "" {
		data, err := os.ReadFile(o.file)
		if err != nil {
			return err
		}
		if sc, err = scenario.Parse(o.file, data); err != nil {
			return err
		}
		source = "--file " + o.file
	} else if sc, err = scenarios.Lookup(o.scenario); err != nil {
		return usagef("%v", err)
	}
	bin, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the dst binary: %w", err)
	}
	if seed == 0 {
		seed = torture.NewSeed()
	}
	replay := fmt.Sprintf("%s torture %s --seed %d", bin, source, seed)
	if o.duration > 0 {
		replay += " --duration " + o.duration.String()
	}
	if o.cycles > 0 {
		replay += fmt.Sprintf(" --cycles %d", o.cycles)
	}
	fmt.Fprintf(stdout, "torture %s: seed %d\nreplay: %s\n", sc.Name, seed, replay)
	res, err := torture.Run(ctx, torture.Options{
		Scenario: sc, Seed: seed, Duration: o.duration, Cycles: o.cycles, KeepGoing: o.keepGoing,
		Binary: bin, Out: o.out, KeepWork: o.keepWork, Progress: stderr, Logger: log, Replay: replay,
	})
	if res != nil {
		run := res.Run
		c := run.Counters
		fmt.Fprintf(stdout, "torture %s: %s after %v: %d cycles, %d faults, %d bytes written, %d bytes verified\n",
			sc.Name, strings.ToUpper(run.Result.String()), run.Duration().Round(time.Second), c.Cycles, c.FaultsInjected,
			c.BytesWritten, c.BytesVerified)
		for _, f := range run.Failures {
			fmt.Fprintf(stdout, "  FAILED cycle %d %s: %s\n", f.Cycle, f.Phase, f.Message)
			for _, d := range f.Diagnosis {
				fmt.Fprintf(stdout, "    %s\n", d)
			}
			if f.Bundle != "" {
				fmt.Fprintf(stdout, "    bundle: %s\n", f.Bundle)
			}
		}
		fmt.Fprintf(stdout, "report: %s\n", filepath.Join(res.Dir, "report.html"))
	}
	if errors.Is(err, torture.ErrFailed) {
		return fmt.Errorf("the run failed (seed %d)", seed)
	}
	return err
}
