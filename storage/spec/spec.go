// Package spec is the storage tree as a person writes it — in the
// `dst serve` config, in a torture scenario, or in a test: layouts
// (linear, stripe, mirror) over members, nested. It is the one place that
// knows the tree's rules (Validate, with one MaxDepth and one MaxMembers),
// writes it in one line (String) and as the shape recorded in superblocks
// (Shape), and builds the layout from it (Build). It is a leaf: it depends
// only on the pure layout and metadata packages, so storage/config,
// storage/engine, torture/scenario and torture/cluster all use it.
package spec

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"dst/internal/size"
	"dst/storage/layout"
	"dst/storage/meta"
)

// Kind is the kind of a node of the tree.
type Kind string

// Kinds of Tree nodes.
const (
	KindMember Kind = "member"
	KindLinear Kind = "linear"
	KindStripe Kind = "stripe"
	KindMirror Kind = "mirror"
)

// Bounds of a tree.
const (
	// MaxDepth bounds how deep layouts nest (the root layout is depth 1).
	MaxDepth = 8
	// MaxMembers bounds the leaves (the superblock's member mask has 64
	// bits).
	MaxMembers = meta.MaxMembers
	// MaxReplicas bounds the children of a mirror.
	MaxReplicas = layout.MaxReplicas
)

// ParseKind reads a layout name: linear, stripe or mirror.
func ParseKind(s string) (Kind, bool) {
	switch k := Kind(s); k {
	case KindLinear, KindStripe, KindMirror:
		return k, true
	}
	return "", false
}

// Tree is a node of the storage tree: a layout over Members, or a member
// (a leaf) named by Leaf.
type Tree struct {
	Kind Kind
	// Leaf names a member: a URL for dst serve ("file:/path",
	// "nbd://host:port/export"), a node name in a torture topology.
	Leaf string
	// Chunk is the stripe chunk in bytes (stripes only, required there).
	Chunk int64
	// Members are the children of a layout.
	Members []Tree
	// Where says where the node was written (file:line), for errors.
	Where string
}

// Member returns a leaf named name.
func Member(name string) Tree { return Tree{Kind: KindMember, Leaf: name} }

// Linear returns a linear layout over members.
func Linear(members ...Tree) Tree { return Tree{Kind: KindLinear, Members: members} }

// Stripe returns a stripe of chunk bytes over members.
func Stripe(chunk int64, members ...Tree) Tree {
	return Tree{Kind: KindStripe, Chunk: chunk, Members: members}
}

// Mirror returns a mirror over members.
func Mirror(members ...Tree) Tree { return Tree{Kind: KindMirror, Members: members} }

// IsLeaf reports whether t is a member.
func (t Tree) IsLeaf() bool { return t.Kind == KindMember }

// Leaves returns the member names in leaf order (depth first), which is
// the order of member indexes.
func (t Tree) Leaves() []string {
	if t.IsLeaf() {
		return []string{t.Leaf}
	}
	var out []string
	for i := range t.Members {
		out = append(out, t.Members[i].Leaves()...)
	}
	return out
}

// Validate checks the tree's rules and returns every problem found, each
// prefixed with the Where of its node (when known).
func (t Tree) Validate() error {
	var errs []error
	t.validate(1, &errs)
	seen := map[string]bool{}
	leaves := t.Leaves()
	for _, l := range leaves {
		if seen[l] && l != "" {
			errs = append(errs, t.errorf("member %s appears twice", l))
		}
		seen[l] = true
	}
	if len(leaves) > MaxMembers {
		errs = append(errs, t.errorf("%d members, at most %d", len(leaves), MaxMembers))
	}
	return errors.Join(errs...)
}

func (t *Tree) validate(depth int, errs *[]error) {
	bad := func(format string, a ...any) { *errs = append(*errs, t.errorf(format, a...)) }
	switch t.Kind {
	case KindMember:
		if t.Leaf == "" {
			bad("a member without a name")
		}
		if len(t.Members) != 0 || t.Chunk != 0 {
			bad("member %q cannot have members or a chunk", t.Leaf)
		}
		return
	case KindLinear, KindStripe, KindMirror:
	default:
		bad("layout %q is not linear, stripe or mirror", t.Kind)
		return
	}
	switch {
	case depth > MaxDepth:
		bad("layouts nest more than %d deep", MaxDepth)
		return
	case t.Leaf != "":
		bad("a %s layout cannot name a member (%q); make it one of its members", t.Kind, t.Leaf)
	case len(t.Members) == 0:
		bad("a %s layout needs members", t.Kind)
	case t.Kind == KindStripe && t.Chunk <= 0:
		bad("a stripe needs a chunk size (for example chunk: 64KiB)")
	case t.Kind != KindStripe && t.Chunk != 0:
		bad("only a stripe has a chunk, not a %s", t.Kind)
	case t.Kind == KindMirror && len(t.Members) > MaxReplicas:
		bad("%d replicas, at most %d", len(t.Members), MaxReplicas)
	}
	for i := range t.Members {
		t.Members[i].validate(depth+1, errs)
	}
}

func (t *Tree) errorf(format string, a ...any) error {
	msg := fmt.Sprintf(format, a...)
	if t.Where != "" {
		return fmt.Errorf("%s: %s", t.Where, msg)
	}
	return errors.New(msg)
}

// String writes the tree in one line, e.g.
// "linear(mirror(a, b), stripe/64KiB(c, d))".
func (t Tree) String() string {
	return t.write(func(t *Tree) string { return t.Leaf }, size.Format, ", ")
}

// Shape is the tree with members numbered in leaf order, e.g.
// "mirror(#0,stripe/65536(#1,#2))": what superblocks record, so that a
// storage is assembled only as the tree it was created as. Its spelling
// is part of the on-disk format.
func (t Tree) Shape() string {
	idx := 0
	return t.write(func(*Tree) string {
		idx++
		return fmt.Sprintf("#%d", idx-1)
	}, func(n int64) string { return fmt.Sprint(n) }, ",")
}

func (t *Tree) write(leaf func(*Tree) string, chunk func(int64) string, sep string) string {
	if t.IsLeaf() {
		return leaf(t)
	}
	parts := make([]string, len(t.Members))
	for i := range t.Members {
		parts[i] = t.Members[i].write(leaf, chunk, sep)
	}
	k := string(t.Kind)
	if t.Kind == KindStripe {
		k += "/" + chunk(t.Chunk)
	}
	return k + "(" + strings.Join(parts, sep) + ")"
}

// Build builds the layout of the tree; leaf(i) builds member i (in leaf
// order) from what the caller knows of it (its data area). Errors of the
// layout package (a stripe chunk larger than a child, sizes that
// overflow) name the node's Where.
func (t Tree) Build(leaf func(i int) (layout.Layout, error)) (layout.Layout, error) {
	next := 0
	return t.build(leaf, &next)
}

func (t *Tree) build(leaf func(i int) (layout.Layout, error), next *int) (layout.Layout, error) {
	if t.IsLeaf() {
		i := *next
		*next++
		return leaf(i)
	}
	children := make([]layout.Layout, len(t.Members))
	for i := range t.Members {
		c, err := t.Members[i].build(leaf, next)
		if err != nil {
			return nil, err
		}
		children[i] = c
	}
	var l layout.Layout
	var err error
	switch t.Kind {
	case KindLinear:
		l, err = layout.NewLinear(children...)
	case KindStripe:
		l, err = layout.NewStripe(t.Chunk, children...)
	case KindMirror:
		l, err = layout.NewMirror(children...)
	default:
		err = fmt.Errorf("layout %q is not linear, stripe or mirror", t.Kind)
	}
	if err != nil && t.Where != "" {
		err = fmt.Errorf("%s: %w", t.Where, err)
	}
	return l, err
}

// Partners returns the leaves of the other children of the nearest
// mirror above the leaf named leaf: the replicas that hold its data. None
// when no mirror is above it.
func (t Tree) Partners(leaf string) []string {
	if t.IsLeaf() {
		return nil
	}
	for i := range t.Members {
		m := &t.Members[i]
		if !slices.Contains(m.Leaves(), leaf) {
			continue
		}
		if inner := m.Partners(leaf); len(inner) > 0 || t.Kind != KindMirror {
			return inner
		}
		var out []string
		for j := range t.Members {
			if j != i {
				out = append(out, t.Members[j].Leaves()...)
			}
		}
		return out
	}
	return nil
}

// ParseShape reads a Shape back into a tree whose leaves are named "#0",
// "#1", … in leaf order: the layout a storage's superblocks record, to
// compare with a config that changed its membership.
func ParseShape(s string) (Tree, error) {
	p := shapeParser{s: s}
	t, err := p.tree(1)
	if err == nil && p.i != len(s) {
		err = fmt.Errorf("unexpected %q", s[p.i:])
	}
	if err == nil {
		err = t.Validate()
	}
	if err != nil {
		return Tree{}, fmt.Errorf("spec: recorded layout %q: %w", s, err)
	}
	return t, nil
}

type shapeParser struct {
	s string
	i int
}

func (p *shapeParser) tree(depth int) (Tree, error) {
	if depth > MaxDepth {
		return Tree{}, fmt.Errorf("layouts nest more than %d deep", MaxDepth)
	}
	if strings.HasPrefix(p.s[p.i:], "#") {
		j := p.i + 1
		for j < len(p.s) && p.s[j] >= '0' && p.s[j] <= '9' {
			j++
		}
		if j == p.i+1 {
			return Tree{}, fmt.Errorf("a member number expected at %d", p.i)
		}
		t := Member(p.s[p.i:j])
		p.i = j
		return t, nil
	}
	open := strings.IndexByte(p.s[p.i:], '(')
	if open < 0 {
		return Tree{}, fmt.Errorf("a layout expected at %d", p.i)
	}
	name := p.s[p.i : p.i+open]
	p.i += open + 1
	t := Tree{}
	if k, chunk, ok := strings.Cut(name, "/"); ok {
		n, err := strconv.ParseInt(chunk, 10, 64)
		if err != nil || k != string(KindStripe) {
			return Tree{}, fmt.Errorf("layout %q", name)
		}
		t.Kind, t.Chunk = KindStripe, n
	} else if k, ok := ParseKind(name); ok && k != KindStripe {
		t.Kind = k
	} else {
		return Tree{}, fmt.Errorf("layout %q", name)
	}
	for {
		c, err := p.tree(depth + 1)
		if err != nil {
			return Tree{}, err
		}
		t.Members = append(t.Members, c)
		if p.i >= len(p.s) {
			return Tree{}, errors.New("unclosed layout")
		}
		p.i++
		if p.s[p.i-1] == ')' {
			return t, nil
		}
		if p.s[p.i-1] != ',' {
			return Tree{}, fmt.Errorf("',' or ')' expected at %d", p.i-1)
		}
	}
}

// WithoutLeaf returns the tree without leaf i (in leaf order), which must
// be a replica of a mirror that keeps at least one other. The tree is
// copied; t is unchanged.
func (t Tree) WithoutLeaf(i int) (Tree, error) {
	out, found, err := t.without(i, new(int))
	if err == nil && !found {
		err = fmt.Errorf("the tree has no member %d", i)
	}
	return out, err
}

func (t *Tree) without(i int, next *int) (Tree, bool, error) {
	out := *t
	if t.IsLeaf() {
		*next++
		return out, false, nil
	}
	out.Members = nil
	found := false
	for c := range t.Members {
		m := &t.Members[c]
		if m.IsLeaf() && *next == i {
			*next++
			found = true
			switch {
			case t.Kind != KindMirror:
				return Tree{}, true, fmt.Errorf("member %d is under a %s, not a mirror: its data exists nowhere else", i, t.Kind)
			case len(t.Members) == 1:
				return Tree{}, true, fmt.Errorf("member %d is its mirror's only replica", i)
			}
			continue
		}
		sub, f, err := m.without(i, next)
		if err != nil {
			return Tree{}, true, err
		}
		found = found || f
		out.Members = append(out.Members, sub)
	}
	return out, found, nil
}

// MirrorAt is a mirror of a tree, found by Mirrors.
type MirrorAt struct {
	// Path is where the mirror is: its child indexes from the root,
	// joined by "/", with a leading "/" ("/" is the root itself, "/1/0"
	// the first child of the root's second child).
	Path string
	// Leaves are the member indexes (leaf order) under the mirror.
	Leaves []int
}

// Mirrors lists the tree's mirrors, outermost first.
func (t Tree) Mirrors() []MirrorAt {
	var out []MirrorAt
	next := 0
	var walk func(t *Tree, path string)
	walk = func(t *Tree, path string) {
		if t.IsLeaf() {
			next++
			return
		}
		at := -1
		if t.Kind == KindMirror {
			at = len(out)
			out = append(out, MirrorAt{Path: path})
		}
		first := next
		for c := range t.Members {
			walk(&t.Members[c], strings.TrimSuffix(path, "/")+"/"+strconv.Itoa(c))
		}
		if at >= 0 {
			for i := first; i < next; i++ {
				out[at].Leaves = append(out[at].Leaves, i)
			}
		}
	}
	walk(&t, "/")
	return out
}

// WithLeaf returns the tree with leaf added as the last replica of the
// mirror at path (as MirrorAt.Path spells it), and the new leaf's index
// in leaf order. The tree is copied; t is unchanged.
func (t Tree) WithLeaf(path, leaf string) (Tree, int, error) {
	var idx []int
	if p := strings.Trim(path, "/"); p != "" {
		for _, s := range strings.Split(p, "/") {
			c, err := strconv.Atoi(s)
			if err != nil || c < 0 {
				return Tree{}, 0, fmt.Errorf("mirror path %q: %q is not a child index", path, s)
			}
			idx = append(idx, c)
		}
	}
	out := t.clone()
	n := &out
	before := 0 // leaves before the new one
	for d, c := range idx {
		if n.IsLeaf() || c >= len(n.Members) {
			return Tree{}, 0, fmt.Errorf("mirror path %q: the tree has no node at /%s", path, joinInts(idx[:d+1]))
		}
		for k := range c {
			before += len(n.Members[k].Leaves())
		}
		n = &n.Members[c]
	}
	if n.Kind != KindMirror {
		return Tree{}, 0, fmt.Errorf("mirror path %q: the node there is a %s, not a mirror", path, n.Kind)
	}
	before += len(n.Leaves())
	n.Members = append(n.Members, Member(leaf))
	return out, before, nil
}

// WithLeaves returns the tree with its leaves named names, in leaf order
// (one name per leaf). The tree is copied; t is unchanged.
func (t Tree) WithLeaves(names []string) Tree {
	out := t.clone()
	next := 0
	var walk func(t *Tree)
	walk = func(t *Tree) {
		if t.IsLeaf() {
			t.Leaf = names[next]
			next++
			return
		}
		for i := range t.Members {
			walk(&t.Members[i])
		}
	}
	walk(&out)
	return out
}

func (t Tree) clone() Tree {
	out := t
	out.Members = make([]Tree, len(t.Members))
	for i := range t.Members {
		out.Members[i] = t.Members[i].clone()
	}
	if t.Members == nil {
		out.Members = nil
	}
	return out
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, "/")
}

// ParentMirror is the path (as MirrorAt.Path spells it) of the mirror
// whose direct child is leaf i (leaf order); false when leaf i's parent
// is not a mirror (or there is no leaf i).
func (t Tree) ParentMirror(i int) (string, bool) {
	next := 0
	var walk func(t *Tree, path string) (at string, mirror, found bool)
	walk = func(t *Tree, path string) (string, bool, bool) {
		for c := range t.Members {
			m := &t.Members[c]
			if m.IsLeaf() {
				if next == i {
					return path, t.Kind == KindMirror, true
				}
				next++
				continue
			}
			if p, mirror, found := walk(m, strings.TrimSuffix(path, "/")+"/"+strconv.Itoa(c)); found {
				return p, mirror, true
			}
		}
		return "", false, false
	}
	if t.IsLeaf() {
		return "", false
	}
	p, mirror, _ := walk(&t, "/")
	return p, mirror
}
