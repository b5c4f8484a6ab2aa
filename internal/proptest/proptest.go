// Package proptest gives property and model tests their gopter parameters
// from PROP_SEED and PROP_ITER, logged so a failure replays.
//
// PROP_SEED, if set, seeds every property of the run. Otherwise one seed is
// drawn from the clock per test binary and shared by all its properties,
// so one logged number replays the package.
//
// PROP_ITER, if set, multiplies each property's default number of
// iterations. The default is the caller's and follows its cost (a thousand
// layout mappings, eight engine command sequences), so one knob scales
// cheap and expensive properties alike: unset or 1 is the run `make test`
// does, the nightly job's PROP_ITER=50 runs fifty times as many.
//
// The replay line each property logs, "seed N (replay: make prop SEED=N)"
// with PROP_ITER=K appended when it was set, is the command that runs the
// same sequences again: gopter draws each iteration's values from the seed
// and from the iteration count, so both must match.
package proptest

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/leanovate/gopter"
)

// Environment variables read by Params.
const (
	SeedEnv = "PROP_SEED"
	IterEnv = "PROP_ITER"
)

// clockSeed is the seed of this test binary when PROP_SEED is not set.
var clockSeed = sync.OnceValue(func() int64 { return time.Now().UnixNano() })

// Params returns gopter parameters for one property of t: the seed from
// PROP_SEED (else this binary's clock seed), defaultIters × PROP_ITER
// successful tests (defaultIters alone when PROP_ITER is unset). It logs
// the seed and the replay command, and logs it again when t fails. A
// malformed PROP_SEED or PROP_ITER fails t at once.
func Params(t testing.TB, defaultIters int) *gopter.TestParameters {
	t.Helper()
	if defaultIters < 1 {
		panic(fmt.Sprintf("proptest: default iterations %d, want at least 1", defaultIters))
	}
	seed, scale, err := fromEnv()
	if err != nil {
		t.Fatalf("proptest: %v", err)
	}
	params := gopter.DefaultTestParametersWithSeed(seed)
	params.MinSuccessfulTests = defaultIters * scale
	line := ReplayLine(seed)
	t.Logf("%s, %d iterations", line, params.MinSuccessfulTests)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("failed with %s", line)
		}
	})
	return params
}

// ReplayLine is "seed N (replay: make prop SEED=N)", with PROP_ITER=K
// inside the command when PROP_ITER is set.
func ReplayLine(seed int64) string {
	cmd := fmt.Sprintf("make prop SEED=%d", seed)
	if v := os.Getenv(IterEnv); v != "" {
		cmd += " " + IterEnv + "=" + v
	}
	return fmt.Sprintf("seed %d (replay: %s)", seed, cmd)
}

// fromEnv reads the seed and the iteration multiplier.
func fromEnv() (seed int64, scale int, err error) {
	seed, scale = clockSeed(), 1
	if v := os.Getenv(SeedEnv); v != "" {
		if seed, err = strconv.ParseInt(v, 10, 64); err != nil {
			return 0, 0, fmt.Errorf("%s=%q is not an integer", SeedEnv, v)
		}
	}
	if v := os.Getenv(IterEnv); v != "" {
		if scale, err = strconv.Atoi(v); err != nil || scale < 1 || scale > 1_000_000 {
			return 0, 0, fmt.Errorf("%s=%q is not a multiplier from 1 to 1000000", IterEnv, v)
		}
	}
	return seed, scale, nil
}
