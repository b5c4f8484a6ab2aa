// A degraded start (allow_degraded): a mirror starts while a member does
// not answer, with the identity and geometry the member table records for
// it; when it answers as the member recorded it copies only what it
// missed, and a medium that ran on alone since is copied whole. Without
// the option, or without a recorded geometry, the start is refused with
// a reason.
package engine

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/meta"
	"dst/storage/nbd"
	"dst/storage/node"
)

// away is a member whose machine does not answer yet, as a remote node
// opened in the background (node.OpenOptions.Background) is before its
// first connection: no handshake, size and flags unknown, every request
// fails; until answer.
type away struct {
	kept
	up   atomic.Bool
	lose nbd.TransmissionFlags // capabilities it answers without
}

func (a *away) answer() { a.up.Store(true) }

var errAway = fmt.Errorf("%w: no connection", node.ErrUnavailable)

func (a *away) Info() (nbd.ExportInfo, bool) { return nbd.ExportInfo{}, a.up.Load() }

func (a *away) Size() int64 {
	if !a.up.Load() {
		return 0
	}
	return a.kept.Size()
}

func (a *away) Flags() nbd.TransmissionFlags {
	if !a.up.Load() {
		return 0
	}
	return a.kept.Flags() &^ a.lose
}

func (a *away) ReadAt(ctx context.Context, p []byte, off int64) error {
	if !a.up.Load() {
		return errAway
	}
	return a.kept.ReadAt(ctx, p, off)
}

func (a *away) WriteAt(ctx context.Context, p []byte, off int64, f nbd.CmdFlags) error {
	if !a.up.Load() {
		return errAway
	}
	return a.kept.WriteAt(ctx, p, off, f)
}

func (a *away) Flush(ctx context.Context) error {
	if !a.up.Load() {
		return errAway
	}
	return a.kept.Flush(ctx)
}

// degradedOpts opens every medium of c directly but u through the away
// node w.
func (c *cluster) degradedOpts(u string, w *away) AssembleOptions {
	o := c.replaceOpts(AssembleOptions{AllowDegraded: true})
	o.Open = func(_ context.Context, url string) (node.Node, error) {
		if url == u {
			return w, nil
		}
		return kept{c.mems[url]}, nil
	}
	return o
}

// editSuper rewrites both superblock slots of m with edit applied.
func editSuper(t *testing.T, m *node.Memory, edit func(*meta.Superblock)) {
	t.Helper()
	buf := m.Bytes(0, 2*meta.SuperblockSize)
	sb, _, err := meta.Newest(buf[:meta.SuperblockSize], buf[meta.SuperblockSize:])
	require.NoError(t, err)
	edit(&sb)
	enc := make([]byte, meta.SuperblockSize)
	require.NoError(t, sb.MarshalTo(enc))
	ctx := context.Background()
	require.NoError(t, m.WriteAt(ctx, enc, 0, 0))
	require.NoError(t, m.WriteAt(ctx, enc, meta.SuperblockSize, 0))
}

// degradedSetup makes a mirror of a and b holding model, stopped cleanly.
func degradedSetup(t *testing.T) (*cluster, []byte) {
	c := newCluster(4<<20, "a", "b")
	ctx := testkit.Context(t, 30*time.Second)
	s, err := Assemble(ctx, c.tree, c.replaceOpts(AssembleOptions{}))
	require.NoError(t, err)
	model := fill(rand.New(rand.NewPCG(3, 3)), int(s.Engine().Size()))
	require.NoError(t, s.Engine().WriteAt(ctx, model, 0, 0))
	require.NoError(t, s.Close(ctx))
	return c, model
}

// runStorage runs s's monitor until the test ends.
func runStorage(t *testing.T, s *Storage) {
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx) }()
	t.Cleanup(func() { stop(); <-ran })
}

func TestDegradedStart(t *testing.T) {
	c, model := degradedSetup(t)
	ctx := testkit.Context(t, 30*time.Second)
	w := &away{kept: kept{c.mems["b"]}}

	o := c.degradedOpts("b", w)
	o.AllowDegraded = false
	_, err := Assemble(ctx, c.tree, o)
	require.ErrorIs(t, err, meta.ErrDegraded, "b was in sync: it may hold newer data")

	s, err := Assemble(ctx, c.tree, c.degradedOpts("b", w))
	require.NoError(t, err)
	e := s.Engine()
	require.Equal(t, Failed.String(), e.Status()[1].State)
	require.NotZero(t, e.Flags()&nbd.FlagSendTrim, "the member not reached does not take TRIM away")
	region := make([]byte, 64<<10)
	for i := range region {
		region[i] = 0x5a
	}
	require.NoError(t, e.WriteAt(ctx, region, 1<<20, 0))
	copy(model[1<<20:], region)
	runStorage(t, s)
	time.Sleep(30 * time.Millisecond) // probes while it does not answer change nothing
	require.Equal(t, Failed.String(), e.Status()[1].State)

	w.answer()
	waitInSync(t, e, 1)
	st := e.Status()[1]
	require.Equal(t, int64(len(region)), st.ResyncedBytes+st.ResyncZeroedBytes, "it copied the one region it missed, not everything")
	require.True(t, bytes.Equal(model, c.data(s, 1, "b")))
	require.True(t, bytes.Equal(model, c.data(s, 0, "a")))
	require.NoError(t, s.Close(ctx))

	// Both in sync and clean now: a plain start serves both.
	s, err = Assemble(ctx, c.tree, c.replaceOpts(AssembleOptions{}))
	require.NoError(t, err)
	for i, st := range s.Engine().Status() {
		require.Equal(t, InSync.String(), st.State, "member %d", i)
	}
	require.NoError(t, s.Close(ctx))
}

// A medium that ran on without this storage (a newer generation on it) is
// copied whole when it answers, so nothing it wrote alone survives as a
// difference between the replicas.
func TestDegradedStartMemberRanOnAlone(t *testing.T) {
	c, model := degradedSetup(t)
	ctx := testkit.Context(t, 30*time.Second)
	w := &away{kept: kept{c.mems["b"]}}
	s, err := Assemble(ctx, c.tree, c.degradedOpts("b", w))
	require.NoError(t, err)
	e := s.Engine()
	// Meanwhile b ran alone: a newer generation, and data of its own.
	editSuper(t, c.mems["b"], func(sb *meta.Superblock) { sb.Generation += 10 })
	off := int(s.DataOffset(1)) + 3<<20
	require.NoError(t, c.mems["b"].WriteAt(ctx, []byte("written alone"), int64(off), 0))

	runStorage(t, s)
	w.answer()
	waitInSync(t, e, 1)
	st := e.Status()[1]
	require.Equal(t, e.Size(), st.ResyncedBytes+st.ResyncZeroedBytes, "copied whole")
	require.True(t, bytes.Equal(model, c.data(s, 1, "b")), "what b wrote alone is gone")
	require.NoError(t, s.Close(ctx))
}

// Superblocks without the member table's raw sizes (an older dst's) give
// no geometry for a member that does not answer: refused with the reason.
func TestDegradedStartWithoutRecordedGeometry(t *testing.T) {
	c, _ := degradedSetup(t)
	ctx := testkit.Context(t, 30*time.Second)
	editSuper(t, c.mems["a"], func(sb *meta.Superblock) { sb.RawSizes = [meta.MaxMembers]int64{} })
	_, err := Assemble(ctx, c.tree, c.degradedOpts("b", &away{kept: kept{c.mems["b"]}}))
	require.ErrorContains(t, err, "no superblock records its geometry")
}

// A member missing at the start that answers without TRIM, which the
// storage offers, is not taken back (nor is one read-only): the status
// keeps it failed with nothing copied.
func TestDegradedStartMemberWithoutTrim(t *testing.T) {
	for _, lose := range []nbd.TransmissionFlags{nbd.FlagSendTrim, 0} {
		c, _ := degradedSetup(t)
		ctx := testkit.Context(t, 30*time.Second)
		w := &away{kept: kept{c.mems["b"]}, lose: lose}
		s, err := Assemble(ctx, c.tree, c.degradedOpts("b", w))
		require.NoError(t, err)
		e := s.Engine()
		require.NotZero(t, e.Flags()&nbd.FlagSendTrim)
		runStorage(t, s)
		w.answer()
		if lose == 0 {
			waitInSync(t, e, 1) // the same node with TRIM joins
			require.NoError(t, s.Close(ctx))
			continue
		}
		time.Sleep(100 * time.Millisecond) // 20 probes at 5 ms
		st := e.Status()[1]
		require.Equal(t, Failed.String(), st.State, "without TRIM it is not taken back")
		require.Zero(t, st.ResyncedBytes+st.ResyncZeroedBytes)
		s.Abandon()
	}
}
