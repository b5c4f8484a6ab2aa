package cluster

import (
	"context"
	"fmt"
	"time"

	"dst/internal/proc"
)

// startTimeout bounds how long a process may take to print its ready
// lines.
const startTimeout = 20 * time.Second

// startProc runs argv with output appended to logPath, killed should the
// harness die first, and waits until standard output printed a line
// starting with each of prefixes, in order, returning what followed each
// prefix. It fails (and kills the process) if the process exits first or
// ctx or startTimeout ends first.
func startProc(ctx context.Context, name string, argv []string, logPath string, prefixes []string) (*proc.Process, []string, error) {
	p, err := proc.Start(proc.Options{Name: name, Argv: argv, Log: logPath, KillWithParent: true})
	if err != nil {
		return nil, nil, fmt.Errorf("cluster: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	got, err := p.WaitLines(ctx, prefixes...)
	if err != nil {
		p.Kill()
		return nil, nil, fmt.Errorf("cluster: %w", err)
	}
	return p, got, nil
}
