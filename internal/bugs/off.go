//go:build !dstbugs

package bugs

// Enabled reports whether this binary can plant bugs (built with dstbugs).
const Enabled = false

// On reports whether bug name is planted: never, in this build.
func On(string) bool { return false }
