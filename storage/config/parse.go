package config

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"dst/internal/size"
	"dst/internal/yamlpos"
	"dst/storage/export"
	"dst/storage/spec"
)

// Load reads and parses the config file at path; relative paths in it are
// resolved against the file's folder. Errors are Errors, or the error of
// reading the file.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("config: %s: %w", path, err)
	}
	if len(data) > MaxBytes {
		return nil, Errors{{File: path, Line: 1, Msg: fmt.Sprintf("file is larger than %d bytes", MaxBytes)}}
	}
	return Parse(path, data)
}

// Parse parses a config file's bytes. name names the file in errors, and
// its folder is where relative paths are resolved. On error the Config is
// nil and the error is Errors. Parse never panics, whatever data holds.
func Parse(name string, data []byte) (*Config, error) {
	p := &parser{file: name, dir: filepath.Dir(name), cfg: defaults(name), rep: yamlpos.Report{File: name}}
	p.parse(data)
	if err := p.rep.Err(maxErrors); err != nil {
		return nil, err
	}
	return p.cfg, nil
}

// parser holds the state of one Parse.
type parser struct {
	file string
	dir  string
	cfg  *Config
	rep  yamlpos.Report
	// members records each leaf seen: its canonical key, field and line.
	members []leaf
	// replaceItems are the entries of replace, matched to members last.
	replaceItems []replaceItem
}

type leaf struct {
	key, url, field string
	line            int
}

// errorf records an error about field at node n.
func (p *parser) errorf(n *yaml.Node, field, format string, args ...any) {
	p.rep.At(n, field, format, args...)
}

// where names node n for spec.Tree.Where.
func (p *parser) where(n *yaml.Node) string { return p.file + ":" + strconv.Itoa(n.Line) }

func (p *parser) parse(data []byte) {
	root, ok := yamlpos.Decode(data, &p.rep)
	if !ok {
		return
	}
	if root == nil {
		p.errorf(nil, "", "the file is empty (it needs at least a storage)")
		return
	}
	sawStorage := false
	var adminNode, listenNode *yaml.Node
	p.mapping(root, "", map[string]func(string, *yaml.Node){
		"listen": func(f string, v *yaml.Node) {
			listenNode = v
			p.address(v, f, &p.cfg.Listen, false)
		},
		"admin": func(f string, v *yaml.Node) {
			adminNode = v
			p.address(v, f, &p.cfg.Admin, true)
		},
		"storage": func(f string, v *yaml.Node) {
			sawStorage = true
			p.storage(v, f)
		},
		"export":       func(f string, v *yaml.Node) { p.export(v, f) },
		"node":         func(f string, v *yaml.Node) { p.node(v, f) },
		"resync":       func(f string, v *yaml.Node) { p.resync(v, f) },
		"activity_log": func(f string, v *yaml.Node) { p.activity(v, f) },
		"scrub":        func(f string, v *yaml.Node) { p.scrub(v, f) },
		"region_size": func(f string, v *yaml.Node) {
			n, ok := p.size(v, f)
			if !ok {
				return
			}
			if n < 4096 || n > 1<<30 || n&(n-1) != 0 {
				p.errorf(v, f, "%s is not a power of two from 4KiB to 1GiB", v.Value)
				return
			}
			p.cfg.RegionSize = n
		},
		"allow_degraded": func(f string, v *yaml.Node) { p.boolean(v, f, &p.cfg.AllowDegraded) },
		"shutdown_timeout": func(f string, v *yaml.Node) {
			const unset = time.Duration(-1)
			d := unset
			p.duration(v, f, &d, false)
			switch {
			case d == unset: // not a duration: reported
			case d <= 0:
				p.errorf(v, f, "%s: must be positive", v.Value)
			default:
				p.cfg.ShutdownTimeout = d
			}
		},
		"replace": func(f string, v *yaml.Node) { p.replace(v, f) },
	})
	if root.Kind == yaml.MappingNode && !sawStorage {
		p.errorf(root, "storage", "missing: the storage is required (storage: {layout: ..., members: [...]})")
	}
	if p.cfg.Listen != "" && p.cfg.Admin != "" && p.cfg.Listen == p.cfg.Admin && !strings.HasSuffix(p.cfg.Listen, ":0") {
		if adminNode != nil {
			p.errorf(adminNode, "admin", "%s is also the listen address", p.cfg.Admin)
		} else {
			p.errorf(listenNode, "listen", "%s is also the admin address (the default; set admin)", p.cfg.Listen)
		}
	}
	p.checkReplace()
	if p.rep.Len() == 0 {
		if err := p.cfg.Storage.Validate(); err != nil {
			// The checks above cover Validate's; this is a safety net.
			p.errorf(root, "storage", "%v", err)
		}
	}
}

// mapping checks that n is a mapping and calls the handler of each key;
// unknown and repeated keys are errors. A null n is an empty mapping.
func (p *parser) mapping(n *yaml.Node, path string, fields map[string]func(field string, v *yaml.Node)) {
	if yamlpos.IsNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		name := path
		if name == "" {
			name = "the file"
		}
		p.errorf(n, path, "%s must be a mapping of fields, not %s", name, yamlpos.Describe(n))
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || (k.Tag != "!!str" && k.Tag != "!!merge") {
			p.errorf(k, path, "a field name must be a plain word, not %s", yamlpos.Describe(k))
			continue
		}
		field := yamlpos.Join(path, k.Value)
		if line, dup := seen[k.Value]; dup {
			p.errorf(k, field, "given twice (first at line %d)", line)
			continue
		}
		seen[k.Value] = k.Line
		h, ok := fields[k.Value]
		if !ok {
			known := make([]string, 0, len(fields))
			for name := range fields {
				known = append(known, name)
			}
			slices.Sort(known)
			p.errorf(k, field, "unknown field (known here: %s)", strings.Join(known, ", "))
			continue
		}
		h(field, v)
	}
}

// scalar returns the text of a scalar value, or records an error.
func (p *parser) scalar(v *yaml.Node, field string) (string, bool) {
	switch {
	case yamlpos.IsNull(v):
		p.errorf(v, field, "has no value")
		return "", false
	case v.Kind != yaml.ScalarNode:
		p.errorf(v, field, "must be a single value, not %s", yamlpos.Describe(v))
		return "", false
	}
	return v.Value, true
}

// text sets *dst to a string value.
func (p *parser) text(v *yaml.Node, field string, dst *string) {
	if s, ok := p.scalar(v, field); ok {
		*dst = s
	}
}

// boolean sets *dst to a true/false value.
func (p *parser) boolean(v *yaml.Node, field string, dst *bool) {
	s, ok := p.scalar(v, field)
	if !ok {
		return
	}
	switch s {
	case "true":
		*dst = true
	case "false":
		*dst = false
	default:
		p.errorf(v, field, "%q is not a boolean (true or false)", s)
	}
}

// address sets *dst to a HOST:PORT value; with off, "off" disables it.
func (p *parser) address(v *yaml.Node, field string, dst *string, off bool) {
	s, ok := p.scalar(v, field)
	if !ok {
		return
	}
	if off && s == "off" {
		*dst = ""
		return
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		hint := ""
		if off {
			hint = `, or "off"`
		}
		p.errorf(v, field, "%q is not HOST:PORT%s", s, hint)
		return
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || (port != "0" && n == 0) {
		p.errorf(v, field, "%q: port %q is not a number from 0 to 65535", s, port)
		return
	}
	_ = host // empty means every address, as net.Listen reads it
	*dst = s
}

// path resolves a file name against the config file's folder.
func (p *parser) path(s string) string {
	if filepath.IsAbs(s) {
		return filepath.Clean(s)
	}
	return filepath.Join(p.dir, s)
}

// list returns the items of a sequence value, or records an error.
func (p *parser) list(v *yaml.Node, field string) ([]*yaml.Node, bool) {
	switch {
	case yamlpos.IsNull(v):
		return nil, true
	case v.Kind != yaml.SequenceNode:
		p.errorf(v, field, "must be a list, not %s", yamlpos.Describe(v))
		return nil, false
	}
	return v.Content, true
}

// export parses the export section.
func (p *parser) export(v *yaml.Node, path string) {
	e := &p.cfg.Export
	p.mapping(v, path, map[string]func(string, *yaml.Node){
		"name":        func(f string, v *yaml.Node) { p.text(v, f, &e.Name) },
		"description": func(f string, v *yaml.Node) { p.text(v, f, &e.Description) },
		"read_only":   func(f string, v *yaml.Node) { p.boolean(v, f, &e.ReadOnly) },
		"allow": func(f string, v *yaml.Node) {
			items, ok := p.list(v, f)
			if !ok {
				return
			}
			if v.Kind == yaml.SequenceNode && len(items) == 0 {
				p.errorf(v, f, "an empty list refuses everyone; leave allow out to let everyone in")
				return
			}
			var rules []export.Rule
			seen := map[string]int{}
			for i, it := range items {
				itf := fmt.Sprintf("%s[%d]", f, i)
				s, ok := p.scalar(it, itf)
				if !ok {
					continue
				}
				r, err := export.ParseRule(s)
				if err != nil {
					p.errorf(it, itf, "%s (want CIDR=ro or CIDR=rw)", strings.TrimPrefix(err.Error(), export.ErrBadRule.Error()+" "))
					continue
				}
				key := r.Prefix.String()
				if line, dup := seen[key]; dup {
					p.errorf(it, itf, "a second rule for %s (first at line %d)", key, line)
					continue
				}
				seen[key] = it.Line
				rules = append(rules, r)
			}
			acl, err := export.NewACL(rules...)
			if err != nil {
				p.errorf(v, f, "%v", err)
				return
			}
			e.Allow = acl
		},
		"tls": func(f string, v *yaml.Node) { p.tls(v, f) },
	})
}

// tls parses export.tls.
func (p *parser) tls(v *yaml.Node, path string) {
	t := &p.cfg.Export.TLS
	t.Where = p.where(v)
	p.mapping(v, path, map[string]func(string, *yaml.Node){
		"cert":     func(f string, v *yaml.Node) { p.filePath(v, f, &t.Cert) },
		"key":      func(f string, v *yaml.Node) { p.filePath(v, f, &t.Key) },
		"ca":       func(f string, v *yaml.Node) { p.filePath(v, f, &t.CA) },
		"required": func(f string, v *yaml.Node) { p.boolean(v, f, &t.Required) },
	})
	switch {
	case (t.Cert == "") != (t.Key == ""):
		p.errorf(v, path, "cert and key go together")
	case t.Cert == "" && t.CA != "":
		p.errorf(v, path, "ca needs cert and key")
	case t.Cert == "" && t.Required:
		p.errorf(v, path, "required needs cert and key")
	}
}

// filePath sets *dst to a path resolved against the config's folder.
func (p *parser) filePath(v *yaml.Node, field string, dst *string) {
	s, ok := p.scalar(v, field)
	if !ok {
		return
	}
	if s == "" {
		p.errorf(v, field, "empty path")
		return
	}
	*dst = p.path(s)
}

// node parses the node section.
func (p *parser) node(v *yaml.Node, path string) {
	n := &p.cfg.Node
	dur := func(dst *time.Duration, off bool) func(string, *yaml.Node) {
		return func(f string, v *yaml.Node) { p.duration(v, f, dst, off) }
	}
	p.mapping(v, path, map[string]func(string, *yaml.Node){
		"dial_timeout":    dur(&n.DialTimeout, false),
		"connect_timeout": dur(&n.ConnectTimeout, false),
		"request_timeout": dur(&n.RequestTimeout, false),
		"backoff_min":     dur(&n.BackoffMin, false),
		"backoff_max":     dur(&n.BackoffMax, false),
		"ping_interval":   dur(&n.PingInterval, true),
		"retries":         func(f string, v *yaml.Node) { p.wholeNumber(v, f, 0, MaxRetries, false, &n.Retries) },
	})
	if n.BackoffMin > n.BackoffMax {
		p.errorf(v, yamlpos.Join(path, "backoff_min"), "%v is longer than backoff_max %v", n.BackoffMin, n.BackoffMax)
	}
}

// resync parses the resync section.
func (p *parser) resync(v *yaml.Node, path string) {
	r := &p.cfg.Resync
	p.mapping(v, path, map[string]func(string, *yaml.Node){
		"rate":     func(f string, v *yaml.Node) { p.rate(v, f, &r.RateBytesPerSec) },
		"interval": func(f string, v *yaml.Node) { p.duration(v, f, &r.Interval, false) },
		"failover": func(f string, v *yaml.Node) { p.duration(v, f, &r.Failover, true) },
	})
}

// rate parses a byte rate (SIZE or SIZE/s; "unlimited" or 0 is zero).
func (p *parser) rate(v *yaml.Node, f string, dst *int64) {
	s, ok := p.scalar(v, f)
	if !ok {
		return
	}
	if s == "unlimited" || s == "0" {
		*dst = 0
		return
	}
	bare := strings.TrimSuffix(s, "/s")
	n, err := size.Parse(bare)
	if err != nil {
		p.errorf(v, f, "%s", strings.Replace(err.Error(), strconv.Quote(bare), strconv.Quote(s), 1))
		return
	}
	*dst = n
}

func (p *parser) scrub(v *yaml.Node, path string) {
	sc := &p.cfg.Scrub
	p.mapping(v, path, map[string]func(string, *yaml.Node){
		"interval": func(f string, v *yaml.Node) {
			p.duration(v, f, &sc.Interval, true)
			if sc.Interval == 0 {
				p.errorf(v, f, "%s: must be positive, or off", v.Value)
			}
		},
		"rate":   func(f string, v *yaml.Node) { p.rate(v, f, &sc.RateBytesPerSec) },
		"repair": func(f string, v *yaml.Node) { p.boolean(v, f, &sc.Repair) },
		"digests": func(f string, v *yaml.Node) {
			on := true
			p.boolean(v, f, &on)
			sc.NoDigests = !on
		},
	})
}

func (p *parser) activity(v *yaml.Node, path string) {
	a := &p.cfg.Activity
	p.mapping(v, path, map[string]func(string, *yaml.Node){
		"regions": func(f string, v *yaml.Node) { p.wholeNumber(v, f, 1, MaxActivityRegions, true, &a.Regions) },
		"quiet":   func(f string, v *yaml.Node) { p.duration(v, f, &a.Quiet, false) },
	})
}

// replace parses the replace list; checkReplace matches it to members.
func (p *parser) replace(v *yaml.Node, field string) {
	items, ok := p.list(v, field)
	if !ok {
		return
	}
	for i, it := range items {
		itf := fmt.Sprintf("%s[%d]", field, i)
		s, ok := p.scalar(it, itf)
		if !ok {
			continue
		}
		p.replaceItems = append(p.replaceItems, replaceItem{node: it, field: itf, url: s})
	}
}

type replaceItem struct {
	node  *yaml.Node
	field string
	url   string
}

// storage parses the storage tree.
func (p *parser) storage(v *yaml.Node, field string) {
	if v.Kind != yaml.MappingNode {
		p.errorf(v, field, "must be a layout mapping (layout: linear|stripe|mirror, members: [...]), not %s", yamlpos.Describe(v))
		return
	}
	p.cfg.Storage = p.spec(v, field, 1)
	if n := len(p.members); n > spec.MaxMembers {
		p.errorf(v, field, "%d members; at most %d", n, spec.MaxMembers)
	}
}

// spec parses one node of the storage tree: a member URL or a layout.
func (p *parser) spec(v *yaml.Node, field string, depth int) spec.Tree {
	s := spec.Tree{Where: p.where(v)}
	switch {
	case v.Kind == yaml.ScalarNode && !yamlpos.IsNull(v):
		s.Kind = spec.KindMember
		s.Leaf = p.member(v, field)
		return s
	case v.Kind != yaml.MappingNode:
		p.errorf(v, field, "a member is a URL (file:/PATH, nbd://HOST:PORT/EXPORT) or a layout mapping, not %s", yamlpos.Describe(v))
		return s
	}
	if depth > spec.MaxDepth {
		p.errorf(v, field, "layouts nest more than %d deep", spec.MaxDepth)
		return s
	}
	var chunkNode, membersNode, layoutNode *yaml.Node
	var chunkField, membersField string
	p.mapping(v, field, map[string]func(string, *yaml.Node){
		"layout": func(f string, v *yaml.Node) {
			layoutNode = v
			l, ok := p.scalar(v, f)
			if !ok {
				return
			}
			if k, ok := spec.ParseKind(l); ok {
				s.Kind = k
			} else {
				p.errorf(v, f, "%q is not a layout (linear, stripe or mirror)", l)
			}
		},
		"chunk": func(f string, v *yaml.Node) {
			chunkNode, chunkField = v, f
			if n, ok := p.size(v, f); ok {
				if n == 0 {
					p.errorf(v, f, "a chunk holds at least one byte")
					return
				}
				s.Chunk = n
			}
		},
		"members": func(f string, v *yaml.Node) {
			membersNode, membersField = v, f
			items, ok := p.list(v, f)
			if !ok {
				return
			}
			for i, it := range items {
				s.Members = append(s.Members, p.spec(it, fmt.Sprintf("%s[%d]", f, i), depth+1))
			}
		},
	})
	if layoutNode == nil {
		p.errorf(v, yamlpos.Join(field, "layout"), "missing: say linear, stripe or mirror")
	}
	if membersNode == nil {
		p.errorf(v, yamlpos.Join(field, "members"), "missing: a layout needs at least one member")
	} else if len(s.Members) == 0 && (membersNode.Kind == yaml.SequenceNode || yamlpos.IsNull(membersNode)) {
		p.errorf(membersNode, membersField, "empty: a layout needs at least one member")
	}
	switch {
	case s.Kind == spec.KindStripe && chunkNode == nil:
		p.errorf(v, yamlpos.Join(field, "chunk"), "missing: a stripe needs a chunk size (for example chunk: 64KiB)")
	case s.Kind != "" && s.Kind != spec.KindStripe && chunkNode != nil:
		p.errorf(chunkNode, chunkField, "only a stripe has a chunk, not a %s", s.Kind)
	}
	return s
}

// member checks a member URL and records it for the duplicate check.
func (p *parser) member(v *yaml.Node, field string) string {
	u := v.Value
	key, resolved, err := p.memberKey(u)
	if err != nil {
		p.errorf(v, field, "%v", err)
		return u
	}
	for _, m := range p.members {
		if m.key == key {
			p.errorf(v, field, "%s appears twice (first at line %d, %s)", u, m.line, m.field)
			return resolved
		}
	}
	p.members = append(p.members, leaf{key: key, url: resolved, field: field, line: v.Line})
	return resolved
}

// checkReplace matches each replace entry to a member.
func (p *parser) checkReplace() {
	seen := map[string]int{}
	for _, r := range p.replaceItems {
		key, _, err := p.memberKey(r.url)
		if err != nil {
			p.errorf(r.node, r.field, "%v", err)
			continue
		}
		if line, dup := seen[key]; dup {
			p.errorf(r.node, r.field, "%s is listed twice (first at line %d)", r.url, line)
			continue
		}
		seen[key] = r.node.Line
		found := false
		for _, m := range p.members {
			if m.key == key {
				p.cfg.Replace = append(p.cfg.Replace, m.url)
				found = true
				break
			}
		}
		if !found && len(p.members) > 0 {
			p.errorf(r.node, r.field, "%s is not a member of the storage", r.url)
		}
	}
}
