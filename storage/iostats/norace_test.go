//go:build !race

package iostats_test

const raceEnabled = false
