package config

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"go.yaml.in/yaml/v3"

	"dst/storage/node"
)

// sizeSyntax splits a size into its number and its unit.
var sizeSyntax = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?) ?([A-Za-z]*)$`)

// iecUnits are the units a size may carry (lower case), and siHint the IEC
// unit to suggest for an SI one.
var (
	iecUnits = map[string]bool{"": true, "b": true, "kib": true, "mib": true, "gib": true, "tib": true, "pib": true, "eib": true}
	siHint   = map[string]string{"k": "KiB", "kb": "KiB", "m": "MiB", "mb": "MiB", "g": "GiB", "gb": "GiB",
		"t": "TiB", "tb": "TiB", "p": "PiB", "pb": "PiB", "e": "EiB", "eb": "EiB"}
)

// size parses a byte count with an optional IEC unit.
func (p *parser) size(v *yaml.Node, field string) (int64, bool) {
	s, ok := p.scalar(v, field)
	if !ok {
		return 0, false
	}
	n, err := ParseSize(s)
	if err != nil {
		p.errorf(v, field, "%v", err)
		return 0, false
	}
	return n, true
}

// ParseSize parses a size as dst files write it: "65536", "64KiB", "1.5 GiB"; SI units are refused with a
// hint, since storage people read 64KB as 64KiB and humanize as 64000.
func ParseSize(s string) (int64, error) {
	m := sizeSyntax.FindStringSubmatch(strings.TrimSpace(s))
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

// duration parses a Go duration into *dst; with off, "off" stores -1.
func (p *parser) duration(v *yaml.Node, field string, dst *time.Duration, off bool) {
	s, ok := p.scalar(v, field)
	if !ok {
		return
	}
	if off && s == "off" {
		*dst = -1
		return
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil && isDigits(s):
		p.errorf(v, field, "%q is not a duration (use %ss)", s, s)
	case err != nil:
		p.errorf(v, field, "%q is not a duration (like 250ms, 5s, 1m30s)", s)
	case d <= 0:
		p.errorf(v, field, "%s must be positive", s)
	default:
		*dst = d
	}
}

// wholeNumber parses an integer in [lo, hi] into dst; with off, "off"
// stores -1.
func (p *parser) wholeNumber(v *yaml.Node, field string, lo, hi int, off bool, dst *int) {
	s, ok := p.scalar(v, field)
	if !ok {
		return
	}
	if off && s == "off" {
		*dst = -1
		return
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		orOff := ""
		if off {
			orOff = ", or off"
		}
		p.errorf(v, field, "%q is not a whole number from %d to %d%s", s, lo, hi, orOff)
		return
	}
	*dst = n
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// memberKey checks a member URL and returns a key that is equal for two
// URLs naming the same member, and the URL as the storage uses it (a
// relative file path resolved against the config's folder).
func (p *parser) memberKey(u string) (key, resolved string, err error) {
	scheme, _, hasScheme := strings.Cut(u, ":")
	if !hasScheme || strings.ContainsAny(scheme, "/") {
		scheme = ""
	}
	switch scheme {
	case "file":
		path, err := node.FilePath(u)
		if err != nil {
			return "", "", errors.New(urlError(err))
		}
		resolved = u
		if !filepath.IsAbs(path) {
			path = p.path(path)
			resolved = "file:" + path
		}
		return "file:" + path, resolved, nil
	case "nbd", "nbd+unix":
		a, err := node.ParseURL(u)
		if err != nil {
			return "", "", errors.New(urlError(err))
		}
		return a.String(), u, nil
	case "nbds", "nbds+unix":
		return "", "", fmt.Errorf("%q: TLS to nodes is not configurable in dst serve yet; use nbd:// or nbd+unix://", u)
	}
	return "", "", fmt.Errorf("%q is not a member URL (file:/PATH, nbd://HOST[:PORT][/EXPORT] or nbd+unix:///EXPORT?socket=PATH)", u)
}

// urlError drops the sentinel's prefix from a node URL error.
func urlError(err error) string {
	return strings.TrimPrefix(err.Error(), node.ErrBadURL.Error()+": ")
}
