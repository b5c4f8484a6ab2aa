package torture

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// bundleLogMax bounds each log copied into a failure bundle (its tail is
// kept).
const bundleLogMax = 8 << 20

// bundle writes the failure bundle of a failure in cycle i: what
// reproduces it (seed, replay command), what was expected (the manifest
// and the raw ledger), what was found, and the logs of the engine and
// every node. Its path is recorded in the run's last failure.
func (r *runner) bundle(i int, phase string, cause error, found ...string) string {
	dir := filepath.Join(r.dir, fmt.Sprintf("failure-cycle%04d", max(i, 0)))
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		r.log.Warn("failure bundle", "err", err)
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "dst torture failure\n\nscenario: %s\nseed: %d\ncycle: %d\nphase: %s\n\nreplay:\n  %s\n\nerror:\n  %v\n",
		r.sc.Name, r.seed, i, phase, r.o.Replay, cause)
	if len(found) > 0 {
		b.WriteString("\nwhat was found:\n")
		for _, f := range found {
			fmt.Fprintf(&b, "  %s\n", f)
		}
	}
	b.WriteString("\nfiles:\n  manifest.json     the filesystem workload's expected files (if it ran)\n" +
		"  raw-expected.json the raw workload's ledger and op log (if it ran)\n" +
		"  events.jsonl      the run's event log up to the failure\n  logs/             engine and node logs\n")
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			r.log.Warn("failure bundle", "file", name, "err", err)
		}
	}
	write("README.txt", []byte(b.String()))
	write("replay.sh", []byte("#!/bin/sh\n# Replays the failed run from its seed.\n"+r.o.Replay+"\n"))
	if r.fsw != nil {
		if m, err := r.fsw.Manifest().JSON(); err == nil {
			write("manifest.json", m)
		}
	}
	if data := r.rawExpected(); data != nil {
		write("raw-expected.json", data)
	}
	if err := r.ev.Flush(); err == nil {
		copyTail(filepath.Join(r.dir, "events.jsonl"), filepath.Join(dir, "events.jsonl"), bundleLogMax)
	}
	if r.c != nil {
		for _, l := range r.c.Logs() {
			copyTail(l, filepath.Join(dir, "logs", filepath.Base(l)), bundleLogMax)
		}
	}
	r.mu.Lock()
	if n := len(r.run.Failures); n > 0 && r.run.Failures[n-1].Bundle == "" {
		r.run.Failures[n-1].Bundle = dir
	}
	r.mu.Unlock()
	return dir
}

// copyTail copies at most the last limit bytes of src to dst.
func copyTail(src, dst string, limit int64) {
	in, err := os.Open(src)
	if err != nil {
		return
	}
	defer in.Close()
	if st, err := in.Stat(); err == nil && st.Size() > limit {
		_, _ = in.Seek(st.Size()-limit, io.SeekStart)
	}
	out, err := os.Create(dst)
	if err != nil {
		return
	}
	defer out.Close()
	_, _ = io.Copy(out, io.LimitReader(in, limit))
}
