// Package dstbin gives tests that run dst as a process the binary: built
// once per test binary from dst/cmd/dst, or taken from $DST_BINARY.
package dstbin

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", *path, "dst/cmd/dst").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build dst/cmd/dst: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}
