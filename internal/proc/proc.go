// Package proc starts and watches the child processes of dst, its harness
// and its tests: one Process per child, its output appended to a log file,
// complete lines of its standard output handed to whoever waits for a
// ready line, one goroutine that reaps it (so it never becomes a zombie),
// and the ways to signal, stop, kill and quote it. A Daemon is a child in
// its own session that reports readiness on a pipe and then outlives its
// parent (dst attach); StopPID and Gone handle processes that are not the
// caller's children at all (daemons known by a PID file).
//
// It imports no testing, so production packages use it too.
package proc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Bounds of process handling.
const (
	// ReapTimeout bounds the wait for a killed process to be reaped, and
	// for a process to exit on a signal it exits on (ExitOn).
	ReapTimeout = 10 * time.Second
	// WaitDelay is the default Options.WaitDelay.
	WaitDelay = 2 * time.Second
	// tailBytes is how much of a log an error quotes.
	tailBytes = 2 << 10
	// queuedLines is how many lines are kept for a WaitLines to come;
	// later ones are dropped until it reads them.
	queuedLines = 8
)

// ErrExited means the process exited (and was reaped) before it printed
// what WaitLines waited for.
var ErrExited = errors.New("exited")

// Options say how Start runs a process. The zero value of each field is
// documented with it; only Argv and Log are required.
type Options struct {
	// Argv is the program (a path or a name looked up in PATH) and its
	// arguments.
	Argv []string
	// Log is the file the process's standard output and error are
	// appended to (created if missing). Start and the reap goroutine mark
	// the start and the exit in it with lines beginning with "# ", unless
	// Daemon is set (a daemon's log is its own).
	Log string
	// Name names the process in errors; empty means the base name of
	// Argv[0].
	Name string
	// Output, if not nil, receives a copy of the output too (a test's
	// log). Standard output and error are written to it from two
	// goroutines, one Write at a time. Not allowed with Daemon.
	Output io.Writer
	// Env is appended to the caller's environment; nil adds nothing.
	Env []string
	// Dir is the working directory; empty means the caller's.
	Dir string
	// KillWithParent has the kernel SIGKILL the process when the caller
	// dies (Pdeathsig), so a harness killed before it could stop its
	// processes leaves none behind. Not allowed with Daemon.
	KillWithParent bool
	// Daemon starts the process in its own session (Setsid) with its
	// standard output and error going straight to the log file (no pipe
	// through the caller, so its writes keep working after the caller
	// exited), and a ready pipe as descriptor 3, named by ReadyEnv=3 in
	// its environment: the lines it writes there (with Ready) are what
	// WaitLines reads. Release gives it up once it is ready.
	Daemon bool
	// ReadyEnv names the environment variable that tells a Daemon its
	// ready pipe's descriptor; required with Daemon.
	ReadyEnv string
	// WaitDelay bounds how long the output of an exited process is
	// drained (a child of it could keep the pipe open); zero means
	// WaitDelay.
	WaitDelay time.Duration
}

// Process is a started child process. Its methods may be called from any
// goroutine.
type Process struct {
	name     string
	cmd      *exec.Cmd
	log      string
	logStart int64         // size of the log before Start wrote to it
	lines    chan string   // complete lines for WaitLines
	done     chan struct{} // closed once the process was reaped
	ready    *os.File      // read end of a Daemon's ready pipe
	daemon   bool

	mu       sync.Mutex
	stopped  bool // SIGSTOP sent and no SIGCONT since
	exitText string
}

// Start starts the process described by o; it does not wait for anything
// but the fork and exec. From then on one goroutine reaps it and records
// how it ended.
func Start(o Options) (*Process, error) {
	if len(o.Argv) == 0 || o.Log == "" {
		panic("proc: Start needs Argv and Log")
	}
	if o.Daemon && (o.ReadyEnv == "" || o.Output != nil || o.KillWithParent) {
		panic("proc: a Daemon needs ReadyEnv, and takes no Output or KillWithParent")
	}
	name := o.Name
	if name == "" {
		name = filepath.Base(o.Argv[0])
	}
	f, err := os.OpenFile(o.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: log: %w", name, err)
	}
	logStart, _ := f.Seek(0, io.SeekEnd)
	p := &Process{name: name, log: o.Log, logStart: logStart, daemon: o.Daemon,
		lines: make(chan string, queuedLines), done: make(chan struct{})}
	cmd := exec.Command(o.Argv[0], o.Argv[1:]...)
	cmd.Dir = o.Dir
	if o.Env != nil {
		cmd.Env = append(os.Environ(), o.Env...)
	}
	cmd.WaitDelay = o.WaitDelay
	if cmd.WaitDelay == 0 {
		cmd.WaitDelay = WaitDelay
	}
	var readyW *os.File
	if o.Daemon {
		cmd.Stdout, cmd.Stderr = f, f
		if p.ready, readyW, err = os.Pipe(); err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: ready pipe: %w", name, err)
		}
		cmd.ExtraFiles = []*os.File{readyW}
		cmd.Env = append(cmd.Environ(), o.ReadyEnv+"=3")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		fmt.Fprintf(f, "# %s start: %s\n", time.Now().UTC().Format(time.RFC3339Nano), strings.Join(o.Argv, " "))
		out := &output{f: f, also: o.Output}
		cmd.Stdout, cmd.Stderr = &lineSplitter{w: out, lines: p.lines}, out
		if o.KillWithParent {
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		}
	}
	err = cmd.Start()
	if readyW != nil {
		readyW.Close() // the child has its copy; EOF comes when it is gone
	}
	if err != nil {
		f.Close()
		if p.ready != nil {
			p.ready.Close()
		}
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.cmd = cmd
	if o.Daemon {
		f.Close() // the daemon has its copy; nothing more is written here
		f = nil
		go func() {
			io.Copy(&lineSplitter{lines: p.lines}, p.ready) // ends at EOF (the daemon is gone) or Release
			p.ready.Close()
		}()
	}
	go p.reap(f)
	return p, nil
}

// reap waits for the process, records how it ended (in the log, if f is
// not nil) and closes done.
func (p *Process) reap(f *os.File) {
	err := p.cmd.Wait()
	text := p.cmd.ProcessState.String()
	if err != nil && !errors.As(err, new(*exec.ExitError)) {
		text += " (" + err.Error() + ")"
	}
	if f != nil {
		fmt.Fprintf(f, "# %s exit: %s\n", time.Now().UTC().Format(time.RFC3339Nano), text)
		f.Close()
	}
	p.mu.Lock()
	p.exitText = text
	p.mu.Unlock()
	close(p.done)
}

// Name returns the name used in errors.
func (p *Process) Name() string { return p.name }

// Pid returns the process's PID (also once it was reaped: then it may
// belong to another process).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Log returns the path of the log file.
func (p *Process) Log() string { return p.log }

// Done returns a channel closed once the process was reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Alive reports whether the process has not been reaped yet (a stopped
// process is alive).
func (p *Process) Alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Exit describes how the process ended, such as "exit status 1" or
// "signal: killed"; "" while it runs.
func (p *Process) Exit() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitText
}

// ExitCode returns the exit status of a reaped process, -1 if a signal
// ended it or it still runs.
func (p *Process) ExitCode() int {
	if p.Alive() {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Signal sends sig to the process unless it was reaped (then it fails).
// SIGSTOP and SIGCONT are tracked for Stopped.
func (p *Process) Signal(sig syscall.Signal) error {
	if !p.Alive() {
		return fmt.Errorf("%s is not running (%s)", p.name, p.Exit())
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("%s (pid %d): %v: %w", p.name, p.Pid(), sig, err)
	}
	switch sig {
	case syscall.SIGSTOP:
		p.setStopped(true)
	case syscall.SIGCONT:
		p.setStopped(false)
	}
	return nil
}

func (p *Process) setStopped(v bool) {
	p.mu.Lock()
	p.stopped = v
	p.mu.Unlock()
}

// Stopped reports whether SIGSTOP was sent and no SIGCONT since, and the
// process is alive.
func (p *Process) Stopped() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopped && p.Alive()
}

// signalAwake sends sig and, if that worked, SIGCONT, so that a stopped
// process acts on sig; it reports whether sig was sent.
func (p *Process) signalAwake(sig syscall.Signal) bool {
	if err := p.cmd.Process.Signal(sig); err != nil {
		return false // it exited meanwhile
	}
	p.cmd.Process.Signal(syscall.SIGCONT)
	p.setStopped(false)
	return true
}

// Kill sends SIGKILL (which ends a stopped process too) unless the
// process was reaped, and waits until it is, within ReapTimeout.
func (p *Process) Kill() error {
	if p.Alive() {
		p.cmd.Process.Kill() // an error means it exited meanwhile
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(ReapTimeout):
		return fmt.Errorf("%s (pid %d) not reaped %v after SIGKILL", p.name, p.Pid(), ReapTimeout)
	}
}

// ExitOn sends sig (and SIGCONT, should the process be stopped) to a
// process that exits on it at once, and waits until it was reaped; one
// that does not exit within ReapTimeout is killed, and that is an error.
func (p *Process) ExitOn(sig syscall.Signal) error {
	if !p.Alive() {
		return nil
	}
	p.signalAwake(sig)
	select {
	case <-p.done:
		return nil
	case <-time.After(ReapTimeout):
		p.Kill()
		return fmt.Errorf("%s (pid %d) did not exit within %v of %v; killed", p.name, p.Pid(), ReapTimeout, sig)
	}
}

// Terminate sends SIGTERM (and SIGCONT, should the process be stopped),
// waits for the exit until ctx ends, then kills. It returns an error if
// the process had to be killed or exited with a failure status; one that
// was reaped before is left alone.
func (p *Process) Terminate(ctx context.Context) error {
	if !p.Alive() {
		return nil
	}
	p.signalAwake(syscall.SIGTERM)
	select {
	case <-p.done:
		if !p.cmd.ProcessState.Success() {
			return fmt.Errorf("%s (pid %d) exited with %s after SIGTERM; log %s", p.name, p.Pid(), p.Exit(), p.log)
		}
		return nil
	case <-ctx.Done():
	}
	if err := p.Kill(); err != nil {
		return err
	}
	return fmt.Errorf("%s (pid %d) did not exit after SIGTERM (%w), killed; log %s", p.name, p.Pid(), ctx.Err(), p.log)
}

// WaitLines waits until the process printed a line starting with each of
// prefixes, in order, and returns what followed each prefix, spaces
// trimmed. The lines are those of its standard output, or of its ready
// pipe for a Daemon; lines printed before the exit still count. It fails
// if a line does not start with the prefix awaited, if the process exits
// first (wrapping ErrExited) or when ctx ends (wrapping ctx.Err()); the
// error quotes the end of the log. It does not stop the process.
func (p *Process) WaitLines(ctx context.Context, prefixes ...string) ([]string, error) {
	got := make([]string, 0, len(prefixes))
	for _, prefix := range prefixes {
		var line string
		select {
		case line = <-p.lines:
		case <-p.done:
			select {
			case line = <-p.lines:
			default:
				return nil, fmt.Errorf("%s %w (%s) before printing %q; log %s%s",
					p.name, ErrExited, p.Exit(), prefix, p.log, p.quote())
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("%s (pid %d) did not print %q: %w; log %s%s",
				p.name, p.Pid(), prefix, ctx.Err(), p.log, p.quote())
		}
		rest, ok := strings.CutPrefix(line, prefix)
		if !ok {
			return nil, fmt.Errorf("%s (pid %d): want a line %q, got %q; log %s%s",
				p.name, p.Pid(), prefix, line, p.log, p.quote())
		}
		got = append(got, strings.TrimSpace(rest))
	}
	return got, nil
}

// quote is the end of the log for an error message, on its own lines.
func (p *Process) quote() string {
	if s := p.Tail(tailBytes); s != "" {
		return "\n" + s
	}
	return ""
}

// Release gives up a Daemon that reported ready: its ready pipe is closed
// and the process is no longer the caller's to stop; being in its own
// session, it outlives the caller. The reap goroutine keeps waiting, so
// should it end while the caller still runs it is reaped all the same.
func (p *Process) Release() {
	if !p.daemon {
		panic("proc: Release of a process that is not a Daemon")
	}
	p.ready.Close()
}

// Ready is a Daemon's side of its ready pipe: it writes line and a
// newline to the descriptor the environment variable env names, and
// closes it. A process not started as a Daemon (env unset) has nobody to
// tell, and Ready does nothing.
func Ready(env, line string) error {
	v := os.Getenv(env)
	if v == "" {
		return nil
	}
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return fmt.Errorf("%s=%q: not a descriptor", env, v)
	}
	f := os.NewFile(uintptr(fd), "ready")
	defer f.Close()
	if _, err := fmt.Fprintln(f, line); err != nil {
		return fmt.Errorf("report ready: %w", err)
	}
	return nil
}
