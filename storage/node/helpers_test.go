// Test helpers shared by the tests of this package: temporary images,
// byte patterns, bounded contexts and checks for the Debian tools a test
// needs.
package node_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

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
