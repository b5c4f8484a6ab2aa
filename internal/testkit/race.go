//go:build race

package testkit

// RaceEnabled reports whether the race detector is on: it makes sync.Pool
// drop objects and instruments memory accesses, so allocation counts mean
// nothing under it (make test runs the allocation tests again without it).
const RaceEnabled = true
