// Membership changes of the running storage (dst member add, dst member
// remove): the admin endpoint asks, the monitor loop makes them.
//
//  1. The change is checked and the node it adds opened while the storage
//     serves (engine.Storage.PrepareChange): a change that cannot be made
//     is refused here, and the clients notice nothing.
//  2. The gate closes: new requests wait, the ones inside finish (within
//     ChangeDrainTimeout, or the change is given up and the gate opens).
//     The resync monitor runs on meanwhile, so a member that hangs a
//     request is failed over by its watchdog.
//  3. The monitor stops, then the storage is reassembled with the new
//     membership over the same nodes (engine.Storage.Reassemble: a clean
//     stop and a start, recorded on every member before anything is
//     served), and the admin handler and the monitor are the new
//     storage's.
//  4. The gate opens to the new engine: the requests held are served by
//     it. A replica added is copied whole by the new monitor.
//
// Durability: what engine.Storage.Reassemble says. Every request
// answered before the gate closed was answered by the old storage under
// its contract, and the change first makes all of it durable; no request
// is answered while the storage changes.
package serve

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"dst/storage/admin"
	"dst/storage/engine"
	"dst/storage/spec"
)

// ChangeDrainTimeout bounds the wait for requests in flight when a
// membership change closes the gate.
const ChangeDrainTimeout = 10 * time.Second

// ChangeTimeout bounds a membership change once the gate is closed (the
// reassembly of the storage; a hung member fails it, and the old
// membership serves again).
const ChangeTimeout = 60 * time.Second

var errStopping = errors.New("serve: the storage is stopping")

type changeReq struct {
	c    *engine.Change
	done chan changeRes // buffered: the monitor never waits for the asker
}

type changeRes struct {
	st     *engine.Storage // serving after the change (nil: none)
	paused time.Duration
	err    error
}

// AddMember adds the node at url as the last replica of the mirror at
// path (spec.MirrorAt.Path: "/" is the root). It returns once the
// replica is a member; its copy runs in the background (admin.Changer).
func (s *Server) AddMember(ctx context.Context, path, url string, force bool) (admin.ChangeResult, error) {
	return s.change(ctx, func(t spec.Tree) (spec.Tree, int, error) {
		nt, k, err := t.WithLeaf(path, url)
		if err != nil {
			err = fmt.Errorf("%w%s", err, mirrorList(t))
		}
		return nt, k, err
	}, engine.ReassembleOptions{Force: force})
}

// RemoveMember removes mirror replica i (admin.Changer).
func (s *Server) RemoveMember(ctx context.Context, i int) (admin.ChangeResult, error) {
	return s.change(ctx, func(t spec.Tree) (spec.Tree, int, error) {
		nt, err := t.WithoutLeaf(i)
		return nt, i, err
	}, engine.ReassembleOptions{})
}

// mirrorList names the tree's mirrors, for an error about a mirror path.
func mirrorList(t spec.Tree) string {
	ms := t.Mirrors()
	if len(ms) == 0 {
		return ": the storage has no mirror"
	}
	var b strings.Builder
	b.WriteString("; the storage's mirrors:")
	for _, m := range ms {
		fmt.Fprintf(&b, " %s (members %s)", m.Path, strings.Trim(fmt.Sprint(m.Leaves), "[]"))
	}
	return b.String()
}

func (s *Server) change(ctx context.Context, edit func(spec.Tree) (spec.Tree, int, error), opts engine.ReassembleOptions) (admin.ChangeResult, error) {
	s.changeMu.Lock()
	defer s.changeMu.Unlock()
	st := s.Storage()
	if st == nil {
		return admin.ChangeResult{Member: -1}, errNoEngine
	}
	cur := st.Tree()
	res := admin.ChangeResult{Member: -1, Layout: cur.String(), Generation: st.Generation()}
	tree, k, err := edit(cur)
	if err != nil {
		return res, fmt.Errorf("%w: %w", engine.ErrBadChange, err)
	}
	res.Member = k
	if leaves := tree.Leaves(); len(leaves) > len(cur.Leaves()) {
		res.URL = leaves[k]
	} else if k >= 0 && k < len(cur.Leaves()) {
		res.URL = cur.Leaves()[k]
	}
	c, err := st.PrepareChange(ctx, tree, opts)
	if err != nil {
		return res, err
	}
	req := &changeReq{c: c, done: make(chan changeRes, 1)}
	select {
	case s.changes <- req:
	case <-ctx.Done():
		c.Abort()
		return res, ctx.Err()
	case <-s.stopped:
		c.Abort()
		return res, errStopping
	}
	out := <-req.done
	res.PausedSeconds = out.paused.Seconds()
	if out.st != nil {
		res.Layout, res.Generation = out.st.Tree().String(), out.st.Generation()
	}
	return res, out.err
}

// isChange: r asks for a membership change (which takes adminMu itself).
func isChange(r *http.Request) bool {
	p := r.URL.Path
	return r.Method == http.MethodPost && strings.HasPrefix(p, "/members/") &&
		(p == "/members/add" || strings.HasSuffix(p, "/remove"))
}

// monitor runs the storage's resync monitor until ctx ends, and makes
// the membership changes asked meanwhile (with the monitor of the
// storage that serves after each).
func (s *Server) monitor(ctx context.Context) error {
	defer close(s.stopped)
	for {
		st := s.Storage()
		if st == nil {
			return errNoEngine
		}
		mctx, cancel := context.WithCancel(ctx)
		ran := make(chan error, 1)
		go func() { ran <- st.Run(mctx) }()
		select {
		case err := <-ran:
			cancel()
			return err
		case req := <-s.changes:
			var once sync.Once
			var runErr error
			stop := func() error {
				once.Do(func() { cancel(); runErr = <-ran })
				return runErr
			}
			res := s.apply(ctx, st, req.c, stop)
			stop() // before the next monitor starts
			req.done <- res
			if res.st == nil {
				return res.err
			}
		}
	}
}

// apply makes change c of st (steps 2 to 4 of the package comment);
// stopMonitor stops st's monitor and returns what it returned.
func (s *Server) apply(ctx context.Context, st *engine.Storage, c *engine.Change, stopMonitor func() error) changeRes {
	// Bounded, but not ended by a stop: a change half made is finished
	// (or undone) before the storage closes.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ChangeTimeout)
	defer cancel()
	giveUp := func(began time.Time, err error) changeRes {
		c.Abort()
		return changeRes{st: st, paused: time.Since(began), err: fmt.Errorf("serve: membership change given up: %w", err)}
	}
	// No admin request acts on st from here (the clients go on).
	for deadline := time.Now().Add(ChangeDrainTimeout); !s.adminMu.TryLock(); {
		if time.Now().After(deadline) {
			return giveUp(time.Now(), errors.New("an admin request (a scrub?) is running: change the membership when it is done"))
		}
		time.Sleep(time.Millisecond)
	}
	defer s.adminMu.Unlock()
	began := time.Now()
	dctx, dcancel := context.WithTimeout(cctx, ChangeDrainTimeout)
	err := s.gate.drain(dctx)
	dcancel()
	if err != nil {
		return giveUp(began, err)
	}
	if err := stopMonitor(); err != nil {
		s.log.Warn("membership change: the resync monitor ended with an error", "err", err)
	}
	ns, err := st.Reassemble(cctx, c)
	if ns != st {
		s.stMu.Lock()
		s.st = ns
		s.stMu.Unlock()
		if ns != nil && s.aln != nil {
			s.h.Store(s.newHandler(ns))
		}
	}
	var e *engine.Engine
	if ns != nil {
		e = ns.Engine()
	}
	s.gate.open(e)
	paused := time.Since(began)
	if err == nil {
		s.log.Warn("membership changed online; name the new layout in the config, or the next start changes it back",
			"layout", ns.Tree().String(), "paused", paused)
	}
	return changeRes{st: ns, paused: paused, err: err}
}
