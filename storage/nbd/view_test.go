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
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	. "dst/storage/nbd"
	"dst/storage/node"
)

// mappedExport serves a File of size bytes on tmpfs; it returns the file,
// its path and the server's address.
func mappedExport(t *testing.T, size int64) (*node.File, string, string) {
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
	_, addr := startServer(t, ServerOptions{Exports: []*Export{{Name: "v", Size: size, Flags: f.Flags(), Backend: f}}})
	return f, path, addr
}

func TestReadsAndWritesThroughTheBackendsMemory(t *testing.T) {
	const size = 8 << 20
	f, _, addr := mappedExport(t, size)
	c := dial(t, addr, ClientOptions{ExportName: "v"})
	ctx := testCtx(t)

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

	if !raceEnabled {
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
	ctx := testCtx(t)
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	c1, err := NewClient(ctx, conn, ClientOptions{ExportName: "v", Fence: &Fence{Session: 3, Generation: 1}})
	require.NoError(t, err)
	defer c1.Close()
	c2, err := dialFenced(ctx, addr, &Fence{Session: 3, Generation: 2})
	require.NoError(t, err)
	defer c2.Close()
	const n = 256 << 10
	var hdr [28]byte
	EncodeRequest(hdr[:], &Request{Cmd: CmdWrite, Cookie: 1, Offset: 0, Length: n})
	_, _ = conn.Write(append(hdr[:], bytes.Repeat([]byte{0xee}, n)...)) // may fail: the server closed it
	time.Sleep(100 * time.Millisecond)
	v, _ := f.View(0, n)
	require.Equal(t, make([]byte, n), v, "a write of the fenced connection landed")
}

func TestMemoryFaultEndsTheConnectionNotTheProcess(t *testing.T) {
	const size = 8 << 20
	_, path, addr := mappedExport(t, size)
	ctx := testCtx(t)
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

// stubbornMapped is a mapped File whose ordinary writes, once started,
// wait for release. It forwards the Backend and the view methods only —
// not TryWriteAt — so small writes take a worker and hold their request
// slot.
type stubbornMapped struct {
	f       *node.File
	entered chan struct{}
	release chan struct{}
}

func (s stubbornMapped) WriteAt(ctx context.Context, p []byte, off int64, f CmdFlags) error {
	s.entered <- struct{}{}
	<-s.release
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

// The race the fence guards, forced: the old connection's reader has a
// large write's header and the start of its payload buffered while every
// request slot is held by writes in progress; the fence closes the
// connection and waits for those writes; when they end, the reader takes
// a slot for the buffered write — which must not reach the file, not even
// the part already buffered.
func TestFenceDropsABufferedWriteIntoMemory(t *testing.T) {
	dir, err := os.MkdirTemp("/dev/shm", "dst-nbd-view")
	if err != nil {
		t.Skip("no /dev/shm")
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	const size = 4 << 20
	f, err := node.OpenFile(filepath.Join(dir, "v.img"), node.FileOptions{Size: size})
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	b := stubbornMapped{f: f, entered: make(chan struct{}, 4), release: make(chan struct{})}
	var once sync.Once
	unblock := func() { once.Do(func() { close(b.release) }) }
	t.Cleanup(unblock)
	_, addr := startServer(t, ServerOptions{MaxInFlight: 2,
		Exports: []*Export{{Name: "v", Size: size, Flags: f.Flags(), Backend: b}}})
	ctx := testCtx(t)

	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	c1, err := NewClient(ctx, conn, ClientOptions{ExportName: "v", Fence: &Fence{Session: 5, Generation: 1}})
	require.NoError(t, err)
	defer c1.Close()
	for i := range 2 { // both request slots busy
		op := &Op{Cmd: CmdWrite, Offset: int64(i) * 4096, Length: 4096, Data: make([]byte, 4096), Done: func(*Op, error) {}}
		require.NoError(t, c1.Submit(ctx, op))
		<-b.entered
	}
	const n = 96 << 10 // header and payload fit in the reader's buffer
	var hdr [28]byte
	EncodeRequest(hdr[:], &Request{Cmd: CmdWrite, Cookie: 77, Offset: 1 << 20, Length: n})
	_, err = conn.Write(append(hdr[:], bytes.Repeat([]byte{0xee}, n)...))
	require.NoError(t, err)
	time.Sleep(100 * time.Millisecond) // the reader has it buffered, waiting for a slot

	fenced := make(chan error, 1)
	go func() {
		c2, err := dialFenced(ctx, addr, &Fence{Session: 5, Generation: 2})
		if err == nil {
			c2.Close()
		}
		fenced <- err
	}()
	time.Sleep(100 * time.Millisecond) // the fence waits for the two writes
	unblock()
	require.NoError(t, <-fenced)
	time.Sleep(100 * time.Millisecond)
	v, _ := f.View(1<<20, n)
	require.Equal(t, make([]byte, n), v, "the buffered write of the fenced connection reached the file")
}
