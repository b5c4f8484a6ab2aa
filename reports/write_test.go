// Write puts the three report files of a run in a directory, complete and
// parseable; this is checked for the empty, passing and failing runs by
// reading each file back. With REPORT_SAMPLE_DIR set, the test also leaves a
// realistic failing run's report there for a person to look at.
package reports

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestWriteAllOutputs(t *testing.T) {
	for name, run := range map[string]*Run{"empty": emptyRun(), "passing": passingRun(), "failing": failingRun(1)} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "nested", "report")
			require.NoError(t, Write(dir, run))
			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			require.ElementsMatch(t, []string{HTMLFile, SummaryFile, JUnitFile}, names, "no temporary file may be left")

			html, err := os.ReadFile(filepath.Join(dir, HTMLFile))
			require.NoError(t, err)
			require.True(t, strings.HasPrefix(string(html), "<!DOCTYPE html>"))
			require.Contains(t, string(html), "</html>")

			f, err := os.Open(filepath.Join(dir, SummaryFile))
			require.NoError(t, err)
			defer f.Close()
			s, err := ReadSummary(f)
			require.NoError(t, err)
			require.Equal(t, run.Scenario, s.Scenario)
			require.Equal(t, run.Result, s.Result)

			j, err := os.ReadFile(filepath.Join(dir, JUnitFile))
			require.NoError(t, err)
			parseJUnit(t, j)
		})
	}
}

func TestWriteSampleReport(t *testing.T) {
	dir := os.Getenv("REPORT_SAMPLE_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	run := failingRun(8)
	require.NoError(t, Write(dir, run))
	st, err := os.Stat(filepath.Join(dir, HTMLFile))
	require.NoError(t, err)
	require.Greater(t, st.Size(), int64(10_000))
	t.Logf("sample report: %s", filepath.Join(dir, HTMLFile))
}

func TestWriteReportsUnwritableDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "plainfile")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	err := Write(filepath.Join(file, "sub"), passingRun())
	require.Error(t, err)
	require.Contains(t, err.Error(), "report dir")
}
