// Parse never panics and either returns a config whose storage passes
// spec.Tree.Validate with at most MaxMembers members, or config.Errors
// that each carry a line; checked by FuzzConfig, seeded with the YAML files
// in testdata, the example configs of fixtures/configs, the hostile YAML of
// fixtures/yaml (shared with FuzzScenario) and any corpus Go's fuzzing saved
// in testdata/fuzz/FuzzConfig.
package config_test

import (
	"errors"
	"testing"

	"dst/fixtures"
	"dst/storage/config"
	"dst/storage/spec"
)

func FuzzConfig(f *testing.F) {
	for _, pattern := range []string{"testdata/*.yaml", "../../fixtures/configs/*.yaml", "../../fixtures/yaml/*.yaml"} {
		for _, s := range fixtures.Glob(f, pattern) {
			f.Add(s.Data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := config.Parse("fuzz.yaml", data)
		if err != nil {
			if c != nil {
				t.Fatalf("a config and an error: %v", err)
			}
			var errs config.Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error is not config.Errors: %T %v", err, err)
			}
			for _, e := range errs {
				if e.Line < 1 || e.File != "fuzz.yaml" {
					t.Fatalf("error without a line: %+v", e)
				}
			}
			return
		}
		if err := c.Storage.Validate(); err != nil {
			t.Fatalf("parsed storage does not validate: %v\n%s", err, data)
		}
		if n := len(c.Storage.Leaves()); n == 0 || n > spec.MaxMembers {
			t.Fatalf("%d members", n)
		}
		if c.RegionSize < 4096 || c.RegionSize&(c.RegionSize-1) != 0 {
			t.Fatalf("region size %d", c.RegionSize)
		}
	})
}
