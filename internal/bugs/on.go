//go:build dstbugs

package bugs

import "os"

// Enabled reports whether this binary can plant bugs (built with dstbugs).
const Enabled = true

var planted = os.Getenv(Env)

// On reports whether bug name is the one $DST_PLANTED_BUG plants.
func On(name string) bool { return planted == name }
