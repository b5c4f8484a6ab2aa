// Package size reads and writes byte counts as dst's files and flags
// spell them: bytes, or a number with an IEC unit ("65536", "64KiB",
// "1.5 GiB"). SI units are refused with the IEC spelling as a hint, since
// storage people read 64KB as 64 KiB and go-humanize as 64000. The config
// file, the scenario files and `dst export --size` all parse with Parse.
package size

import (
	"fmt"
	"math"
	"regexp"
	"strings"

	"github.com/dustin/go-humanize"
)

// syntax splits a size into its number and its unit.
var syntax = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?) ?([A-Za-z]*)$`)

// iecUnits are the units a size may carry (lower case), and siHint the IEC
// unit to suggest for an SI one.
var (
	iecUnits = map[string]bool{"": true, "b": true, "kib": true, "mib": true, "gib": true, "tib": true, "pib": true, "eib": true}
	siHint   = map[string]string{"k": "KiB", "kb": "KiB", "m": "MiB", "mb": "MiB", "g": "GiB", "gb": "GiB",
		"t": "TiB", "tb": "TiB", "p": "PiB", "pb": "PiB", "e": "EiB", "eb": "EiB"}
)

// Parse parses a size: "65536", "64KiB", "1.5 GiB".
func Parse(s string) (int64, error) {
	m := syntax.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, fmt.Errorf("%q is not a size (write bytes, or a number with KiB, MiB, GiB or TiB)", s)
	}
	num, unit := m[1], strings.ToLower(m[2])
	if hint, si := siHint[unit]; si {
		return 0, fmt.Errorf("%q is not a size (use %s%s)", s, num, hint)
	}
	if !iecUnits[unit] {
		return 0, fmt.Errorf("%q is not a size: unknown unit %q (B, KiB, MiB, GiB, TiB, PiB)", s, m[2])
	}
	if (unit == "" || unit == "b") && strings.Contains(num, ".") {
		return 0, fmt.Errorf("%q is not a whole number of bytes", s)
	}
	n, err := humanize.ParseBytes(num + unit)
	if err != nil || n > math.MaxInt64 {
		return 0, fmt.Errorf("%q is not a size: too large", s)
	}
	return int64(n), nil
}

// Format writes n exactly, with the largest IEC unit that divides it:
// 65536 is "64KiB", 3145851 is "3145851B". Parse reads it back.
func Format(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	u := 0
	for u+1 < len(units) && n != 0 && n%1024 == 0 {
		n /= 1024
		u++
	}
	return fmt.Sprintf("%d%s", n, units[u])
}
