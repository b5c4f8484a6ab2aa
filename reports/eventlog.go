package reports

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// ErrEventLogClosed is returned by Log and Flush after Close.
var ErrEventLogClosed = errors.New("reports: event log closed")

// EventLogOptions configure an EventLog. The zero value is ready to use.
type EventLogOptions struct {
	// FlushInterval is the longest an event stays in the buffer; zero means
	// one second.
	FlushInterval time.Duration
	// BufferBytes is the buffer size; zero means 64 KiB.
	BufferBytes int
	// Now stamps events logged with a zero Time; nil means time.Now.
	Now func() time.Time
}

// EventLog writes events.jsonl: one JSON object per line (see [Event]).
//
// Log may be called from many goroutines. Events are buffered; the buffer is
// written out when it fills, at most FlushInterval after an event was
// logged, on Flush and on Close, and always at line boundaries (a line
// longer than the buffer is written in one call), so a killed harness leaves
// a file whose lines are whole except perhaps the last. Nothing runs in the
// background while the buffer is empty; a pending flush timer is stopped or
// waited for by Close, so no goroutine outlives Close.
//
// Lines are in the order Log calls took the log's lock; events stamped by
// Now in concurrent calls may therefore be a little out of time order.
//
// The first write error is sticky: Log, Flush and Close return it from then
// on.
type EventLog struct {
	interval time.Duration
	now      func() time.Time
	closer   io.Closer // nil when the log does not own the writer

	mu      sync.Mutex
	w       *bufio.Writer
	err     error
	closed  bool
	timer   *time.Timer
	armed   bool           // a flush timer is pending
	pending sync.WaitGroup // counts the pending timer callback
}

// CreateEventLog creates (or truncates) the file at path and returns a log
// writing to it; Close closes the file.
func CreateEventLog(path string, opts EventLogOptions) (*EventLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("reports: create event log: %w", err)
	}
	l := NewEventLog(f, opts)
	l.closer = f
	return l, nil
}

// NewEventLog returns a log writing to w. Close flushes but does not close
// w.
func NewEventLog(w io.Writer, opts EventLogOptions) *EventLog {
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = time.Second
	}
	if opts.BufferBytes <= 0 {
		opts.BufferBytes = 64 << 10
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &EventLog{
		interval: opts.FlushInterval,
		now:      opts.Now,
		w:        bufio.NewWriterSize(w, opts.BufferBytes),
	}
}

// Log appends one event, stamping it with Now if its Time is zero. It
// returns an error for an event that cannot be encoded (a field that is not
// JSON, a key colliding with a fixed key, a line over MaxEventLineBytes),
// after Close, and after a write error.
func (l *EventLog) Log(e Event) error {
	if e.Time.IsZero() {
		e.Time = l.now()
	}
	line, err := json.Marshal(e) // outside the lock: writers do not wait for each other's encoding
	if err != nil {
		return fmt.Errorf("reports: log %s event: %w", e.Kind, err)
	}
	line = append(line, '\n')
	if len(line) > MaxEventLineBytes {
		return fmt.Errorf("reports: log %s event: line of %d bytes is over %d", e.Kind, len(line), MaxEventLineBytes)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrEventLogClosed
	}
	if l.err != nil {
		return l.err
	}
	if l.w.Buffered() > 0 && len(line) > l.w.Available() {
		if err := l.w.Flush(); err != nil {
			l.err = fmt.Errorf("reports: write event log: %w", err)
			return l.err
		}
	}
	if _, err := l.w.Write(line); err != nil {
		l.err = fmt.Errorf("reports: write event log: %w", err)
		return l.err
	}
	if l.w.Buffered() > 0 && !l.armed {
		l.armed = true
		l.pending.Add(1)
		if l.timer == nil {
			l.timer = time.AfterFunc(l.interval, l.tick)
		} else {
			l.timer.Reset(l.interval)
		}
	}
	return nil
}

// tick is the flush timer's callback.
func (l *EventLog) tick() {
	defer l.pending.Done()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.armed = false
	if l.closed || l.err != nil {
		return
	}
	l.flushLocked()
}

// Flush writes out the buffered events.
func (l *EventLog) Flush() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrEventLogClosed
	}
	return l.flushLocked()
}

func (l *EventLog) flushLocked() error {
	if l.err != nil {
		return l.err
	}
	if err := l.w.Flush(); err != nil {
		l.err = fmt.Errorf("reports: write event log: %w", err)
	}
	return l.err
}

// Close flushes the buffer, stops the flush timer, waits for a callback
// already running, and closes the file if the log opened it. Calling Close
// again returns ErrEventLogClosed.
func (l *EventLog) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrEventLogClosed
	}
	l.closed = true
	if l.armed && l.timer.Stop() {
		l.armed = false
		l.pending.Done()
	}
	err := l.flushLocked()
	l.mu.Unlock()
	l.pending.Wait() // a callback that already fired sees closed and returns
	if l.closer != nil {
		if cerr := l.closer.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("reports: close event log: %w", cerr)
		}
	}
	return err
}

// ScanEvents reads events.jsonl from r and calls fn for each event in order,
// stopping at the first error fn returns. Blank lines are skipped. A last
// line without a newline that does not parse is the mark of a killed writer
// and is ignored; any other line that does not parse, or is longer than
// MaxEventLineBytes, is an error naming the line.
func ScanEvents(r io.Reader, fn func(Event) error) error {
	br := bufio.NewReaderSize(r, MaxEventLineBytes)
	for n := 1; ; n++ {
		line, err := br.ReadSlice('\n')
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			return fmt.Errorf("reports: read events: line %d is over %d bytes", n, MaxEventLineBytes)
		case err != nil && !errors.Is(err, io.EOF):
			return fmt.Errorf("reports: read events: line %d: %w", n, err)
		}
		eof := err != nil
		if trimmed := bytes.TrimSpace(line); len(trimmed) > 0 {
			var e Event
			if perr := json.Unmarshal(trimmed, &e); perr != nil {
				if eof {
					return nil // truncated last line
				}
				return fmt.Errorf("reports: read events: line %d: %w", n, perr)
			}
			if ferr := fn(e); ferr != nil {
				return ferr
			}
		}
		if eof {
			return nil
		}
	}
}

// ReadEvents reads every event of r into memory (see ScanEvents); for a
// long run prefer ScanEvents.
func ReadEvents(r io.Reader) ([]Event, error) {
	var out []Event
	err := ScanEvents(r, func(e Event) error {
		out = append(out, e)
		return nil
	})
	return out, err
}
