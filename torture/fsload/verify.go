package fsload

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// Verification failures, wrapped with the path; content mismatches are
// *Mismatch errors.
var (
	ErrMissing = errors.New("fsload: file missing")
	ErrExtra   = errors.New("fsload: file not in manifest")
	ErrSize    = errors.New("fsload: wrong file size")
	ErrBadType = errors.New("fsload: not a regular file")
)

// problemsMax bounds how many problems one verification reports.
const problemsMax = 8

// showBytes is how many bytes a Mismatch shows from the first bad offset.
const showBytes = 16

// Mismatch is a file whose content differs from the manifest.
type Mismatch struct {
	Path        string
	ID          uint64 // expected file id
	ExpectedGen uint32 // generation expected at Offset (0: zeros)
	Offset      int64  // first differing byte
	Expected    []byte // up to 16 bytes from Offset
	Found       []byte
	FoundStamp  string // what the found block's header says
	Note        string // extra context (after a crash: the versions allowed)
}

func (m *Mismatch) Error() string {
	s := fmt.Sprintf("fsload: %s: content of file %d differs at offset %d: expected gen %d bytes %x, found %x (%s)",
		m.Path, m.ID, m.Offset, m.ExpectedGen, m.Expected, m.Found, m.FoundStamp)
	if m.Note != "" {
		s += "; " + m.Note
	}
	return s
}

// Verify checks dir against the manifest exactly: every file exists with its
// current version's size and bytes, and no other regular file exists (except
// under lost+found). It reports up to 8 problems joined in one error.
func (w *Workload) Verify(ctx context.Context, dir string) error {
	return w.verify(ctx, dir, nil)
}

// VerifyAfterCrash checks dir after the device lost everything that was not
// synced. Synced entries must be exact. A pending entry may hold what any
// version it went through since the last sync (the synced one, intermediate
// ones, the newest) held, and may be missing if it was absent at some point
// since. Precisely, because the kernel writes back pages independently,
// updates the on-disk size as write-back completes, and leaves unwritten
// extents and holes reading as zeros (seen on xfs after a shutdown): the
// file may be no longer than the longest of those versions, and each of its
// 4 KiB blocks must be zeros or equal that block of one of them (zero beyond
// that version's size). Any other bytes — another file's or generation's
// stamps, garbage — are an error naming the file, offset and stamp found.
//
// When the check passes, the manifest is settled to what survived so the
// workload can go on: a pending path takes the version its file holds
// exactly, or is forgotten if the file is missing; a file holding anything
// else allowed (a mixture) is removed (the only change made to the
// filesystem). Then the
// filesystem is synced and every entry is synced. On error the manifest is
// left untouched, for the failure bundle.
func (w *Workload) VerifyAfterCrash(ctx context.Context, dir string) error {
	finds := map[string]*Version{}
	if err := w.verify(ctx, dir, finds); err != nil {
		return err
	}
	for _, p := range slices.Sorted(maps.Keys(w.man.Files)) {
		e := w.man.Files[p]
		if e.State != Pending {
			continue
		}
		v, found := finds[p]
		switch {
		case !found:
			delete(w.man.Files, p)
		case v == nil:
			if err := os.Remove(filepath.Join(dir, filepath.FromSlash(p))); err != nil {
				return fmt.Errorf("fsload: settle after crash: remove mixed %s: %w", p, err)
			}
			delete(w.man.Files, p)
			w.stats.MixedAfterCrash++
		default:
			e.Version = *v
		}
	}
	if err := w.Sync(ctx, dir); err != nil {
		return fmt.Errorf("fsload: settle after crash: %w", err)
	}
	return nil
}

// verify checks dir against the manifest. With finds nil the check is exact;
// otherwise it is the after-crash check and finds receives, for each pending
// path whose file exists, the version the file holds whole (nil: a mixture).
func (w *Workload) verify(ctx context.Context, dir string, finds map[string]*Version) error {
	crash := finds != nil
	var problems []error
	var dropped int
	report := func(err error) {
		if len(problems) < problemsMax {
			problems = append(problems, err)
		} else {
			dropped++
		}
	}
	found := map[string]bool{}
	walkErr := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			report(fmt.Errorf("fsload: walk %s: %w", p, err))
			return nil
		}
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel == "lost+found" {
				return fs.SkipDir
			}
			return nil
		}
		found[rel] = true
		e := w.man.Files[rel]
		if e == nil || (e.Absent && (!crash || e.State == Synced)) {
			report(fmt.Errorf("%w: %s", ErrExtra, rel))
			return nil
		}
		if !d.Type().IsRegular() {
			report(fmt.Errorf("%w: %s is %v", ErrBadType, rel, d.Type()))
			return nil
		}
		var cerr error
		if crash && e.State == Pending {
			var v *Version
			v, cerr = w.checkCandidates(ctx, p, rel, e)
			finds[rel] = v
		} else {
			cerr = w.checkExact(ctx, p, rel, &e.Version)
		}
		if cerr != nil {
			report(cerr)
		}
		return nil
	})
	if walkErr != nil {
		return fmt.Errorf("fsload: verify %s: %w", dir, walkErr)
	}
	for _, rel := range w.man.Paths() {
		if found[rel] {
			continue
		}
		e := w.man.Files[rel]
		if crash && e.State == Pending && slices.ContainsFunc(e.Before, func(v Version) bool { return v.Absent }) {
			continue
		}
		report(fmt.Errorf("%w: %s (file %d gen %d size %d, %v)", ErrMissing, rel, e.ID, e.Gen, e.Size, e.State))
	}
	if len(problems) == 0 {
		return nil
	}
	if dropped > 0 {
		problems = append(problems, fmt.Errorf("fsload: ... and %d more problems", dropped))
	}
	return fmt.Errorf("fsload: verify %s: %d problems: %w", dir, len(problems), errors.Join(problems...))
}

// checkExact compares the file at p with version v byte for byte.
func (w *Workload) checkExact(ctx context.Context, p, rel string, v *Version) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("fsload: verify %s: %w", rel, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("fsload: verify %s: %w", rel, err)
	}
	var sizeErr error
	if st.Size() != v.Size {
		sizeErr = fmt.Errorf("%w: %s (file %d gen %d): size %d, expected %d", ErrSize, rel, v.ID, v.Gen, st.Size(), v.Size)
	}
	n := min(st.Size(), v.Size)
	got, want := make([]byte, ioChunk), make([]byte, ioChunk)
	for off := int64(0); off < n; off += ioChunk {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("fsload: verify %s: %w", rel, err)
		}
		c := min(ioChunk, n-off)
		if err := readChunk(f, got[:c], off); err != nil {
			return errors.Join(sizeErr, fmt.Errorf("fsload: verify %s (file %d gen %d): %w", rel, v.ID, v.Gen, err))
		}
		v.ReadAt(w.man.Seed, want[:c], off)
		if i := firstDiff(got[:c], want[:c]); i >= 0 {
			return errors.Join(sizeErr, w.mismatch(f, rel, v, off+int64(i), got[:c], want[:c], off))
		}
		w.stats.BytesVerified += c
	}
	if sizeErr != nil {
		return sizeErr
	}
	w.stats.FilesVerified++
	return nil
}

// mismatch builds the error for the first differing byte at abs, with got and
// want holding the chunk read at chunkOff.
func (w *Workload) mismatch(f *os.File, rel string, v *Version, abs int64, got, want []byte, chunkOff int64) *Mismatch {
	i := abs - chunkOff
	end := min(i+showBytes, int64(len(got)))
	blockStart := make([]byte, HeaderSize)
	if _, err := f.ReadAt(blockStart, abs&^(BlockSize-1)); err != nil && !errors.Is(err, io.EOF) {
		blockStart = nil
	}
	return &Mismatch{
		Path: rel, ID: v.ID, ExpectedGen: v.genAt(abs), Offset: abs,
		Expected:   slices.Clone(want[i:end]),
		Found:      slices.Clone(got[i:end]),
		FoundStamp: describeFound(got[i:end], blockStart, abs),
	}
}

// readChunk reads len(p) bytes at off; on a read error it retries block by
// block so the error names the first unreadable block.
func readChunk(f *os.File, p []byte, off int64) error {
	_, err := f.ReadAt(p, off)
	if err == nil || errors.Is(err, io.EOF) {
		return nil
	}
	for b := 0; b < len(p); b += BlockSize {
		if _, berr := f.ReadAt(p[b:min(b+BlockSize, len(p))], off+int64(b)); berr != nil && !errors.Is(berr, io.EOF) {
			return fmt.Errorf("read at %d: %w", off+int64(b), berr)
		}
	}
	return fmt.Errorf("read at %d (len %d): %w", off, len(p), err)
}

func firstDiff(a, b []byte) int {
	if string(a) == string(b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// checkCandidates checks a pending entry's file after a crash against every
// version the path went through since the last sync. It returns the version
// the file holds whole, or nil when it holds anything else allowed.
func (w *Workload) checkCandidates(ctx context.Context, p, rel string, e *Entry) (*Version, error) {
	var cands []Version
	var sizeMax int64
	for _, v := range e.candidates() {
		if !v.Absent {
			cands = append(cands, v)
			sizeMax = max(sizeMax, v.Size)
		}
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("fsload: verify %s: %w", rel, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("fsload: verify %s: %w", rel, err)
	}
	size := st.Size()
	if size > sizeMax {
		var sizes []string
		for _, v := range cands {
			sizes = append(sizes, fmt.Sprintf("%d (file %d gen %d)", v.Size, v.ID, v.Gen))
		}
		sort.Strings(sizes)
		return nil, fmt.Errorf("%w: %s after crash: size %d, larger than all allowed versions: %s",
			ErrSize, rel, size, strings.Join(sizes, ", "))
	}
	whole := make([]bool, len(cands))
	for i := range cands {
		whole[i] = cands[i].Size == size
	}
	got := make([]byte, ioChunk)
	want := make([]byte, BlockSize)
	for off := int64(0); off < size; off += ioChunk {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("fsload: verify %s: %w", rel, err)
		}
		c := min(ioChunk, size-off)
		if err := readChunk(f, got[:c], off); err != nil {
			return nil, fmt.Errorf("fsload: verify %s: %w", rel, err)
		}
		for b := int64(0); b < c; b += BlockSize {
			blk := got[b:min(b+BlockSize, c)]
			ok := isZero(blk)
			for i := range cands {
				if !ok || whole[i] {
					cands[i].ReadAt(w.man.Seed, want[:len(blk)], off+b)
					match := string(blk) == string(want[:len(blk)])
					ok = ok || match
					whole[i] = whole[i] && match
				}
			}
			if ok {
				continue
			}
			// Report against the newest version.
			cands[0].ReadAt(w.man.Seed, want[:len(blk)], off+b)
			d := max(firstDiff(blk, want[:len(blk)]), 0)
			m := w.mismatch(f, rel, &cands[0], off+b+int64(d), blk, want[:len(blk)], off+b)
			m.Note = fmt.Sprintf("block at %d is neither zeros nor that block of any of the %d versions allowed after a crash",
				off+b, len(cands))
			return nil, m
		}
		w.stats.BytesVerified += c
	}
	w.stats.FilesVerified++
	for i := range cands {
		if whole[i] {
			v := cands[i].clone()
			return &v, nil
		}
	}
	return nil, nil
}
