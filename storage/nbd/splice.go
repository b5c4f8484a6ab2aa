package nbd

import (
	"io"
	"sync"

	"golang.org/x/sys/unix"
)

// SpliceReader is what a Backend implements when it can move a read's
// bytes into a pipe without copying them (splice(2) from a file: the
// pipe then refers to the page cache). The server uses it for large
// reads on plain TCP connections: the bytes go from the page cache to
// the socket with no copy through user memory. Every error of the read
// surfaces in SpliceRead, before the reply's header is sent.
type SpliceReader interface {
	// SpliceRead moves exactly n bytes at off into the pipe whose write
	// end is pipeFd; the pipe has room for them. On error the pipe may
	// hold part of them (the server throws it away).
	SpliceRead(pipeFd int, off int64, n int) error
}

const (
	// spliceMinBytes is the smallest read worth splicing: below it the
	// copies cost less than the extra system calls.
	spliceMinBytes = 128 << 10
	// pipeBytes is the size pipes are set to (Linux's default
	// pipe-max-size); reads up to it are spliced.
	pipeBytes = 1 << 20
	// maxPipes bounds the pipes a server keeps (two descriptors and up to
	// pipeBytes of page references each); reads beyond it are copied.
	maxPipes = 32
)

// pipePair is a pipe: read end r, write end w.
type pipePair struct{ r, w int }

// pipePool hands out empty pipes of pipeBytes, making them on demand up
// to maxPipes; if the system refuses one, it stops trying.
type pipePool struct {
	mu     sync.Mutex
	free   []*pipePair
	made   int
	broken bool
}

// get returns an empty pipe, or nil when none is free and no more can be
// made.
func (p *pipePool) get() *pipePair {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		pp := p.free[n-1]
		p.free = p.free[:n-1]
		return pp
	}
	if p.broken || p.made >= maxPipes {
		return nil
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		p.broken = true
		return nil
	}
	if size, err := unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, pipeBytes); err != nil || size < pipeBytes {
		unix.Close(fds[0])
		unix.Close(fds[1])
		p.broken = true
		return nil
	}
	p.made++
	return &pipePair{r: fds[0], w: fds[1]}
}

// put returns an emptied pipe.
func (p *pipePool) put(pp *pipePair) {
	p.mu.Lock()
	p.free = append(p.free, pp)
	p.mu.Unlock()
}

// discard closes a pipe that may hold bytes.
func (p *pipePool) discard(pp *pipePair) {
	unix.Close(pp.r)
	unix.Close(pp.w)
	p.mu.Lock()
	p.made--
	p.mu.Unlock()
}

// closeFree closes the free pipes (the server is done).
func (p *pipePool) closeFree() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pp := range p.free {
		unix.Close(pp.r)
		unix.Close(pp.w)
	}
	p.made -= len(p.free)
	p.free = nil
}

// spliceOut moves n bytes from the pipe pp to the connection's socket;
// called with the connection's write lock held.
func (t *transmitter) spliceOut(pp *pipePair, n int) error {
	t.spl.pipe, t.spl.left, t.spl.err = pp, n, nil
	if err := t.raw.Write(t.spl.fn); err != nil {
		return err
	}
	return t.spl.err
}

// spliceState is the state of the splice in progress (under the
// connection's write lock), with its callback bound once, so a spliced
// reply allocates nothing.
type spliceState struct {
	pipe *pipePair
	left int
	err  error
	fn   func(fd uintptr) bool
}

func (s *spliceState) step(fd uintptr) bool {
	for s.left > 0 {
		m, err := unix.Splice(s.pipe.r, nil, int(fd), nil, s.left, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false // the socket is full: wait until it can take more
		case err != nil:
			s.err = err
			return true
		case m == 0:
			s.err = io.ErrUnexpectedEOF
			return true
		}
		s.left -= int(m)
	}
	return true
}
