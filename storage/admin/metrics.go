package admin

import (
	"bytes"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"

	"dst/storage/engine"
	"dst/storage/iostats"
	"dst/storage/node"
)

// metricsContentType is the Prometheus text format's media type.
const metricsContentType = "text/plain; version=0.0.4; charset=utf-8"

// memberStates are the states dst_member_state has a series for.
var memberStates = []engine.State{engine.InSync, engine.Resyncing, engine.Failed, engine.Suspended}

func (h *Handler) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	var b bytes.Buffer
	h.WriteMetrics(&b)
	w.Header().Set("Content-Type", metricsContentType)
	_, _ = w.Write(b.Bytes())
}

// expo writes metric families in the text format.
type expo struct{ b *bytes.Buffer }

// family starts a metric family: its HELP and TYPE lines.
func (e expo) family(name, typ, help string) {
	fmt.Fprintf(e.b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
}

// sample writes one sample; labels are name, value pairs.
func (e expo) sample(name string, v float64, labels ...string) {
	e.b.WriteString(name)
	if len(labels) > 0 {
		e.b.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				e.b.WriteByte(',')
			}
			e.b.WriteString(labels[i])
			e.b.WriteString(`="`)
			e.b.WriteString(escapeLabel(labels[i+1]))
			e.b.WriteByte('"')
		}
		e.b.WriteByte('}')
	}
	e.b.WriteByte(' ')
	e.b.WriteString(formatFloat(v))
	e.b.WriteByte('\n')
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func escapeLabel(s string) string { return labelEscaper.Replace(s) }

// formatFloat writes whole numbers (counters, bytes) without an exponent.
func formatFloat(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// WriteMetrics writes every metric in the Prometheus text format.
func (h *Handler) WriteMetrics(b *bytes.Buffer) {
	e := expo{b}
	st := h.Status()

	e.family("dst_storage_size_bytes", "gauge", "Bytes the storage exposes.")
	e.sample("dst_storage_size_bytes", float64(st.Size))
	e.family("dst_uptime_seconds", "gauge", "Seconds since the storage started.")
	e.sample("dst_uptime_seconds", st.UptimeSeconds)
	if h.o.Generation != nil {
		e.family("dst_generation", "gauge", "Generation of the superblocks last written.")
		e.sample("dst_generation", float64(st.Generation))
	}
	h.writeRequests(e)

	member := func(m MemberStatus) []string {
		url := m.URL
		if url == "" {
			url = m.Node
		}
		return []string{"member", strconv.Itoa(m.Index), "url", url}
	}
	e.family("dst_member_state", "gauge", "1 for the state each member is in, 0 for the others.")
	for _, m := range st.Members {
		for _, s := range memberStates {
			v := 0.0
			if m.State == s.String() {
				v = 1
			}
			e.sample("dst_member_state", v, append(member(m), "state", s.String())...)
		}
	}
	e.family("dst_member_pending", "gauge", "Pieces of requests in flight on each member.")
	for _, m := range st.Members {
		e.sample("dst_member_pending", float64(m.Pending), member(m)...)
	}
	e.family("dst_member_dirty_regions", "gauge", "Regions each member misses (to copy at resync).")
	for _, m := range st.Members {
		e.sample("dst_member_dirty_regions", float64(m.DirtyRegions), member(m)...)
	}
	e.family("dst_member_resynced_bytes_total", "counter", "Bytes copied to each member by resync.")
	var resynced int64
	for _, m := range st.Members {
		e.sample("dst_member_resynced_bytes_total", float64(m.ResyncedBytes), member(m)...)
		resynced += m.ResyncedBytes
	}
	e.family("dst_member_read_errors_corrected_total", "counter", "Ranges each member failed to read with a media error that were served from another replica and rewritten on it.")
	for _, m := range st.Members {
		e.sample("dst_member_read_errors_corrected_total", float64(m.ReadErrorsCorrected), member(m)...)
	}
	e.family("dst_member_resync_zeroed_bytes_total", "counter", "Bytes resync wrote to each member as zeroes instead of copying (holes on the source).")
	for _, m := range st.Members {
		e.sample("dst_member_resync_zeroed_bytes_total", float64(m.ResyncZeroedBytes), member(m)...)
	}
	e.family("dst_resync_bytes_total", "counter", "Bytes copied by resync to every member.")
	e.sample("dst_resync_bytes_total", float64(resynced))

	if a := st.Activity; a != nil {
		for _, g := range []struct {
			name, typ, help string
			v               float64
		}{
			{"dst_activity_active_regions", "gauge", "Regions the mirrors' activity logs hold marked (an unclean stop recopies them).", float64(a.ActiveRegions)},
			{"dst_activity_max_regions", "gauge", "Bound on the active regions, summed over mirrors.", float64(a.MaxRegions)},
			{"dst_activity_cleared_regions_total", "counter", "Regions the activity logs cleared after they were quiet and flushed.", float64(a.ClearedRegions)},
			{"dst_activity_metadata_writes_total", "counter", "Bitmap page writes of the activity logs (one per member per page).", float64(a.MetadataWrites)},
			{"dst_crash_resync_regions", "gauge", "Regions the start after an unclean stop marked to copy, summed over members.", float64(a.CrashResyncRegions)},
			{"dst_crash_full_copies", "gauge", "Members under an activity log the start after an unclean stop copied whole.", float64(a.CrashFullCopies)},
		} {
			e.family(g.name, g.typ, g.help)
			e.sample(g.name, g.v)
		}
	}

	if sc := st.Scrub; sc != nil {
		running, lastMismatches, lastFinished := 0.0, 0.0, 0.0
		if sc.Running {
			running = 1
		}
		if sc.Last != nil {
			lastMismatches, lastFinished = float64(sc.Last.MismatchCount), float64(sc.Last.Finished.Unix())
		}
		for _, g := range []struct {
			name, typ, help string
			v               float64
		}{
			{"dst_scrub_running", "gauge", "1 while a scrub compares the replicas.", running},
			{"dst_scrub_mismatches_total", "counter", "Ranges where replicas differed, over every scrub.", float64(sc.Mismatches)},
			{"dst_scrub_last_mismatches", "gauge", "Ranges where replicas differed in the last scrub.", lastMismatches},
			{"dst_scrub_last_finished_seconds", "gauge", "When the last scrub ended (Unix time; 0: none yet).", lastFinished},
		} {
			e.family(g.name, g.typ, g.help)
			e.sample(g.name, g.v)
		}
	}

	var remotes []MemberStatus
	for _, m := range st.Members {
		if m.Remote != nil {
			remotes = append(remotes, m)
		}
	}
	if len(remotes) == 0 {
		return
	}
	e.family("dst_node_connected", "gauge", "1 while a remote member has a live connection.")
	for _, m := range remotes {
		v := 0.0
		if m.Connection == node.StateConnected.String() {
			v = 1
		}
		e.sample("dst_node_connected", v, member(m)...)
	}
	for _, c := range []struct {
		name, help string
		get        func(*RemoteStatus) uint64
	}{
		{"dst_node_requests_total", "Requests sent to each remote member.", func(r *RemoteStatus) uint64 { return r.Requests }},
		{"dst_node_bytes_total", "Payload bytes read from and written to each remote member.", func(r *RemoteStatus) uint64 { return r.Bytes }},
		{"dst_node_retries_total", "Requests resent to each remote member.", func(r *RemoteStatus) uint64 { return r.Retries }},
		{"dst_node_connects_total", "Connections made to each remote member.", func(r *RemoteStatus) uint64 { return r.Connects }},
		{"dst_node_reconnects_total", "Connections made to each remote member after the first.", func(r *RemoteStatus) uint64 { return r.Reconnects }},
		{"dst_node_fences_total", "Connections to each remote member closed as lost or suspect.", func(r *RemoteStatus) uint64 { return r.Fences }},
		{"dst_node_timeouts_total", "Tries and pings to each remote member without a reply in time.", func(r *RemoteStatus) uint64 { return r.Timeouts }},
		{"dst_node_pings_total", "Pings sent to idle connections of each remote member.", func(r *RemoteStatus) uint64 { return r.Pings }},
		{"dst_node_failures_total", "Requests to each remote member that failed.", func(r *RemoteStatus) uint64 { return r.Failures }},
		{"dst_node_unavailable_total", "Requests to each remote member that failed because it was unreachable.", func(r *RemoteStatus) uint64 { return r.Unavailable }},
	} {
		e.family(c.name, "counter", c.help)
		for _, m := range remotes {
			e.sample(c.name, float64(c.get(m.Remote)), member(m)...)
		}
	}
}

// writeRequests writes the client request metrics.
func (h *Handler) writeRequests(e expo) {
	if h.o.Requests == nil {
		return
	}
	ops, inFlight := h.o.Requests.Snapshot()
	e.family("dst_requests_in_flight", "gauge", "Client requests being served.")
	e.sample("dst_requests_in_flight", float64(inFlight))
	e.family("dst_requests_total", "counter", "Client requests served, by op.")
	for _, s := range ops {
		e.sample("dst_requests_total", float64(s.Count), "op", s.Op.String())
	}
	e.family("dst_request_bytes_total", "counter", "Payload bytes of successful client reads and writes, by op.")
	for _, s := range ops {
		e.sample("dst_request_bytes_total", float64(s.Bytes), "op", s.Op.String())
	}
	e.family("dst_request_errors_total", "counter", "Client requests that failed, by op.")
	for _, s := range ops {
		e.sample("dst_request_errors_total", float64(s.Errors), "op", s.Op.String())
	}
	e.family("dst_request_duration_seconds", "histogram", "Latency of client requests, by op.")
	for _, s := range ops {
		op := s.Op.String()
		var cum uint64
		for i, le := range iostats.LatencyBuckets {
			cum += s.Buckets[i]
			e.sample("dst_request_duration_seconds_bucket", float64(cum), "op", op, "le", formatFloat(le))
		}
		cum += s.Buckets[len(iostats.LatencyBuckets)]
		e.sample("dst_request_duration_seconds_bucket", float64(cum), "op", op, "le", "+Inf")
		e.sample("dst_request_duration_seconds_sum", float64(s.SumNanos)/1e9, "op", op)
		e.sample("dst_request_duration_seconds_count", float64(cum), "op", op)
	}
}
