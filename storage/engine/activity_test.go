// The activity log against its contract (package doc): a region is marked
// durably on a member before a data write to it reaches that member; a
// mark is cleared only when the region's writes are flushed on every
// member; the active set stays within its bound; a hot region costs no
// metadata write; after an unclean stop only the marked regions are
// copied, and a member whose log cannot be read is copied whole.
package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/meta"
	"dst/storage/nbd"
	"dst/storage/node"
)

// alRecorder checks, at every node operation of every member, the
// ordering the activity log promises. It sees the bytes the members
// receive, as their disks would.
type alRecorder struct {
	mu   sync.Mutex
	area meta.Area
	// bitmap is each member's bitmap area as written so far; marked the
	// regions set in it.
	bitmap [][]byte
	marked []*meta.Bitmap
	// unflushed are, per member, the regions with data writes that no
	// FLUSH completed after yet.
	unflushed  []map[int]bool
	violations []string
	// beforePage, if set, runs before a bitmap page write reaches member i
	// (outside mu): a test holds a mark on its way there.
	beforePage func(i int)
}

func newALRecorder(members int, area meta.Area) *alRecorder {
	r := &alRecorder{area: area}
	for range members {
		r.bitmap = append(r.bitmap, make([]byte, area.BitmapBytes))
		r.marked = append(r.marked, meta.NewBitmap(area.Regions()))
		r.unflushed = append(r.unflushed, map[int]bool{})
	}
	return r
}

func (r *alRecorder) violate(format string, a ...any) {
	if len(r.violations) < 10 {
		r.violations = append(r.violations, fmt.Sprintf(format, a...))
	}
}

// data checks a data write to member i's data-area range.
func (r *alRecorder) data(i int, off, length int64, fua bool) {
	if off+length <= r.area.DataOffset {
		return // a superblock
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	first, last := r.area.RegionsOf(off-r.area.DataOffset, length)
	for reg := first; reg <= last; reg++ {
		if !r.marked[i].Test(reg) {
			r.violate("member %d: data write to region %d before the region was marked on it", i, reg)
		}
		if !fua {
			r.unflushed[i][reg] = true
		}
	}
}

// page records a bitmap write that completed, durably (fua), on member i.
func (r *alRecorder) page(i int, p []byte, off int64, fua bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	copy(r.bitmap[i][off-r.area.BitmapOffset:], p)
	bm := meta.NewBitmap(r.area.Regions())
	if err := bm.Unmarshal(r.bitmap[i]); err != nil {
		r.violate("member %d: bitmap does not verify: %v", i, err)
	}
	if !fua && bm.Count() > 0 {
		r.violate("member %d: bitmap marks written without FUA", i)
	}
	for reg := r.marked[i].NextDirty(0); reg >= 0; reg = r.marked[i].NextDirty(reg + 1) {
		if bm.Test(reg) {
			continue
		}
		for j, u := range r.unflushed {
			if u[reg] {
				r.violate("member %d: region %d cleared while member %d has unflushed writes to it", i, reg, j)
			}
		}
	}
	r.marked[i] = bm
}

// recNode is a member's node seen by the recorder.
type recNode struct {
	kept
	rec *alRecorder
	i   int
}

func (n recNode) isBitmap(off int64) bool {
	return off >= n.rec.area.BitmapOffset && off < n.rec.area.BitmapOffset+n.rec.area.BitmapBytes
}

func (n recNode) WriteAt(ctx context.Context, p []byte, off int64, flags nbd.CmdFlags) error {
	fua := flags&nbd.CmdFlagFUA != 0
	if n.isBitmap(off) {
		n.rec.mu.Lock()
		before := n.rec.beforePage
		n.rec.mu.Unlock()
		if before != nil {
			before(n.i)
		}
		err := n.kept.WriteAt(ctx, p, off, flags)
		if err == nil {
			n.rec.page(n.i, p, off, fua)
		}
		return err
	}
	n.rec.data(n.i, off, int64(len(p)), fua)
	return n.kept.WriteAt(ctx, p, off, flags)
}

func (n recNode) Trim(ctx context.Context, off, length int64, flags nbd.CmdFlags) error {
	n.rec.data(n.i, off, length, false)
	return n.kept.Trim(ctx, off, length, flags)
}

func (n recNode) WriteZeroes(ctx context.Context, off, length int64, flags nbd.CmdFlags) error {
	n.rec.data(n.i, off, length, false)
	return n.kept.WriteZeroes(ctx, off, length, flags)
}

func (n recNode) Flush(ctx context.Context) error {
	n.rec.mu.Lock()
	covered := make([]int, 0, len(n.rec.unflushed[n.i]))
	for reg := range n.rec.unflushed[n.i] {
		covered = append(covered, reg)
	}
	n.rec.mu.Unlock()
	err := n.kept.Flush(ctx)
	if err == nil {
		n.rec.mu.Lock()
		for _, reg := range covered {
			delete(n.rec.unflushed[n.i], reg)
		}
		n.rec.mu.Unlock()
	}
	return err
}

// assembleRecorded assembles c's mirror with every member behind rec.
func (c *cluster) assembleRecorded(t *testing.T, rec **alRecorder, opts AssembleOptions) (*Storage, error) {
	index := map[string]int{}
	for i, m := range c.tree.Members {
		index[m.Leaf] = i
	}
	opts.Open = func(_ context.Context, u string) (node.Node, error) {
		if *rec == nil {
			a, err := meta.Plan(c.mems[u].Size(), 64<<10)
			if err != nil {
				return nil, err
			}
			*rec = newALRecorder(len(c.tree.Members), a)
		}
		return recNode{kept{c.mems[u]}, *rec, index[u]}, nil
	}
	opts.RegionSize = 64 << 10
	return Assemble(context.Background(), c.tree, opts)
}

func TestActivityLogOrdering(t *testing.T) {
	c := newCluster(4<<20, "a", "b")
	ctx := testkit.Context(t, 60*time.Second)
	var rec *alRecorder
	const bound = 4
	s, err := c.assembleRecorded(t, &rec, AssembleOptions{Engine: Options{ActivityRegions: bound, ActivityQuiet: 10 * time.Millisecond}})
	require.NoError(t, err)
	e := s.Engine()
	size := e.Size()
	stop := make(chan struct{})
	var peak int
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Microsecond):
				peak = max(peak, e.Activity().ActiveRegions)
			}
		}
	})
	var writers sync.WaitGroup
	for w := range 8 {
		writers.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			p := make([]byte, 128<<10)
			for k := range 150 {
				n := int64(1+rng.IntN(32)) * 4096
				off := rng.Int64N(size-n+1) / 512 * 512
				var err error
				switch k % 10 {
				case 7:
					err = e.Trim(ctx, off, n, 0)
				case 8:
					err = e.Flush(ctx)
				default:
					err = e.WriteAt(ctx, p[:n], off, 0)
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	writers.Wait()
	require.Eventually(t, func() bool { return e.Activity().ActiveRegions == 0 }, 10*time.Second, 5*time.Millisecond,
		"quiet regions are cleared")
	close(stop)
	wg.Wait()
	st := e.Activity()
	require.NoError(t, s.Close(ctx))
	rec.mu.Lock()
	defer rec.mu.Unlock()
	require.Empty(t, rec.violations)
	require.LessOrEqual(t, peak, bound, "the active set stays within its bound")
	require.Positive(t, st.MetadataWrites)
	require.Positive(t, st.ClearedRegions)
	t.Logf("peak %d active regions of %d; %d metadata writes, %d regions cleared", peak, bound, st.MetadataWrites, st.ClearedRegions)
	for i, bm := range rec.marked {
		require.Zero(t, bm.Count(), "member %d: a clean shutdown leaves no region marked", i)
	}
}

// TestActivityLogSecondWriterWaitsForTheMark: a write to a region whose
// mark another write set, and whose page is still on its way to the
// members, waits for that page; it must not go out first because it found
// the bit already set and no page pending.
func TestActivityLogSecondWriterWaitsForTheMark(t *testing.T) {
	c := newCluster(4<<20, "a", "b")
	ctx := testkit.Context(t, 30*time.Second)
	var rec *alRecorder
	s, err := c.assembleRecorded(t, &rec, AssembleOptions{Engine: Options{ActivityQuiet: time.Hour}})
	require.NoError(t, err)
	defer s.Close(ctx)
	e := s.Engine()
	held, release := make(chan struct{}), make(chan struct{})
	let := sync.OnceFunc(func() { close(release) })
	defer let() // before Close: the first write must be let through
	var once sync.Once
	rec.mu.Lock()
	rec.beforePage = func(int) {
		once.Do(func() {
			close(held)
			<-release
		})
	}
	rec.mu.Unlock()
	p := make([]byte, 4096)
	first := make(chan error, 1)
	go func() { first <- e.WriteAt(ctx, p, 0, 0) }()
	<-held // the first write's mark is on its way to a member
	second := make(chan error, 1)
	go func() { second <- e.WriteAt(ctx, p, 8192, 0) }() // the same region
	select {
	case err := <-second:
		t.Fatalf("the second write completed (%v) while the mark of its region was not durable", err)
	case <-time.After(100 * time.Millisecond):
	}
	let()
	require.NoError(t, <-first)
	require.NoError(t, <-second)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	require.Empty(t, rec.violations)
}

func TestActivityLogHotRegionCostsNoMetadataWrite(t *testing.T) {
	c := newCluster(4<<20, "a", "b")
	ctx := testkit.Context(t, 60*time.Second)
	s, err := c.assemble(t, AssembleOptions{Engine: Options{ActivityQuiet: time.Hour}})
	require.NoError(t, err)
	defer s.Close(ctx)
	e := s.Engine()
	p := make([]byte, 4096)
	require.NoError(t, e.WriteAt(ctx, p, 0, 0))
	first := e.Activity().MetadataWrites
	require.Equal(t, uint64(2), first, "one page write per member to mark the region")
	for k := range 1000 {
		require.NoError(t, e.WriteAt(ctx, p, int64(k%16)*4096, 0))
	}
	require.Equal(t, first, e.Activity().MetadataWrites, "a region that stays active is not marked again")

	// Requests arriving together for new regions share the page writes.
	var wg sync.WaitGroup
	for k := range 32 {
		wg.Go(func() { require.NoError(t, e.WriteAt(ctx, p, int64(k+1)*64<<10, 0)) })
	}
	wg.Wait()
	batch := e.Activity().MetadataWrites - first
	t.Logf("32 concurrent writes to new regions: %d metadata writes", batch)
	require.LessOrEqual(t, batch, uint64(2*32))
	require.Equal(t, 33, e.Activity().ActiveRegions)
}

// tamper writes b's bytes over a's data area at off, as a write that was
// in flight when the engine died would have reached a only.
func inFlightOnly(t *testing.T, c *cluster, s *Storage, member string, i int, off int64, p []byte) {
	t.Helper()
	require.NoError(t, c.mems[member].WriteAt(context.Background(), p, s.DataOffset(i)+off, 0))
}

func TestActivityLogUncleanRestartCopiesOnlyMarkedRegions(t *testing.T) {
	c := newCluster(4<<20, "a", "b")
	ctx := testkit.Context(t, 60*time.Second)
	quick := AssembleOptions{Engine: Options{ActivityQuiet: 20 * time.Millisecond}}
	s, err := c.assemble(t, quick)
	require.NoError(t, err)
	e := s.Engine()
	rng := rand.New(rand.NewPCG(5, 5))
	model := fill(rng, int(e.Size()))
	require.NoError(t, e.WriteAt(ctx, model, 0, 0))
	require.NoError(t, e.Flush(ctx))
	require.Eventually(t, func() bool { return e.Activity().ActiveRegions == 0 }, 10*time.Second, 5*time.Millisecond)
	// Three regions written just before the crash; a fourth write, to
	// region 10, is in flight when the engine dies and reached a only.
	for _, off := range []int64{0, 200 << 10, 3 << 20, 10 << 16} {
		p := fill(rng, 5000)
		require.NoError(t, e.WriteAt(ctx, p, off, 0))
		copy(model[off:], p)
	}
	late := fill(rng, 3000)
	inFlightOnly(t, c, s, "a", 0, 10<<16+100, late)
	copy(model[10<<16+100:], late)
	e.Close()

	s, err = c.assemble(t, quick)
	require.NoError(t, err)
	defer s.Close(ctx)
	e = s.Engine()
	require.Equal(t, "failed", e.Status()[1].State)
	require.Equal(t, 4, e.Status()[1].DirtyRegions, "the four regions the log marked")
	require.Equal(t, 4, e.Activity().CrashResyncRegions)
	require.Zero(t, e.Activity().CrashFullCopies)
	require.NoError(t, e.Rejoin(ctx, 1, false, nil))
	require.Equal(t, int64(4*64<<10), e.Status()[1].ResyncedBytes, "4 of 64 regions copied")
	require.True(t, bytes.Equal(model, c.data(s, 0, "a")))
	require.True(t, bytes.Equal(model, c.data(s, 1, "b")), "b holds what a holds, the write in flight included")
}

// failBitmapReads fails reads of a member's bitmap area.
type failBitmapReads struct {
	kept
	area meta.Area
}

func (n failBitmapReads) ReadAt(ctx context.Context, p []byte, off int64) error {
	if off < n.area.BitmapOffset+n.area.BitmapBytes && off+int64(len(p)) > n.area.BitmapOffset {
		return errors.New("medium error in the bitmap")
	}
	return n.kept.ReadAt(ctx, p, off)
}

func TestActivityLogUnreadableOrMissingLogCopiesWhole(t *testing.T) {
	for _, tc := range []struct {
		name   string
		broken string // whose bitmap cannot be read
		noFlag bool   // the superblocks predate the activity log
	}{
		{name: "the copy's log unreadable", broken: "b"},
		{name: "the source's log unreadable", broken: "a"},
		{name: "no activity log flag", noFlag: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(4<<20, "a", "b")
			ctx := testkit.Context(t, 60*time.Second)
			s, err := c.assemble(t, AssembleOptions{})
			require.NoError(t, err)
			e := s.Engine()
			model := fill(rand.New(rand.NewPCG(6, 6)), int(e.Size()))
			require.NoError(t, e.WriteAt(ctx, model[:5000], 0, 0))
			area := e.members[0].area
			e.Close()
			if tc.noFlag {
				for _, u := range []string{"a", "b"} {
					clearActivityFlag(t, c.mems[u])
				}
			}
			opts := AssembleOptions{Open: func(_ context.Context, u string) (node.Node, error) {
				if u == tc.broken {
					return failBitmapReads{kept{c.mems[u]}, *area}, nil
				}
				return kept{c.mems[u]}, nil
			}, RegionSize: 64 << 10}
			s, err = Assemble(context.Background(), c.tree, opts)
			require.NoError(t, err)
			defer s.Engine().Close()
			st := s.Engine().Status()
			require.Equal(t, "failed", st[1].State)
			require.True(t, s.Engine().wholeDue(1), "copied whole")
			require.Equal(t, 1, s.Engine().Activity().CrashFullCopies)
		})
	}
}

// clearActivityFlag rewrites both superblock slots of mem without
// FlagActivityLog, as an engine without the log wrote them.
func clearActivityFlag(t *testing.T, mem *node.Memory) {
	t.Helper()
	rewritten := 0
	for slot := range int64(meta.SuperblockSlots) {
		off := slot * meta.SuperblockSize
		sb, err := meta.UnmarshalSuperblock(mem.Bytes(int(off), meta.SuperblockSize))
		if errors.Is(err, meta.ErrBlank) {
			continue
		}
		require.NoError(t, err)
		rewritten++
		require.NotZero(t, sb.Flags&meta.FlagActivityLog, "the engine sets the flag")
		sb.Flags &^= meta.FlagActivityLog
		buf := make([]byte, meta.SuperblockSize)
		require.NoError(t, sb.MarshalTo(buf))
		require.NoError(t, mem.WriteAt(context.Background(), buf, off, 0))
	}
	require.Positive(t, rewritten)
}
