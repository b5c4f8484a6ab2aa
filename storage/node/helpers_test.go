// Test helpers shared by the tests of this package: temporary images,
// byte patterns, bounded contexts and checks for the Debian tools a test
// needs.
package node_test

import (
	"bytes"
)

// pattern returns n bytes of b.
func pattern(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }
