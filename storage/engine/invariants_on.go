//go:build invariants

package engine

// invariantsOn turns on the expensive self-checks (invariants.go): build
// with -tags invariants.
const invariantsOn = true
