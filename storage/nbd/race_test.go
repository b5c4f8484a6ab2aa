//go:build race

package nbd_test

// The race detector makes sync.Pool drop buffers on purpose, so allocation
// counts mean nothing under it; `make test` runs the allocation tests in a
// separate run without -race.
const raceEnabled = true
