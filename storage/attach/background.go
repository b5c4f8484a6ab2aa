package attach

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"dst/internal/proc"
)

// CloseTimeout bounds the detach of a stopping attach process.
const CloseTimeout = 30 * time.Second

// readyEnv names the descriptor on which a background attach process
// reports its device (one line) once it is ready.
const readyEnv = "DST_ATTACH_READY_FD"

// NotifyReady tells the dst attach that started this process with
// StartBackground that device is ready. In a process not started so it
// does nothing.
func NotifyReady(device string) error { return proc.Ready(readyEnv, device) }

// StartBackground starts the attach process of name — exe with args,
// which serves the attachment in the foreground and calls NotifyReady once
// its device is ready — detached from the caller (in its own session, its
// output appended to LogPath(name)), and waits until it reports its device
// or dies, within ready and ctx. It returns the device and leaves the
// process running. A process that dies first is reported with the last
// lines it logged; one that is not ready in time is stopped (SIGTERM, then
// SIGKILL after CloseTimeout) and what it left is cleaned. The state
// directory must exist (Lock and CleanStale create it).
func (r Registry) StartBackground(ctx context.Context, name, exe string, args []string, ready time.Duration) (string, error) {
	p, err := proc.Start(proc.Options{Name: "the attach process", Argv: append([]string{exe}, args...),
		Log: r.LogPath(name), Daemon: true, ReadyEnv: readyEnv})
	if err != nil {
		return "", err
	}
	wctx, cancel := context.WithTimeout(ctx, ready)
	defer cancel()
	got, err := p.WaitLines(wctx, "")
	switch {
	case err == nil && got[0] != "":
		p.Release()
		return got[0], nil
	case errors.Is(err, proc.ErrExited):
		return "", fmt.Errorf("the attach process failed (%s): %s", p.Exit(), logTail(p))
	case err == nil:
		err = fmt.Errorf("the attach process (pid %d) reported no device; log %s", p.Pid(), p.Log())
	case ctx.Err() != nil:
		err = ctx.Err()
	default:
		err = fmt.Errorf("the attach process (pid %d) was not ready within %v; log %s", p.Pid(), ready, p.Log())
	}
	// Give up: stop it and clean what it left.
	tctx, tcancel := context.WithTimeout(context.WithoutCancel(ctx), CloseTimeout)
	_ = p.Terminate(tctx)
	tcancel()
	cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	defer ccancel()
	return "", errors.Join(err, r.CleanStale(cctx, name, slog.New(slog.DiscardHandler)))
}

// logTail returns the last lines the attach process logged since it
// started, without the "dst attach: " of its error lines, for an error.
func logTail(p *proc.Process) string {
	text := strings.TrimSpace(p.Tail(16 << 10))
	if text == "" {
		return "see " + p.Log()
	}
	lines := strings.Split(text, "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	for i, l := range lines {
		lines[i] = strings.TrimPrefix(l, "dst attach: ")
	}
	return strings.Join(lines, "\n") + " (log " + p.Log() + ")"
}
