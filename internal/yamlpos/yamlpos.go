// Package yamlpos is the kit dst's YAML files are read with — the
// `dst serve` config (storage/config) and the torture scenarios
// (torture/scenario): one document decoded to nodes that keep their
// lines, anchors and aliases refused, every problem collected as an Error
// naming file:line and the field, in line order and bounded, and the
// value syntaxes both files share (durations here, sizes in
// internal/size) with one set of messages.
package yamlpos

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// MaxNesting bounds how deep a document may nest.
const MaxNesting = 64

// Error is one problem of a file, at a line, about a field.
type Error struct {
	File  string
	Line  int
	Field string // dotted path such as storage.members[2].chunk; empty for syntax errors
	Msg   string
}

func (e *Error) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Field, e.Msg)
}

// Errors are every problem found in one file, in line order.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.As find each Error.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// Report collects the errors of one file.
type Report struct {
	File string
	errs Errors
}

// Errorf records a problem at line (1 if unknown) about field.
func (r *Report) Errorf(line int, field, format string, args ...any) {
	r.errs = append(r.errs, &Error{File: r.File, Line: max(line, 1), Field: field, Msg: fmt.Sprintf(format, args...)})
}

// At records a problem at node n (line 1 if n is nil) about field.
func (r *Report) At(n *yaml.Node, field, format string, args ...any) {
	line := 1
	if n != nil {
		line = n.Line
	}
	r.Errorf(line, field, format, args...)
}

// Len is how many problems were recorded.
func (r *Report) Len() int { return len(r.errs) }

// Err returns nil without problems, else Errors sorted by line (stable:
// problems of one line keep their order), at most limit of them and a
// last one saying how many more there were (limit <= 0: all).
func (r *Report) Err(limit int) error {
	if len(r.errs) == 0 {
		return nil
	}
	es := slices.Clone(r.errs)
	slices.SortStableFunc(es, func(a, b *Error) int { return a.Line - b.Line })
	if limit > 0 && len(es) > limit {
		extra := len(es) - limit
		last := es[limit-1]
		es = append(es[:limit:limit], &Error{File: r.File, Line: last.Line, Msg: fmt.Sprintf("and %d more errors", extra)})
	}
	return es
}

var syntaxLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// Decode reads data as one YAML document and returns its root node (the
// document's content). An empty document, or one holding only null,
// returns nil and true: the caller says what the file must hold. Syntax
// errors, a second document, anchors or aliases, and nesting deeper than
// MaxNesting are recorded in r and return false.
func Decode(data []byte, r *Report) (*yaml.Node, bool) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	err := dec.Decode(&doc)
	switch {
	case errors.Is(err, io.EOF):
		return nil, true
	case err != nil:
		syntaxError(err, r)
		return nil, false
	}
	var second yaml.Node
	if err := dec.Decode(&second); !errors.Is(err, io.EOF) {
		if err != nil {
			syntaxError(err, r)
		} else {
			at := &second
			if len(second.Content) > 0 {
				at = second.Content[0]
			}
			r.At(at, "", "a second YAML document; the file holds one")
		}
		return nil, false
	}
	if !noAliases(&doc, 0, r) {
		return nil, false
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) != 1 {
			return nil, true
		}
		root = root.Content[0]
	}
	if IsNull(root) {
		return nil, true
	}
	return root, true
}

// syntaxError records a YAML syntax error at its line.
func syntaxError(err error, r *Report) {
	msg := err.Error()
	if m := syntaxLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		r.Errorf(line, "", "YAML: %s", m[2])
		return
	}
	r.Errorf(1, "", "%s", strings.Replace(msg, "yaml: ", "YAML: ", 1))
}

// noAliases refuses anchors and aliases (and bounds the depth it walks).
func noAliases(n *yaml.Node, depth int, r *Report) bool {
	if depth > MaxNesting {
		r.At(n, "", "nested more than %d levels deep", MaxNesting)
		return false
	}
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		r.At(n, "", "YAML anchors and aliases are not supported; write the value out")
		return false
	}
	for _, c := range n.Content {
		if !noAliases(c, depth+1, r) {
			return false
		}
	}
	return true
}

// IsNull reports whether n is an empty value (nothing, ~ or null).
func IsNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

// Describe names what n is, for messages: "a mapping", "a list",
// "nothing", or the value quoted.
func Describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if IsNull(n) {
			return "nothing"
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "an alias"
}

// Join appends key to a field path.
func Join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// Duration parses a positive Go duration ("250ms", "5s", "1m30s"); a bare
// number gets the hint to add a unit.
func Duration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	switch {
	case err != nil && isDigits(s):
		return 0, fmt.Errorf("%q is not a duration (use %ss)", s, s)
	case err != nil:
		return 0, fmt.Errorf("%q is not a duration (like 250ms, 5s, 1m30s)", s)
	case d <= 0:
		return 0, fmt.Errorf("%s must be positive", s)
	}
	return d, nil
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
