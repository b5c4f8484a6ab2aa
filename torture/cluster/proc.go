package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Bounds of process handling.
const (
	// startTimeout bounds how long a process may take to print its ready
	// lines.
	startTimeout = 20 * time.Second
	// reapTimeout bounds the wait for a killed process to be reaped.
	reapTimeout = 10 * time.Second
	// pipeWait bounds how long the output of an exited process is drained
	// (a child that inherited it could keep it open).
	pipeWait = 2 * time.Second
	// logTail is how much of a log an error quotes.
	logTail = 2 << 10
)

// proc is one OS process the cluster started. Its output is appended to
// a log file; one goroutine reaps it, so it never becomes a zombie, and
// ends with it.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed once the process was reaped

	mu       sync.Mutex
	stopped  bool // SIGSTOP sent and no SIGCONT since
	exitText string
}

// lineSink copies output to the log and hands complete lines to a
// channel while someone listens.
type lineSink struct {
	f       *os.File
	partial []byte
	lines   chan string
}

func (w *lineSink) Write(p []byte) (int, error) {
	w.f.Write(p) // a full disk must not stop the process; the log is best effort
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		line := string(w.partial[:i])
		w.partial = w.partial[i+1:]
		select {
		case w.lines <- line:
		default: // nobody waits for more lines
		}
	}
	if len(w.partial) > 4<<10 {
		w.partial = w.partial[:0] // a line that long is not a ready line
	}
	return len(p), nil
}

// startProc runs argv with output appended to logPath and waits until
// standard output printed a line starting with each of prefixes, in order,
// returning what followed each prefix. It fails (and kills the process)
// if the process exits first or ctx or startTimeout ends first.
func startProc(ctx context.Context, name string, argv []string, logPath string, prefixes []string) (*proc, []string, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster: %s: log: %w", name, err)
	}
	fmt.Fprintf(f, "# %s start: %s\n", time.Now().UTC().Format(time.RFC3339Nano), strings.Join(argv, " "))
	cmd := exec.Command(argv[0], argv[1:]...)
	sink := &lineSink{f: f, lines: make(chan string, 8)}
	cmd.Stdout, cmd.Stderr = sink, f
	cmd.WaitDelay = pipeWait
	// The process dies with the harness even if the harness is killed
	// before it could stop it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("cluster: start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		text := cmd.ProcessState.String()
		if err != nil && !errors.As(err, new(*exec.ExitError)) {
			text += " (" + err.Error() + ")"
		}
		fmt.Fprintf(f, "# %s exit: %s\n", time.Now().UTC().Format(time.RFC3339Nano), text)
		f.Close()
		p.mu.Lock()
		p.exitText = text
		p.mu.Unlock()
		close(p.done)
	}()
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var got []string
	for _, prefix := range prefixes {
		select {
		case line := <-sink.lines:
			rest, ok := strings.CutPrefix(line, prefix)
			if !ok {
				p.kill()
				return nil, nil, fmt.Errorf("cluster: %s (pid %d): want a line %q, got %q; log %s%s",
					name, p.pid(), prefix, line, logPath, tail(logPath))
			}
			got = append(got, strings.TrimSpace(rest))
		case <-p.done:
			return nil, nil, fmt.Errorf("cluster: %s exited (%s) before printing %q; log %s%s",
				name, p.exit(), prefix, logPath, tail(logPath))
		case <-ctx.Done():
			p.kill()
			return nil, nil, fmt.Errorf("cluster: %s (pid %d) did not print %q: %w; log %s%s",
				name, p.pid(), prefix, ctx.Err(), logPath, tail(logPath))
		}
	}
	return p, got, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// alive reports whether the process has not been reaped yet.
func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// exit describes how the process ended ("" while it runs).
func (p *proc) exit() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitText
}

// signal sends sig to the process (by PID) unless it was reaped.
func (p *proc) signal(sig syscall.Signal) error {
	if !p.alive() {
		return fmt.Errorf("cluster: %s is not running (%s)", p.name, p.exit())
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("cluster: %s (pid %d): %v: %w", p.name, p.pid(), sig, err)
	}
	p.mu.Lock()
	switch sig {
	case syscall.SIGSTOP:
		p.stopped = true
	case syscall.SIGCONT:
		p.stopped = false
	}
	p.mu.Unlock()
	return nil
}

// isStopped reports whether SIGSTOP was sent and no SIGCONT since.
func (p *proc) isStopped() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopped && p.alive()
}

// kill sends SIGKILL unless the process was reaped, and waits until it
// is (within reapTimeout).
func (p *proc) kill() error {
	if p.alive() {
		p.cmd.Process.Kill() // an error means it exited meanwhile
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(reapTimeout):
		return fmt.Errorf("cluster: %s (pid %d) not reaped %v after SIGKILL", p.name, p.pid(), reapTimeout)
	}
}

// exitOn sends sig (and SIGCONT, should the process be stopped) to a
// process that exits on it at once, and waits until it was reaped; one
// that does not exit within reapTimeout is killed.
func (p *proc) exitOn(sig syscall.Signal) error {
	if !p.alive() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err == nil {
		p.cmd.Process.Signal(syscall.SIGCONT)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(reapTimeout):
		p.kill()
		return fmt.Errorf("cluster: %s (pid %d) did not exit within %v of %v; killed", p.name, p.pid(), reapTimeout, sig)
	}
}

// terminate sends SIGTERM (and SIGCONT, should it be stopped), waits for
// the exit until ctx ends, then kills. It returns an error if the process
// had to be killed or exited with a failure status.
func (p *proc) terminate(ctx context.Context) error {
	if !p.alive() {
		return nil
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err == nil {
		p.cmd.Process.Signal(syscall.SIGCONT)
	}
	select {
	case <-p.done:
		if !p.cmd.ProcessState.Success() {
			return fmt.Errorf("cluster: %s (pid %d) exited with %s after SIGTERM; log %s",
				p.name, p.pid(), p.exit(), p.log)
		}
		return nil
	case <-ctx.Done():
	}
	if err := p.kill(); err != nil {
		return err
	}
	return fmt.Errorf("cluster: %s (pid %d) did not exit after SIGTERM (%w), killed; log %s",
		p.name, p.pid(), ctx.Err(), p.log)
}

// tail returns the end of a log file for an error message.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > logTail {
		b = b[len(b)-logTail:]
	}
	return "\n" + string(b)
}
