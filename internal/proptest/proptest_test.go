// Params is checked by setting PROP_SEED and PROP_ITER with t.Setenv and
// reading back the gopter parameters and the logged replay line: the seed
// is taken as given, iterations are the default times the multiplier, an
// unset seed is one clock seed per binary, and malformed values are refused.
package proptest

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

// logTB records what Params logs; the embedded TB serves the rest.
type logTB struct {
	testing.TB
	logs []string
}

func (l *logTB) Logf(format string, a ...any) { l.logs = append(l.logs, fmt.Sprintf(format, a...)) }

func TestParamsFromEnvironment(t *testing.T) {
	t.Setenv(SeedEnv, "-42")
	t.Setenv(IterEnv, "3")
	rec := &logTB{TB: t}
	p := Params(rec, 7)
	require.Equal(t, int64(-42), p.Seed())
	require.Equal(t, 21, p.MinSuccessfulTests)
	require.Equal(t, []string{"seed -42 (replay: make prop SEED=-42 PROP_ITER=3), 21 iterations"}, rec.logs)
	require.Equal(t, p.Rng.Int63(), Params(rec, 7).Rng.Int63(), "one seed must give one sequence")
}

func TestParamsDefaults(t *testing.T) {
	t.Setenv(SeedEnv, "")
	t.Setenv(IterEnv, "")
	a, b := Params(t, 5), Params(t, 9)
	require.Equal(t, 5, a.MinSuccessfulTests)
	require.Equal(t, 9, b.MinSuccessfulTests)
	require.Equal(t, clockSeed(), a.Seed())
	require.Equal(t, a.Seed(), b.Seed(), "the properties of one binary share its seed")
	require.Equal(t, fmt.Sprintf("seed %d (replay: make prop SEED=%d)", a.Seed(), a.Seed()), ReplayLine(a.Seed()))
}

func TestMalformedEnvironment(t *testing.T) {
	for _, c := range []struct{ seed, iter, want string }{
		{"12x", "", "PROP_SEED=\"12x\" is not an integer"},
		{"1", "0", "PROP_ITER=\"0\" is not a multiplier"},
		{"1", "-2", "PROP_ITER=\"-2\" is not a multiplier"},
		{"1", "many", "PROP_ITER=\"many\" is not a multiplier"},
	} {
		t.Setenv(SeedEnv, c.seed)
		t.Setenv(IterEnv, c.iter)
		_, _, err := fromEnv()
		require.ErrorContains(t, err, c.want)
	}
}
