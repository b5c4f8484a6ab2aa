package engine

import (
	"fmt"
	"strings"
)

// Kind is the kind of a node of a storage specification.
type Kind string

// Kinds of Spec nodes.
const (
	KindMember Kind = "member"
	KindLinear Kind = "linear"
	KindStripe Kind = "stripe"
	KindMirror Kind = "mirror"
)

// Spec describes a storage as a person writes it (see `dst serve`): a tree
// whose inner nodes are layouts and whose leaves are members.
type Spec struct {
	Kind Kind
	// URL names a member: "file:/path", "nbd://host:port[/export]" or
	// "nbd+unix:///export?socket=/path".
	URL string
	// Chunk is the stripe chunk size in bytes.
	Chunk int64
	// Members are the children of a layout.
	Members []Spec
	// Where says where the node was written (file:line) for error messages.
	Where string
}

// Leaves returns the member URLs in leaf order (depth first), which is the
// order of member indexes.
func (s *Spec) Leaves() []string {
	if s.Kind == KindMember {
		return []string{s.URL}
	}
	var out []string
	for i := range s.Members {
		out = append(out, s.Members[i].Leaves()...)
	}
	return out
}

// Validate checks the tree's shape; errors name the node by Where.
func (s *Spec) Validate() error {
	at := func(format string, a ...any) error {
		msg := fmt.Sprintf(format, a...)
		if s.Where != "" {
			msg = s.Where + ": " + msg
		}
		return fmt.Errorf("storage spec: %s", msg)
	}
	switch s.Kind {
	case KindMember:
		if s.URL == "" {
			return at("member without a URL")
		}
		if len(s.Members) != 0 {
			return at("member %q cannot have members", s.URL)
		}
		return nil
	case KindLinear, KindMirror, KindStripe:
	default:
		return at("layout %q is not one of linear, stripe, mirror", s.Kind)
	}
	if len(s.Members) == 0 {
		return at("%s layout needs members", s.Kind)
	}
	if s.Kind == KindStripe && s.Chunk <= 0 {
		return at("stripe needs a chunk size (for example chunk: 64KiB)")
	}
	if s.Kind != KindStripe && s.Chunk != 0 {
		return at("chunk is only for stripe layouts, not %s", s.Kind)
	}
	seen := map[string]bool{}
	for _, u := range s.Leaves() {
		if seen[u] {
			return at("member %s appears twice", u)
		}
		seen[u] = true
	}
	for i := range s.Members {
		if err := s.Members[i].Validate(); err != nil {
			return err
		}
	}
	return nil
}

// String returns the tree in one line, e.g. mirror(file:/a, stripe/65536(nbd://b, nbd://c)).
func (s *Spec) String() string {
	if s.Kind == KindMember {
		return s.URL
	}
	parts := make([]string, len(s.Members))
	for i := range s.Members {
		parts[i] = s.Members[i].String()
	}
	k := string(s.Kind)
	if s.Kind == KindStripe {
		k += fmt.Sprintf("/%d", s.Chunk)
	}
	return k + "(" + strings.Join(parts, ", ") + ")"
}
