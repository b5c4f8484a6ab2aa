// EventLog writes whole JSON lines that ScanEvents reads back; this is
// checked with concurrent writers under -race, a writer that records every
// write call (line boundaries, nothing after Close), a failing writer, and
// files cut in the middle of the last line as a killed harness leaves them.
package reports

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// recordingWriter keeps every Write call; it fails the test if written to
// after sealed is set.
type recordingWriter struct {
	t      *testing.T
	mu     sync.Mutex
	calls  [][]byte
	all    bytes.Buffer
	sealed atomic.Bool
	err    error
}

func (w *recordingWriter) Write(p []byte) (int, error) {
	if w.sealed.Load() {
		w.t.Errorf("write of %d bytes after Close", len(p))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, w.err
	}
	w.calls = append(w.calls, bytes.Clone(p))
	w.all.Write(p)
	return len(p), nil
}

func (w *recordingWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.all.String()
}

func TestEventLogConcurrentWriters(t *testing.T) {
	path := filepath.Join(t.TempDir(), EventsFile)
	l, err := CreateEventLog(path, EventLogOptions{FlushInterval: time.Millisecond, BufferBytes: 4096})
	require.NoError(t, err)
	const writers, each = 8, 250
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				require.NoError(t, l.Log(Event{Kind: EventOp, Cycle: g, Target: fmt.Sprintf("node-%d", g),
					Fields: map[string]any{"g": g, "seq": i}}))
			}
		}()
	}
	wg.Wait()
	require.NoError(t, l.Close())

	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	events, err := ReadEvents(f)
	require.NoError(t, err)
	require.Len(t, events, writers*each)
	next := make([]float64, writers)
	for _, e := range events {
		g := int(e.Fields["g"].(float64))
		require.Equal(t, next[g], e.Fields["seq"], "each writer's events stay in order")
		next[g]++
		require.Equal(t, g, e.Cycle)
		require.False(t, e.Time.IsZero(), "events are stamped")
	}
}

func TestEventRoundTrip(t *testing.T) {
	var b bytes.Buffer
	at := time.Date(2026, 11, 25, 3, 4, 5, 123456789, time.UTC)
	l := NewEventLog(&b, EventLogOptions{FlushInterval: time.Hour})
	in := Event{Time: at, Kind: EventPhase, Cycle: 7, Phase: "fsck", Target: "node-2",
		Detail: "xfs_repair -n", Err: `exit 1: "bad" <inode> & more`, Duration: 1250 * time.Millisecond,
		Fields: map[string]any{"bytes": 4096, "ok": false, "nodes": []string{"a", "b"}}}
	require.NoError(t, l.Log(in))
	require.NoError(t, l.Log(Event{Kind: EventNote, Time: at}))
	require.Zero(t, b.Len(), "nothing is written before a flush is due")
	require.NoError(t, l.Flush())
	require.NoError(t, l.Close())

	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	require.Len(t, lines, 2)
	require.True(t, strings.HasPrefix(lines[0], `{"time":"2026-11-25T03:04:05.123456789Z","kind":"phase","cycle":7,"phase":"fsck",`), lines[0])
	require.Contains(t, lines[0], `"duration_s":1.25,"bytes":4096,"nodes":["a","b"],"ok":false}`)
	require.Equal(t, `{"time":"2026-11-25T03:04:05.123456789Z","kind":"note","cycle":0}`, lines[1])

	events, err := ReadEvents(&b)
	require.NoError(t, err)
	require.Len(t, events, 2)
	want := in
	want.Fields = map[string]any{"bytes": 4096.0, "ok": false, "nodes": []any{"a", "b"}}
	require.Equal(t, want, events[0])
	require.Nil(t, events[1].Fields)
}

func TestEventLogRejectsBadEventsAndGoesOn(t *testing.T) {
	var b bytes.Buffer
	l := NewEventLog(&b, EventLogOptions{})
	err := l.Log(Event{Kind: EventOp, Fields: map[string]any{"kind": "x"}})
	require.ErrorIs(t, err, ErrEventField)
	require.Error(t, l.Log(Event{Kind: EventOp, Fields: map[string]any{"c": make(chan int)}}))
	big := strings.Repeat("x", MaxEventLineBytes)
	require.ErrorContains(t, l.Log(Event{Kind: EventOp, Fields: map[string]any{"blob": big}}), "over")
	require.NoError(t, l.Log(Event{Kind: EventOp, Detail: big}), "a long detail is cut, not rejected")
	require.NoError(t, l.Close())
	events, err := ReadEvents(&b)
	require.NoError(t, err)
	require.Len(t, events, 1)
	require.Less(t, len(events[0].Detail), EventTextMaxBytes+64)
	require.Contains(t, events[0].Detail, "bytes cut")
}

func TestEventLogFlushesWithinInterval(t *testing.T) {
	w := &recordingWriter{t: t}
	l := NewEventLog(w, EventLogOptions{FlushInterval: 10 * time.Millisecond})
	require.NoError(t, l.Log(Event{Kind: EventFault, Target: "node-1"}))
	require.Eventually(t, func() bool { return strings.Contains(w.String(), `"target":"node-1"`) },
		5*time.Second, time.Millisecond, "the timer flushes without another Log or Flush")
	require.NoError(t, l.Log(Event{Kind: EventRecovery, Target: "node-1"}))
	require.Eventually(t, func() bool { return strings.Count(w.String(), "\n") == 2 },
		5*time.Second, time.Millisecond, "the timer is re-armed")
	require.NoError(t, l.Close())
}

func TestEventLogWritesWholeLinesAndNothingAfterClose(t *testing.T) {
	w := &recordingWriter{t: t}
	l := NewEventLog(w, EventLogOptions{FlushInterval: time.Microsecond, BufferBytes: 300})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ { // until Close
				if err := l.Log(Event{Kind: EventOp, Detail: strings.Repeat("d", (g*97+i*13)%700)}); err != nil {
					require.ErrorIs(t, err, ErrEventLogClosed)
					return
				}
			}
		}()
	}
	closed := make(chan error, 1)
	time.AfterFunc(5*time.Millisecond, func() { closed <- l.Close() })
	require.NoError(t, <-closed)
	w.sealed.Store(true) // from here on, any write fails the test
	wg.Wait()
	require.ErrorIs(t, l.Close(), ErrEventLogClosed)
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.calls {
		require.True(t, bytes.HasSuffix(c, []byte("\n")), "every write ends a line")
	}
	events, err := ReadEvents(bytes.NewReader(w.all.Bytes()))
	require.NoError(t, err)
	require.NotEmpty(t, events)
	require.ErrorIs(t, l.Log(Event{Kind: EventOp}), ErrEventLogClosed)
	require.ErrorIs(t, l.Flush(), ErrEventLogClosed)
}

func TestEventLogWriteErrorIsSticky(t *testing.T) {
	w := &recordingWriter{t: t, err: errors.New("disk full")}
	l := NewEventLog(w, EventLogOptions{FlushInterval: time.Hour})
	require.NoError(t, l.Log(Event{Kind: EventOp}), "buffered, not yet written")
	require.ErrorContains(t, l.Flush(), "disk full")
	require.ErrorContains(t, l.Log(Event{Kind: EventOp}), "disk full")
	require.ErrorContains(t, l.Close(), "disk full")
}

func TestScanEventsToleratesTruncatedLastLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), EventsFile)
	l, err := CreateEventLog(path, EventLogOptions{})
	require.NoError(t, err)
	for i := range 3 {
		require.NoError(t, l.Log(Event{Kind: EventOp, Detail: fmt.Sprintf("op %d", i)}))
	}
	require.NoError(t, l.Close())
	full, err := os.ReadFile(path)
	require.NoError(t, err)

	cut := full[:len(full)-10]
	events, err := ReadEvents(bytes.NewReader(cut))
	require.NoError(t, err, "a killed writer's half line is not an error")
	require.Len(t, events, 2)

	noNewline := full[:len(full)-1]
	events, err = ReadEvents(bytes.NewReader(noNewline))
	require.NoError(t, err)
	require.Len(t, events, 3, "a complete last line without newline counts")

	withBlank := append([]byte("\n"), full...)
	events, err = ReadEvents(bytes.NewReader(withBlank))
	require.NoError(t, err)
	require.Len(t, events, 3)
}

func TestScanEventsRejectsCorruptMiddleAndHugeLines(t *testing.T) {
	_, err := ReadEvents(strings.NewReader("{\"kind\":\"op\"}\n{garbage\n{\"kind\":\"op\"}\n"))
	require.ErrorContains(t, err, "line 2")

	huge := `{"kind":"op","detail":"` + strings.Repeat("x", MaxEventLineBytes) + "\"}\n"
	_, err = ReadEvents(strings.NewReader(huge))
	require.ErrorContains(t, err, "line 1 is over")

	stop := errors.New("stop")
	n := 0
	err = ScanEvents(strings.NewReader("{\"kind\":\"op\"}\n{\"kind\":\"op\"}\n"), func(Event) error { n++; return stop })
	require.ErrorIs(t, err, stop)
	require.Equal(t, 1, n)
}
