// The backend's memory (ViewBackend, WriteViewBackend): a File on tmpfs is
// mapped; large read replies are sent from the mapping and large write
// payloads received into it. Reads and writes of every size, FUA, trims
// and zeroes agree with a model, seen through the client and through
// pread; a fenced connection's late write does not land; a file that
// shrank under the mapping ends the connection, not the process.
package nbd_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	. "dst/storage/nbd"
	"dst/storage/node"
)

// mappedFile opens a File of size bytes on tmpfs (so it is mapped) and
// returns it with its path.
func mappedFile(t *testing.T, size int64) (*node.File, string) {
	dir, err := os.MkdirTemp("/dev/shm", "dst-nbd-view")
	if err != nil {
		t.Skip("no /dev/shm")
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "v.img")
	f, err := node.OpenFile(path, node.FileOptions{Size: size})
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	_, ok := f.WritableView(0, 4096)
	require.True(t, ok, "a file on tmpfs is mapped")
	return f, path
}

// mappedExport serves a mapped File of size bytes; it returns the file,
// its path and the server's address.
func mappedExport(t *testing.T, size int64) (*node.File, string, string) {
	f, path := mappedFile(t, size)
	_, addr := startServer(t, ServerOptions{Exports: []*Export{{Name: "v", Size: size, Flags: f.Flags(), Backend: f}}})
	return f, path, addr
}

func TestReadsAndWritesThroughTheBackendsMemory(t *testing.T) {
	const size = 8 << 20
	f, _, addr := mappedExport(t, size)
	c := dial(t, addr, ClientOptions{ExportName: "v"})
	ctx := testkit.Context(t, 30*time.Second)

	model := make([]byte, size)
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range 64 {
		n := int64(4096)
		if i%4 == 0 {
			n = 1 << 20
		}
		off := rng.Int64N(size-n) &^ 511
		p := make([]byte, n)
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		var flags CmdFlags
		if i%3 == 0 {
			flags = CmdFlagFUA
		}
		require.NoError(t, c.WriteAt(ctx, p, off, flags))
		copy(model[off:], p)
		if i%8 == 7 {
			require.NoError(t, c.Trim(ctx, off, 8192, 0))
			clear(model[off : off+8192])
		}
	}
	require.NoError(t, c.WriteZeroes(ctx, 3<<20, 4096, 0))
	clear(model[3<<20 : 3<<20+4096])
	for _, n := range []int64{512, 4096, 65536, 65536 + 512, 1 << 20, 4 << 20} {
		for range 8 {
			off := rng.Int64N(size-n) &^ 511
			got := make([]byte, n)
			require.NoError(t, c.ReadAt(ctx, got, off))
			require.True(t, bytes.Equal(model[off:off+n], got), "read of %d at %d", n, off)
		}
	}
	all := make([]byte, size)
	require.NoError(t, f.ReadAt(ctx, all, 0))
	require.True(t, bytes.Equal(model, all), "pread sees what the writes put in the mapping")

	if !testkit.RaceEnabled {
		big := make([]byte, 1<<20)
		allocs := testing.AllocsPerRun(50, func() {
			_ = c.WriteAt(ctx, big, 1<<20, 0)
			_ = c.ReadAt(ctx, big, 2<<20)
		})
		require.Zero(t, allocs, "the mapped paths allocate nothing per request (client and server)")
	}
}

// As TestFencedConnectionDropsLaterWrites, for a write large enough to be
// received into the mapping.
func TestFencedConnectionDropsLaterWritesIntoMemory(t *testing.T) {
	f, _, addr := mappedExport(t, 1<<20)
	ctx := testkit.Context(t, 30*time.Second)
	conn, _ := rawFenced(t, ctx, addr, "v", 3)
	c2, err := dialFenced(ctx, addr, &Fence{Session: 3, Generation: 2})
	require.NoError(t, err)
	defer c2.Close()
	const n = 256 << 10
	_ = writeRaw(conn, 1, 0, bytes.Repeat([]byte{0xee}, n)) // may fail: the server closed it
	time.Sleep(100 * time.Millisecond)
	v, _ := f.View(0, n)
	require.Equal(t, make([]byte, n), v, "a write of the fenced connection landed")
}

func TestMemoryFaultEndsTheConnectionNotTheProcess(t *testing.T) {
	const size = 8 << 20
	_, path, addr := mappedExport(t, size)
	ctx := testkit.Context(t, 30*time.Second)
	require.NoError(t, os.Truncate(path, 0)) // another process shrinks the file
	for _, read := range []bool{false, true} {
		c := dial(t, addr, ClientOptions{ExportName: "v"})
		p := make([]byte, 1<<20)
		var err error
		if read {
			err = c.ReadAt(ctx, p, 4<<20)
		} else {
			err = c.WriteAt(ctx, p, 4<<20, 0)
		}
		require.ErrorIs(t, err, ErrClosed, "read=%v: the connection ends", read)
	}
	require.NoError(t, os.Truncate(path, size))
	c := dial(t, addr, ClientOptions{ExportName: "v"})
	p := bytes.Repeat([]byte{7}, 1<<20)
	require.NoError(t, c.WriteAt(ctx, p, 4<<20, 0), "the server goes on")
	got := make([]byte, 1<<20)
	require.NoError(t, c.ReadAt(ctx, got, 4<<20))
	require.Equal(t, p, got)
}

// stubbornMapped is a mapped File whose ordinary writes wait at a gate.
// It forwards the Backend and the view methods only — not TryWriteAt — so
// small writes take a worker and hold their request slot.
type stubbornMapped struct {
	f *node.File
	*gate
}

func (s stubbornMapped) WriteAt(ctx context.Context, p []byte, off int64, f CmdFlags) error {
	s.pass()
	return s.f.WriteAt(context.Background(), p, off, f)
}

func (s stubbornMapped) ReadAt(ctx context.Context, p []byte, off int64) error {
	return s.f.ReadAt(ctx, p, off)
}
func (s stubbornMapped) Flush(ctx context.Context) error { return s.f.Flush(ctx) }
func (s stubbornMapped) Trim(ctx context.Context, off, n int64, f CmdFlags) error {
	return s.f.Trim(ctx, off, n, f)
}
func (s stubbornMapped) WriteZeroes(ctx context.Context, off, n int64, f CmdFlags) error {
	return s.f.WriteZeroes(ctx, off, n, f)
}
func (s stubbornMapped) Cache(ctx context.Context, off, n int64) error { return s.f.Cache(ctx, off, n) }
func (s stubbornMapped) View(off int64, n int) ([]byte, bool)          { return s.f.View(off, n) }
func (s stubbornMapped) WritableView(off int64, n int) ([]byte, bool) {
	return s.f.WritableView(off, n)
}
func (s stubbornMapped) WroteView(off int64, n int, f CmdFlags) error {
	return s.f.WroteView(off, n, f)
}

// bufferedWriteAcrossFence for a write large enough to be received into
// the mapping: not even the part of it the reader had buffered may reach
// the file.
func TestFenceDropsABufferedWriteIntoMemory(t *testing.T) {
	const size = 4 << 20
	f, _ := mappedFile(t, size)
	b := stubbornMapped{f: f, gate: newGate(t)}
	_, addr := startServer(t, ServerOptions{MaxInFlight: 2,
		Exports: []*Export{{Name: "v", Size: size, Flags: f.Flags(), Backend: b}}})
	const n = 96 << 10 // header and payload fit in the reader's buffer
	bufferedWriteAcrossFence(t, addr, "v", 5, b.gate, 1<<20, bytes.Repeat([]byte{0xee}, n))
	v, _ := f.View(1<<20, n)
	require.Equal(t, make([]byte, n), v, "the buffered write of the fenced connection reached the file")
}
