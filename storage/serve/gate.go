package serve

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"dst/storage/engine"
	"dst/storage/nbd"
	"dst/storage/node"
)

// gate is the node the export server serves: it forwards each request to
// the engine that serves now, and holds new requests while a membership
// change swaps the engine (closed), after the ones inside have finished
// (drain). A request held is answered by the new engine; the clients see
// a pause, no error.
//
// The open path is two atomic adds and two loads: a request counts
// itself in, then checks the gate is open (else it counts itself out and
// waits); drain marks the gate closed, then waits for the count to reach
// zero. Go's atomics are sequentially consistent, so either the request
// sees the gate closed or drain sees the request.
type gate struct {
	eng    atomic.Pointer[engine.Engine] // nil: no engine serves (a change failed both ways)
	prev   atomic.Pointer[engine.Engine] // the last engine that served
	inside atomic.Int64
	closed atomic.Bool

	mu     sync.Mutex
	opened chan struct{} // closed when the gate opens again; nil while open
}

var (
	_ node.Node              = (*gate)(nil)
	_ nbd.BlockStatusBackend = (*gate)(nil)
)

// errNoEngine answers requests when no storage serves any more.
var errNoEngine = fmt.Errorf("serve: the storage stopped after a failed membership change: %w", nbd.EIO)

func newGate(e *engine.Engine) *gate {
	g := &gate{}
	g.eng.Store(e)
	g.prev.Store(e)
	return g
}

// enter counts a request in once the gate is open and returns the engine
// to serve it; leave counts it out.
func (g *gate) enter(ctx context.Context) (*engine.Engine, error) {
	for {
		g.inside.Add(1)
		if !g.closed.Load() {
			if e := g.eng.Load(); e != nil {
				return e, nil
			}
			g.inside.Add(-1)
			return nil, errNoEngine
		}
		g.inside.Add(-1)
		g.mu.Lock()
		ch := g.opened
		g.mu.Unlock()
		if ch == nil {
			continue // it opened meanwhile
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (g *gate) leave() { g.inside.Add(-1) }

// drain closes the gate and waits until no request is inside, or until
// ctx ends: then it opens the gate again and returns the error.
func (g *gate) drain(ctx context.Context) error {
	g.mu.Lock()
	if g.opened != nil {
		g.mu.Unlock()
		return errors.New("serve: the gate is closed already")
	}
	g.opened = make(chan struct{})
	g.mu.Unlock()
	g.closed.Store(true)
	for g.inside.Load() != 0 {
		if ctx.Err() != nil {
			g.open(g.eng.Load())
			return fmt.Errorf("requests in flight did not complete: %w", ctx.Err())
		}
		time.Sleep(100 * time.Microsecond)
	}
	return nil
}

// open lets requests in again, to e (nil: every request fails).
func (g *gate) open(e *engine.Engine) {
	g.eng.Store(e)
	if e != nil {
		g.prev.Store(e)
	}
	g.closed.Store(false)
	g.mu.Lock()
	if g.opened != nil {
		close(g.opened)
		g.opened = nil
	}
	g.mu.Unlock()
}

func (g *gate) ReadAt(ctx context.Context, p []byte, off int64) error {
	e, err := g.enter(ctx)
	if err != nil {
		return err
	}
	defer g.leave()
	return e.ReadAt(ctx, p, off)
}

func (g *gate) WriteAt(ctx context.Context, p []byte, off int64, flags nbd.CmdFlags) error {
	e, err := g.enter(ctx)
	if err != nil {
		return err
	}
	defer g.leave()
	return e.WriteAt(ctx, p, off, flags)
}

func (g *gate) Flush(ctx context.Context) error {
	e, err := g.enter(ctx)
	if err != nil {
		return err
	}
	defer g.leave()
	return e.Flush(ctx)
}

func (g *gate) Trim(ctx context.Context, off, length int64, flags nbd.CmdFlags) error {
	e, err := g.enter(ctx)
	if err != nil {
		return err
	}
	defer g.leave()
	return e.Trim(ctx, off, length, flags)
}

func (g *gate) WriteZeroes(ctx context.Context, off, length int64, flags nbd.CmdFlags) error {
	e, err := g.enter(ctx)
	if err != nil {
		return err
	}
	defer g.leave()
	return e.WriteZeroes(ctx, off, length, flags)
}

func (g *gate) Cache(ctx context.Context, off, length int64) error {
	e, err := g.enter(ctx)
	if err != nil {
		return err
	}
	defer g.leave()
	return e.Cache(ctx, off, length)
}

func (g *gate) BlockStatus(ctx context.Context, off, length int64, dst []nbd.Extent) ([]nbd.Extent, error) {
	e, err := g.enter(ctx)
	if err != nil {
		return dst, err
	}
	defer g.leave()
	return e.BlockStatus(ctx, off, length, dst)
}

// Size and Flags are the engine's: a change keeps the size, and takes no
// node that lacks a capability the storage offers.
func (g *gate) Size() int64 { return g.last().Size() }

func (g *gate) Flags() nbd.TransmissionFlags { return g.last().Flags() }

// Close closes nothing: the server owns the storage.
func (g *gate) Close() error { return nil }

func (g *gate) String() string { return g.last().String() }

// last is the engine that serves, or the one before a failed change.
func (g *gate) last() *engine.Engine {
	if e := g.eng.Load(); e != nil {
		return e
	}
	return g.prev.Load()
}
