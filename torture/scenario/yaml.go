package scenario

import (
	"fmt"
	"reflect"
	"strings"

	"dst/internal/yamlpos"

	"go.yaml.in/yaml/v3"
)

// The file as decoded: every value keeps its line, so the checks in
// build can name where a problem is. Unknown fields are refused by the
// decoder (KnownFields).

// scalar is one value with its line.
type scalar struct {
	Value string
	Line  int
}

func (s *scalar) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: must be a single value, not %s", n.Line, yamlpos.Describe(n))
	}
	s.Value, s.Line = n.Value, n.Line
	if n.Tag == "!!null" {
		s.Value = ""
	}
	return nil
}

type fileYAML struct {
	Name        scalar       `yaml:"name"`
	Description scalar       `yaml:"description"`
	Duration    scalar       `yaml:"duration"`
	Cycles      scalar       `yaml:"cycles"`
	Topology    topologyYAML `yaml:"topology"`
	Workload    workloadYAML `yaml:"workload"`
	Faults      *faultsYAML  `yaml:"faults"`
	Checks      checksYAML   `yaml:"checks"`
}

type topologyYAML struct {
	Netns   bool        `yaml:"netns"`
	Nodes   []nodeYAML  `yaml:"nodes"`
	Storage storageYAML `yaml:"storage"`
	Engine  engineYAML  `yaml:"engine"`
}

type nodeYAML struct {
	Name  scalar `yaml:"name"`
	Size  scalar `yaml:"size"`
	Proxy bool   `yaml:"proxy"`
	line  int
}

func (n *nodeYAML) UnmarshalYAML(v *yaml.Node) error {
	type plain nodeYAML
	if err := v.Decode((*plain)(n)); err != nil {
		return err
	}
	n.line = v.Line
	return nil
}

// storageYAML is a layout mapping or, as a plain value, a node name.
type storageYAML struct {
	Layout  string        `yaml:"layout"`
	Chunk   scalar        `yaml:"chunk"`
	Members []storageYAML `yaml:"members"`
	leaf    string
	line    int
}

func (s *storageYAML) UnmarshalYAML(v *yaml.Node) error {
	s.line = v.Line
	if v.Kind == yaml.ScalarNode {
		s.leaf = v.Value
		if s.leaf == "" {
			return fmt.Errorf("line %d: an empty member: name a node or write a layout", v.Line)
		}
		return nil
	}
	type plain storageYAML
	return v.Decode((*plain)(s))
}

type engineYAML struct {
	RequestTimeout scalar `yaml:"request_timeout"`
	Retries        scalar `yaml:"retries"`
	BackoffMax     scalar `yaml:"backoff_max"`
	PingInterval   scalar `yaml:"ping_interval"`
	ResyncRate     scalar `yaml:"resync_rate"`
	ResyncInterval scalar `yaml:"resync_interval"`
	RegionSize     scalar `yaml:"region_size"`
	ScrubInterval  scalar `yaml:"scrub_interval"`
}

type workloadYAML struct {
	Filesystems  []scalar `yaml:"filesystems"`
	RebuildEvery scalar   `yaml:"rebuild_every"`
	WriteBudget  scalar   `yaml:"write_budget"`
	EngineCrash  bool     `yaml:"engine_crash"`
	PowerLoss    bool     `yaml:"power_loss"`
	Raw          *rawYAML `yaml:"raw"`
}

type rawYAML struct {
	Every       scalar `yaml:"every"`
	Ops         scalar `yaml:"ops"`
	Concurrency scalar `yaml:"concurrency"`
	FlushEvery  scalar `yaml:"flush_every"`
	FUAPercent  scalar `yaml:"fua_percent"`
	MaxRequest  scalar `yaml:"max_request"`
}

type faultsYAML struct {
	Interval scalar          `yaml:"interval"`
	Kinds    []faultKindYAML `yaml:"kinds"`
	line     int
}

func (f *faultsYAML) UnmarshalYAML(v *yaml.Node) error {
	type plain faultsYAML
	if err := v.Decode((*plain)(f)); err != nil {
		return err
	}
	f.line = v.Line
	return nil
}

type faultKindYAML struct {
	Kind     scalar   `yaml:"kind"`
	Targets  []scalar `yaml:"targets"`
	Weight   scalar   `yaml:"weight"`
	Downtime scalar   `yaml:"downtime"`
	Delay    scalar   `yaml:"delay"`
	Partner  scalar   `yaml:"partner"`
	Op       scalar   `yaml:"op"`
	line     int
}

func (k *faultKindYAML) UnmarshalYAML(v *yaml.Node) error {
	type plain faultKindYAML
	if err := v.Decode((*plain)(k)); err != nil {
		return err
	}
	k.line = v.Line
	return nil
}

type checksYAML struct {
	ResyncWithin scalar `yaml:"resync_within"`
}

// checkFields refuses mapping keys that name no field of t (by yaml tag),
// walking the document alongside the types it decodes into. It is what
// Decoder.KnownFields does, kept working through the types above whose
// UnmarshalYAML decodes a node of their own.
func (p *parser) checkFields(n *yaml.Node, t reflect.Type, path string) {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		if t.Kind() == reflect.Slice {
			if n.Kind == yaml.SequenceNode {
				for i, c := range n.Content {
					p.checkFields(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
				}
				return
			}
		}
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || n.Kind != yaml.MappingNode || t == reflect.TypeFor[scalar]() {
		return
	}
	fields := map[string]reflect.Type{}
	var known []string
	for i := range t.NumField() {
		f := t.Field(i)
		if tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); tag != "" {
			fields[tag] = f.Type
			known = append(known, tag)
		}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		field := k.Value
		if path != "" {
			field = path + "." + k.Value
		}
		ft, ok := fields[k.Value]
		if !ok {
			p.errorf(k.Line, field, "unknown field (known here: %s)", strings.Join(known, ", "))
			continue
		}
		p.checkFields(v, ft, field)
	}
}
