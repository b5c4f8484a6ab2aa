// Package admin is the operator's window on a running storage: an HTTP
// server (loopback by default) with
//
//	GET /status    JSON: size, layout, addresses, uptime, and per member its
//	               state, pending pieces, dirty regions, resync progress,
//	               last error and, for remote nodes, connection counters
//	GET /metrics   the same and the request counters in the Prometheus text
//	               format (version 0.0.4)
//	POST /members/{index}/suspend
//	               take a mirror member out of service for maintenance
//	               (refused when no in-sync replica stands in for it)
//	POST /members/{index}/resume
//	               end the suspension: the member rejoins at the monitor's
//	               next probe and catches up; poll /status for "in-sync"
//	POST /members/{index}/replace?url=URL[&force=1]
//	               put another node in a mirror member's place; it is
//	               copied whole in the background
//	POST /members/add?mirror=PATH&url=URL[&force=1]
//	               add a replica to the mirror at PATH ("/" the root,
//	               "/1" the root's second child); copied whole in the
//	               background
//	POST /members/{index}/remove
//	               remove a mirror replica (refused when it is the last
//	               in-sync replica of its data)
//	POST /scrub[?repair=1&rate=BYTES]
//	               compare every mirror's replicas region by region (and
//	               rewrite what differs from the first in-sync one); the
//	               answer is the result, when the scrub is done
//
// Request metrics are read from the counters the engine keeps where it
// serves each request (storage/iostats: atomics into fixed histogram
// buckets); admin is not on the data path.
//
// The exposition is written by hand rather than with
// github.com/prometheus/client_golang: the set of series is fixed and
// small, the text format is a few lines of printf, and the library would
// bring a dozen modules (protobuf, procfs, common, xxhash, ...) into a
// storage binary for one endpoint. A test checks the output against the
// format's grammar.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"dst/storage/engine"
	"dst/storage/iostats"
	"dst/storage/node"
)

// DefaultShutdownTimeout bounds Serve's graceful shutdown.
const DefaultShutdownTimeout = 5 * time.Second

// Storage is what the admin server reports on; *engine.Engine is one.
type Storage interface {
	Size() int64
	Status() []engine.MemberStatus
}

// activityStorage is a Storage with activity logs (*engine.Engine).
type activityStorage interface {
	Activity() engine.ActivityStatus
}

// Member is what the server knows of member i beyond the engine's status.
type Member struct {
	// URL is the member as the configuration names it.
	URL string
	// Node is the member's node, if known; a *node.Remote adds its
	// connection state and counters.
	Node node.Node
	// DataOffset is where the member's data area starts on its node (after
	// the superblocks and the bitmap).
	DataOffset int64
}

// Options describe the storage a Handler reports on. Only Storage is
// required.
type Options struct {
	Storage Storage
	// Layout describes the layout tree, e.g. "mirror(file:/a, nbd://b)".
	Layout string
	// Listen and Export are the NBD address and export name of the
	// storage.
	Listen, Export string
	// Members, if given, has one entry per member, in member order.
	Members []Member
	// Generation, if set, returns the superblocks' generation.
	Generation func() uint64
	// Requests, if set, are the counters of the requests the storage served (engine.Engine.Requests).
	Requests *iostats.Requests
	// Started is when the storage started; zero means when NewHandler
	// ran.
	Started time.Time
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Control, if set, serves the member maintenance endpoints
	// (*engine.Engine is one); without it they answer 404.
	Control Control
	// Replacer, if set with Control, serves the replace endpoint and
	// names the members' current URLs and nodes in the status.
	Replacer Replacer
	// Changer, if set with Control, serves the add and remove endpoints.
	Changer Changer
}

// Changer is a storage whose membership changes online (*serve.Server
// is one). Each call returns once the change is recorded and the storage
// serves with it; an error wrapping engine.ErrBadChange changed nothing.
type Changer interface {
	AddMember(ctx context.Context, mirror, url string, force bool) (ChangeResult, error)
	RemoveMember(ctx context.Context, i int) (ChangeResult, error)
}

// ChangeResult is the JSON body of the add and remove endpoints' answer.
type ChangeResult struct {
	// Member is the position added or removed.
	Member int    `json:"member"`
	URL    string `json:"url,omitempty"`
	// Layout is the storage's layout after the change (before it, when
	// the change failed): what the config's storage must name for the
	// next start to keep it.
	Layout     string `json:"layout,omitempty"`
	Generation uint64 `json:"generation,omitempty"`
	// PausedSeconds is how long client requests were held.
	PausedSeconds float64 `json:"paused_seconds"`
	Error         string  `json:"error,omitempty"`
}

// Replacer is a storage whose members can be replaced online
// (*engine.Storage is one): with Control it serves POST
// /members/{index}/replace, and the status names each member's node as
// it is now.
type Replacer interface {
	ReplaceMember(ctx context.Context, i int, url string, opts engine.ReplaceOptions) error
	Member(i int) (url string, n node.Node)
}

// Control is what the maintenance endpoints act on.
type Control interface {
	// Suspend takes member i out of service.
	Suspend(i int) error
	// Release ends member i's suspension; the member rejoins in the
	// background.
	Release(i int) error
}

// Status is the body of GET /status.
type Status struct {
	Size          int64     `json:"size"`
	Layout        string    `json:"layout"`
	Listen        string    `json:"listen"`
	Export        string    `json:"export"`
	Generation    uint64    `json:"generation,omitempty"`
	Started       time.Time `json:"started"`
	UptimeSeconds float64   `json:"uptime_seconds"`
	// Health is "ok" (every member in sync), "resyncing" (some member is
	// catching up, none is out) or "degraded" (some member is failed or
	// suspended).
	Health   string                   `json:"health"`
	InFlight int64                    `json:"in_flight"`
	Members  []MemberStatus           `json:"members"`
	Requests map[string]RequestStatus `json:"requests,omitempty"`
	// Activity is the state of the mirrors' activity logs, if any keeps
	// one.
	Activity *engine.ActivityStatus `json:"activity,omitempty"`
	// Scrub is the scrub in progress and the last one's result, for a
	// storage that scrubs (Scrubber).
	Scrub *engine.ScrubStatus `json:"scrub,omitempty"`
}

// Scrubber is a storage that compares its replicas (*engine.Engine is
// one): with Control it serves POST /scrub.
type Scrubber interface {
	Scrub(ctx context.Context, opts engine.ScrubOptions) (*engine.ScrubResult, error)
	ScrubStatus() engine.ScrubStatus
}

// MemberStatus is one member in Status: the engine's view and the node's.
type MemberStatus struct {
	engine.MemberStatus
	URL        string `json:"url,omitempty"`
	DataOffset int64  `json:"data_offset"`
	// NodeSize is the node's size in bytes (of a remote node, as learned
	// at the latest connection).
	NodeSize int64 `json:"node_size"`
	// Connection is a remote node's connection state.
	Connection string        `json:"connection,omitempty"`
	Remote     *RemoteStatus `json:"remote,omitempty"`
}

// RemoteStatus are a remote node's counters (see node.RemoteMetrics).
type RemoteStatus struct {
	Requests    uint64 `json:"requests"`
	Bytes       uint64 `json:"bytes"`
	Retries     uint64 `json:"retries"`
	Connects    uint64 `json:"connects"`
	Reconnects  uint64 `json:"reconnects"`
	Fences      uint64 `json:"fences"`
	Timeouts    uint64 `json:"timeouts"`
	Pings       uint64 `json:"pings"`
	Failures    uint64 `json:"failures"`
	Unavailable uint64 `json:"unavailable"`
}

// RequestStatus are the counters of one op in Status.
type RequestStatus struct {
	Count  uint64 `json:"count"`
	Bytes  uint64 `json:"bytes"`
	Errors uint64 `json:"errors"`
	// MeanSeconds is the mean latency; zero without requests.
	MeanSeconds float64 `json:"mean_seconds"`
}

// remote is what a *node.Remote offers beyond node.Node.
type remote interface {
	State() node.State
	Metrics() node.RemoteMetrics
}

// Handler serves /status and /metrics.
type Handler struct {
	o   Options
	mux *http.ServeMux
}

// NewHandler returns the admin handler for o.
func NewHandler(o Options) *Handler {
	if o.Storage == nil {
		panic("admin: Options.Storage is required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Started.IsZero() {
		o.Started = o.Now()
	}
	h := &Handler{o: o, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /status", h.serveStatus)
	h.mux.HandleFunc("GET /metrics", h.serveMetrics)
	if o.Control != nil {
		h.mux.HandleFunc("POST /members/{index}/suspend", h.control(o.Control.Suspend, "suspended"))
		h.mux.HandleFunc("POST /members/{index}/resume", h.control(o.Control.Release, "resuming"))
		if sc, ok := o.Control.(Scrubber); ok {
			h.mux.HandleFunc("POST /scrub", h.scrub(sc))
		}
		if o.Replacer != nil {
			h.mux.HandleFunc("POST /members/{index}/replace", h.replace)
		}
		if o.Changer != nil {
			h.mux.HandleFunc("POST /members/add", h.add)
			h.mux.HandleFunc("POST /members/{index}/remove", h.remove)
		}
	}
	h.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, "dst admin\n  /status   storage and member status (JSON)\n  /metrics  Prometheus metrics\n"+
			"  POST /members/{index}/suspend, /members/{index}/resume  member maintenance\n"+
			"  POST /members/{index}/replace?url=URL, /members/add?mirror=PATH&url=URL, /members/{index}/remove  membership\n"+
			"  POST /scrub[?repair=1&rate=BYTES]  compare the replicas (and repair them); answers when done\n")
	})
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// Status returns a snapshot of the storage.
func (h *Handler) Status() Status {
	now := h.o.Now()
	st := Status{
		Size:          h.o.Storage.Size(),
		Layout:        h.o.Layout,
		Listen:        h.o.Listen,
		Export:        h.o.Export,
		Started:       h.o.Started,
		UptimeSeconds: now.Sub(h.o.Started).Seconds(),
		Health:        "ok",
	}
	if h.o.Generation != nil {
		st.Generation = h.o.Generation()
	}
	if sc, ok := h.o.Storage.(Scrubber); ok {
		ss := sc.ScrubStatus()
		st.Scrub = &ss
	}
	if a, ok := h.o.Storage.(activityStorage); ok {
		if as := a.Activity(); as.Mirrors > 0 {
			st.Activity = &as
		}
	}
	for _, ms := range h.o.Storage.Status() {
		m := MemberStatus{MemberStatus: ms}
		if ms.Index >= 0 && ms.Index < len(h.o.Members) {
			info := h.o.Members[ms.Index]
			if h.o.Replacer != nil {
				info.URL, info.Node = h.o.Replacer.Member(ms.Index)
			}
			m.URL, m.DataOffset = info.URL, info.DataOffset
			if info.Node != nil {
				m.NodeSize = info.Node.Size()
				if r, ok := info.Node.(remote); ok {
					m.Connection = r.State().String()
					mt := r.Metrics()
					m.Remote = &RemoteStatus{Requests: mt.Requests, Bytes: mt.Bytes, Retries: mt.Retries,
						Connects: mt.Connects, Reconnects: mt.Reconnects, Fences: mt.Fences, Timeouts: mt.Timeouts,
						Pings: mt.Pings, Failures: mt.Failures, Unavailable: mt.Unavailable}
				}
			}
		}
		switch ms.State {
		case engine.InSync.String():
		case engine.Resyncing.String():
			if st.Health == "ok" {
				st.Health = "resyncing"
			}
		default:
			st.Health = "degraded"
		}
		st.Members = append(st.Members, m)
	}
	if h.o.Requests != nil {
		ops, inFlight := h.o.Requests.Snapshot()
		st.InFlight = inFlight
		st.Requests = map[string]RequestStatus{}
		for _, s := range ops {
			rs := RequestStatus{Count: s.Count, Bytes: s.Bytes, Errors: s.Errors}
			if s.Count > 0 {
				rs.MeanSeconds = float64(s.SumNanos) / float64(s.Count) / 1e9
			}
			st.Requests[s.Op.String()] = rs
		}
	}
	return st
}

// ControlResult is the JSON body of a maintenance endpoint's answer.
type ControlResult struct {
	Member int    `json:"member"`
	State  string `json:"state,omitempty"`
	Error  string `json:"error,omitempty"`
}

// control returns the handler of a maintenance endpoint that applies do
// to the member in the path: 200 with the new state, 400 for an index
// that is not a number, 409 when the engine refuses.
func (h *Handler) control(do func(int) error, state string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		i, err := strconv.Atoi(r.PathValue("index"))
		if err != nil || i < 0 {
			w.WriteHeader(http.StatusBadRequest)
			_ = json.NewEncoder(w).Encode(ControlResult{Member: -1, Error: fmt.Sprintf("member index %q is not a number", r.PathValue("index"))})
			return
		}
		res := ControlResult{Member: i, State: state}
		if err := do(i); err != nil {
			res.State, res.Error = "", err.Error()
			w.WriteHeader(http.StatusConflict)
		}
		_ = json.NewEncoder(w).Encode(res)
	}
}

// replace serves POST /members/{index}/replace?url=URL[&force=1]: the
// node at URL takes the member's position (engine.Storage.ReplaceMember)
// and is copied whole in the background. It answers 200 once the new
// node holds the position, 400 for a bad index or URL, a node that cannot
// take the position or a member without an in-sync replica, 409 for a
// member in sync without force; nothing changes unless it answers 200.
func (h *Handler) replace(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	i, err := strconv.Atoi(r.PathValue("index"))
	q := r.URL.Query()
	url, force := q.Get("url"), q.Get("force") == "1" || q.Get("force") == "true"
	switch {
	case err != nil || i < 0:
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(ControlResult{Member: -1, Error: fmt.Sprintf("member index %q is not a number", r.PathValue("index"))})
		return
	case url == "":
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(ControlResult{Member: i, Error: "no url: name the replacement node (url=nbd://HOST:PORT/EXPORT or a file path)"})
		return
	}
	res := ControlResult{Member: i, State: "replaced; copying"}
	if err := h.o.Replacer.ReplaceMember(r.Context(), i, url, engine.ReplaceOptions{Force: force}); err != nil {
		res.State, res.Error = "", err.Error()
		code := http.StatusBadRequest
		if errors.Is(err, engine.ErrMemberHealthy) {
			code = http.StatusConflict
		} else if !errors.Is(err, engine.ErrBadReplacement) && !errors.Is(err, engine.ErrNoReplica) {
			code = http.StatusInternalServerError
		}
		w.WriteHeader(code)
	}
	_ = json.NewEncoder(w).Encode(res)
}

// add serves POST /members/add?mirror=PATH&url=URL[&force=1] (Changer):
// 200 once the replica is a member (its copy runs in the background),
// 400 for a change that cannot be made (nothing changed), 500 when the
// new membership failed to assemble (the old one serves again).
func (h *Handler) add(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	url, mirror, force := q.Get("url"), q.Get("mirror"), q.Get("force") == "1" || q.Get("force") == "true"
	if url == "" || mirror == "" {
		writeChange(w, ChangeResult{Member: -1}, fmt.Errorf("%w: name the mirror (mirror=/ for the root, /1 for its second child) "+
			"and the node to add (url=nbd://HOST:PORT/EXPORT or file:PATH)", engine.ErrBadChange))
		return
	}
	res, err := h.o.Changer.AddMember(r.Context(), mirror, url, force)
	writeChange(w, res, err)
}

// remove serves POST /members/{index}/remove (Changer), answering as add.
func (h *Handler) remove(w http.ResponseWriter, r *http.Request) {
	i, err := strconv.Atoi(r.PathValue("index"))
	if err != nil || i < 0 {
		writeChange(w, ChangeResult{Member: -1}, fmt.Errorf("%w: member index %q is not a number", engine.ErrBadChange, r.PathValue("index")))
		return
	}
	res, err := h.o.Changer.RemoveMember(r.Context(), i)
	writeChange(w, res, err)
}

func writeChange(w http.ResponseWriter, res ChangeResult, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		res.Error = err.Error()
		if errors.Is(err, engine.ErrBadChange) {
			w.WriteHeader(http.StatusBadRequest)
		} else {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}
	_ = json.NewEncoder(w).Encode(res)
}

// scrub returns the handler of POST /scrub: it runs a scrub (repair=1
// repairs, rate bounds the bytes read per second) and answers with its
// result when it is done: 200, or 409 when one is running already, 400 for
// a bad parameter, 500 with the partial result if it failed.
func (h *Handler) scrub(sc Scrubber) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		q := r.URL.Query()
		var opts engine.ScrubOptions
		opts.Repair = q.Get("repair") == "1" || q.Get("repair") == "true"
		if v := q.Get("rate"); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				w.WriteHeader(http.StatusBadRequest)
				_ = json.NewEncoder(w).Encode(map[string]string{"error": fmt.Sprintf("rate %q is not a number of bytes per second", v)})
				return
			}
			opts.Rate = n
		}
		res, err := sc.Scrub(r.Context(), opts)
		switch {
		case errors.Is(err, engine.ErrScrubRunning):
			w.WriteHeader(http.StatusConflict)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		case err != nil:
			w.WriteHeader(http.StatusInternalServerError)
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(res)
	}
}

func (h *Handler) serveStatus(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(h.Status()) // a client that went away is not our error
}

// Serve serves h on ln until ctx ends, then shuts down gracefully (within
// DefaultShutdownTimeout) and returns nil; it returns the error of ln if
// serving fails first. It closes ln.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("admin: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), DefaultShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-served; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("admin: shutdown: %w", err)
	}
	return nil
}
