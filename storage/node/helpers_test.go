// Test helpers shared by the tests of this package: temporary images,
// byte patterns, bounded contexts and checks for the Debian tools a test
// needs.
package node_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/storage/nbd/nbdtest"
)

// needTools skips the test, saying what to install, unless every tool is
// on PATH. With -short (no external tools) it skips.
func needTools(t *testing.T, tools ...string) {
	t.Helper()
	nbdtest.Need(t, tools...)
}

// tempImage returns the path of a new sparse file of size bytes.
func tempImage(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(p)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(size))
	require.NoError(t, f.Close())
	return p
}

// pattern returns n bytes of b.
func pattern(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// testCtx returns a context that ends after d or with the test.
func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
