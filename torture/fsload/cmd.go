package fsload

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// outputMax bounds how much of a tool's output is kept in an error.
const outputMax = 4 << 10

// waitDelay bounds how long a killed command may keep its pipes open.
const waitDelay = 5 * time.Second

// ErrToolMissing is returned (wrapped) when an external program is not
// installed; the message names the Debian package that provides it.
var ErrToolMissing = errors.New("fsload: tool missing")

// CheckTools reports whether every program the workload needs for f is
// installed, naming the missing Debian packages.
func CheckTools(f FS) error {
	var missing []string
	for _, t := range tools(f) {
		if err := lookTool(t); err != nil {
			missing = append(missing, fmt.Sprintf("%s (Debian package %s)", t.name, t.pkg))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w for %v: %s", ErrToolMissing, f, strings.Join(missing, ", "))
	}
	return nil
}

// lookTool finds t on PATH or in the sbin directories, which are not on
// every user's PATH.
func lookTool(t tool) error {
	if _, err := exec.LookPath(t.name); err == nil {
		return nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		if st, err := os.Stat(dir + "/" + t.name); err == nil && st.Mode().IsRegular() {
			return nil
		}
	}
	return fmt.Errorf("%w: %s (install Debian package %s)", ErrToolMissing, t.name, t.pkg)
}

// toolPath returns the path to run t with.
func toolPath(t tool) string {
	if p, err := exec.LookPath(t.name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if _, err := os.Stat(dir + "/" + t.name); err == nil {
			return dir + "/" + t.name
		}
	}
	return t.name
}

// CommandError is a failed external command: what ran, how it ended and the
// first outputMax bytes of its combined stdout and stderr.
type CommandError struct {
	Args     []string
	ExitCode int // -1 when it did not exit normally (killed, not started)
	Output   string
	Err      error
}

func (e *CommandError) Error() string {
	out := strings.TrimSpace(e.Output)
	if out == "" {
		out = "(no output)"
	}
	return fmt.Sprintf("%s: exit %d: %v\n%s", strings.Join(e.Args, " "), e.ExitCode, e.Err, out)
}

func (e *CommandError) Unwrap() error { return e.Err }

// runTool runs t with args bounded by ctx and returns its combined output
// (truncated to outputMax). A missing tool, a non-zero exit or a timeout is a
// *CommandError carrying the output.
func runTool(ctx context.Context, t tool, args ...string) (string, error) {
	if err := lookTool(t); err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, toolPath(t), args...)
	cmd.WaitDelay = waitDelay
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var buf limitedBuffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	err := cmd.Run()
	out := buf.String()
	if err == nil {
		return out, nil
	}
	ce := &CommandError{Args: append([]string{t.name}, args...), ExitCode: -1, Output: out, Err: err}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Exited() {
		ce.ExitCode = ee.ExitCode()
	}
	if ctx.Err() != nil {
		ce.Err = fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return out, ce
}

// limitedBuffer keeps the first outputMax bytes written to it and counts the
// rest, so a chatty tool cannot grow memory without bound.
type limitedBuffer struct {
	buf     bytes.Buffer
	dropped int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	room := outputMax - b.buf.Len()
	if room >= len(p) {
		b.buf.Write(p)
		return len(p), nil
	}
	if room > 0 {
		b.buf.Write(p[:room])
	}
	b.dropped += len(p) - max(room, 0)
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	if b.dropped == 0 {
		return b.buf.String()
	}
	return fmt.Sprintf("%s\n[... %d more bytes of output dropped]", b.buf.String(), b.dropped)
}
