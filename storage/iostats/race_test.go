//go:build race

package iostats_test

const raceEnabled = true
