// Write, Sync, Verify and VerifyAfterCrash judge real files correctly: a
// workload run in a plain temporary directory verifies clean, and each planted
// fault (flipped byte, deleted file, stray file, a third version after a
// crash) is reported by name; no root or kernel filesystem needed.
package fsload

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
)

func dirPlan() WriteOptions {
	return WriteOptions{Plan: PlanOptions{WriteBytes: 3 << 20, LiveBytesMax: 6 << 20, OpsMax: 60, FileBytesMax: 512 << 10}}
}

// writtenDir returns a workload that wrote and synced two phases into a
// fresh directory.
func writtenDir(t *testing.T, seed uint64) (*Workload, string) {
	ctx := testkit.Context(t, 30*time.Second)
	dir := t.TempDir()
	w := New(seed)
	for range 2 {
		_, err := w.Write(ctx, dir, dirPlan())
		require.NoError(t, err, "seed %d", seed)
		require.NoError(t, w.Sync(ctx, dir))
	}
	require.NoError(t, w.Verify(ctx, dir), "seed %d", seed)
	require.Zero(t, w.Manifest().PendingCount())
	require.NotEmpty(t, w.Manifest().Paths())
	return w, dir
}

// fileAtLeast returns a manifest path whose file has at least n bytes.
func fileAtLeast(t *testing.T, w *Workload, n int64) string {
	for _, p := range w.Manifest().Paths() {
		if w.Manifest().Files[p].Size >= n {
			return p
		}
	}
	t.Fatalf("seed %d: no file of %d bytes", w.Seed(), n)
	return ""
}

func TestDirVerifyDetectsFlippedByte(t *testing.T) {
	w, dir := writtenDir(t, 21)
	p := fileAtLeast(t, w, 2*BlockSize)
	f, err := os.OpenFile(filepath.Join(dir, p), os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte{0xde, 0xad}, BlockSize+77)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	err = w.Verify(testkit.Context(t, 30*time.Second), dir)
	var mm *Mismatch
	require.ErrorAs(t, err, &mm)
	require.Equal(t, p, mm.Path)
	require.Equal(t, int64(BlockSize+77), mm.Offset)
	require.Equal(t, w.Manifest().Files[p].ID, mm.ID)
	require.Contains(t, mm.FoundStamp, "do not match", "the header is intact, the bytes are not")
	require.Contains(t, err.Error(), p)
}

func TestDirVerifyDetectsMissingAndExtra(t *testing.T) {
	w, dir := writtenDir(t, 22)
	victim := w.Manifest().Paths()[0]
	require.NoError(t, os.Remove(filepath.Join(dir, victim)))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "stray"), []byte("x"), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "lost+found"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "lost+found", "#12"), []byte("y"), 0o644))

	err := w.Verify(testkit.Context(t, 30*time.Second), dir)
	require.ErrorIs(t, err, ErrMissing)
	require.ErrorIs(t, err, ErrExtra)
	require.ErrorContains(t, err, victim)
	require.ErrorContains(t, err, "stray")
	require.NotContains(t, err.Error(), "#12", "lost+found is not the workload's")
}

func TestDirVerifyDetectsWrongSize(t *testing.T) {
	w, dir := writtenDir(t, 23)
	p := fileAtLeast(t, w, 2)
	require.NoError(t, os.Truncate(filepath.Join(dir, p), w.Manifest().Files[p].Size-1))
	err := w.Verify(testkit.Context(t, 30*time.Second), dir)
	require.ErrorIs(t, err, ErrSize)
	require.ErrorContains(t, err, p)
}

// crashSetup returns a workload with synced files plus two pending
// changes: old (a synced file rewritten longer) and d0/new (never synced).
func crashSetup(t *testing.T) (w *Workload, dir, old string, oldVersion, newVersion Version) {
	ctx := testkit.Context(t, 30*time.Second)
	w, dir = writtenDir(t, 24)
	m := w.Manifest()
	old = fileAtLeast(t, w, 3*BlockSize)
	oldVersion = m.Files[old].Version.clone()
	rewrite := Op{Kind: OpRewrite, Path: old, Gen: m.Files[old].Gen + 1, Len: oldVersion.Size + 100}
	created := Op{Kind: OpCreate, Path: "d0/new", ID: m.NextID, Len: 3*BlockSize + 1}
	buf := make([]byte, ioChunk)
	for _, op := range []Op{rewrite, created} {
		_, err := w.perform(ctx, dir, op, buf)
		require.NoError(t, err)
		require.NoError(t, m.Apply(op))
	}
	require.Equal(t, 2, m.PendingCount())
	return w, dir, old, oldVersion, m.Files[old].Version.clone()
}

func TestDirVerifyAfterCrash(t *testing.T) {
	t.Run("new versions", func(t *testing.T) {
		ctx := testkit.Context(t, 30*time.Second)
		w, dir, old, _, newVersion := crashSetup(t)
		require.NoError(t, w.VerifyAfterCrash(ctx, dir))
		require.Zero(t, w.Manifest().PendingCount(), "settled")
		require.Equal(t, newVersion.Size, w.Manifest().Files[old].Size)
		require.Contains(t, w.Manifest().Files, "d0/new")
		require.NoError(t, w.Verify(ctx, dir))
	})
	t.Run("old version and lost new file", func(t *testing.T) {
		ctx := testkit.Context(t, 30*time.Second)
		w, dir, old, oldVersion, _ := crashSetup(t)
		writeVersion(t, w, dir, old, &oldVersion)
		require.NoError(t, os.Remove(filepath.Join(dir, "d0/new")))
		require.Error(t, w.Verify(ctx, dir), "strict verify wants the newest versions")
		require.NoError(t, w.VerifyAfterCrash(ctx, dir))
		require.Equal(t, oldVersion, w.Manifest().Files[old].Version, "settled to the surviving version")
		require.NotContains(t, w.Manifest().Files, "d0/new")
		require.NoError(t, w.Verify(ctx, dir))
	})
	t.Run("blocks of both versions and zeros", func(t *testing.T) {
		// Allowed: pages are written back independently, the on-disk size
		// follows write-back, unwritten extents read as zeros.
		ctx := testkit.Context(t, 30*time.Second)
		w, dir, old, oldVersion, newVersion := crashSetup(t)
		mixed := make([]byte, newVersion.Size-1)
		newVersion.ReadAt(w.Manifest().Seed, mixed[:BlockSize], 0)
		oldVersion.ReadAt(w.Manifest().Seed, mixed[BlockSize:], BlockSize)
		clear(mixed[2*BlockSize : 3*BlockSize])
		require.NoError(t, os.WriteFile(filepath.Join(dir, old), mixed, 0o644))
		require.NoError(t, w.VerifyAfterCrash(ctx, dir))
		require.Equal(t, int64(1), w.Stats().MixedAfterCrash)
		require.NotContains(t, w.Manifest().Files, old, "a mixed file is removed to settle")
		require.NoFileExists(t, filepath.Join(dir, old))
		require.NoError(t, w.Verify(ctx, dir))
	})
	t.Run("longer than every version rejected", func(t *testing.T) {
		ctx := testkit.Context(t, 30*time.Second)
		w, dir, old, _, newVersion := crashSetup(t)
		require.NoError(t, os.Truncate(filepath.Join(dir, old), newVersion.Size+1))
		err := w.VerifyAfterCrash(ctx, dir)
		require.ErrorIs(t, err, ErrSize)
		require.ErrorContains(t, err, old)
	})
	t.Run("third content rejected", func(t *testing.T) {
		ctx := testkit.Context(t, 30*time.Second)
		w, dir, old, oldVersion, _ := crashSetup(t)
		// Another generation of the same file, never written by the workload.
		third := Version{ID: oldVersion.ID, Gen: 77, Size: oldVersion.Size, Layers: []Layer{{Gen: 77, Len: oldVersion.Size}}}
		writeVersion(t, w, dir, old, &third)
		err := w.VerifyAfterCrash(ctx, dir)
		var mm *Mismatch
		require.ErrorAs(t, err, &mm)
		require.Equal(t, old, mm.Path)
		require.Equal(t, int64(4), mm.Offset, "the header differs first in its generation field")
		require.Contains(t, mm.FoundStamp, "gen 77")
		require.Contains(t, mm.Note, "any of the 2 versions")
		require.Equal(t, 2, w.Manifest().PendingCount(), "a failed check leaves the manifest for the bundle")
	})
	t.Run("synced file must be exact", func(t *testing.T) {
		ctx := testkit.Context(t, 30*time.Second)
		w, dir, _, _, _ := crashSetup(t)
		m := w.Manifest()
		var synced string
		for _, p := range m.Paths() {
			if m.Files[p].State == Synced && m.Files[p].Size > 0 {
				synced = p
				break
			}
		}
		require.NotEmpty(t, synced)
		require.NoError(t, os.Truncate(filepath.Join(dir, synced), 0))
		err := w.VerifyAfterCrash(ctx, dir)
		require.ErrorIs(t, err, ErrSize)
		require.ErrorContains(t, err, synced)
	})
}

// writeVersion replaces the file at p with the bytes of v.
func writeVersion(t *testing.T, w *Workload, dir, p string, v *Version) {
	b := make([]byte, v.Size)
	v.ReadAt(w.Manifest().Seed, b, 0)
	require.NoError(t, os.WriteFile(filepath.Join(dir, p), b, 0o644))
}
