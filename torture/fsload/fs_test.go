// Filesystem names parse and print symmetrically, the rotation walks the
// configured list, and mkfs identities are valid, fixed by the seed; table
// tests without a kernel.
package fsload

import (
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseFS(t *testing.T) {
	for _, c := range []struct {
		in   string
		want FS
		ok   bool
	}{
		{"ext4", Ext4, true}, {"XFS", XFS, true}, {" btrfs ", Btrfs, true},
		{"ext3", FSInvalid, false}, {"", FSInvalid, false},
	} {
		got, err := ParseFS(c.in)
		if !c.ok {
			require.Error(t, err, "%q", c.in)
			continue
		}
		require.NoError(t, err, "%q", c.in)
		require.Equal(t, c.want, got)
		require.True(t, got.Valid())
		back, err := ParseFS(got.String())
		require.NoError(t, err)
		require.Equal(t, got, back)
	}
	require.Equal(t, "FS(9)", FS(9).String())

	list, err := ParseFSList("ext4, btrfs,,xfs")
	require.NoError(t, err)
	require.Equal(t, []FS{Ext4, Btrfs, XFS}, list)
	_, err = ParseFSList(" , ")
	require.Error(t, err)
	_, err = ParseFSList("ext4,zfs")
	require.ErrorContains(t, err, "zfs")
}

func TestRotation(t *testing.T) {
	var got []FS
	for i := range 7 {
		got = append(got, Rotation([]FS{XFS, Ext4}, i))
	}
	require.Equal(t, []FS{XFS, Ext4, XFS, Ext4, XFS, Ext4, XFS}, got)
	require.Equal(t, []FS{Ext4, XFS, Btrfs, Ext4}, []FS{Rotation(nil, 0), Rotation(nil, 1), Rotation(nil, 2), Rotation(nil, 3)})
	require.Panics(t, func() { Rotation(nil, -1) })
}

func TestMkfsIdentity(t *testing.T) {
	uuidRE := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := map[string]bool{}
	for seed := range uint64(50) {
		u := UUID(seed)
		require.Regexp(t, uuidRE, u, "seed %d", seed)
		require.Equal(t, u, UUID(seed))
		require.False(t, seen[u], "seed %d repeats a UUID", seed)
		seen[u] = true
		require.LessOrEqual(t, len(Label(seed)), 12, "xfs labels have at most 12 characters")
	}
	require.Greater(t, MinSize(XFS), MinSize(Btrfs))
	require.Panics(t, func() { MinSize(FSInvalid) })
}
