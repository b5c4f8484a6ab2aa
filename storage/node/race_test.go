//go:build race

package node_test

// The race detector makes sync.Pool drop objects and instruments memory
// accesses, so allocation counts mean nothing under it; the allocation
// test runs in a separate run without -race.
const raceEnabled = true
