package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"dst/storage/nbd"

	"dst/storage/rangelock"
)

// maxCommandBytes bounds one TRIM, WRITE_ZEROES or CACHE on the wire
// (the protocol's length is 32 bits); longer ones are split. It is a
// multiple of every minimum block a server may demand.
const maxCommandBytes = 1 << 31

// waiter is the reusable state of one call in flight on a Remote: the
// nbd.Op it submits, the channel its outcome arrives on, its timer and
// its range table wake-up channel, and the transaction's id, try count and
// budget. A Remote makes MaxInFlight of them in NewRemote, so the request
// path allocates nothing.
type waiter struct {
	op    nbd.Op
	done  chan error // capacity 1: the outcome of op
	timer *time.Timer
	wake  chan struct{} // capacity 1: see rangelock.Table.Acquire

	id        uint64
	startGen  uint64 // connections made when the request began
	abortGen  uint64 // Aborts when the request began
	tries     int
	budgetEnd time.Time
	// extStart is where a block status answer begins in op.Extents (a
	// retry drops what a failed try appended).
	extStart int
}

func newWaiter(r *Remote) *waiter {
	w := &waiter{done: make(chan error, 1), wake: make(chan struct{}, 1), timer: time.NewTimer(time.Hour)}
	w.timer.Stop()
	w.op.Done = func(_ *nbd.Op, err error) {
		r.noteReply(err)
		w.done <- err
	}
	return w
}

// ReadAt reads len(p) bytes at off into p.
func (r *Remote) ReadAt(ctx context.Context, p []byte, off int64) error {
	return r.do(ctx, nbd.CmdRead, 0, off, int64(len(p)), p)
}

// WriteAt writes p at off; flags may carry nbd.CmdFlagFUA.
func (r *Remote) WriteAt(ctx context.Context, p []byte, off int64, flags nbd.CmdFlags) error {
	return r.do(ctx, nbd.CmdWrite, flags, off, int64(len(p)), p)
}

// Flush asks the peer to make completed writes durable (see Remote on
// what a FLUSH after a reconnect covers).
func (r *Remote) Flush(ctx context.Context) error {
	return r.do(ctx, nbd.CmdFlush, 0, 0, 0, nil)
}

// Trim discards [off, off+length).
func (r *Remote) Trim(ctx context.Context, off, length int64, flags nbd.CmdFlags) error {
	return r.do(ctx, nbd.CmdTrim, flags, off, length, nil)
}

// WriteZeroes zeroes [off, off+length); flags may carry NO_HOLE,
// FAST_ZERO and FUA.
func (r *Remote) WriteZeroes(ctx context.Context, off, length int64, flags nbd.CmdFlags) error {
	return r.do(ctx, nbd.CmdWriteZeroes, flags, off, length, nil)
}

// BlockStatus asks the peer which parts of [off, off+length) hold data
// (nbd.BlockStatusBackend), as one transaction: retried like any request,
// the answer may cover less than the range. A peer without
// base:allocation reports all data.
func (r *Remote) BlockStatus(ctx context.Context, off, length int64, dst []nbd.Extent) ([]nbd.Extent, error) {
	r.m.requests.Add(1)
	if off < 0 || length <= 0 {
		return dst, r.fail(nbd.CmdBlockStatus, off, length, nil, fmt.Errorf("%w: offset %d length %d", nbd.EINVAL, off, length))
	}
	gen := r.aborts.Load()
	w, err := r.getWaiter(ctx)
	if err != nil {
		return dst, r.fail(nbd.CmdBlockStatus, off, length, nil, err)
	}
	defer r.putWaiter(w)
	r.begin(w, gen)
	w.op.Extents, w.extStart = dst, len(dst)
	_, err = r.transact(ctx, w, nbd.CmdBlockStatus, 0, off, length, nil) // one command: at most maxCommandBytes
	dst, w.op.Extents = w.op.Extents, nil
	switch {
	case errors.Is(err, nbd.ENOTSUP):
		return append(dst[:w.extStart], nbd.Extent{Length: length}), nil
	case err != nil:
		return dst[:w.extStart], r.fail(nbd.CmdBlockStatus, off, length, w, err)
	}
	return dst, nil
}

// Cache asks the peer to prefetch [off, off+length).
func (r *Remote) Cache(ctx context.Context, off, length int64) error {
	return r.do(ctx, nbd.CmdCache, 0, off, length, nil)
}

// do runs one call as a transaction: a waiter (bounding the calls in
// flight), the range of a write-like request, then each part of it
// (see transact).
func (r *Remote) do(ctx context.Context, cmd nbd.Command, flags nbd.CmdFlags, off, length int64, p []byte) error {
	r.m.requests.Add(1)
	switch {
	case off < 0 || length < 0:
		return r.fail(cmd, off, length, nil, fmt.Errorf("%w: negative offset or length", nbd.EINVAL))
	case length == 0 && cmd != nbd.CmdFlush:
		return nil
	}
	gen := r.aborts.Load()
	w, err := r.getWaiter(ctx)
	if err != nil {
		return r.fail(cmd, off, length, nil, err)
	}
	defer r.putWaiter(w)
	r.begin(w, gen)
	if cmd.IsWrite() && !r.noRanges {
		slot, err := r.ranges.Acquire(ctx, r.stopped, w.wake, off, off+length)
		if errors.Is(err, rangelock.ErrStopped) {
			err = fmt.Errorf("%w: node closed", ErrUnavailable)
		}
		if err != nil {
			return r.fail(cmd, off, length, w, err)
		}
		defer r.ranges.Release(slot)
	}
	for done := int64(0); ; {
		var part []byte
		if p != nil {
			part = p[done:]
		}
		n, err := r.transact(ctx, w, cmd, flags, off+done, length-done, part)
		if err != nil {
			return r.fail(cmd, off+done, length-done, w, err)
		}
		done += n
		if done >= length {
			break
		}
	}
	if cmd == nbd.CmdRead || cmd == nbd.CmdWrite {
		r.m.bytes.Add(uint64(length))
	}
	return nil
}

// begin starts a transaction on w: its id, and the Aborts (abortGen, read
// before the waiter was taken) and connections it began under.
func (r *Remote) begin(w *waiter, abortGen uint64) {
	w.abortGen, w.id, w.startGen = abortGen, r.ids.Add(1), r.m.connects.Load()
}

func (r *Remote) getWaiter(ctx context.Context) (*waiter, error) {
	select {
	case <-r.stopped:
		return nil, r.stoppedErr()
	default:
	}
	select {
	case w := <-r.waiters:
		return w, nil
	case <-r.stopped:
		return nil, r.stoppedErr()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (r *Remote) putWaiter(w *waiter) { r.waiters <- w }

func (r *Remote) stoppedErr() error { return fmt.Errorf("%w: node stopped", ErrUnavailable) }

// fail counts a failed call and wraps its error with the request.
func (r *Remote) fail(cmd nbd.Command, off, length int64, w *waiter, err error) error {
	r.m.failures.Add(1)
	if errors.Is(err, ErrUnavailable) {
		r.m.unavailable.Add(1)
	}
	var id uint64
	var tries int
	if w != nil {
		id, tries = w.id, w.tries
	}
	return r.opErr(cmd, off, length, id, tries, err)
}

// transact sends the first part of a request — all of it unless it is
// longer than one command may be — trying until a reply, an error that
// is not the connection's fault, or the end of the tries or the budget,
// which each part gets anew. It returns the bytes done.
func (r *Remote) transact(ctx context.Context, w *waiter, cmd nbd.Command, flags nbd.CmdFlags, off, length int64, p []byte) (int64, error) {
	w.tries, w.budgetEnd = 0, time.Now().Add(r.opts.Budget)
	var last error
	for {
		if err := r.abortedSince(w.abortGen); err != nil {
			if last != nil {
				err = fmt.Errorf("%w (the last try: %v)", err, last)
			}
			return 0, err
		}
		switch {
		case w.tries > r.opts.Retries:
			return 0, fmt.Errorf("%w: all %d tries failed, the last: %w", ErrUnavailable, w.tries, last)
		case w.tries > 0 && !time.Now().Before(w.budgetEnd):
			return 0, fmt.Errorf("%w: budget of %v spent after %d tries, the last: %w", ErrUnavailable, r.opts.Budget, w.tries, last)
		}
		c, err := r.live(ctx, w)
		if err != nil {
			if last != nil {
				err = fmt.Errorf("%w (the last try: %v)", err, last)
			}
			return 0, err
		}
		if g := r.mediaGen.Load(); g > w.startGen && c.gen >= g {
			return 0, fmt.Errorf("%w: since %v began (connection %d)", ErrMediaChanged, cmd, g)
		}
		if cmd.IsWrite() && c.info.Flags&nbd.FlagReadOnly != 0 {
			return 0, fmt.Errorf("%w: the export is read-only", nbd.EPERM)
		}
		n := length
		if cmd == nbd.CmdRead || cmd == nbd.CmdWrite {
			n = min(n, c.maxPayload)
		} else {
			n = min(n, maxCommandBytes)
		}
		w.tries++
		if w.tries > 1 {
			r.m.retries.Add(1)
		}
		w.op.Cmd, w.op.Flags, w.op.Offset, w.op.Length, w.op.Data = cmd, flags, off, uint64(n), nil
		if cmd == nbd.CmdBlockStatus {
			w.op.Extents = w.op.Extents[:w.extStart]
		}
		if p != nil {
			w.op.Data = p[:n]
		}
		err = r.try(c, w)
		w.op.Data = nil
		switch {
		case err == nil:
			return n, nil
		case errors.Is(err, nbd.ErrClosed), errors.Is(err, ErrTimeout), errors.Is(err, nbd.ESHUTDOWN):
			last = err
		default:
			return 0, err
		}
	}
}

// live returns the live connection, waiting for one within the
// transaction's budget.
func (r *Remote) live(ctx context.Context, w *waiter) (*conn, error) {
	for {
		if c := r.cur.Load(); c != nil {
			return c, nil
		}
		r.mu.Lock()
		up, c := r.up, r.cur.Load()
		r.mu.Unlock()
		if c != nil {
			return c, nil
		}
		select {
		case <-r.stopped:
			return nil, r.stoppedErr()
		default:
		}
		wait := time.Until(w.budgetEnd)
		if wait <= 0 {
			return nil, fmt.Errorf("%w: no connection within the budget of %v", ErrUnavailable, r.opts.Budget)
		}
		ab := r.abortCh()
		if err := r.abortedSince(w.abortGen); err != nil {
			return nil, err
		}
		w.timer.Reset(wait)
		select {
		case <-up:
			w.timer.Stop()
		case <-w.timer.C:
		case <-r.stopped:
			w.timer.Stop()
		case <-ab:
			w.timer.Stop()
			return nil, r.abortedSince(w.abortGen)
		case <-ctx.Done():
			w.timer.Stop()
			return nil, ctx.Err()
		}
	}
}

// try sends w.op on c and waits for its reply or its deadline. A try
// that times out suspects c and then waits for the fence to complete the
// op, so the op and its buffer are free again when try returns.
func (r *Remote) try(c *conn, w *waiter) error {
	// The write deadline bounds a send to a peer that stopped reading
	// (to between 3/4 and all of the request timeout).
	c.extendWriteDeadline(r.opts.RequestTimeout)
	ab := r.abortCh()
	if err := r.abortedSince(w.abortGen); err != nil {
		return err
	}
	if err := c.client.Submit(context.Background(), &w.op); err != nil {
		switch {
		case errors.Is(err, nbd.ErrClosed):
			r.suspect(c, err)
			return err
		case errors.Is(err, nbd.ErrUnsupported):
			return fmt.Errorf("%w: %w", nbd.ENOTSUP, err)
		case errors.Is(err, nbd.ErrTooLarge):
			return fmt.Errorf("%w: %w", nbd.EINVAL, err)
		}
		return err
	}
	w.timer.Reset(r.opts.RequestTimeout)
	var err error
	select {
	case err = <-w.done:
		w.timer.Stop()
	case <-ab:
		// Take the request back: fence the connection, wait for the
		// fence (or the reply) to complete it.
		w.timer.Stop()
		r.suspect(c, fmt.Errorf("%w (transaction %d)", ErrAborted, w.id))
		<-w.done
		return errAbortedRequest
	case <-w.timer.C:
		r.m.timeouts.Add(1)
		r.suspect(c, fmt.Errorf("%w: %v offset %d length %d (transaction %d, try %d) got no reply within %v",
			ErrTimeout, w.op.Cmd, w.op.Offset, w.op.Length, w.id, w.tries, r.opts.RequestTimeout))
		if err = <-w.done; err != nil { // the fence completes it, or the reply came after all
			err = fmt.Errorf("%w after %v: %w", ErrTimeout, r.opts.RequestTimeout, err)
		}
	}
	if err != nil && (errors.Is(err, nbd.ErrClosed) || errors.Is(err, nbd.ESHUTDOWN)) {
		r.suspect(c, err)
	}
	return err
}

// ErrAborted is wrapped (with ErrUnavailable) by the errors of requests
// that Abort ended.
var ErrAborted = errors.New("node: request aborted")

var errAbortedRequest = fmt.Errorf("%w: %w", ErrUnavailable, ErrAborted)

// Abort ends every request in flight or waiting on the node now, with an
// error wrapping ErrUnavailable and ErrAborted (reason goes to the log):
// a request on the wire is taken back by fencing the connection (the
// only way to be sure the peer does not apply it later), one waiting for
// a connection stops waiting. The node itself goes on: later requests are served as usual,
// reconnecting if needed. The engine calls it when it takes a stalled
// mirror member out of service, so its clients need not wait for the
// member's budget.
func (r *Remote) Abort(reason error) {
	r.log.Warn("aborting the requests in flight", "reason", reason)
	r.mu.Lock()
	r.aborts.Add(1)
	next := make(chan struct{})
	close(*r.aborted.Swap(&next)) // each try on the wire then fences its connection
	r.mu.Unlock()
}

// abortCh returns the channel the next Abort closes.
func (r *Remote) abortCh() <-chan struct{} { return *r.aborted.Load() }

// abortedSince returns the error of a request that began at abort count
// gen, if an Abort came since.
func (r *Remote) abortedSince(gen uint64) error {
	if r.aborts.Load() == gen {
		return nil
	}
	return errAbortedRequest
}
