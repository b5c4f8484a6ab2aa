package config

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"dst/internal/size"
	"dst/internal/yamlpos"
	"dst/storage/node"
)

// size parses a byte count with an optional IEC unit.
func (p *parser) size(v *yaml.Node, field string) (int64, bool) {
	s, ok := p.scalar(v, field)
	if !ok {
		return 0, false
	}
	n, err := size.Parse(s)
	if err != nil {
		p.errorf(v, field, "%v", err)
		return 0, false
	}
	return n, true
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
	d, err := yamlpos.Duration(s)
	if err != nil {
		p.errorf(v, field, "%v", err)
		return
	}
	*dst = d
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
