package nbd

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"dst/internal/bugs"
)

// OptFence is dst's own handshake option, outside the NBD protocol (other
// servers answer NBD_REP_ERR_UNSUP and the client goes on without it). Its
// payload is a client session id and a connection generation, 8 bytes
// each, big-endian. The server acknowledges it only once every older
// connection of the same session is fenced: closed, with every write-like
// request it had started finished, and every other one it read or will
// read dropped. So a client that lost a connection (timed out, cut) and
// resends on a new one can be sure none of the old connection's requests
// lands after the resend — not even one a stopped peer process held in
// its socket buffer, or a proxy held in its own, and executed on resume.
// An older generation than one already seen is refused.
const OptFence Option = 0x44535401 // "DST" 1

// maxBootIDBytes bounds the boot id a server sends (a UUID is 36).
const maxBootIDBytes = 64

// bootID returns id, or the kernel's boot id when id is empty ("" if it
// cannot be read).
func bootID(id string) string {
	if id == "" {
		b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
		if err != nil {
			return ""
		}
		id = strings.TrimSpace(string(b))
	}
	if len(id) > maxBootIDBytes {
		id = id[:maxBootIDBytes]
	}
	return id
}

// Fence is the session and generation a client sends with OptFence.
type Fence struct {
	Session    uint64
	Generation uint64
}

// ErrFenceStale is the reason a fence of an older generation is refused.
var ErrFenceStale = errors.New("nbd: fence of an older connection generation")

// fenceDrainTimeout bounds the wait for a fenced connection's started
// writes; past it the new connection is refused (the client retries).
const fenceDrainTimeout = 10 * time.Second

// fences tracks the connections of each fencing session.
type fences struct {
	mu       sync.Mutex
	sessions map[uint64]*fenceSession
}

type fenceSession struct {
	gen   uint64
	conns map[*serverConn]uint64 // connection → its generation
}

// connFence is the fencing state of one server connection.
type connFence struct {
	set     bool // the client sent OptFence
	session uint64
	gen     uint64
	fenced  atomic.Bool
	writing atomic.Int32 // write-like requests executing now
}

// beginWrite admits a write-like request to the backend unless the
// connection is fenced; endWrite ends an admitted one. A fence sets the
// flag and then waits for writing to drain, so every write either ran
// to its end before the fence was acknowledged or never runs.
func (c *serverConn) beginWrite() bool {
	c.fence.writing.Add(1)
	if c.fence.fenced.Load() {
		c.fence.writing.Add(-1)
		return false
	}
	return true
}

func (c *serverConn) endWrite() { c.fence.writing.Add(-1) }

// fenceOlder registers c as generation f.Generation of session
// f.Session and fences the session's older connections: it closes them
// and waits until none of them is writing. A generation older than the
// session's newest is refused with ErrFenceStale.
func (s *Server) fenceOlder(c *serverConn, f Fence) error {
	s.fences.mu.Lock()
	if s.fences.sessions == nil {
		s.fences.sessions = map[uint64]*fenceSession{}
	}
	fs := s.fences.sessions[f.Session]
	if fs == nil {
		fs = &fenceSession{conns: map[*serverConn]uint64{}}
		s.fences.sessions[f.Session] = fs
	}
	if f.Generation < fs.gen {
		s.fences.mu.Unlock()
		return fmt.Errorf("%w: %d, the session is at %d", ErrFenceStale, f.Generation, fs.gen)
	}
	fs.gen = f.Generation
	var older []*serverConn
	for oc, g := range fs.conns {
		if g < f.Generation {
			older = append(older, oc)
		}
	}
	if bugs.On(bugs.NoFence) {
		older = nil
	}
	c.fence.set, c.fence.session, c.fence.gen = true, f.Session, f.Generation
	fs.conns[c] = f.Generation
	s.fences.mu.Unlock()

	deadline := time.Now().Add(fenceDrainTimeout)
	for _, oc := range older {
		oc.fence.fenced.Store(true)
		oc.close()
		for oc.fence.writing.Load() != 0 {
			if time.Now().After(deadline) {
				return fmt.Errorf("nbd: fenced connection of generation %d still writing after %v", oc.fence.gen, fenceDrainTimeout)
			}
			time.Sleep(time.Millisecond)
		}
		oc.mu.Lock() // ServeConn swaps conn for the TLS one under mu
		peer := oc.conn.RemoteAddr()
		oc.mu.Unlock()
		s.log.Info("older connection fenced", "peer", peer, "session", fmt.Sprintf("%016x", f.Session),
			"generation", oc.fence.gen, "by", f.Generation)
	}
	return nil
}

// unfence forgets c when it ends; a session without connections is
// forgotten too.
func (s *Server) unfence(c *serverConn) {
	if !c.fence.set {
		return
	}
	s.fences.mu.Lock()
	defer s.fences.mu.Unlock()
	fs := s.fences.sessions[c.fence.session]
	if fs == nil {
		return
	}
	delete(fs.conns, c)
	if len(fs.conns) == 0 {
		delete(s.fences.sessions, c.fence.session)
	}
}
