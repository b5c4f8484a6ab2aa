// Parse never panics, whatever bytes it is given, and either returns a
// scenario that holds together (every leaf names a node, every node is a
// leaf exactly once, fault targets are nodes, a workload exists) or
// scenario.Errors that each carry the file and a line; checked by
// FuzzScenario, seeded with the embedded scenarios, the hostile YAML of
// fixtures/yaml (shared with FuzzConfig) and any corpus Go's fuzzing saved in
// testdata/fuzz/FuzzScenario.
package scenario_test

import (
	"errors"
	"testing"

	"dst/fixtures"
	"dst/scenarios"
	"dst/storage/spec"
	"dst/torture/scenario"
)

func FuzzScenario(f *testing.F) {
	for _, name := range scenarios.Names() {
		data, err := scenarios.Source(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(good))
	for _, s := range fixtures.Glob(f, "../../fixtures/yaml/*.yaml") {
		f.Add(s.Data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := scenario.Parse("fuzz.yaml", data)
		if err != nil {
			if s != nil {
				t.Fatalf("a scenario and an error: %v", err)
			}
			var errs scenario.Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error is not scenario.Errors: %T %v", err, err)
			}
			for _, e := range errs {
				if e.Line < 1 || e.File != "fuzz.yaml" {
					t.Fatalf("error without a line: %+v", e)
				}
			}
			return
		}
		nodes := map[string]int{}
		for _, n := range s.Topology.Nodes {
			nodes[n.Name] = 0
		}
		var walk func(st spec.Tree)
		walk = func(st spec.Tree) {
			if st.IsLeaf() {
				if _, ok := nodes[st.Leaf]; !ok {
					t.Fatalf("leaf %q is no node", st.Leaf)
				}
				nodes[st.Leaf]++
				return
			}
			if len(st.Members) == 0 {
				t.Fatalf("layout %q without members", st.Kind)
			}
			for _, m := range st.Members {
				walk(m)
			}
		}
		walk(s.Topology.Storage)
		for name, n := range nodes {
			if n != 1 {
				t.Fatalf("node %q is a leaf %d times", name, n)
			}
		}
		for _, k := range s.Faults.Kinds {
			for _, tg := range k.Targets {
				if _, ok := nodes[tg]; !ok {
					t.Fatalf("fault target %q is no node", tg)
				}
			}
		}
		if len(s.Workload.Filesystems) == 0 && s.Workload.Raw == nil {
			t.Fatal("a scenario without a workload")
		}
	})
}
