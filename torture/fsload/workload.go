package fsload

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Stats counts what a Workload did over its life.
type Stats struct {
	Cycles        int64 `json:"cycles"`
	Rebuilds      int64 `json:"rebuilds"`
	Ops           int64 `json:"ops"`
	Syncs         int64 `json:"syncs"`
	BytesWritten  int64 `json:"bytes_written"`
	FilesVerified int64 `json:"files_verified"`
	BytesVerified int64 `json:"bytes_verified"`
	// MixedAfterCrash counts files VerifyAfterCrash found holding blocks of
	// several versions (allowed) and removed to settle the manifest.
	MixedAfterCrash int64 `json:"mixed_after_crash"`
}

// Workload is the filesystem workload on one device: the manifest of what
// the filesystem must hold, kept across cycles until a rebuild, and the
// counters. It is not safe for concurrent use; one goroutine drives it.
type Workload struct {
	seed    uint64
	man     *Manifest
	fs      FS // filesystem the manifest describes; FSInvalid before the first rebuild
	writes  uint64
	lastOps []Op
	stats   Stats
}

// New returns a workload whose stamps, plans and mkfs identities derive from
// seed. It starts nothing.
func New(seed uint64) *Workload {
	return &Workload{seed: seed, man: NewManifest(seed)}
}

// Seed returns the workload's seed.
func (w *Workload) Seed() uint64 { return w.seed }

// Manifest returns the live manifest (the expected state). Callers must not
// modify it; Clone it or serialise it with JSON for a failure bundle.
func (w *Workload) Manifest() *Manifest { return w.man }

// Stats returns the counters.
func (w *Workload) Stats() Stats { return w.stats }

// LastOps returns the ops of the last write phase (the op log of a failure
// bundle). The slice must not be modified.
func (w *Workload) LastOps() []Op { return w.lastOps }

// FS returns the filesystem the manifest describes (FSInvalid before the
// first Rebuild).
func (w *Workload) FS() FS { return w.fs }

// Rebuild makes a new filesystem f on dev (Mkfs with an identity drawn from
// the workload seed and rebuild number) and resets the manifest to empty.
func (w *Workload) Rebuild(ctx context.Context, f FS, dev string) (string, error) {
	out, err := Mkfs(ctx, f, dev, w.rebuildSeed(w.stats.Rebuilds))
	// Whatever mkfs did, the old files are no longer to be trusted.
	w.man, w.fs = NewManifest(w.seed), f
	w.stats.Rebuilds++
	return out, err
}

// rebuildSeed is the mkfs seed (label, UUID) of rebuild number n.
// The rebuild number is mixed before it meets the seed: with seed^n,
// seed 11 at rebuild 20 and seed 31 at rebuild 0 made the same UUID, and
// mkfs.btrfs refuses a UUID that any other device carries.
func (w *Workload) rebuildSeed(n int64) uint64 { return mix64(w.seed ^ mix64(uint64(n)+golden)) }

// Usable returns the bytes the workload may count on in the filesystem
// mounted at dir: the space available now (statfs f_bavail) plus what the
// manifest's files occupy. It is far below the device size on small btrfs
// (metadata is duplicated and chunks are reserved up front).
func (w *Workload) Usable(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("fsload: statfs %s: %w", dir, err)
	}
	return int64(st.Bavail)*st.Bsize + w.man.LiveBytes(), nil
}

// PlanFor returns plan options for usable bytes (see Usable): live files
// capped at 45% of them, and a write budget (0: usable/16, at most 256 MiB).
func PlanFor(usable, budget int64) PlanOptions {
	if budget <= 0 {
		budget = min(usable/16, 256<<20)
	}
	return PlanOptions{WriteBytes: max(budget, 1), LiveBytesMax: max(usable*45/100, 1)}
}

// PhaseFunc observes one finished phase of a cycle: its name, when it
// started, how long it took, its error (nil on success) and the tool output
// or a one-line summary.
type PhaseFunc func(name string, start time.Time, d time.Duration, err error, output string)

// CycleOptions describe one cycle.
type CycleOptions struct {
	Dev      string // block device holding the filesystem
	MountDir string // mount point (created if missing)
	FS       FS     // filesystem; must match the last Rebuild unless Rebuild is set
	Rebuild  bool   // mkfs first and reset the manifest (forced on the first cycle)
	Seed     uint64 // seeds this cycle's write plan with Cycle; 0: the workload seed
	Cycle    int    // cycle index, for the plan seed and messages
	Budget   int64  // bytes written this cycle; 0: usable/16 (see Usable)
	Phase    PhaseFunc
}

// Phase names reported by Cycle.
const (
	PhaseMkfs    = "mkfs"
	PhaseMount   = "mount"
	PhaseWrite   = "write"
	PhaseSync    = "sync"
	PhaseUmount  = "umount"
	PhaseFsck    = "fsck"
	PhaseRemount = "remount"
	PhaseVerify  = "verify"
	PhaseFinal   = "final-umount"
)

// umountTimeout bounds the clean-up unmount after a failed phase.
const umountTimeout = 30 * time.Second

// Cycle runs [mkfs] → mount → write → sync → umount → fsck → mount → verify
// → umount, reporting each phase to o.Phase. On the first error it stops,
// unmounts (bounded, best effort) and returns the error wrapped with the
// phase name.
func (w *Workload) Cycle(ctx context.Context, o CycleOptions) (err error) {
	if !o.FS.Valid() {
		panic(fmt.Sprintf("fsload: Cycle with invalid FS %v", o.FS))
	}
	if !o.Rebuild && w.fs != o.FS {
		if w.fs != FSInvalid {
			return fmt.Errorf("fsload: cycle %d: filesystem changed from %v to %v without rebuild", o.Cycle, w.fs, o.FS)
		}
		o.Rebuild = true
	}
	mounted := false
	defer func() {
		if err == nil || !mounted {
			return
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), umountTimeout)
		defer cancel()
		if uerr := Umount(cctx, o.MountDir); uerr != nil {
			err = errors.Join(err, fmt.Errorf("fsload: cycle %d: clean-up: %w", o.Cycle, uerr))
		}
	}()
	phase := func(name string, fn func() (string, error)) error {
		start := time.Now()
		out, perr := fn()
		if o.Phase != nil {
			o.Phase(name, start, time.Since(start), perr, out)
		}
		if perr != nil {
			return fmt.Errorf("fsload: cycle %d %v %s: %w", o.Cycle, o.FS, name, perr)
		}
		return nil
	}
	if o.Rebuild {
		if err := phase(PhaseMkfs, func() (string, error) { return w.Rebuild(ctx, o.FS, o.Dev) }); err != nil {
			return err
		}
	}
	mount := func() (string, error) {
		if err := Mount(ctx, o.FS, o.Dev, o.MountDir); err != nil {
			return "", err
		}
		mounted = true
		return "", nil
	}
	umount := func() (string, error) {
		if err := Umount(ctx, o.MountDir); err != nil {
			return "", err
		}
		mounted = false
		return "", nil
	}
	if err := phase(PhaseMount, mount); err != nil {
		return err
	}
	if err := phase(PhaseWrite, func() (string, error) {
		usable, err := w.Usable(o.MountDir)
		if err != nil {
			return "", err
		}
		seed := o.Seed
		if seed == 0 {
			seed = w.seed
		}
		n, err := w.Write(ctx, o.MountDir, WriteOptions{Seed: mix64(seed ^ uint64(o.Cycle)), Plan: PlanFor(usable, o.Budget)})
		return fmt.Sprintf("%d ops, %d bytes written, %d files, %d live bytes of %d usable",
			len(w.lastOps), n, len(w.man.Paths()), w.man.LiveBytes(), usable), err
	}); err != nil {
		return err
	}
	if err := phase(PhaseSync, func() (string, error) { return "", w.Sync(ctx, o.MountDir) }); err != nil {
		return err
	}
	if err := phase(PhaseUmount, umount); err != nil {
		return err
	}
	if err := phase(PhaseFsck, func() (string, error) { return Fsck(ctx, o.FS, o.Dev) }); err != nil {
		return err
	}
	if err := phase(PhaseRemount, mount); err != nil {
		return err
	}
	if err := phase(PhaseVerify, func() (string, error) {
		before := w.stats
		err := w.Verify(ctx, o.MountDir)
		return fmt.Sprintf("%d files, %d bytes verified", w.stats.FilesVerified-before.FilesVerified,
			w.stats.BytesVerified-before.BytesVerified), err
	}); err != nil {
		return err
	}
	if err := phase(PhaseFinal, umount); err != nil {
		return err
	}
	w.stats.Cycles++
	return nil
}
