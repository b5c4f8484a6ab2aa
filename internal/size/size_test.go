// Parse reads what dst's files and flags write and refuses SI units with a
// hint; Format writes sizes Parse reads back exactly — checked by a table
// and a round trip over powers and odd values.
package size_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"dst/internal/size"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "65536": 65536, "64KiB": 64 << 10, "1.5 GiB": 3 << 29, "2b": 2, "1 eib": 1 << 60} {
		n, err := size.Parse(in)
		require.NoError(t, err, in)
		require.Equal(t, want, n, in)
	}
	for in, msg := range map[string]string{"64KB": "(use 64KiB)", "1M": "(use 1MiB)", "1.5": "whole number", "abc": "is not a size",
		"5 furlongs": `unknown unit "furlongs"`, "16EiB": "too large", "-1": "is not a size"} {
		_, err := size.Parse(in)
		require.ErrorContains(t, err, msg, in)
	}
}

func TestFormatRoundTrips(t *testing.T) {
	require.Equal(t, "64KiB", size.Format(64<<10))
	require.Equal(t, "3145851B", size.Format(3145851))
	require.Equal(t, "0B", size.Format(0))
	for _, n := range []int64{1, 512, 4096, 1 << 20, 3<<30 + 1, 5 << 40, 1 << 62} {
		got, err := size.Parse(size.Format(n))
		require.NoError(t, err)
		require.Equal(t, n, got)
	}
}
