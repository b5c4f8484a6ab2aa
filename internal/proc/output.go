package proc

import (
	"bytes"
	"io"
	"os"
	"sync"
)

// LineMax bounds the partial line held while its newline has not come: a
// line longer than LineMax bytes is dropped whole — it still reaches the
// log, but no part of it is handed to WaitLines (a line that long is not a
// ready line, and a fragment of it must not pass for one).
const LineMax = 64 << 10

// output appends to the log file and to a caller's writer, one Write at a
// time.
type output struct {
	mu   sync.Mutex
	f    *os.File
	also io.Writer
}

func (o *output) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.f.Write(b) // a full disk must not stop the process; the log is best effort
	if o.also != nil {
		o.also.Write(b)
	}
	return len(b), nil
}

// lineSplitter passes output on to w (if not nil) and hands each complete
// line, without its newline, to lines if there is room; lines nobody waits
// for are dropped.
type lineSplitter struct {
	w       io.Writer
	lines   chan<- string
	partial []byte // at most LineMax bytes
	long    bool   // the line under way passed LineMax: dropped up to its newline
}

func (s *lineSplitter) Write(b []byte) (int, error) {
	n := len(b)
	if s.w != nil {
		s.w.Write(b)
	}
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if !s.long && len(s.partial)+len(b) <= LineMax {
				s.partial = append(s.partial, b...)
			} else {
				s.partial, s.long = s.partial[:0], true
			}
			break
		}
		if !s.long && len(s.partial)+i <= LineMax {
			select {
			case s.lines <- string(append(s.partial, b[:i]...)):
			default: // nobody waits for more lines
			}
		}
		s.partial, s.long = s.partial[:0], false
		b = b[i+1:]
	}
	return n, nil
}

// Tail returns the last n bytes of the file at path, "" if it cannot be
// read.
func Tail(path string, n int) string { return tailFrom(path, 0, n) }

// Tail returns the last n bytes written to the log since Start (what
// earlier runs appended to the same log is left out).
func (p *Process) Tail(n int) string { return tailFrom(p.log, p.logStart, n) }

// tailFrom returns the last n bytes of path at or after offset from.
func tailFrom(path string, from int64, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	start := max(from, fi.Size()-int64(n))
	if start >= fi.Size() {
		return ""
	}
	b := make([]byte, fi.Size()-start)
	k, _ := f.ReadAt(b, start)
	return string(b[:k])
}
