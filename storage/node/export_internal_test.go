package node

// Hooks for the external tests of this package.

// DisableRangeTable switches the range table of r off, so a test can
// prove that it would see overlapping writes in flight without it. Call it
// before the first request.
func DisableRangeTable(r *Remote) { r.noRanges = true }

// RangesInFlight counts the slots of r's range table that are held.
func RangesInFlight(r *Remote) int { return r.ranges.InFlight() }

// IsMemory reports whether f was found on a memory file system (tmpfs,
// ramfs), where TryReadAt and TryWriteAt always serve.
func IsMemory(f *File) bool { return f.memory }
