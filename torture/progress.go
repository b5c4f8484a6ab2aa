package torture

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/dustin/go-humanize"
)

// sampleInterval is the time between samples of the meter.
const sampleInterval = time.Second

// progressEvery is how often the progress line is printed when it does
// not go to a terminal.
const progressEvery = 30 * time.Second

// sample closes one meter sample per interval into the run and prints
// the progress line, until ctx ends.
func (r *runner) sample(ctx context.Context) {
	t := time.NewTicker(sampleInterval)
	defer t.Stop()
	tty := isTerminal(r.o.Progress)
	var lastPrint time.Time
	for {
		select {
		case <-ctx.Done():
			if tty {
				fmt.Fprintln(r.o.Progress)
			}
			return
		case <-t.C:
		}
		s := r.m.Tick()
		r.mu.Lock()
		r.run.Samples = append(r.run.Samples, s)
		line := r.progressLine(s.T)
		r.mu.Unlock()
		switch {
		case r.o.Progress == nil:
		case tty:
			fmt.Fprintf(r.o.Progress, "\r%s\x1b[K", line)
		case time.Since(lastPrint) >= progressEvery:
			fmt.Fprintln(r.o.Progress, line)
			lastPrint = time.Now()
		}
	}
}

// progressLine describes where the run is. Call with mu held.
func (r *runner) progressLine(now time.Time) string {
	c := r.run.Counters
	left := "ETA " + r.deadline.Sub(now).Truncate(time.Second).String()
	if r.deadline.Before(now) {
		left = "finishing"
	}
	return fmt.Sprintf("[%s seed %d] cycle %s %s | written %s, verified %s | faults %d | %s",
		r.sc.Name, r.seed, r.curCycle, r.curPhase, humanize.IBytes(uint64(c.BytesWritten)),
		humanize.IBytes(uint64(c.BytesVerified)), c.FaultsInjected, left)
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
