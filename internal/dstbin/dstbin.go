// Package dstbin gives tests that run dst as a process the binary: built
// once per test binary from dst/cmd/dst, or taken from $DST_BINARY.
package dstbin

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// buildTimeout bounds the go build.
const buildTimeout = 3 * time.Minute

// Run is a TestMain body: it sets *path to the dst binary ($DST_BINARY, or
// one built into a temporary folder), runs the tests, removes what it
// built and returns the exit code.
func Run(m *testing.M, path *string) int {
	if b := os.Getenv("DST_BINARY"); b != "" {
		*path = b
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "dst-test-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	*path = filepath.Join(dir, "dst")
	if err := Build(*path); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// Build builds dst/cmd/dst into path with the given build tags (the
// planted bugs of package bugs need "dstbugs").
func Build(path string, tags ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	args := []string{"build", "-o", path}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	out, err := exec.CommandContext(ctx, "go", append(args, "dst/cmd/dst")...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}
