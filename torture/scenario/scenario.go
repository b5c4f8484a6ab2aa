// Package scenario reads torture scenario files: a topology (node
// processes and the layout tree the engine builds over them), a workload
// (filesystems, raw self-describing sectors, engine crashes), a seeded
// fault schedule and the checks a run must pass. Files are YAML; every
// error names the file, the line and the field, for example
//
//	smoke.yaml:12: topology.nodes[2].size: "1GB" is not a size (use 1GiB)
//
// and all errors of a file are reported at once, in line order.
//
// # Reference
//
//	name: smoke                 # required; [a-z0-9-]
//	description: ...            # one sentence: what the scenario proves
//	duration: 2m                # default run length (dst torture --duration overrides)
//	cycles: 0                   # stop after this many cycles (0: run for the duration)
//	topology:
//	  netns: false              # every node in its own network namespace
//	  nodes:                    # node processes (dst export), each with a blank image
//	    - name: a               # [a-z0-9]
//	      size: 320MiB+123      # bytes; "+" adds, so sizes can be odd
//	      proxy: true           # a fault proxy between the engine and the node
//	  storage:                  # the layout tree; a leaf is a node name
//	    layout: linear          # linear | stripe | mirror
//	    chunk: 64KiB            # stripe only
//	    members: [{layout: mirror, members: [a, b]}, c]
//	  engine:                   # timings of dst serve (all optional)
//	    request_timeout: 2s
//	    retries: 5
//	    backoff_max: 1s
//	    ping_interval: 1s
//	    resync_rate: 200MiB     # bytes per second
//	    resync_interval: 500ms
//	    region_size: 1MiB
//	    scrub_interval: 10m     # scheduled scrubs (none by default); one that finds replicas
//	                            # that differ fails the run
//	workload:
//	  filesystems: [ext4, xfs, btrfs]   # rotated per cycle; empty: no filesystem workload
//	  rebuild_every: 3          # mkfs every N cycles (1: every cycle)
//	  write_budget: 64MiB       # bytes of files written per cycle
//	  engine_crash: false       # cycles kill -9 the engine after a sync (own oracle)
//	  power_loss: false         # with engine_crash: the engine's host loses power too (every
//	                            # node's unflushed writes are lost, some torn), all restart
//	  raw:                      # self-describing sectors (omit for none)
//	    every: 3                # run in every Nth cycle, before the filesystem is rebuilt
//	    ops: 2000
//	    concurrency: 4
//	    flush_every: 64
//	    fua_percent: 10
//	    max_request: 4MiB
//	faults:                     # omit for none
//	  interval: 20s             # pause between faults (drawn from interval/2 .. interval*3/2)
//	  kinds:
//	    - kind: kill            # kill | hang | replace | replace-online | add-online | suspend | cut | delay
//	                            # | blackhole | reset | power-cut | torn-write | media-error
//	                            # | bit-flip | lost-write
//	      targets: [a, b]       # node names
//	      weight: 3             # relative frequency (default 1)
//	      downtime: 2s..8s      # how long the fault lasts ("3s" or "MIN..MAX")
//	      delay: 300ms          # delay only: added latency
//	      partner: hang         # power-cut, torn-write: hang (or cut: needs proxies) the target's
//	                            # mirror replicas over the same downtime — two faults at once
//	      op: read              # media-error: the failing request (read | write | flush)
//
// replace gives a node blank media on the same address (the engine finds
// it by itself); replace-online puts a new machine (a blank node on a new
// address, behind a new proxy) in the node's position with dst member
// replace while the workload runs, the old machine serving still (even
// seeds) or dead (odd), and retires the old one: the engine copies the new
// one whole, and its later configs name the new URL.
// add-online grows the mirror the node is a replica of by a new machine
// (a blank node of the node's size on a new address) with dst member add
// while the workload runs, waits for it to be copied whole and in sync,
// and removes it again with dst member remove: two membership changes
// online, the clients held at the gate through each.
//
// Power and media faults (the nodes they target get a volatile write
// cache or a fault-rules file; every one needs a mirror replica):
//
//	power-cut    the node's machine loses power: writes it acknowledged but
//	             that no FLUSH or FUA covered are lost; it restarts after the
//	             downtime reporting a new boot. The engine must see the new
//	             boot and copy the member whole from a replica.
//	torn-write   a power cut that keeps a seeded half of the unflushed 4 KiB
//	             units: multi-unit writes are torn. Same reaction.
//	media-error  EIO from the node's media over a seeded 256 KiB range for
//	             the downtime (op: read, a latent sector error; write), or on
//	             every flush (op: flush). A read error is served from a
//	             replica; a failed write or flush takes the member out of
//	             service (copied back when the fault heals, whole after a
//	             failed flush); the client sees no error.
//	bit-flip     one bit silently flipped in a write the node stores, once
//	             in the downtime. Nothing in the engine can see it: the run
//	             must FAIL, and the replica compare or the verifier must
//	             name the node (the proof that the checkers find it).
//	lost-write   one write the node reports as made is not, once in the
//	             downtime. Like bit-flip, the run must fail and say where.
//
// bit-flip and lost-write are detection faults: scenarios meant to pass
// leave them out (a torture run repairs nothing; scrub_interval finds them too).
//
//	checks:
//	  resync_within: 2m         # a fault's members must be in sync again this long after it healed
//
// Faults that take a node away for longer than the engine's retry budget
// (request_timeout × (retries+1)) are only allowed on nodes that have a
// mirror replica: on any other node they would fail client I/O by design.
// replace, replace-online, add-online and suspend need a mirror replica
// too.
package scenario

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"dst/internal/size"
	"dst/internal/yamlpos"
	"dst/storage/node"
	"dst/storage/spec"
)

// MaxBytes bounds a scenario file.
const MaxBytes = 1 << 20

// Scenario is one parsed scenario file.
type Scenario struct {
	Name        string
	Description string
	Duration    time.Duration
	Cycles      int
	Topology    Topology
	Workload    Workload
	Faults      Faults
	Checks      Checks
	// File names the file the scenario came from.
	File string
}

// Topology is the cluster a scenario runs on.
type Topology struct {
	Netns   bool
	Nodes   []Node
	Storage spec.Tree
	Engine  Engine
}

// Node is one node process.
type Node struct {
	Name  string
	Size  int64
	Proxy bool
	Line  int
}

// Engine holds the engine's timings; zero values take dst serve's
// defaults.
type Engine struct {
	RequestTimeout time.Duration
	Retries        int
	BackoffMax     time.Duration
	PingInterval   time.Duration
	ResyncRate     int64
	ResyncInterval time.Duration
	RegionSize     int64
	// ScrubInterval schedules the engine's scrubs (none if zero); the
	// run fails if one finds replicas that differ.
	ScrubInterval time.Duration
}

// RetryBudget is how long the engine keeps trying a node before it
// counts as gone: request_timeout × (retries+1), with dst serve's
// defaults (5s, 5) for zero values.
func (e Engine) RetryBudget() time.Duration {
	t, r := e.RequestTimeout, e.Retries
	if t == 0 {
		t = node.DefaultRequestTimeout
	}
	if r == 0 {
		r = node.DefaultRetries
	}
	return t * time.Duration(r+1)
}

// Workload is what a cycle does.
type Workload struct {
	Filesystems  []string
	RebuildEvery int
	WriteBudget  int64
	EngineCrash  bool
	PowerLoss    bool
	Raw          *Raw
}

// Raw configures the raw sector workload.
type Raw struct {
	Every       int
	Ops         int
	Concurrency int
	FlushEvery  int
	FUAPercent  int
	MaxRequest  int64
}

// Faults is the fault schedule's recipe.
type Faults struct {
	Interval time.Duration
	Kinds    []FaultKind
}

// FaultKind is one kind of fault with its targets.
type FaultKind struct {
	Kind        string
	Targets     []string
	Weight      int
	DowntimeMin time.Duration
	DowntimeMax time.Duration
	Delay       time.Duration
	Partner     string
	Op          string
	Line        int
}

// Checks are the run-level bounds.
type Checks struct {
	ResyncWithin time.Duration
}

// Kinds of faults.
var faultKinds = []string{"kill", "hang", "replace", "replace-online", "add-online", "suspend", "cut", "delay", "blackhole", "reset",
	"power-cut", "torn-write", "media-error", "bit-flip", "lost-write"}

// PowerKinds lose a node's volatile cache; their targets run with one.
var PowerKinds = map[string]bool{"power-cut": true, "torn-write": true}

// MediaKinds inject media faults; their targets run with a rules file.
var MediaKinds = map[string]bool{"media-error": true, "bit-flip": true, "lost-write": true}

// needReplica are the kinds that lose data or fail I/O by design on a
// node without a mirror replica.
var needReplica = map[string]bool{"replace": true, "replace-online": true, "add-online": true, "suspend": true, "power-cut": true, "torn-write": true,
	"media-error": true, "bit-flip": true, "lost-write": true}

// proxyKinds need a proxy in front of the target.
var proxyKinds = map[string]bool{"cut": true, "delay": true, "blackhole": true, "reset": true}

// Filesystems the workload knows.
var filesystems = []string{"ext4", "xfs", "btrfs"}

// Error is one problem of a scenario file, at a line, in a field; Errors
// are every problem of one file, in line order. Both are the YAML kit's
// (internal/yamlpos), which the dst serve config shares.
type (
	Error  = yamlpos.Error
	Errors = yamlpos.Errors
)

// Parse reads a scenario file's bytes; name names it in errors. On error
// the result is nil and the error is Errors.
func Parse(name string, data []byte) (*Scenario, error) {
	p := &parser{file: name, rep: yamlpos.Report{File: name}}
	if len(data) > MaxBytes {
		return nil, Errors{{File: name, Line: 1, Msg: fmt.Sprintf("file is larger than %d bytes", MaxBytes)}}
	}
	root, ok := yamlpos.Decode(data, &p.rep)
	switch {
	case !ok:
		return nil, p.rep.Err(0)
	case root == nil:
		return nil, Errors{{File: name, Line: 1, Msg: "the file is empty"}}
	case root.Kind != yaml.MappingNode:
		return nil, Errors{{File: name, Line: root.Line, Msg: "a scenario is a mapping of fields (name, topology, workload, ...)"}}
	}
	p.checkFields(root, reflect.TypeFor[fileYAML](), "")
	var raw fileYAML
	if err := root.Decode(&raw); err != nil {
		p.yamlError(err)
	}
	if err := p.rep.Err(0); err != nil {
		return nil, err
	}
	s := p.build(&raw)
	if err := p.rep.Err(0); err != nil {
		return nil, err
	}
	s.File = name
	return s, nil
}

type parser struct {
	file string
	rep  yamlpos.Report
}

func (p *parser) errorf(line int, field, format string, args ...any) {
	p.rep.Errorf(line, field, format, args...)
}

var (
	yamlLine = regexp.MustCompile(`line (\d+): (.*)$`)
	// unmarshalInto rewrites the decoder's "cannot unmarshal !!seq into
	// scenario.scalar" into the reader's words.
	unmarshalInto = regexp.MustCompile(`cannot unmarshal !!(\w+)(?: .*)? into \S+`)
)

// yamlError records the decoder's errors at their lines.
func (p *parser) yamlError(err error) {
	var te *yaml.TypeError
	msgs := []string{err.Error()}
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	for _, m := range msgs {
		line := 1
		if sm := yamlLine.FindStringSubmatch(m); sm != nil {
			line, _ = strconv.Atoi(sm[1])
			m = sm[2]
		}
		m = unmarshalInto.ReplaceAllString(m, "a $1 is not what goes here")
		m = strings.TrimPrefix(m, "yaml: ")
		p.errorf(line, "", "%s", m)
	}
}

var nameSyntax = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,39}$`)

// build checks the decoded file and turns it into a Scenario.
func (p *parser) build(f *fileYAML) *Scenario {
	s := &Scenario{Name: f.Name.Value, Description: f.Description.Value}
	if f.Name.Value == "" {
		p.errorf(1, "name", "missing: every scenario has a name")
	} else if !nameSyntax.MatchString(f.Name.Value) {
		p.errorf(f.Name.Line, "name", "%q is not a name (lower-case letters, digits and -)", f.Name.Value)
	}
	s.Duration = p.duration(f.Duration, "duration")
	s.Cycles = p.count(f.Cycles, "cycles", 0)
	if f.Duration.Value == "" && s.Cycles == 0 {
		p.errorf(1, "duration", "missing: a scenario needs a duration or a number of cycles")
	}
	s.Topology = p.topology(&f.Topology)
	s.Workload = p.workload(&f.Workload)
	s.Faults = p.faults(f.Faults, &s.Topology)
	s.Checks.ResyncWithin = p.duration(f.Checks.ResyncWithin, "checks.resync_within")
	if s.Checks.ResyncWithin == 0 {
		s.Checks.ResyncWithin = 5 * time.Minute
	}
	return s
}

func (p *parser) topology(t *topologyYAML) Topology {
	out := Topology{Netns: t.Netns}
	seen := map[string]int{}
	for i, n := range t.Nodes {
		field := fmt.Sprintf("topology.nodes[%d]", i)
		if !regexp.MustCompile(`^[a-z0-9]{1,16}$`).MatchString(n.Name.Value) {
			p.errorf(n.line, field+".name", "%q is not a node name (1 to 16 lower-case letters and digits)", n.Name.Value)
		} else if l, dup := seen[n.Name.Value]; dup {
			p.errorf(n.Name.Line, field+".name", "%q is already the name of the node at line %d", n.Name.Value, l)
		}
		seen[n.Name.Value] = n.Name.Line
		size := p.size(n.Size, field+".size")
		if size == 0 && n.Size.Value == "" {
			p.errorf(n.line, field+".size", "missing: a node needs a size")
		} else if size != 0 && size < 1<<20 {
			p.errorf(n.Size.Line, field+".size", "%s is too small: a node holds its superblocks and bitmap too (at least 1MiB)", n.Size.Value)
		}
		out.Nodes = append(out.Nodes, Node{Name: n.Name.Value, Size: size, Proxy: n.Proxy, Line: n.line})
	}
	if len(t.Nodes) == 0 {
		p.errorf(1, "topology.nodes", "missing: a topology needs at least one node")
	}
	used := map[string]bool{}
	out.Storage = p.storage(&t.Storage, "topology.storage", seen, used, 0)
	for _, n := range out.Nodes {
		if !used[n.Name] {
			p.errorf(n.Line, "topology.nodes", "node %q is not used by the storage", n.Name)
		}
	}
	e := t.Engine
	out.Engine = Engine{
		RequestTimeout: p.duration(e.RequestTimeout, "topology.engine.request_timeout"),
		Retries:        p.count(e.Retries, "topology.engine.retries", 0),
		BackoffMax:     p.duration(e.BackoffMax, "topology.engine.backoff_max"),
		PingInterval:   p.duration(e.PingInterval, "topology.engine.ping_interval"),
		ResyncRate:     p.size(e.ResyncRate, "topology.engine.resync_rate"),
		ResyncInterval: p.duration(e.ResyncInterval, "topology.engine.resync_interval"),
		RegionSize:     p.size(e.RegionSize, "topology.engine.region_size"),
		ScrubInterval:  p.duration(e.ScrubInterval, "topology.engine.scrub_interval"),
	}
	return out
}

func (p *parser) storage(s *storageYAML, field string, nodes map[string]int, used map[string]bool, depth int) spec.Tree {
	if depth > spec.MaxDepth {
		p.errorf(s.line, field, "layouts nest more than %d levels deep", spec.MaxDepth)
		return spec.Tree{}
	}
	where := fmt.Sprintf("%s:%d", p.file, s.line)
	if s.leaf != "" {
		if _, ok := nodes[s.leaf]; !ok {
			p.errorf(s.line, field, "%q is not a node of topology.nodes", s.leaf)
		} else if used[s.leaf] {
			p.errorf(s.line, field, "node %q is used twice", s.leaf)
		}
		used[s.leaf] = true
		return spec.Tree{Kind: spec.KindMember, Leaf: s.leaf, Where: where}
	}
	out := spec.Tree{Kind: spec.Kind(s.Layout), Where: where}
	switch s.Layout {
	case "linear", "mirror":
		if s.Chunk.Value != "" {
			p.errorf(s.Chunk.Line, field+".chunk", "only a stripe has a chunk")
		}
	case "stripe":
		out.Chunk = p.size(s.Chunk, field+".chunk")
		if out.Chunk == 0 {
			p.errorf(s.line, field+".chunk", "missing: a stripe needs a chunk size")
		} else if out.Chunk%512 != 0 {
			p.errorf(s.Chunk.Line, field+".chunk", "%s is not a multiple of 512", s.Chunk.Value)
		}
	case "":
		p.errorf(s.line, field+".layout", "missing: linear, stripe or mirror (or a node name for a leaf)")
	default:
		p.errorf(s.line, field+".layout", "%q is not a layout (linear, stripe or mirror)", s.Layout)
	}
	if len(s.Members) == 0 {
		p.errorf(s.line, field+".members", "missing: a layout needs members")
	}
	if s.Layout == "mirror" && len(s.Members) == 1 {
		p.errorf(s.line, field+".members", "a mirror of one member has no replica")
	}
	for i := range s.Members {
		out.Members = append(out.Members, p.storage(&s.Members[i], fmt.Sprintf("%s.members[%d]", field, i), nodes, used, depth+1))
	}
	return out
}

func (p *parser) workload(w *workloadYAML) Workload {
	out := Workload{EngineCrash: w.EngineCrash, PowerLoss: w.PowerLoss}
	if w.PowerLoss && !w.EngineCrash {
		p.errorf(1, "workload.power_loss", "needs engine_crash: true (the engine's host loses power in the crash cycles)")
	}
	for i, fs := range w.Filesystems {
		if !slices.Contains(filesystems, fs.Value) {
			p.errorf(fs.Line, fmt.Sprintf("workload.filesystems[%d]", i), "%q is not a filesystem the harness runs (%s)", fs.Value, strings.Join(filesystems, ", "))
		}
		out.Filesystems = append(out.Filesystems, fs.Value)
	}
	out.RebuildEvery = max(p.count(w.RebuildEvery, "workload.rebuild_every", 1), 1)
	out.WriteBudget = p.size(w.WriteBudget, "workload.write_budget")
	if out.WriteBudget == 0 {
		out.WriteBudget = 32 << 20
	}
	if w.Raw != nil {
		r := w.Raw
		out.Raw = &Raw{
			Every:       max(p.count(r.Every, "workload.raw.every", 1), 1),
			Ops:         p.count(r.Ops, "workload.raw.ops", 1),
			Concurrency: max(p.count(r.Concurrency, "workload.raw.concurrency", 1), 1),
			FlushEvery:  p.count(r.FlushEvery, "workload.raw.flush_every", 0),
			FUAPercent:  p.count(r.FUAPercent, "workload.raw.fua_percent", 0),
			MaxRequest:  p.size(r.MaxRequest, "workload.raw.max_request"),
		}
		if out.Raw.Ops == 0 {
			out.Raw.Ops = 1000
		}
		if out.Raw.FUAPercent > 100 {
			p.errorf(r.FUAPercent.Line, "workload.raw.fua_percent", "%d is more than 100", out.Raw.FUAPercent)
		}
	}
	if len(out.Filesystems) == 0 && out.Raw == nil {
		p.errorf(1, "workload", "missing: a scenario needs filesystems or a raw workload")
	}
	return out
}

func (p *parser) faults(f *faultsYAML, t *Topology) Faults {
	if f == nil {
		return Faults{}
	}
	out := Faults{Interval: p.duration(f.Interval, "faults.interval")}
	if out.Interval == 0 {
		p.errorf(f.line, "faults.interval", "missing: how long between faults")
	}
	redundant := map[string]bool{}
	markRedundant(&t.Storage, false, redundant)
	proxied := map[string]bool{}
	for _, n := range t.Nodes {
		proxied[n.Name] = n.Proxy
	}
	budget := t.Engine.RetryBudget()
	for i, k := range f.Kinds {
		field := fmt.Sprintf("faults.kinds[%d]", i)
		fk := FaultKind{Kind: k.Kind.Value, Weight: max(p.count(k.Weight, field+".weight", 0), 1), Line: k.line}
		if !slices.Contains(faultKinds, fk.Kind) {
			p.errorf(k.line, field+".kind", "%q is not a fault (%s)", fk.Kind, strings.Join(faultKinds, ", "))
		}
		fk.DowntimeMin, fk.DowntimeMax = p.span(k.Downtime, field+".downtime")
		if fk.DowntimeMax == 0 && fk.Kind != "replace" && fk.Kind != "replace-online" && fk.Kind != "add-online" && fk.Kind != "reset" {
			p.errorf(k.line, field+".downtime", "missing: how long the fault lasts")
		}
		fk.Delay = p.duration(k.Delay, field+".delay")
		fk.Partner, fk.Op = k.Partner.Value, k.Op.Value
		switch {
		case fk.Partner != "" && !PowerKinds[fk.Kind]:
			p.errorf(k.Partner.Line, field+".partner", "only power-cut and torn-write take a partner fault")
		case fk.Partner != "" && fk.Partner != "hang" && fk.Partner != "cut":
			p.errorf(k.Partner.Line, field+".partner", "%q is not hang or cut", fk.Partner)
		case fk.Partner != "" && fk.DowntimeMax >= budget:
			p.errorf(k.line, field+".downtime", "a partner fault of up to %v outlasts the engine's retry budget of %v: the replica would leave service and the power cut would lose data by design",
				fk.DowntimeMax, budget)
		}
		if fk.Kind == "media-error" && fk.Op == "" {
			fk.Op = "read"
		}
		switch {
		case fk.Op != "" && fk.Kind != "media-error":
			p.errorf(k.Op.Line, field+".op", "only media-error takes an op")
		case fk.Op != "" && fk.Op != "read" && fk.Op != "write" && fk.Op != "flush":
			p.errorf(k.Op.Line, field+".op", "%q is not read, write or flush", fk.Op)
		}
		if fk.Kind == "delay" && fk.Delay == 0 {
			p.errorf(k.line, field+".delay", "missing: the latency a delay fault adds")
		}
		if len(k.Targets) == 0 {
			p.errorf(k.line, field+".targets", "missing: which nodes the fault hits")
		}
		for j, tg := range k.Targets {
			tf := fmt.Sprintf("%s.targets[%d]", field, j)
			_, known := proxied[tg.Value]
			switch {
			case !known:
				p.errorf(tg.Line, tf, "%q is not a node of topology.nodes", tg.Value)
			case proxyKinds[fk.Kind] && !proxied[tg.Value]:
				p.errorf(tg.Line, tf, "a %s fault needs a proxy in front of node %q (proxy: true)", fk.Kind, tg.Value)
			case fk.Partner == "cut" && !allProxied(t.Storage.Partners(tg.Value), proxied):
				p.errorf(tg.Line, tf, "partner: cut needs a proxy in front of every replica of node %q", tg.Value)
			case fk.Kind == "add-online" && !underMirror(t.Storage, tg.Value):
				p.errorf(tg.Line, tf, "node %q is not a replica of a mirror (a direct child): add-online grows the mirror it is a replica of", tg.Value)
			case needReplica[fk.Kind] && !redundant[tg.Value]:
				p.errorf(tg.Line, tf, "node %q has no mirror replica: %s would lose its data by design", tg.Value, fk.Kind)
			case !redundant[tg.Value] && fk.Kind != "delay" && fk.DowntimeMax >= budget:
				p.errorf(tg.Line, tf, "node %q has no mirror replica and a %s of up to %v outlasts the engine's retry budget of %v: client I/O would fail by design",
					tg.Value, fk.Kind, fk.DowntimeMax, budget)
			}
			fk.Targets = append(fk.Targets, tg.Value)
		}
		out.Kinds = append(out.Kinds, fk)
	}
	if len(out.Kinds) == 0 {
		p.errorf(f.line, "faults.kinds", "missing: at least one kind of fault")
	}
	return out
}

func allProxied(nodes []string, proxied map[string]bool) bool {
	for _, n := range nodes {
		if !proxied[n] {
			return false
		}
	}
	return true
}

// markRedundant records the nodes that have a mirror replica above them.
func markRedundant(s *spec.Tree, under bool, out map[string]bool) {
	if s.IsLeaf() {
		out[s.Leaf] = under
		return
	}
	for i := range s.Members {
		markRedundant(&s.Members[i], under || s.Kind == spec.KindMirror, out)
	}
}

func (p *parser) size(v scalar, field string) int64 {
	if v.Value == "" {
		return 0
	}
	var total int64
	for part := range strings.SplitSeq(v.Value, "+") {
		n, err := size.Parse(part)
		if err != nil {
			p.errorf(v.Line, field, "%v", err)
			return 0
		}
		total += n
	}
	return total
}

func (p *parser) duration(v scalar, field string) time.Duration {
	if v.Value == "" {
		return 0
	}
	d, err := yamlpos.Duration(v.Value)
	if err != nil {
		p.errorf(v.Line, field, "%v", err)
		return 0
	}
	return d
}

// span parses "3s" or "2s..8s".
func (p *parser) span(v scalar, field string) (time.Duration, time.Duration) {
	if v.Value == "" {
		return 0, 0
	}
	lo, hi, ok := strings.Cut(v.Value, "..")
	if !ok {
		hi = lo
	}
	a := p.duration(scalar{Value: strings.TrimSpace(lo), Line: v.Line}, field)
	b := p.duration(scalar{Value: strings.TrimSpace(hi), Line: v.Line}, field)
	if a > b {
		p.errorf(v.Line, field, "%q: the minimum is above the maximum", v.Value)
	}
	return a, b
}

func (p *parser) count(v scalar, field string, minimum int) int {
	if v.Value == "" {
		return 0
	}
	n, err := strconv.Atoi(v.Value)
	if err != nil || n < minimum || n > 1<<30 {
		p.errorf(v.Line, field, "%q is not a whole number from %d", v.Value, minimum)
		return 0
	}
	return n
}

// underMirror: the node named leaf is a direct child of a mirror.
func underMirror(t spec.Tree, leaf string) bool {
	i := slices.Index(t.Leaves(), leaf)
	_, ok := t.ParentMirror(i)
	return i >= 0 && ok
}
