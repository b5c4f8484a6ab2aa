package fsload

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
)

// State says whether an entry's current version is known to be on stable
// storage.
type State uint8

const (
	// Synced: a syncfs completed after the last change; after any crash the
	// file must hold exactly this version.
	Synced State = iota
	// Pending: changed since the last syncfs; after a crash the path may hold
	// any version listed in the entry (see Entry.Before).
	Pending
)

func (s State) String() string {
	switch s {
	case Synced:
		return "synced"
	case Pending:
		return "pending"
	default:
		return fmt.Sprintf("State(%d)", uint8(s))
	}
}

// MarshalText encodes the state by name.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText decodes "synced" or "pending".
func (s *State) UnmarshalText(b []byte) error {
	switch string(b) {
	case "synced":
		*s = Synced
	case "pending":
		*s = Pending
	default:
		return fmt.Errorf("fsload: unknown state %q", b)
	}
	return nil
}

// Layer is one write of a file version: the stamp bytes of generation Gen at
// file offsets [Off, Off+Len). Later layers cover earlier ones; bytes no
// layer covers are zeros (holes from extending or sparse patches).
type Layer struct {
	Gen uint32 `json:"gen"`
	Off int64  `json:"off"`
	Len int64  `json:"len"`
}

// Version is what a path holds: either nothing (Absent) or the file with id
// ID whose content is Layers clipped to Size.
type Version struct {
	Absent bool    `json:"absent,omitempty"`
	ID     uint64  `json:"id,omitempty"`
	Gen    uint32  `json:"gen,omitempty"` // newest generation written to the file
	Size   int64   `json:"size"`
	Layers []Layer `json:"layers,omitempty"`
	SHA256 string  `json:"sha256,omitempty"` // of the expected content; empty while planning
}

// ReadAt fills p with the expected bytes of v at offset off for stamps of
// seed. Bytes past Size are zeros.
func (v *Version) ReadAt(seed uint64, p []byte, off int64) {
	clear(p)
	end := off + int64(len(p))
	for _, l := range v.Layers {
		lo, hi := max(off, l.Off), min(end, l.Off+l.Len, v.Size)
		if lo < hi {
			FillStamp(p[lo-off:hi-off], seed, v.ID, l.Gen, lo)
		}
	}
}

// genAt returns the generation whose bytes v holds at off (0: zeros).
func (v *Version) genAt(off int64) uint32 {
	g := uint32(0)
	for _, l := range v.Layers {
		if off >= l.Off && off < l.Off+l.Len && off < v.Size {
			g = l.Gen
		}
	}
	return g
}

// Sum returns the hex SHA-256 of v's expected content.
func (v *Version) Sum(seed uint64) string {
	h := sha256.New()
	buf := make([]byte, 256<<10)
	for off := int64(0); off < v.Size; off += int64(len(buf)) {
		n := min(int64(len(buf)), v.Size-off)
		v.ReadAt(seed, buf[:n], off)
		h.Write(buf[:n])
	}
	return hex.EncodeToString(h.Sum(nil))
}

func (v Version) clone() Version {
	v.Layers = slices.Clone(v.Layers)
	return v
}

func (v *Version) same(o Version) bool {
	return v.Absent == o.Absent && v.ID == o.ID && v.Size == o.Size && slices.Equal(v.Layers, o.Layers)
}

// Entry is the manifest record of one path: its current version, whether that
// is synced, and for pending entries what else a crash may leave there.
type Entry struct {
	Version
	State State `json:"state"`
	// Before lists, for a pending entry, the version at the last sync
	// (Absent if the path did not exist then) followed by every intermediate
	// version since. Empty for synced entries.
	Before []Version `json:"before,omitempty"`
}

// candidates returns every version a crash may leave at the path.
func (e *Entry) candidates() []Version {
	return append([]Version{e.Version}, e.Before...)
}

// Manifest is the expected state of the workload's files: path (relative to
// the mount point, slash separated) → Entry. It serialises to JSON for a
// failure bundle and loads back with LoadManifest.
type Manifest struct {
	Seed   uint64            `json:"seed"`
	NextID uint64            `json:"next_id"`
	Files  map[string]*Entry `json:"files"`
}

// NewManifest returns an empty manifest for stamps of seed.
func NewManifest(seed uint64) *Manifest {
	return &Manifest{Seed: seed, NextID: 1, Files: map[string]*Entry{}}
}

// Paths returns the paths of entries whose current version exists, sorted.
func (m *Manifest) Paths() []string {
	out := make([]string, 0, len(m.Files))
	for p, e := range m.Files {
		if !e.Absent {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

// LiveBytes returns the total size of the files that currently exist.
func (m *Manifest) LiveBytes() int64 {
	var n int64
	for _, e := range m.Files {
		if !e.Absent {
			n += e.Size
		}
	}
	return n
}

// PendingCount returns the number of entries changed since the last sync.
func (m *Manifest) PendingCount() int {
	n := 0
	for _, e := range m.Files {
		if e.State == Pending {
			n++
		}
	}
	return n
}

// Clone returns a deep copy.
func (m *Manifest) Clone() *Manifest {
	c := &Manifest{Seed: m.Seed, NextID: m.NextID, Files: make(map[string]*Entry, len(m.Files))}
	for p, e := range m.Files {
		ne := &Entry{Version: e.Version.clone(), State: e.State, Before: make([]Version, len(e.Before))}
		for i := range e.Before {
			ne.Before[i] = e.Before[i].clone()
		}
		c.Files[p] = ne
	}
	return c
}

// MarkSynced records a completed syncfs: every current version is synced and
// deleted paths are forgotten.
func (m *Manifest) MarkSynced() {
	for _, p := range slices.Collect(maps.Keys(m.Files)) {
		e := m.Files[p]
		if e.Absent {
			delete(m.Files, p)
			continue
		}
		e.State, e.Before = Synced, nil
	}
}

// Apply records op, already performed on the filesystem, computing the new
// version's checksum. It returns an error if op does not fit the manifest.
func (m *Manifest) Apply(op Op) error { return m.apply(op, true) }

// change returns the entry for path prepared for a modification: the current
// version is remembered as a crash candidate.
func (m *Manifest) change(path string) *Entry {
	e := m.Files[path]
	if e == nil {
		e = &Entry{Version: Version{Absent: true}, State: Synced}
		m.Files[path] = e
	}
	if e.State == Synced {
		e.State, e.Before = Pending, []Version{e.Version.clone()}
		return e
	}
	for i := range e.Before {
		if e.Before[i].same(e.Version) {
			return e
		}
	}
	e.Before = append(e.Before, e.Version.clone())
	return e
}

func (m *Manifest) live(path string) (*Entry, error) {
	e := m.Files[path]
	if e == nil || e.Absent {
		return nil, fmt.Errorf("fsload: manifest: %s does not exist", path)
	}
	return e, nil
}

func (m *Manifest) apply(op Op, sum bool) error {
	var v *Version
	switch op.Kind {
	case OpCreate:
		if e := m.Files[op.Path]; e != nil && !e.Absent {
			return fmt.Errorf("fsload: manifest: create %s: exists", op.Path)
		}
		e := m.change(op.Path)
		e.Version = Version{ID: op.ID, Gen: 1, Size: op.Len, Layers: []Layer{{Gen: 1, Off: 0, Len: op.Len}}}
		m.NextID = max(m.NextID, op.ID+1)
		v = &e.Version
	case OpRewrite, OpPatch, OpTruncate:
		if _, err := m.live(op.Path); err != nil {
			return fmt.Errorf("%v: %w", op, err)
		}
		e := m.change(op.Path)
		e.Layers = slices.Clone(e.Layers)
		switch op.Kind {
		case OpRewrite:
			e.Gen, e.Size, e.Layers = op.Gen, op.Len, []Layer{{Gen: op.Gen, Off: 0, Len: op.Len}}
		case OpPatch:
			e.Gen = op.Gen
			e.Layers = append(e.Layers, Layer{Gen: op.Gen, Off: op.Off, Len: op.Len})
			e.Size = max(e.Size, op.Off+op.Len)
		case OpTruncate:
			e.Size = op.Len
			e.Layers = clipLayers(e.Layers, op.Len)
		}
		v = &e.Version
	case OpDelete:
		if _, err := m.live(op.Path); err != nil {
			return fmt.Errorf("%v: %w", op, err)
		}
		e := m.change(op.Path)
		e.Version = Version{Absent: true}
	case OpRename:
		src, err := m.live(op.Path)
		if err != nil {
			return fmt.Errorf("%v: %w", op, err)
		}
		if e := m.Files[op.To]; e != nil && !e.Absent {
			return fmt.Errorf("fsload: manifest: %v: target exists", op)
		}
		// A crash may keep the rename but lose the data changes before it,
		// so the target may hold any version the source might have held.
		srcCands := src.candidates()
		moved := src.Version.clone()
		m.change(op.Path).Version = Version{Absent: true}
		dst := m.change(op.To)
		dst.Version = moved
		for _, v := range srcCands {
			if v.Absent || v.same(dst.Version) || slices.ContainsFunc(dst.Before, (&v).same) {
				continue
			}
			dst.Before = append(dst.Before, v.clone())
		}
		m.NextID = max(m.NextID, op.ID+1)
	default:
		panic(fmt.Sprintf("fsload: apply of invalid op %v", op))
	}
	if v != nil {
		v.SHA256 = ""
		if sum {
			v.SHA256 = v.Sum(m.Seed)
		}
		m.followRenames(op.Path, *v)
	}
	return nil
}

// followRenames adds v, a new version of the file at path, to the crash
// candidates of every path the same file left by a rename since the last
// sync: a crash may lose the rename and keep the data written through the
// new name (the inode is the same), so the old name may show v too.
func (m *Manifest) followRenames(path string, v Version) {
	for p, e := range m.Files {
		if p == path || e.State != Pending || !e.Absent {
			continue
		}
		if !slices.ContainsFunc(e.Before, func(b Version) bool { return !b.Absent && b.ID == v.ID }) {
			continue
		}
		if !slices.ContainsFunc(e.Before, (&v).same) {
			e.Before = append(e.Before, v.clone())
		}
	}
}

// clipLayers drops what lies at or past size, so a later extension reads
// zeros there as the kernel does.
func clipLayers(ls []Layer, size int64) []Layer {
	out := ls[:0]
	for _, l := range ls {
		if l.Off >= size {
			continue
		}
		l.Len = min(l.Len, size-l.Off)
		out = append(out, l)
	}
	return out
}

// JSON returns the manifest as indented JSON (sorted paths, so equal
// manifests give equal bytes).
func (m *Manifest) JSON() ([]byte, error) {
	b, err := json.MarshalIndent(m, "", " ")
	if err != nil {
		return nil, fmt.Errorf("fsload: manifest json: %w", err)
	}
	return b, nil
}

// LoadManifest decodes a manifest written by JSON and checks it is
// consistent: every checksum matches the content its layers describe.
func LoadManifest(b []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("fsload: load manifest: %w", err)
	}
	if m.Files == nil {
		m.Files = map[string]*Entry{}
	}
	if err := m.Check(); err != nil {
		return nil, fmt.Errorf("fsload: load manifest: %w", err)
	}
	return &m, nil
}

// Check verifies the manifest's own consistency: sizes are not negative and
// every non-empty checksum matches the content the layers describe.
func (m *Manifest) Check() error {
	for _, p := range slices.Sorted(maps.Keys(m.Files)) {
		e := m.Files[p]
		if e == nil {
			return fmt.Errorf("fsload: manifest: %s: null entry", p)
		}
		for _, v := range e.candidates() {
			if v.Size < 0 {
				return fmt.Errorf("fsload: manifest: %s: negative size %d", p, v.Size)
			}
			if !v.Absent && v.SHA256 != "" && v.Sum(m.Seed) != v.SHA256 {
				return fmt.Errorf("fsload: manifest: %s: file %d checksum %s does not match its layers", p, v.ID, v.SHA256)
			}
		}
	}
	return nil
}
