// Command dst is the single binary of dst, the distributed network block
// storage. Each subcommand lives in a file of its own and holds flags and
// wiring only; the logic is in the storage packages.
//
// Exit status: 0 on success, 1 when the command failed at run time (a file
// cannot be used, an address cannot be bound), 2 for bad usage (an unknown
// flag, a malformed value, a missing required flag).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// Exit statuses.
const (
	exitOK      = 0
	exitRuntime = 1
	exitUsage   = 2
)

// command is one subcommand, defined in a file of its own.
type command struct {
	name    string
	summary string
	// help is the long description shown above the flags.
	help string
	// setup builds the subcommand's flag set and the function that runs it
	// once the flags are parsed.
	setup func(stdout, stderr io.Writer) (*flag.FlagSet, func(ctx context.Context) error)
	// args: the command takes positional arguments (its run reads them
	// from the flag set).
	args bool
}

// commands lists the subcommands in the order help shows them.
var commands = []command{
	exportCommand,
	serveCommand,
	statusCommand,
	scrubCommand,
	memberCommand,
	attachCommand, detachCommand,
	tortureCommand,
}

// usageError is a bad invocation: it exits with status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// usagef returns a usageError.
func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal a second one kills the process the usual way.
	context.AfterFunc(ctx, stop)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run dispatches args to a subcommand and returns the exit status. It is
// main without the process: tests call it directly.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printUsage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		if len(args) > 1 && args[0] == "help" {
			return run(ctx, []string{args[1], "--help"}, stdout, stderr)
		}
		printUsage(stdout)
		return exitOK
	}
	for _, c := range commands {
		if c.name == args[0] {
			return runCommand(ctx, c, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "dst: unknown command %q\n\n", args[0])
	printUsage(stderr)
	return exitUsage
}

// runCommand parses the flags of c and runs it.
func runCommand(ctx context.Context, c command, args []string, stdout, stderr io.Writer) int {
	fs, do := c.setup(stdout, stderr)
	fs.SetOutput(io.Discard) // errors are printed once, below
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printCommandUsage(stdout, c)
			return exitOK
		}
		fmt.Fprintf(stderr, "dst %s: %v\nRun 'dst %s --help' for usage.\n", c.name, err, c.name)
		return exitUsage
	}
	if fs.NArg() > 0 && !c.args {
		fmt.Fprintf(stderr, "dst %s: unexpected argument %q\nRun 'dst %s --help' for usage.\n", c.name, fs.Arg(0), c.name)
		return exitUsage
	}
	err := do(ctx)
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "dst %s: %v\nRun 'dst %s --help' for usage.\n", c.name, err, c.name)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "dst %s: %v\n", c.name, err)
		return exitRuntime
	}
}

// printUsage prints the usage of dst with the flags of every subcommand.
func printUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage: dst <command> [flags]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun 'dst <command> --help' for the flags of one command.\n")
	for _, c := range commands {
		fmt.Fprintln(w)
		printCommandUsage(w, c)
	}
}

// printCommandUsage prints the summary and the flags of c.
func printCommandUsage(w io.Writer, c command) {
	fs, _ := c.setup(io.Discard, io.Discard)
	fmt.Fprintf(w, "Usage: dst %s [flags]\n\n%s\n\nFlags:\n", c.name, strings.TrimSpace(c.help))
	fs.SetOutput(w)
	fs.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(w, "  --%s", f.Name)
		if name != "" {
			fmt.Fprintf(w, " %s", name)
		}
		fmt.Fprintf(w, "\n    \t%s", strings.ReplaceAll(usage, "\n", "\n    \t"))
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			fmt.Fprintf(w, " (default %s)", f.DefValue)
		}
		fmt.Fprintln(w)
	})
}

// newLogger returns a text logger on w at the named level.
func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// multiFlag is a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string { return strings.Join(*m, " ") }

func (m *multiFlag) Set(v string) error {
	*m = append(*m, v)
	return nil
}
