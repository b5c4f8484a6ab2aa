// Planted-bug tests: after a clean concurrent phase, a device wrapper
// plants one bug in one chosen write of a second concurrent phase — a corrupted byte, a silently dropped write, a
// misdirected write, a flushed write lost in a crash — and the checker
// must catch it and name the write id, the offset and the member.
package raw

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
)

const plantedOps = 60

// victim picks the write a planted bug hits and the options of the
// phase that issues it: the first seed from seed on whose op stream has a
// write of 1 KiB to 256 KiB that no other write of the stream touches
// (nor, shifted by shift, where a misdirected copy would land), so the
// bug's effect is there at the final check however the workers
// interleave. (The run's first phase, which the picker does not see,
// leaves old data everywhere.) The write's id is relative to the phase.
func victim(t *testing.T, seed uint64, shift int64) (Options, Write) {
	overlaps := func(a Op, off, n int64) bool {
		return a.Kind == OpWrite && a.Off < off+n && a.Off+a.Len > off
	}
	for ; seed < 1000; seed++ {
		o := testOptions(seed, plantedOps)
		ops := Ops(o.GenOptions(memSize), plantedOps)
		var id uint64
		for i, v := range ops {
			if v.Kind != OpWrite {
				continue
			}
			id++
			if v.Len < 1024 || v.Len > 256<<10 || v.Off+shift+v.Len > memSize {
				continue
			}
			clear := true
			for j := 0; j < len(ops) && clear; j++ {
				if j != i && (overlaps(ops[j], v.Off, v.Len) || (shift != 0 && overlaps(ops[j], v.Off+shift, v.Len))) {
					clear = false
				}
			}
			if clear {
				return o, Write{ID: id, Off: v.Off, Len: v.Len}
			}
		}
	}
	t.Fatal("no write to plant a bug in")
	return Options{}, Write{}
}

// planted passes writes to a Memory, except the victim's, which bug
// handles.
type planted struct {
	*Memory
	victim uint64
	bug    func(ctx context.Context, m *Memory, p []byte, off int64, fua bool) error
}

func (d *planted) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	// The payload says which write it is: its first whole sector's stamp.
	if i := int((SectorSize - off%SectorSize) % SectorSize); i+SectorSize <= len(p) {
		if h := parseHeader(p[i:]); h.write.ID == d.victim {
			return d.bug(ctx, d.Memory, p, off, fua)
		}
	}
	return d.Memory.WriteAt(ctx, p, off, fua)
}

// plantedRun runs a clean first phase and then the planted phase o, whose
// victim v has a phase-relative id; it returns the ledger and the victim
// with its run-wide id.
func plantedRun(t *testing.T, o Options, v Write, dev *planted) (*Ledger, Write) {
	l := NewLedger(testSeed, memSize)
	first, err := Run(testkit.Context(t, 30*time.Second), dev.Memory, l, testOptions(o.Seed+1000, 300))
	require.NoError(t, err)
	v.ID += uint64(first.Writes)
	dev.victim = v.ID
	st, err := Run(testkit.Context(t, 30*time.Second), dev, l, o)
	require.NoError(t, err)
	require.Equal(t, int64(plantedOps), st.Ops)
	w, ok := l.Write(dev.victim)
	require.True(t, ok)
	require.Equal(t, "acknowledged", w.State, "the victim was acknowledged")
	require.Equal(t, v, w.Write)
	return l, v
}

// blame returns the Bads that expected the victim, requiring each to lie
// in its target, name it, and be located.
func blame(t *testing.T, c *Check, v Write) []Bad {
	var out []Bad
	for _, b := range c.Bad {
		t.Log(b.Diagnosis)
		if !slices.ContainsFunc(b.Expected, func(w Write) bool { return w.ID == v.ID }) {
			continue
		}
		require.GreaterOrEqual(t, b.Off, v.Off)
		require.LessOrEqual(t, b.Off+b.Len, v.Off+v.Len)
		require.Contains(t, b.Diagnosis, "expected "+v.String())
		require.Equal(t, locate(b.Off), b.Where)
		require.Contains(t, b.Diagnosis, fmt.Sprintf("(%s)", locate(b.Off)))
		out = append(out, b)
	}
	require.NotEmpty(t, out, "no bad bytes blamed on %v", v)
	return out
}

func TestPlantedCorruptByte(t *testing.T) {
	o, v := victim(t, 100, 0)
	dev := &planted{Memory: NewMemory(memSize), bug: func(ctx context.Context, m *Memory, p []byte, off int64, fua bool) error {
		q := slices.Clone(p)
		q[700] ^= 0x5a
		return m.WriteAt(ctx, q, off, fua)
	}}
	l, v := plantedRun(t, o, v, dev)
	c, err := Verify(testkit.Context(t, 30*time.Second), dev, l, VerifyOptions{Locate: locate})
	require.NoError(t, err)
	require.Equal(t, 1, c.BadTotal)
	b := blame(t, c, v)[0]
	require.Equal(t, v.Off+700, b.Off)
	require.Equal(t, int64(1), b.Wrong)
	require.Equal(t, KindMixed, b.Found.Kind)
	in := int((v.Off + 700) % SectorSize)
	require.Contains(t, b.Found.Parts, Part{From: in, To: in + 1, Unknown: true})
	require.Contains(t, b.Diagnosis, fmt.Sprintf("bytes %#x+1: torn/mixed", v.Off+700))
}

func TestPlantedDroppedWrite(t *testing.T) {
	o, v := victim(t, 200, 0)
	dev := &planted{Memory: NewMemory(memSize), bug: func(context.Context, *Memory, []byte, int64, bool) error {
		return nil // acknowledged, never written
	}}
	l, v := plantedRun(t, o, v, dev)
	c, err := Verify(testkit.Context(t, 30*time.Second), dev, l, VerifyOptions{Locate: locate})
	require.NoError(t, err)
	var wrong int64
	for _, b := range blame(t, c, v) {
		require.NotEqual(t, v.ID, b.Found.Write.ID)
		wrong += b.Wrong
	}
	require.Greater(t, wrong, v.Len*3/4, "most of the dropped write's bytes are wrong")
	require.Equal(t, c.BadTotal, len(c.Bad))
}

func TestPlantedMisdirectedWrite(t *testing.T) {
	const shift = 64<<10 + 100
	o, v := victim(t, 300, shift)
	dev := &planted{Memory: NewMemory(memSize), bug: func(ctx context.Context, m *Memory, p []byte, off int64, fua bool) error {
		return m.WriteAt(ctx, p, off+shift, fua)
	}}
	l, v := plantedRun(t, o, v, dev)
	c, err := Verify(testkit.Context(t, 30*time.Second), dev, l, VerifyOptions{Locate: locate})
	require.NoError(t, err)
	blame(t, c, v) // the target kept its old bytes
	landed := 0
	for _, b := range c.Bad {
		if b.Off >= v.Off+shift && b.Off < v.Off+shift+v.Len {
			require.Equal(t, KindMisdirected, b.Found.Kind, b.Diagnosis)
			require.Equal(t, v, b.Found.Write)
			require.Contains(t, b.Diagnosis, "holds bytes of "+v.String()+" meant for ")
			require.Contains(t, b.Diagnosis, "misdirected")
			require.Equal(t, locate(b.Off), b.Where)
			landed++
		}
	}
	require.Positive(t, landed, "the misdirected copy is found and explained")
	require.Contains(t, fmt.Sprint(c.Bad), fmt.Sprintf(" (misdirected by +%#x); expected ", shift))
}

func TestPlantedLostFlushedWrite(t *testing.T) {
	o, v := victim(t, 400, 0)
	var old, data []byte
	dev := &planted{Memory: NewMemory(memSize), bug: func(ctx context.Context, m *Memory, p []byte, off int64, fua bool) error {
		m.mu.Lock()
		old = slices.Clone(m.cur[off : off+int64(len(p))])
		m.mu.Unlock()
		data = slices.Clone(p)
		return m.WriteAt(ctx, p, off, fua)
	}}
	l, v := plantedRun(t, o, v, dev)
	ctx := testkit.Context(t, 30*time.Second)
	flush(ctx, t, dev, l)
	w, _ := l.Write(v.ID)
	require.True(t, w.Durable)

	// The engine is killed; the flushed victim does not survive.
	dev.Crash(nil)
	dev.mu.Lock()
	for i := range data {
		if x := v.Off + int64(i); dev.stable[x] == data[i] {
			dev.stable[x], dev.cur[x] = old[i], old[i]
		}
	}
	dev.mu.Unlock()
	l.Loss()

	c, err := Verify(ctx, dev, l, VerifyOptions{Mode: AfterLoss, Locate: locate})
	require.NoError(t, err)
	bads := blame(t, c, v)
	require.Equal(t, c.BadTotal, len(bads), "only the lost write is wrong")
	for _, b := range bads {
		require.NotEqual(t, v.ID, b.Found.Write.ID)
	}
}
