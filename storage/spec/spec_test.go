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
