//go:build !invariants

package engine

// invariantsOn is false without -tags invariants: the checks compile away.
const invariantsOn = false
