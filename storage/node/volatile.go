package node

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"

	"dst/internal/bugs"
	"dst/storage/nbd"
)

// VolatileUnit is the atomic unit of a Volatile node's cache: a power cut
// keeps or loses each cached unit whole, never part of one (a disk's
// physical sector).
const VolatileUnit = 4096

// DefaultVolatileCache bounds a Volatile node's cache when
// VolatileOptions.MaxBytes is zero.
const DefaultVolatileCache = 64 << 20

// ErrPowerCut is wrapped by every error of a Volatile node after PowerCut:
// the machine it stands for has no power.
var ErrPowerCut = errors.New("node: power cut")

// VolatileOptions configure a Volatile node.
type VolatileOptions struct {
	// Seed seeds the cache's own choices: which units it writes back when
	// full, and which unflushed units survive a power cut.
	Seed uint64
	// MaxBytes bounds the cache (DefaultVolatileCache when zero); when a
	// write would pass it, seeded units of the cache are written back
	// first, as a disk destages on its own and in its own order.
	MaxBytes int64
}

// VolatileStats count what a Volatile node did.
type VolatileStats struct {
	// Cached is the number of bytes held in the cache now (unflushed).
	Cached int64
	// WrittenBack counts units written back when the cache was full.
	WrittenBack int64
	// Flushed counts units written back by FLUSH, FUA or Close.
	Flushed int64
	// Kept and Lost count the units a power cut wrote back and lost.
	Kept, Lost int64
}

// Volatile is a Node with a volatile write cache in front of another
// node, as a disk with its write cache on: the model of a machine that can
// lose power, for the torture harness.
//
// Durability contract (what a power cut keeps):
//   - A write acknowledged with CmdFlagFUA, and every write acknowledged
//     before a FLUSH that was then acknowledged, is on the node below and
//     survives a power cut.
//   - Any other acknowledged write may be lost at a power cut, each
//     VolatileUnit of it independently (PowerCut's tornPercent keeps a
//     seeded subset of its units); a unit is never half old and half new.
//   - TRIM and WRITE_ZEROES go through to the node below at once (a cache
//     may always write back early).
//
// Reads see every acknowledged write. After PowerCut every request fails
// with an error wrapping ErrPowerCut and ErrUnavailable; the node below
// holds what was durable plus the kept units.
type Volatile struct {
	under Node
	opts  VolatileOptions

	mu    sync.Mutex
	rng   *rand.Rand
	cache map[int64]*volatileUnit // by unit index
	keys  []int64                 // the cached unit indexes, for seeded choice
	stats VolatileStats
	cut   bool
}

type volatileUnit struct {
	slot int // index in keys
	data []byte
}

var _ Node = (*Volatile)(nil)

// NewVolatile puts a volatile cache in front of under. The cache starts
// empty: what under holds is what is durable.
func NewVolatile(under Node, opts VolatileOptions) (*Volatile, error) {
	if opts.MaxBytes < 0 {
		return nil, fmt.Errorf("node: volatile cache size %d is negative", opts.MaxBytes)
	}
	if opts.MaxBytes == 0 {
		opts.MaxBytes = DefaultVolatileCache
	}
	if opts.MaxBytes < VolatileUnit {
		opts.MaxBytes = VolatileUnit
	}
	return &Volatile{
		under: under,
		opts:  opts,
		rng:   rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x766f6c6174696c65)),
		cache: make(map[int64]*volatileUnit),
	}, nil
}

// Size returns the size of the node below.
func (v *Volatile) Size() int64 { return v.under.Size() }

// Flags returns the node below's flags with FLUSH and FUA, which a
// volatile cache honours whatever is below, and without the fast paths the
// cache cannot offer.
func (v *Volatile) Flags() nbd.TransmissionFlags {
	return v.under.Flags() | nbd.FlagSendFlush | nbd.FlagSendFUA
}

// String names the node below.
func (v *Volatile) String() string { return "volatile:" + v.under.String() }

// Stats returns the counts so far.
func (v *Volatile) Stats() VolatileStats {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := v.stats
	s.Cached = v.cachedBytes()
	return s
}

func (v *Volatile) cachedBytes() int64 { return int64(len(v.keys)) * VolatileUnit }

func (v *Volatile) check() error {
	if v.cut {
		return fmt.Errorf("%v: %w: %w", v, ErrPowerCut, ErrUnavailable)
	}
	return nil
}

// unitSpan is the byte range of unit u, cut at the node's end.
func (v *Volatile) unitSpan(u int64) (off, n int64) {
	off = u * VolatileUnit
	return off, min(VolatileUnit, v.under.Size()-off)
}

// ReadAt implements nbd.Backend: what is below, overlaid by the cache.
func (v *Volatile) ReadAt(ctx context.Context, p []byte, off int64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.check(); err != nil {
		return err
	}
	if err := v.under.ReadAt(ctx, p, off); err != nil {
		return err
	}
	end := off + int64(len(p))
	for u := off / VolatileUnit; u*VolatileUnit < end; u++ {
		if c := v.cache[u]; c != nil {
			overlay(p, off, c.data, u*VolatileUnit)
		}
	}
	return nil
}

// overlay copies the part of src (at srcOff) that overlaps dst (at dstOff)
// into dst and returns how many bytes it copied.
func overlay(dst []byte, dstOff int64, src []byte, srcOff int64) int {
	lo := max(dstOff, srcOff)
	hi := min(dstOff+int64(len(dst)), srcOff+int64(len(src)))
	if lo >= hi {
		return 0
	}
	return copy(dst[lo-dstOff:hi-dstOff], src[lo-srcOff:hi-srcOff])
}

// WriteAt implements nbd.Backend. Without CmdFlagFUA the data stays in
// the cache; with it, the units it touches are written through and made
// durable before WriteAt returns.
func (v *Volatile) WriteAt(ctx context.Context, p []byte, off int64, flags nbd.CmdFlags) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.check(); err != nil {
		return err
	}
	end := off + int64(len(p))
	first, last := off/VolatileUnit, (end-1)/VolatileUnit
	if flags&nbd.CmdFlagFUA != 0 {
		// Merge p into the cached units it touches, then write those units
		// and p itself through; nothing of the range stays cached.
		for u := first; u <= last; u++ {
			if c := v.cache[u]; c != nil {
				overlay(c.data, u*VolatileUnit, p, off)
			}
		}
		if err := v.writeBack(ctx, first, last, &v.stats.Flushed); err != nil {
			return err
		}
		if v.under.Flags()&nbd.FlagSendFUA == 0 {
			if err := v.under.WriteAt(ctx, p, off, 0); err != nil {
				return err
			}
			return v.under.Flush(ctx)
		}
		return v.under.WriteAt(ctx, p, off, nbd.CmdFlagFUA)
	}
	if need := (last-first+1)*VolatileUnit + v.cachedBytes() - v.opts.MaxBytes; need > 0 {
		if err := v.destage(ctx, need); err != nil {
			return err
		}
	}
	for u := first; u <= last; u++ {
		c := v.cache[u]
		if c == nil {
			uoff, n := v.unitSpan(u)
			c = &volatileUnit{slot: len(v.keys), data: make([]byte, n)}
			if uoff < off || uoff+n > end {
				// A partial unit: the rest of it comes from below.
				if err := v.under.ReadAt(ctx, c.data, uoff); err != nil {
					return err
				}
			}
			v.cache[u] = c
			v.keys = append(v.keys, u)
		}
		overlay(c.data, u*VolatileUnit, p, off)
	}
	return nil
}

// destage writes back seeded units until need bytes are free.
func (v *Volatile) destage(ctx context.Context, need int64) error {
	for need > 0 && len(v.keys) > 0 {
		u := v.keys[v.rng.IntN(len(v.keys))]
		if err := v.writeBack(ctx, u, u, &v.stats.WrittenBack); err != nil {
			return err
		}
		need -= VolatileUnit
	}
	return nil
}

// writeBack writes the cached units among first..last below, contiguous
// ones in one request, drops them from the cache and counts them in n.
func (v *Volatile) writeBack(ctx context.Context, first, last int64, n *int64) error {
	var run []int64
	flush := func() error {
		if len(run) == 0 {
			return nil
		}
		off, _ := v.unitSpan(run[0])
		buf := make([]byte, 0, len(run)*VolatileUnit)
		for _, u := range run {
			buf = append(buf, v.cache[u].data...)
		}
		if err := v.under.WriteAt(ctx, buf, off, 0); err != nil {
			return err
		}
		for _, u := range run {
			v.drop(u)
		}
		*n += int64(len(run))
		run = run[:0]
		return nil
	}
	for u := first; u <= last; u++ {
		if v.cache[u] == nil {
			if err := flush(); err != nil {
				return err
			}
			continue
		}
		run = append(run, u)
	}
	return flush()
}

// drop removes unit u from the cache.
func (v *Volatile) drop(u int64) {
	c := v.cache[u]
	if c == nil {
		return
	}
	lastKey := v.keys[len(v.keys)-1]
	v.keys[c.slot] = lastKey
	v.cache[lastKey].slot = c.slot
	v.keys = v.keys[:len(v.keys)-1]
	delete(v.cache, u)
}

// Flush implements nbd.Backend: every cached unit is written back, then
// the node below is flushed.
func (v *Volatile) Flush(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.check(); err != nil {
		return err
	}
	if bugs.On(bugs.FlushNoop) {
		return nil
	}
	if err := v.flushAll(ctx); err != nil {
		return err
	}
	return v.under.Flush(ctx)
}

func (v *Volatile) flushAll(ctx context.Context) error {
	keys := slices.Clone(v.keys)
	slices.Sort(keys)
	for i := 0; i < len(keys); {
		j := i + 1
		for j < len(keys) && keys[j] == keys[j-1]+1 {
			j++
		}
		if err := v.writeBack(ctx, keys[i], keys[j-1], &v.stats.Flushed); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// zeroRange readies the cache for a TRIM or WRITE_ZEROES of [off,
// off+length), which goes to the node below: cached units it covers whole
// are dropped, the others it touches are written back first, so each unit
// below is still one whole version.
func (v *Volatile) zeroRange(ctx context.Context, off, length int64) error {
	end := off + length
	for u := off / VolatileUnit; u*VolatileUnit < end; u++ {
		c := v.cache[u]
		if c == nil {
			continue
		}
		uoff := u * VolatileUnit
		if uoff >= off && uoff+int64(len(c.data)) <= end {
			v.drop(u)
			continue
		}
		if err := v.writeBack(ctx, u, u, &v.stats.WrittenBack); err != nil {
			return err
		}
	}
	return nil
}

// Trim implements nbd.Backend; it goes through to the node below.
func (v *Volatile) Trim(ctx context.Context, off, length int64, flags nbd.CmdFlags) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.check(); err != nil {
		return err
	}
	if err := v.zeroRange(ctx, off, length); err != nil {
		return err
	}
	return v.under.Trim(ctx, off, length, flags)
}

// WriteZeroes implements nbd.Backend; it goes through to the node below.
func (v *Volatile) WriteZeroes(ctx context.Context, off, length int64, flags nbd.CmdFlags) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.check(); err != nil {
		return err
	}
	if err := v.zeroRange(ctx, off, length); err != nil {
		return err
	}
	return v.under.WriteZeroes(ctx, off, length, flags)
}

// Cache implements nbd.Backend.
func (v *Volatile) Cache(ctx context.Context, off, length int64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.check(); err != nil {
		return err
	}
	return v.under.Cache(ctx, off, length)
}

// PowerCut takes the power away: each cached unit is written below with
// a seeded chance of tornPercent in 100 and lost otherwise (0 loses every
// unflushed write whole; values between tear multi-unit writes), and every
// later request fails. It returns the counts of kept and lost units. The
// node below is neither flushed nor closed: the caller closes it.
func (v *Volatile) PowerCut(ctx context.Context, tornPercent int) (kept, lost int64, err error) {
	if tornPercent < 0 || tornPercent > 100 {
		return 0, 0, fmt.Errorf("node: torn percent %d is not within 0..100", tornPercent)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.cut {
		return 0, 0, nil
	}
	v.cut = true
	keys := slices.Clone(v.keys)
	slices.Sort(keys)
	for _, u := range keys {
		if tornPercent > 0 && v.rng.IntN(100) < tornPercent {
			off, _ := v.unitSpan(u)
			if err := v.under.WriteAt(ctx, v.cache[u].data, off, 0); err != nil {
				return kept, lost, err
			}
			kept++
		} else {
			lost++
		}
		v.drop(u)
	}
	v.stats.Kept += kept
	v.stats.Lost += lost
	return kept, lost, nil
}

// Crash stands for the death of the process alone: the machine keeps its
// power, so what the cache holds is written below (not flushed, as a page
// cache survives a killed process) and every later request fails.
func (v *Volatile) Crash(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.cut {
		return nil
	}
	v.cut = true
	return v.flushAll(ctx)
}

// Close writes the cache back (a disk flushes its cache at an orderly
// shutdown) and closes the node below. After a power cut it only closes.
func (v *Volatile) Close() error {
	v.mu.Lock()
	var err error
	if !v.cut {
		err = v.flushAll(context.Background())
		if err == nil {
			err = v.under.Flush(context.Background())
		}
		v.cut = true
	}
	v.mu.Unlock()
	return errors.Join(err, v.under.Close())
}
