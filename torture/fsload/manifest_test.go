// The manifest round-trips through JSON, detects a tampered checksum on load,
// and tracks for each pending path exactly the versions a crash may leave;
// proved on hand-written op sequences without a kernel.
package fsload

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestManifestJSONRoundTrip(t *testing.T) {
	m := NewManifest(99)
	for i := range 2 {
		for _, op := range Plan(rand.New(rand.NewPCG(99, uint64(i))), m, planOpts()) {
			require.NoError(t, m.Apply(op))
		}
		if i == 0 {
			m.MarkSynced()
		}
	}
	require.Positive(t, m.PendingCount())
	b, err := m.JSON()
	require.NoError(t, err)
	back, err := LoadManifest(b)
	require.NoError(t, err)
	require.Equal(t, m, back)
	b2, err := back.JSON()
	require.NoError(t, err)
	require.Equal(t, string(b), string(b2), "serialisation is deterministic")

	back.Files[back.Paths()[0]].SHA256 = "00"
	tampered, err := back.JSON()
	require.NoError(t, err)
	_, err = LoadManifest(tampered)
	require.ErrorContains(t, err, "does not match its layers")
}

func TestManifestPendingVersions(t *testing.T) {
	m := NewManifest(1)
	require.NoError(t, m.Apply(Op{Kind: OpCreate, Path: "a", ID: 1, Len: 5000}))
	require.NoError(t, m.Apply(Op{Kind: OpCreate, Path: "b", ID: 2, Len: 10}))
	a := m.Files["a"]
	require.Equal(t, Pending, a.State)
	require.Equal(t, []Version{{Absent: true}}, a.Before, "never synced: may be missing after a crash")

	m.MarkSynced()
	require.Equal(t, Synced, a.State)
	require.Empty(t, a.Before)
	synced := a.Version.clone()

	require.NoError(t, m.Apply(Op{Kind: OpPatch, Path: "a", Gen: 2, Off: 4095, Len: 2}))
	require.NoError(t, m.Apply(Op{Kind: OpTruncate, Path: "a", Len: 4096}))
	require.Equal(t, []Layer{{Gen: 1, Off: 0, Len: 4096}, {Gen: 2, Off: 4095, Len: 1}}, a.Layers)
	require.Len(t, a.Before, 2, "synced version and the intermediate patched one")
	require.Equal(t, synced, a.Before[0])

	require.NoError(t, m.Apply(Op{Kind: OpRename, Path: "b", To: "d1/c", ID: 3}))
	require.True(t, m.Files["b"].Absent)
	require.Equal(t, Pending, m.Files["b"].State)
	require.Equal(t, []Version{{Absent: true}}, m.Files["d1/c"].Before)
	require.Equal(t, uint64(2), m.Files["d1/c"].ID)
	require.Equal(t, []string{"a", "d1/c"}, m.Paths())

	m.MarkSynced()
	require.NotContains(t, m.Files, "b", "deleted paths are forgotten once synced")

	// A rename after a change: the target may hold the source's synced
	// version too (the rename persisted, the data did not).
	syncedC := m.Files["d1/c"].Version.clone()
	require.NoError(t, m.Apply(Op{Kind: OpRewrite, Path: "d1/c", Gen: 2, Len: 20}))
	rewritten := m.Files["d1/c"].Version.clone()
	require.NoError(t, m.Apply(Op{Kind: OpRename, Path: "d1/c", To: "e", ID: 4}))
	require.Equal(t, []Version{{Absent: true}, syncedC}, m.Files["e"].Before)
	require.Equal(t, []Version{syncedC, rewritten}, m.Files["d1/c"].Before)
	m.MarkSynced()
	require.Error(t, m.Apply(Op{Kind: OpDelete, Path: "b"}))
	require.Error(t, m.Apply(Op{Kind: OpCreate, Path: "a", ID: 9, Len: 1}))
}

// A file renamed and then written through its new name since the last
// sync: a crash may lose the rename and keep the data (same inode), so the
// old name may show the new data too (found by dst torture, engine-crash
// seed 43: an xfs file patched after a rename came back under its old name
// with the patch).
func TestManifestOldNameFollowsDataAfterRename(t *testing.T) {
	m := NewManifest(9)
	require.NoError(t, m.Apply(Op{Kind: OpCreate, Path: "a", ID: 1, Len: 9000}))
	m.MarkSynced()
	require.NoError(t, m.Apply(Op{Kind: OpRename, Path: "a", To: "b", ID: 2}))
	require.NoError(t, m.Apply(Op{Kind: OpPatch, Path: "b", Gen: 2, Off: 4000, Len: 3000}))
	patched := m.Files["b"].Version
	old := m.Files["a"]
	require.True(t, old.Absent)
	require.True(t, slices.ContainsFunc(old.Before, (&patched).same), "old name's crash candidates: %+v", old.Before)
	require.NoError(t, m.Check())
}
