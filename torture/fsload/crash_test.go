// VerifyAfterCrash holds on real filesystems after a real crash: the
// workload writes and syncs, writes more without syncing, the filesystem is
// shut down without flushing (FS_IOC_SHUTDOWN, NOLOGFLUSH), replayed, checked
// by fsck and verified; the settled manifest then carries on with a cycle.
package fsload

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
)

func TestCrashShutdown(t *testing.T) {
	for i, f := range AllFS {
		t.Run(f.String(), func(t *testing.T) {
			requireKernel(t, f)
			ctx := testkit.Context(t, 90*time.Second)
			dev, _ := loopDevice(t, sizeFor(f))
			dir := mountPoint(t)
			w := New(uint64(300 + i))
			_, err := w.Rebuild(ctx, f, dev)
			require.NoError(t, err)
			require.NoError(t, Mount(ctx, f, dev, dir))
			usable, err := w.Usable(dir)
			require.NoError(t, err)
			plan := WriteOptions{Plan: PlanFor(usable, 8<<20)}
			_, err = w.Write(ctx, dir, plan)
			require.NoError(t, err)
			require.NoError(t, w.Sync(ctx, dir))
			_, err = w.Write(ctx, dir, plan)
			require.NoError(t, err)
			require.Positive(t, w.Manifest().PendingCount())
			expected := w.Manifest().Clone()

			if err := Shutdown(dir); errors.Is(err, ErrShutdownUnsupported) {
				t.Skipf("kernel cannot shut down %v: %v", f, err)
			} else {
				require.NoError(t, err)
			}
			require.NoError(t, Umount(ctx, dir))
			require.NoError(t, Mount(ctx, f, dev, dir), "journal replay")
			require.NoError(t, Umount(ctx, dir))
			out, err := Fsck(ctx, f, dev)
			require.NoError(t, err, "seed %d: %s", w.Seed(), out)
			require.NoError(t, Mount(ctx, f, dev, dir))
			require.NoError(t, w.VerifyAfterCrash(ctx, dir), "seed %d", w.Seed())
			require.Zero(t, w.Manifest().PendingCount())
			lost := 0
			for p, e := range expected.Files {
				if got := w.Manifest().Files[p]; e.State == Pending && (got == nil) != e.Absent || got != nil && !got.same(e.Version) {
					lost++
				}
			}
			t.Logf("%v: %d of %d pending paths did not keep their newest version", f, lost, expected.PendingCount())
			require.NoError(t, w.Verify(ctx, dir), "settled manifest is exact")
			require.NoError(t, Umount(ctx, dir))

			require.NoError(t, w.Cycle(ctx, CycleOptions{Dev: dev, MountDir: dir, FS: f, Cycle: 1, Budget: 4 << 20}))
		})
	}
}
