// The admin endpoints report what the storage, its members' nodes and the
// request counters say: /status as JSON with every member's state and
// remote counters, /metrics in the Prometheus text format (checked against
// its grammar, with cumulative histogram buckets) with each op's requests,
// bytes, errors and latency (recorded with an injected clock); checked
// with httptest and fakes.
package admin_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"dst/storage/admin"
	"dst/storage/engine"
	"dst/storage/iostats"
	"dst/storage/nbd"
	"dst/storage/node"
)

// fakeStorage reports fixed member states.
type fakeStorage struct {
	size     int64
	members  []engine.MemberStatus
	activity engine.ActivityStatus
}

func (f *fakeStorage) Size() int64                     { return f.size }
func (f *fakeStorage) Status() []engine.MemberStatus   { return f.members }
func (f *fakeStorage) Activity() engine.ActivityStatus { return f.activity }

// fakeRemote is a node with a remote node's state and counters.
type fakeRemote struct {
	*node.Memory
	state node.State
	m     node.RemoteMetrics
}

func (f *fakeRemote) State() node.State            { return f.state }
func (f *fakeRemote) Metrics() node.RemoteMetrics  { return f.m }
func (f *fakeRemote) String() string               { return "remote" }
func (f *fakeRemote) Flags() nbd.TransmissionFlags { return node.MemoryFlags }

// clock is a manual clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// record counts one request of op that took d on c's clock.
func record(reqs *iostats.Requests, c *clock, op iostats.Op, d time.Duration, n int64, err error) {
	t0 := reqs.Begin()
	c.advance(d)
	reqs.End(op, t0, n, err)
}

func fixture(t *testing.T) (*admin.Handler, *iostats.Requests, *clock) {
	t.Helper()
	c := &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	st := &fakeStorage{size: 1 << 30, members: []engine.MemberStatus{
		{Index: 0, Node: "/srv/a.img", State: "in-sync"},
		{Index: 1, Node: "nbd://b/x", State: "failed", Pending: 2, DirtyRegions: 7, ResyncedBytes: 4096,
			LastError: "node unavailable: \"quoted\"\nline"},
	}, activity: engine.ActivityStatus{Mirrors: 1, ActiveRegions: 5, MaxRegions: 1024, RegionSize: 1 << 20,
		ClearedRegions: 9, MetadataWrites: 30, CrashResyncRegions: 3}}
	remote := &fakeRemote{Memory: node.NewMemory(4096), state: node.StateConnecting,
		m: node.RemoteMetrics{Requests: 10, Bytes: 8192, Retries: 3, Connects: 2, Reconnects: 1, Fences: 1, Timeouts: 4, Pings: 5, Failures: 6, Unavailable: 2}}
	reqs := iostats.NewRequests(c.now)
	h := admin.NewHandler(admin.Options{
		Storage: st, Layout: "mirror(file:/srv/a.img, nbd://b/x)", Listen: "127.0.0.1:10809", Export: "disk",
		Members: []admin.Member{
			{URL: "file:/srv/a.img", Node: node.NewMemory(65536), DataOffset: 12288},
			{URL: "nbd://b/x", Node: remote, DataOffset: 8192},
		},
		Generation: func() uint64 { return 42 },
		Requests:   reqs,
		Now:        c.now,
	})
	c.advance(90 * time.Second)
	return h, reqs, c
}

func get(t *testing.T, h http.Handler, method, path string) *http.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec.Result()
}

func TestStatusJSON(t *testing.T) {
	h, reqs, c := fixture(t)
	record(reqs, c, iostats.OpWrite, 3*time.Millisecond, 4096, nil)
	record(reqs, c, iostats.OpRead, 3*time.Millisecond, 512, nil)

	resp := get(t, h, http.MethodGet, "/status")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var st admin.Status
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))

	assert.Equal(t, int64(1<<30), st.Size)
	assert.Equal(t, "mirror(file:/srv/a.img, nbd://b/x)", st.Layout)
	assert.Equal(t, "127.0.0.1:10809", st.Listen)
	assert.Equal(t, "disk", st.Export)
	assert.Equal(t, uint64(42), st.Generation)
	assert.InDelta(t, 90.006, st.UptimeSeconds, 1e-9, "two requests of 3 ms moved the clock too")
	assert.Equal(t, "degraded", st.Health)
	require.Len(t, st.Members, 2)
	a, b := st.Members[0], st.Members[1]
	assert.Equal(t, "file:/srv/a.img", a.URL)
	assert.Equal(t, int64(12288), a.DataOffset)
	assert.Equal(t, int64(65536), a.NodeSize)
	assert.Nil(t, a.Remote, "a local node has no remote counters")
	assert.Empty(t, a.Connection)
	assert.Equal(t, "failed", b.State)
	assert.Equal(t, 2, b.Pending)
	assert.Equal(t, 7, b.DirtyRegions)
	assert.Equal(t, int64(4096), b.ResyncedBytes)
	assert.Contains(t, b.LastError, "unavailable")
	assert.Equal(t, "connecting", b.Connection)
	require.NotNil(t, b.Remote)
	assert.Equal(t, admin.RemoteStatus{Requests: 10, Bytes: 8192, Retries: 3, Connects: 2, Reconnects: 1, Fences: 1,
		Timeouts: 4, Pings: 5, Failures: 6, Unavailable: 2}, *b.Remote)
	assert.Equal(t, admin.RequestStatus{Count: 1, Bytes: 4096, MeanSeconds: 0.003}, st.Requests["write"])
	assert.Equal(t, admin.RequestStatus{Count: 1, Bytes: 512, MeanSeconds: 0.003}, st.Requests["read"])
	assert.Equal(t, admin.RequestStatus{}, st.Requests["trim"])
	assert.Len(t, st.Requests, 6)
}

func TestHealth(t *testing.T) {
	for _, tc := range []struct {
		states []string
		want   string
	}{
		{[]string{"in-sync", "in-sync"}, "ok"},
		{[]string{"in-sync", "resyncing"}, "resyncing"},
		{[]string{"resyncing", "suspended"}, "degraded"},
		{[]string{"failed", "resyncing"}, "degraded"},
	} {
		st := &fakeStorage{}
		for i, s := range tc.states {
			st.members = append(st.members, engine.MemberStatus{Index: i, State: s})
		}
		h := admin.NewHandler(admin.Options{Storage: st})
		assert.Equal(t, tc.want, h.Status().Health, "%v", tc.states)
	}
}

func TestRoutes(t *testing.T) {
	h, _, _ := fixture(t)
	assert.Equal(t, http.StatusOK, get(t, h, http.MethodGet, "/").StatusCode)
	assert.Equal(t, http.StatusOK, get(t, h, http.MethodHead, "/status").StatusCode)
	assert.Equal(t, http.StatusMethodNotAllowed, get(t, h, http.MethodPost, "/status").StatusCode)
	assert.Equal(t, http.StatusMethodNotAllowed, get(t, h, http.MethodDelete, "/metrics").StatusCode)
	assert.Equal(t, http.StatusNotFound, get(t, h, http.MethodGet, "/nope").StatusCode)
}

// The text format's sample line: name, optional labels, value.
var (
	sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*",?)*\})? (\S+)$`)
	helpLine   = regexp.MustCompile(`^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .+$`)
	typeLine   = regexp.MustCompile(`^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$`)
	labelPair  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// parseMetrics checks the exposition's grammar — every family has HELP
// then TYPE before its samples, appears once, and its samples carry its
// name (with _bucket, _sum, _count for histograms) — and returns the
// samples.
func parseMetrics(t *testing.T, text string) ([]sample, map[string]string) {
	t.Helper()
	types := map[string]string{}
	var fam, pendingHelp string
	var out []sample
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case helpLine.MatchString(line):
			pendingHelp = helpLine.FindStringSubmatch(line)[1]
			_, seen := types[pendingHelp]
			require.False(t, seen, "line %d: family %s appears twice", n, pendingHelp)
		case typeLine.MatchString(line):
			m := typeLine.FindStringSubmatch(line)
			require.Equal(t, pendingHelp, m[1], "line %d: TYPE follows its HELP", n)
			types[m[1]], fam = m[2], m[1]
		default:
			m := sampleLine.FindStringSubmatch(line)
			require.NotNil(t, m, "line %d is not a sample: %q", n, line)
			name := m[1]
			if types[fam] == "histogram" {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
				require.Equal(t, fam, base, "line %d", n)
			} else {
				require.Equal(t, fam, name, "line %d: sample of family %s", n, fam)
			}
			v, err := strconv.ParseFloat(m[3], 64)
			require.NoError(t, err, "line %d", n)
			s := sample{name: name, labels: map[string]string{}, value: v}
			for _, lp := range labelPair.FindAllStringSubmatch(m[2], -1) {
				s.labels[lp[1]] = lp[2]
			}
			out = append(out, s)
		}
	}
	return out, types
}

func find(samples []sample, name string, labels ...string) (float64, bool) {
next:
	for _, s := range samples {
		if s.name != name {
			continue
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if s.labels[labels[i]] != labels[i+1] {
				continue next
			}
		}
		return s.value, true
	}
	return 0, false
}

func TestMetrics(t *testing.T) {
	h, reqs, c := fixture(t)
	for range 3 {
		record(reqs, c, iostats.OpWrite, 3*time.Millisecond, 4096, nil)
	}
	boom := errors.New("boom")
	record(reqs, c, iostats.OpFlush, 2*time.Second, 0, boom)
	record(reqs, c, iostats.OpRead, 2*time.Second, 4096, boom)  // failed reads count no bytes
	record(reqs, c, iostats.OpRead, 20*time.Second, 4096, boom) // beyond the last bucket

	resp := get(t, h, http.MethodGet, "/metrics")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/plain; version=0.0.4; charset=utf-8", resp.Header.Get("Content-Type"))
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	samples, types := parseMetrics(t, string(body))

	assert.Equal(t, "histogram", types["dst_request_duration_seconds"])
	assert.Equal(t, "counter", types["dst_requests_total"])
	assert.Equal(t, "gauge", types["dst_member_state"])
	expect := func(want float64, name string, labels ...string) {
		t.Helper()
		v, ok := find(samples, name, labels...)
		require.True(t, ok, "no sample %s%v", name, labels)
		assert.Equal(t, want, v, "%s%v", name, labels)
	}
	expect(1<<30, "dst_storage_size_bytes")
	expect(42, "dst_generation")
	expect(0, "dst_requests_in_flight")
	expect(3, "dst_requests_total", "op", "write")
	expect(2, "dst_requests_total", "op", "read")
	expect(1, "dst_requests_total", "op", "flush")
	expect(12288, "dst_request_bytes_total", "op", "write")
	expect(0, "dst_request_bytes_total", "op", "read")
	expect(2, "dst_request_errors_total", "op", "read")
	expect(1, "dst_request_errors_total", "op", "flush")
	// 3 ms writes land in the 5 ms bucket, not the 2.5 ms one.
	expect(0, "dst_request_duration_seconds_bucket", "op", "write", "le", "0.0025")
	expect(3, "dst_request_duration_seconds_bucket", "op", "write", "le", "0.005")
	expect(3, "dst_request_duration_seconds_bucket", "op", "write", "le", "+Inf")
	expect(3, "dst_request_duration_seconds_count", "op", "write")
	expect(0.009, "dst_request_duration_seconds_sum", "op", "write")
	expect(0, "dst_request_duration_seconds_bucket", "op", "flush", "le", "1")
	expect(1, "dst_request_duration_seconds_bucket", "op", "flush", "le", "2.5")
	expect(1, "dst_request_duration_seconds_bucket", "op", "read", "le", "10") // the 2 s one
	expect(2, "dst_request_duration_seconds_bucket", "op", "read", "le", "+Inf")
	expect(1, "dst_member_state", "member", "1", "state", "failed")
	expect(0, "dst_member_state", "member", "1", "state", "in-sync")
	expect(1, "dst_member_state", "member", "0", "url", "file:/srv/a.img", "state", "in-sync")
	expect(2, "dst_member_pending", "member", "1")
	expect(7, "dst_member_dirty_regions", "member", "1", "url", "nbd://b/x")
	expect(4096, "dst_member_resynced_bytes_total", "member", "1")
	expect(4096, "dst_resync_bytes_total")
	expect(5, "dst_activity_active_regions")
	expect(1024, "dst_activity_max_regions")
	expect(9, "dst_activity_cleared_regions_total")
	expect(30, "dst_activity_metadata_writes_total")
	expect(3, "dst_crash_resync_regions")
	expect(0, "dst_crash_full_copies")
	expect(0, "dst_node_connected", "member", "1")
	expect(3, "dst_node_retries_total", "member", "1")
	expect(1, "dst_node_reconnects_total", "member", "1")
	expect(4, "dst_node_timeouts_total", "member", "1")
	expect(2, "dst_node_unavailable_total", "member", "1")
	_, local := find(samples, "dst_node_retries_total", "member", "0")
	assert.False(t, local, "a local member has no node counters")

	// Every histogram's buckets are cumulative and end at _count.
	for _, op := range []string{"read", "write", "flush", "trim", "write_zeroes", "cache"} {
		prev := -1.0
		for _, s := range samples {
			if s.name == "dst_request_duration_seconds_bucket" && s.labels["op"] == op {
				require.GreaterOrEqual(t, s.value, prev, "op %s le %s", op, s.labels["le"])
				prev = s.value
			}
		}
		count, _ := find(samples, "dst_request_duration_seconds_count", "op", op)
		assert.Equal(t, count, prev, "op %s: +Inf bucket equals count", op)
	}
}

func TestLabelEscaping(t *testing.T) {
	st := &fakeStorage{members: []engine.MemberStatus{{Index: 0, Node: `a"b\c` + "\nd", State: "in-sync"}}}
	h := admin.NewHandler(admin.Options{Storage: st})
	var b bytes.Buffer
	h.WriteMetrics(&b)
	samples, _ := parseMetrics(t, b.String())
	_, ok := find(samples, "dst_member_pending", "url", `a\"b\\c\nd`)
	require.True(t, ok, "%s", b.String())
}

func TestServe(t *testing.T) {
	h, _, _ := fixture(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- admin.Serve(ctx, ln, h, nil) }()
	resp, err := http.Get("http://" + ln.Addr().String() + "/status")
	require.NoError(t, err)
	var st admin.Status
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
	resp.Body.Close()
	require.Equal(t, "disk", st.Export)
	cancel()
	select {
	case err := <-served:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	_, err = http.Get("http://" + ln.Addr().String() + "/status")
	require.Error(t, err, "the listener is closed")
}

// fakeControl records maintenance calls and refuses member 0.
type fakeControl struct{ calls []string }

func (f *fakeControl) Suspend(i int) error { return f.do("suspend", i) }
func (f *fakeControl) Release(i int) error { return f.do("release", i) }
func (f *fakeControl) do(op string, i int) error {
	f.calls = append(f.calls, op+" "+strconv.Itoa(i))
	if i == 0 {
		return errors.New("member 0 has no in-sync replica to stand in for it")
	}
	return nil
}

func TestMaintenanceEndpoints(t *testing.T) {
	ctl := &fakeControl{}
	h := admin.NewHandler(admin.Options{Storage: &fakeStorage{size: 1}, Control: ctl})
	decode := func(r *http.Response) admin.ControlResult {
		var res admin.ControlResult
		require.NoError(t, json.NewDecoder(r.Body).Decode(&res))
		return res
	}
	r := get(t, h, http.MethodPost, "/members/1/suspend")
	require.Equal(t, http.StatusOK, r.StatusCode)
	require.Equal(t, admin.ControlResult{Member: 1, State: "suspended"}, decode(r))
	r = get(t, h, http.MethodPost, "/members/1/resume")
	require.Equal(t, http.StatusOK, r.StatusCode)
	require.Equal(t, "resuming", decode(r).State)
	r = get(t, h, http.MethodPost, "/members/0/suspend")
	require.Equal(t, http.StatusConflict, r.StatusCode)
	require.Contains(t, decode(r).Error, "no in-sync replica")
	r = get(t, h, http.MethodPost, "/members/x/suspend")
	require.Equal(t, http.StatusBadRequest, r.StatusCode)
	require.Contains(t, decode(r).Error, `"x" is not a number`)
	require.Equal(t, http.StatusMethodNotAllowed, get(t, h, http.MethodGet, "/members/1/suspend").StatusCode)
	require.Equal(t, []string{"suspend 1", "release 1", "suspend 0"}, ctl.calls)
	// Without a Control the endpoints do not exist.
	plain := admin.NewHandler(admin.Options{Storage: &fakeStorage{size: 1}})
	require.Equal(t, http.StatusNotFound, get(t, plain, http.MethodPost, "/members/1/suspend").StatusCode)
}

// fakeReplacer refuses as the engine does: member 0 is healthy, member 2
// does not exist, url "bad" cannot take the position.
type fakeReplacer struct{ urls []string }

func (f *fakeReplacer) ReplaceMember(_ context.Context, i int, url string, o engine.ReplaceOptions) error {
	switch {
	case i >= len(f.urls):
		return fmt.Errorf("no member %d: %w", i, engine.ErrBadReplacement)
	case url == "bad":
		return fmt.Errorf("it does not answer: %w", engine.ErrBadReplacement)
	case i == 0 && !o.Force:
		return fmt.Errorf("member 0: %w", engine.ErrMemberHealthy)
	}
	f.urls[i] = url
	return nil
}

func (f *fakeReplacer) Member(i int) (string, node.Node) { return f.urls[i], nil }

func TestReplaceEndpoint(t *testing.T) {
	rep := &fakeReplacer{urls: []string{"nbd://a", "nbd://b"}}
	fs := &fakeStorage{size: 1, members: []engine.MemberStatus{{Index: 0, State: "failed"}, {Index: 1, State: "resyncing"}}}
	h := admin.NewHandler(admin.Options{Storage: fs, Control: &fakeControl{}, Replacer: rep,
		Members: []admin.Member{{URL: "nbd://a"}, {URL: "nbd://b"}}})
	code := func(path string) (int, admin.ControlResult) {
		r := get(t, h, http.MethodPost, path)
		var res admin.ControlResult
		require.NoError(t, json.NewDecoder(r.Body).Decode(&res))
		return r.StatusCode, res
	}
	c, res := code("/members/1/replace?url=nbd%3A%2F%2Fc")
	require.Equal(t, http.StatusOK, c, res.Error)
	require.Equal(t, "nbd://c", rep.urls[1])
	c, res = code("/members/0/replace?url=nbd://d")
	require.Equal(t, http.StatusConflict, c)
	require.Contains(t, res.Error, "healthy")
	c, _ = code("/members/0/replace?url=nbd://d&force=1")
	require.Equal(t, http.StatusOK, c)
	c, _ = code("/members/5/replace?url=nbd://d")
	require.Equal(t, http.StatusBadRequest, c)
	c, _ = code("/members/1/replace?url=bad")
	require.Equal(t, http.StatusBadRequest, c)
	c, res = code("/members/1/replace")
	require.Equal(t, http.StatusBadRequest, c)
	require.Contains(t, res.Error, "no url")
	c, _ = code("/members/x/replace?url=nbd://d")
	require.Equal(t, http.StatusBadRequest, c)
	// The status names the members as they are now.
	st := h.Status()
	require.Equal(t, "nbd://d", st.Members[0].URL)
	require.Equal(t, "nbd://c", st.Members[1].URL)
}
