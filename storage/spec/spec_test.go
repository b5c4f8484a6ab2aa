// The tree's rules, its one-line and superblock spellings, Build and
// Partners — table tests over hand-made trees, the Shape spelling pinned
// because superblocks on disk record it.
package spec_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"dst/storage/layout"
	"dst/storage/spec"
)

var m = spec.Member

func TestValidate(t *testing.T) {
	deep := m("x")
	for range spec.MaxDepth + 1 {
		deep = spec.Linear(deep)
	}
	var many []spec.Tree
	for i := range spec.MaxMembers + 1 {
		many = append(many, m(string(rune('A'+i%26))+strings.Repeat("z", i/26)))
	}
	for _, tc := range []struct {
		name string
		tree spec.Tree
		want string // "" means valid
	}{
		{"valid", spec.Linear(spec.Mirror(m("a"), m("b")), spec.Stripe(4096, m("c"), m("d"))), ""},
		{"a member alone", m("a"), ""},
		{"nameless member", m(""), "a member without a name"},
		{"member with members", spec.Tree{Kind: spec.KindMember, Leaf: "a", Members: []spec.Tree{m("b")}}, `member "a" cannot have members`},
		{"unknown kind", spec.Tree{Kind: "raid5", Members: []spec.Tree{m("a")}}, `layout "raid5" is not linear, stripe or mirror`},
		{"empty layout", spec.Linear(m("a"), spec.Mirror()), "a mirror layout needs members"},
		{"stripe without chunk", spec.Stripe(0, m("a")), "a stripe needs a chunk size"},
		{"chunk on linear", spec.Tree{Kind: spec.KindLinear, Chunk: 4096, Members: []spec.Tree{m("a")}}, "only a stripe has a chunk, not a linear"},
		{"layout naming a member", spec.Tree{Kind: spec.KindLinear, Leaf: "a", Members: []spec.Tree{m("b")}}, "cannot name a member"},
		{"duplicate", spec.Mirror(m("a"), spec.Linear(m("a"))), "member a appears twice"},
		{"too deep", deep, "nest more than 8 deep"},
		{"too many members", spec.Linear(many...), "65 members, at most 64"},
		{"where is named", spec.Tree{Kind: spec.KindStripe, Members: []spec.Tree{m("a")}, Where: "s.yaml:7"}, "s.yaml:7: a stripe needs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.tree.Validate()
			if tc.want == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func TestSpellings(t *testing.T) {
	tree := spec.Linear(spec.Mirror(m("nbd://a"), m("file:/b")), spec.Stripe(64<<10, m("c"), m("d")))
	require.Equal(t, "linear(mirror(nbd://a, file:/b), stripe/64KiB(c, d))", tree.String())
	// The superblocks' spelling: a change here makes existing storages
	// refuse to assemble.
	require.Equal(t, "linear(mirror(#0,#1),stripe/65536(#2,#3))", tree.Shape())
	require.Equal(t, []string{"nbd://a", "file:/b", "c", "d"}, tree.Leaves())
	k, ok := spec.ParseKind("stripe")
	require.True(t, ok)
	require.Equal(t, spec.KindStripe, k)
	_, ok = spec.ParseKind("member")
	require.False(t, ok, "member is no layout")
}

func TestBuild(t *testing.T) {
	tree := spec.Mirror(spec.Stripe(4096, m("a"), m("b")), m("c"))
	var seen []int
	l, err := tree.Build(func(i int) (layout.Layout, error) {
		seen = append(seen, i)
		return layout.NewLeaf(i, 0, 1<<20)
	})
	require.NoError(t, err)
	require.Equal(t, []int{0, 1, 2}, seen, "members in leaf order")
	require.Equal(t, int64(1<<20), l.Size())
	mir := l.(*layout.Mirror)
	require.IsType(t, &layout.Stripe{}, mir.Child(0))

	bad := spec.Tree{Kind: spec.KindStripe, Chunk: 3 << 20, Members: []spec.Tree{m("a")}, Where: "t.yaml:3"}
	_, err = bad.Build(func(i int) (layout.Layout, error) { return layout.NewLeaf(i, 0, 1<<20) })
	require.ErrorContains(t, err, "t.yaml:3: ", "layout errors name the node")
}

func TestPartners(t *testing.T) {
	tree := spec.Linear(spec.Mirror(m("a"), spec.Stripe(4096, m("b"), m("c"))), m("d"))
	require.Equal(t, []string{"b", "c"}, tree.Partners("a"))
	require.Equal(t, []string{"a"}, tree.Partners("b"), "b's replica is a; c is its stripe neighbour")
	require.Empty(t, tree.Partners("d"), "no mirror above d")
	require.Empty(t, tree.Partners("nope"))
}

func TestParseShapeRoundTrips(t *testing.T) {
	for _, tree := range []spec.Tree{
		m("a"),
		spec.Mirror(m("a"), m("b")),
		spec.Linear(spec.Mirror(m("a"), m("b")), spec.Stripe(65536, m("c"), spec.Mirror(m("d"), m("e"), m("f")))),
	} {
		got, err := spec.ParseShape(tree.Shape())
		require.NoError(t, err, tree.Shape())
		require.Equal(t, tree.Shape(), got.Shape())
		require.Equal(t, len(tree.Leaves()), len(got.Leaves()))
	}
	for _, bad := range []string{"", "mirror(", "mirror()", "mirror(#0", "mirror(#0;#1)", "raid5(#0)", "stripe/x(#0)", "mirror(#0)x", "#"} {
		_, err := spec.ParseShape(bad)
		require.Error(t, err, bad)
	}
}

func TestWithoutLeaf(t *testing.T) {
	tree := spec.Linear(spec.Mirror(m("a"), m("b")), spec.Mirror(m("c"), spec.Stripe(65536, m("d"), m("e"))), m("f"))
	got, err := tree.WithoutLeaf(1)
	require.NoError(t, err)
	require.Equal(t, "linear(mirror(a), mirror(c, stripe/64KiB(d, e)), f)", got.String())
	require.Equal(t, "linear(mirror(a, b), mirror(c, stripe/64KiB(d, e)), f)", tree.String(), "the tree is unchanged")
	got, err = tree.WithoutLeaf(2)
	require.NoError(t, err)
	require.Equal(t, "linear(mirror(a, b), mirror(stripe/64KiB(d, e)), f)", got.String())
	for _, tc := range []struct {
		i    int
		want string
	}{{3, "under a stripe"}, {5, "under a linear"}, {6, "no member 6"}} {
		_, err := tree.WithoutLeaf(tc.i)
		require.ErrorContains(t, err, tc.want)
	}
	_, err = got.WithoutLeaf(0)
	require.NoError(t, err)
	one, err := got.WithoutLeaf(1)
	require.NoError(t, err)
	_, err = one.WithoutLeaf(0)
	require.ErrorContains(t, err, "only replica")
}

func TestMirrorsAndWithLeaf(t *testing.T) {
	tree := spec.Linear(spec.Mirror(m("a"), m("b")), spec.Mirror(m("c"), spec.Stripe(65536, m("d"), m("e"))), m("f"))
	require.Equal(t, []spec.MirrorAt{{Path: "/0", Leaves: []int{0, 1}}, {Path: "/1", Leaves: []int{2, 3, 4}}}, tree.Mirrors())
	require.Equal(t, []spec.MirrorAt{{Path: "/", Leaves: []int{0, 1}}}, spec.Mirror(m("a"), m("b")).Mirrors())
	require.Empty(t, spec.Stripe(65536, m("a"), m("b")).Mirrors())

	got, k, err := tree.WithLeaf("/0", "g")
	require.NoError(t, err)
	require.Equal(t, 2, k)
	require.Equal(t, "linear(mirror(a, b, g), mirror(c, stripe/64KiB(d, e)), f)", got.String())
	require.Equal(t, "linear(mirror(a, b), mirror(c, stripe/64KiB(d, e)), f)", tree.String(), "the tree is unchanged")
	renamed := tree.WithLeaves([]string{"u", "v", "w", "x", "y", "z"})
	require.Equal(t, "linear(mirror(u, v), mirror(w, stripe/64KiB(x, y)), z)", renamed.String())
	require.Equal(t, "linear(mirror(a, b), mirror(c, stripe/64KiB(d, e)), f)", tree.String(), "WithLeaves copies")
	without, err := got.WithoutLeaf(k)
	require.NoError(t, err)
	require.Equal(t, tree.Shape(), without.Shape(), "WithoutLeaf undoes WithLeaf")
	got, k, err = tree.WithLeaf("1", "g")
	require.NoError(t, err)
	require.Equal(t, 5, k)
	require.Equal(t, "linear(mirror(a, b), mirror(c, stripe/64KiB(d, e), g), f)", got.String())
	got, k, err = spec.Mirror(m("a")).WithLeaf("/", "b")
	require.NoError(t, err)
	require.Equal(t, 1, k)
	require.Equal(t, "mirror(a, b)", got.String())
	for _, tc := range []struct{ path, want string }{
		{"/", "a linear, not a mirror"}, {"/2", "a member, not a mirror"}, {"/1/1", "a stripe, not a mirror"},
		{"/3", "no node at /3"}, {"/2/0", "no node at /2/0"}, {"/x", `"x" is not a child index`}, {"/-1", "not a child index"},
	} {
		_, _, err := tree.WithLeaf(tc.path, "g")
		require.ErrorContains(t, err, tc.want, tc.path)
	}
}

func TestParentMirror(t *testing.T) {
	tree := spec.Linear(spec.Mirror(m("a"), m("b")), spec.Mirror(m("c"), spec.Stripe(65536, m("d"), m("e"))), m("f"))
	for i, want := range []struct {
		path string
		ok   bool
	}{{"/0", true}, {"/0", true}, {"/1", true}, {"", false}, {"", false}, {"", false}, {"", false}} {
		p, ok := tree.ParentMirror(i)
		require.Equal(t, want.ok, ok, "leaf %d", i)
		if ok {
			require.Equal(t, want.path, p, "leaf %d", i)
		}
	}
	p, ok := spec.Mirror(m("a"), m("b")).ParentMirror(1)
	require.True(t, ok)
	require.Equal(t, "/", p)
	_, ok = m("a").ParentMirror(0)
	require.False(t, ok)
	other := spec.Mirror(spec.Stripe(65536, m("a"), m("b")), m("c"))
	_, ok = other.ParentMirror(0)
	require.False(t, ok, "a is under a stripe")
	p, ok = other.ParentMirror(2)
	require.True(t, ok)
	require.Equal(t, "/", p)
}
