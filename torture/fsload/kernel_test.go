// Full cycles pass on real ext4, xfs and btrfs, files survive consecutive
// cycles, a rebuild starts empty, and planted damage is caught: bytes flipped
// on the device under a file, a file deleted behind the manifest's back, a
// cleared inode that fsck reports, a busy unmount naming its holder. Runs as
// root on loop devices over sparse files.
package fsload

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
)

const kernelBudget = 16 << 20

type phaseLog struct {
	names []string
	errs  []error
}

func (l *phaseLog) observe(name string, _ time.Time, d time.Duration, err error, _ string) {
	l.names = append(l.names, name)
	l.errs = append(l.errs, err)
}

func TestCycleEachFS(t *testing.T) {
	for i, f := range AllFS {
		t.Run(f.String(), func(t *testing.T) {
			requireKernel(t, f)
			ctx := testkit.Context(t, 90*time.Second)
			dev, _ := loopDevice(t, sizeFor(f))
			dir := mountPoint(t)
			w := New(uint64(100 + i))
			var log phaseLog
			o := CycleOptions{Dev: dev, MountDir: dir, FS: f, Rebuild: true, Cycle: 0, Budget: kernelBudget, Phase: log.observe}
			require.NoError(t, w.Cycle(ctx, o), "seed %d", w.Seed())
			require.Equal(t, []string{PhaseMkfs, PhaseMount, PhaseWrite, PhaseSync, PhaseUmount, PhaseFsck,
				PhaseRemount, PhaseVerify, PhaseFinal}, log.names)
			st := w.Stats()
			require.Equal(t, int64(1), st.Cycles)
			require.Positive(t, st.BytesWritten)
			require.Positive(t, st.BytesVerified)
			files := w.Manifest().Paths()
			require.NotEmpty(t, files)
			requireIdentity(t, dev, w.rebuildSeed(0))

			// A second cycle keeps the files of the first (those it did not
			// change) and verifies them again.
			o.Rebuild, o.Cycle = false, 1
			require.NoError(t, w.Cycle(ctx, o), "seed %d cycle 1", w.Seed())
			require.Equal(t, int64(2), w.Stats().Cycles)
			require.Equal(t, int64(1), w.Stats().Rebuilds)
			require.Greater(t, w.Stats().FilesVerified, st.FilesVerified+int64(len(files))/2)

			mounted, err := Mounted(dir)
			require.NoError(t, err)
			require.False(t, mounted, "a cycle ends unmounted")
		})
	}
}

func TestRebuildResets(t *testing.T) {
	requireKernel(t, Ext4)
	ctx := testkit.Context(t, 60*time.Second)
	dev, _ := loopDevice(t, sizeFor(Ext4))
	dir := mountPoint(t)
	w := New(7)
	o := CycleOptions{Dev: dev, MountDir: dir, FS: Ext4, Cycle: 0, Budget: 1 << 20}
	require.NoError(t, w.Cycle(ctx, o), "first cycle rebuilds implicitly")
	before := w.Manifest().NextID
	require.Greater(t, before, uint64(1))

	require.ErrorContains(t, w.Cycle(ctx, CycleOptions{Dev: dev, MountDir: dir, FS: XFS, Cycle: 1}), "without rebuild")

	var log phaseLog
	o.Rebuild, o.Cycle, o.Phase, o.Budget = true, 1, log.observe, 1
	require.NoError(t, w.Cycle(ctx, o))
	require.Equal(t, PhaseMkfs, log.names[0])
	// Budget 1 plans one tiny op at most: the old files are gone with mkfs
	// and the verify (which rejects unknown files) passed.
	require.LessOrEqual(t, len(w.Manifest().Paths()), 1)
	require.Equal(t, int64(2), w.Stats().Rebuilds)
}

// cycleToUmounted runs one cycle on a fresh f and leaves it unmounted.
func cycleToUmounted(t *testing.T, ctx context.Context, f FS, seed uint64) (w *Workload, dev, img, dir string) {
	requireKernel(t, f)
	dev, img = loopDevice(t, sizeFor(f))
	dir = mountPoint(t)
	w = New(seed)
	require.NoError(t, w.Cycle(ctx, CycleOptions{Dev: dev, MountDir: dir, FS: f, Rebuild: true, Budget: kernelBudget}))
	return w, dev, img, dir
}

func TestPlantedDeviceCorruption(t *testing.T) {
	for _, f := range []FS{Ext4, Btrfs} {
		t.Run(f.String(), func(t *testing.T) { plantDeviceCorruption(t, f) })
	}
}

func plantDeviceCorruption(t *testing.T, f FS) {
	ctx := testkit.Context(t, 60*time.Second)
	// A seed per filesystem: the ext4 subtest's superblock (same UUID for
	// the same seed) can linger in the cache of a reused loop device, and
	// mkfs.btrfs then refuses the UUID as non-unique.
	seed := uint64(31)
	if f == Btrfs {
		seed = 131
	}
	w, dev, img, dir := cycleToUmounted(t, ctx, f, seed)
	// A file written whole (one layer), so its block headers are intact.
	var p string
	for _, q := range w.Manifest().Paths() {
		if e := w.Manifest().Files[q]; e.Size >= 2*BlockSize && len(e.Layers) == 1 {
			p = q
			break
		}
	}
	require.NotEmpty(t, p, "seed %d: no whole file of two blocks", seed)
	e := w.Manifest().Files[p]

	// Find the file's second block on the device by its header and flip
	// bytes in the middle of it, through the image file under the loop
	// device, while unmounted.
	hdr := make([]byte, BlockSize)
	e.ReadAt(w.Manifest().Seed, hdr, BlockSize)
	devOff := findBlock(t, img, hdr[:HeaderSize])
	fimg, err := os.OpenFile(img, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = fimg.WriteAt([]byte{0x00, 0xff, 0x00, 0xff}, devOff+200)
	require.NoError(t, err)
	require.NoError(t, fimg.Sync())
	require.NoError(t, fimg.Close())

	require.NoError(t, Mount(ctx, f, dev, dir))
	err = w.Verify(ctx, dir)
	require.ErrorContains(t, err, p)
	if f == Btrfs {
		// btrfs checksums data: the read fails instead of returning the bytes.
		require.ErrorContains(t, err, fmt.Sprintf("read at %d", BlockSize), "device offset %d", devOff)
		require.ErrorContains(t, err, "input/output error")
	} else {
		var mm *Mismatch
		require.ErrorAs(t, err, &mm, "device offset %d", devOff)
		require.Equal(t, p, mm.Path)
		require.Equal(t, int64(BlockSize+200), mm.Offset)
		require.Contains(t, mm.FoundStamp, fmt.Sprintf("file %d gen %d", e.ID, e.Layers[0].Gen))
	}
	t.Logf("planted corruption reported as: %v", err)

	// (b) a file deleted behind the manifest's back is named.
	victim := w.Manifest().Paths()[len(w.Manifest().Paths())-1]
	require.NoError(t, os.Remove(filepath.Join(dir, victim)))
	err = w.Verify(ctx, dir)
	require.ErrorIs(t, err, ErrMissing)
	require.ErrorContains(t, err, victim)
	require.NoError(t, Umount(ctx, dir))
}

// findBlock returns the image offset of the 4 KiB-aligned block starting
// with hdr.
func findBlock(t *testing.T, img string, hdr []byte) int64 {
	f, err := os.Open(img)
	require.NoError(t, err)
	defer f.Close()
	buf := make([]byte, 1<<20)
	for off := int64(0); ; off += int64(len(buf)) {
		n, _ := f.ReadAt(buf, off)
		if n == 0 {
			break
		}
		for i := 0; i+HeaderSize <= n; i += BlockSize {
			if bytes.Equal(buf[i:i+HeaderSize], hdr) {
				return off + int64(i)
			}
		}
	}
	t.Fatalf("block with header %x not found in %s", hdr, img)
	return 0
}

func TestPlantedFsckDamage(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	w, dev, _, _ := cycleToUmounted(t, ctx, Ext4, 32)
	out, err := Fsck(ctx, Ext4, dev)
	require.NoError(t, err, "clean before the damage: %s", out)

	if err := lookTool(tool{"debugfs", "e2fsprogs"}); err != nil {
		t.Skipf("needs debugfs: %v", err)
	}
	p := w.Manifest().Paths()[0]
	cmd := exec.CommandContext(ctx, "debugfs", "-w", "-R", "clri /"+p, dev)
	dout, err := cmd.CombinedOutput()
	require.NoError(t, err, "debugfs: %s", dout)

	out, err = Fsck(ctx, Ext4, dev)
	require.ErrorIs(t, err, ErrNotClean)
	require.NotEmpty(t, out)
	require.ErrorContains(t, err, "e2fsck -f -n "+dev)
	require.ErrorContains(t, err, "exit 4")
	t.Logf("fsck after clri /%s: %v", p, err)
}

func TestUmountBusyNamesHolder(t *testing.T) {
	requireKernel(t, Ext4)
	ctx := testkit.Context(t, 60*time.Second)
	dev, _ := loopDevice(t, sizeFor(Ext4))
	dir := mountPoint(t)
	_, err := Mkfs(ctx, Ext4, dev, 1)
	require.NoError(t, err)
	require.NoError(t, Mount(ctx, Ext4, dev, dir))
	f, err := os.Create(filepath.Join(dir, "held"))
	require.NoError(t, err)
	err = Umount(ctx, dir)
	require.ErrorContains(t, err, "busy")
	require.ErrorContains(t, err, fmt.Sprintf("pid %d", os.Getpid()))
	require.ErrorContains(t, err, "held")
	require.NoError(t, f.Close())
	require.NoError(t, Umount(ctx, dir))
}

func TestMkfsChecksSizeAndTools(t *testing.T) {
	img := filepath.Join(t.TempDir(), "small.img")
	require.NoError(t, os.WriteFile(img, make([]byte, 1<<20), 0o644))
	ctx := testkit.Context(t, 10*time.Second)
	for _, f := range AllFS {
		if CheckTools(f) != nil {
			continue
		}
		_, err := Mkfs(ctx, f, img, 1)
		require.ErrorIs(t, err, ErrTooSmall, "%v", f)
		require.ErrorContains(t, err, fmt.Sprintf("at least %d MiB", MinSize(f)>>20))
	}
	err := lookTool(tool{"no-such-mkfs", "some-package"})
	require.ErrorIs(t, err, ErrToolMissing)
	require.ErrorContains(t, err, "Debian package some-package")
}

func TestCycleFailureStopsAndUnmounts(t *testing.T) {
	requireKernel(t, Btrfs)
	ctx := testkit.Context(t, 60*time.Second)
	dev, _ := loopDevice(t, sizeFor(Btrfs))
	dir := mountPoint(t)
	w := New(41)
	var log phaseLog
	var victim string
	// Delete a file behind the manifest's back right after the remount.
	phase := func(name string, start time.Time, d time.Duration, err error, out string) {
		log.observe(name, start, d, err, out)
		if name == PhaseRemount {
			victim = w.Manifest().Paths()[0]
			require.NoError(t, os.Remove(filepath.Join(dir, victim)))
		}
	}
	err := w.Cycle(ctx, CycleOptions{Dev: dev, MountDir: dir, FS: Btrfs, Rebuild: true, Budget: kernelBudget, Phase: phase})
	require.ErrorIs(t, err, ErrMissing)
	require.ErrorContains(t, err, "cycle 0 btrfs verify")
	require.ErrorContains(t, err, victim)
	require.Equal(t, PhaseVerify, log.names[len(log.names)-1], "stops at the failing phase")
	require.Error(t, log.errs[len(log.errs)-1])
	mounted, merr := Mounted(dir)
	require.NoError(t, merr)
	require.False(t, mounted, "unmounted after the failure")
	require.Zero(t, w.Stats().Cycles)
}

// requireIdentity checks that dev carries the label and UUID of mkfs seed.
func requireIdentity(t *testing.T, dev string, seed uint64) {
	if lookTool(tool{"blkid", "util-linux"}) != nil {
		return
	}
	ctx := testkit.Context(t, 10*time.Second)
	for tag, want := range map[string]string{"UUID": UUID(seed), "LABEL": Label(seed)} {
		out, err := exec.CommandContext(ctx, "blkid", "-p", "-o", "value", "-s", tag, dev).CombinedOutput()
		require.NoError(t, err, "blkid %s: %s", tag, out)
		require.Equal(t, want, strings.TrimSpace(string(out)), tag)
	}
}
