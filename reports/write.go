package reports

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// File names in a run's report directory.
const (
	HTMLFile    = "report.html"
	SummaryFile = "summary.json"
	JUnitFile   = "junit.xml"
	EventsFile  = "events.jsonl" // written live by EventLog, not by Write
)

// Write renders report.html, summary.json and junit.xml for the run into
// dir, creating dir if needed. Each file is written to a temporary name and
// renamed, so a reader never sees half a report. It writes every file it
// can and returns the errors of those it could not, joined.
func Write(dir string, run *Run) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("reports: create report dir: %w", err)
	}
	return errors.Join(
		WriteFile(filepath.Join(dir, HTMLFile), run, WriteHTML),
		WriteFile(filepath.Join(dir, SummaryFile), run, WriteSummary),
		WriteFile(filepath.Join(dir, JUnitFile), run, WriteJUnit),
	)
}

// WriteFile renders the run with render (WriteHTML, WriteSummary or
// WriteJUnit) into path, through a temporary file in the same directory
// that is renamed into place once complete.
func WriteFile(path string, run *Run, render func(io.Writer, *Run) error) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("reports: write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 64<<10)
	if err := render(bw, run); err != nil {
		return fmt.Errorf("reports: write %s: %w", path, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("reports: write %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("reports: write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("reports: write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("reports: write %s: %w", path, err)
	}
	return nil
}
