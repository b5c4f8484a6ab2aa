package proc

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"
)

// Gone waits until no process has pid, or ctx ends, and reports whether
// it is gone. It polls, since pid need not be the caller's child and then
// there is no exit to wait for; a child of the caller's that exited but
// was not reaped still counts as there.
func Gone(ctx context.Context, pid int) bool {
	for backoff := time.Millisecond; ; backoff = min(2*backoff, 20*time.Millisecond) {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
	}
}

// StopPID ends a process that is not the caller's child (a daemon known by
// a PID file): SIGTERM, then SIGKILL if it is still there when ctx ends,
// after which it waits up to ReapTimeout for it to go. It returns an error
// if it had to kill. The PID of a process long gone may have been reused:
// pass one known to be live.
func StopPID(ctx context.Context, pid int) error {
	if pid <= 1 {
		return fmt.Errorf("pid %d: not a process to stop", pid)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return fmt.Errorf("pid %d: SIGTERM: %w", pid, err)
	}
	if Gone(ctx, pid) {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ReapTimeout)
	defer cancel()
	if !Gone(kctx, pid) {
		return fmt.Errorf("pid %d still there %v after SIGKILL", pid, ReapTimeout)
	}
	return fmt.Errorf("pid %d did not exit after SIGTERM (%w); killed", pid, ctx.Err())
}
