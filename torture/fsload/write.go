package fsload

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ioChunk is the unit of reads and writes of file content.
const ioChunk = 256 << 10

// WriteOptions configure one write phase.
type WriteOptions struct {
	// Seed keys the plan's random generator together with the number of
	// write phases the Workload has run; 0 means the Workload's seed.
	Seed uint64
	// Plan bounds the phase (budget, live bytes, ops, files).
	Plan PlanOptions
}

// Write runs one write phase in dir (the mount point): it plans ops from a
// seeded generator and performs them one after another, recording each in
// the manifest as pending once it returned. It returns the number of bytes
// written. On error the manifest holds every op that completed; the failing
// op's effect is unknown and the error names it.
func (w *Workload) Write(ctx context.Context, dir string, o WriteOptions) (int64, error) {
	seed := o.Seed
	if seed == 0 {
		seed = w.seed
	}
	rng := rand.New(rand.NewPCG(seed, mix64(w.writes^0x5717e)))
	w.writes++
	ops := Plan(rng, w.man, o.Plan)
	w.lastOps = ops
	buf := make([]byte, ioChunk)
	var written int64
	for i, op := range ops {
		if err := ctx.Err(); err != nil {
			return written, fmt.Errorf("fsload: write phase in %s: before op %d/%d %v: %w", dir, i, len(ops), op, err)
		}
		n, err := w.perform(ctx, dir, op, buf)
		written += n
		w.stats.BytesWritten += n
		if err != nil {
			return written, fmt.Errorf("fsload: write phase in %s: op %d/%d: %w", dir, i, len(ops), err)
		}
		if err := w.man.Apply(op); err != nil {
			panic(fmt.Sprintf("fsload: performed op does not apply to the manifest: %v", err))
		}
		w.stats.Ops++
	}
	return written, nil
}

// perform does op on the filesystem under dir.
func (w *Workload) perform(ctx context.Context, dir string, op Op, buf []byte) (int64, error) {
	full := filepath.Join(dir, filepath.FromSlash(op.Path))
	switch op.Kind {
	case OpCreate, OpRewrite:
		gen := op.Gen
		if op.Kind == OpCreate {
			gen = 1
		}
		id := op.ID
		if op.Kind == OpRewrite {
			id = w.man.Files[op.Path].ID
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return 0, fmt.Errorf("%v: %w", op, err)
		}
		f, err := os.OpenFile(full, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return 0, fmt.Errorf("%v: %w", op, err)
		}
		n, err := w.writeStamp(ctx, f, id, gen, 0, op.Len, buf)
		if cerr := f.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			return n, fmt.Errorf("%v: %w", op, err)
		}
		return n, nil
	case OpPatch:
		f, err := os.OpenFile(full, os.O_WRONLY, 0)
		if err != nil {
			return 0, fmt.Errorf("%v: %w", op, err)
		}
		n, err := w.writeStamp(ctx, f, w.man.Files[op.Path].ID, op.Gen, op.Off, op.Len, buf)
		if cerr := f.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			return n, fmt.Errorf("%v: %w", op, err)
		}
		return n, nil
	case OpTruncate:
		if err := os.Truncate(full, op.Len); err != nil {
			return 0, fmt.Errorf("%v: %w", op, err)
		}
	case OpDelete:
		if err := os.Remove(full); err != nil {
			return 0, fmt.Errorf("%v: %w", op, err)
		}
	case OpRename:
		to := filepath.Join(dir, filepath.FromSlash(op.To))
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			return 0, fmt.Errorf("%v: %w", op, err)
		}
		if err := os.Rename(full, to); err != nil {
			return 0, fmt.Errorf("%v: %w", op, err)
		}
	default:
		panic(fmt.Sprintf("fsload: perform of invalid op %v", op))
	}
	return 0, nil
}

// writeStamp writes the stamp bytes of (id, gen) at [off, off+n) of f.
func (w *Workload) writeStamp(ctx context.Context, f *os.File, id uint64, gen uint32, off, n int64, buf []byte) (int64, error) {
	var done int64
	for done < n {
		if err := ctx.Err(); err != nil {
			return done, err
		}
		c := min(int64(len(buf)), n-done)
		FillStamp(buf[:c], w.man.Seed, id, gen, off+done)
		k, err := f.WriteAt(buf[:c], off+done)
		done += int64(k)
		if err != nil {
			return done, fmt.Errorf("write at %d: %w", off+done, err)
		}
	}
	return done, nil
}

// Sync flushes the filesystem holding dir with syncfs(2); once it returned
// without error every pending manifest entry is synced.
func (w *Workload) Sync(ctx context.Context, dir string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fsload: syncfs %s: %w", dir, err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("fsload: syncfs %s: open: %w", dir, err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("fsload: syncfs %s: %w", dir, err)
	}
	w.man.MarkSynced()
	w.stats.Syncs++
	return nil
}
