// Package scenarios holds the embedded scenario files of the torture
// harness (see package dst/torture/scenario for their format): smoke (the
// README's main job), linear-split, mirror-failover, engine-crash,
// power-loss and overnight (the make torture default).
package scenarios

import (
	"embed"
	"fmt"
	"io/fs"
	"slices"
	"strings"

	"dst/torture/scenario"
)

//go:embed *.yaml
var files embed.FS

// Names lists the embedded scenarios.
func Names() []string {
	entries, _ := fs.ReadDir(files, ".")
	var names []string
	for _, e := range entries {
		names = append(names, strings.TrimSuffix(e.Name(), ".yaml"))
	}
	slices.Sort(names)
	return names
}

// Lookup parses the embedded scenario name.
func Lookup(name string) (*scenario.Scenario, error) {
	data, err := files.ReadFile(name + ".yaml")
	if err != nil {
		return nil, fmt.Errorf("no scenario %q (there are: %s)", name, strings.Join(Names(), ", "))
	}
	return scenario.Parse("scenarios/"+name+".yaml", data)
}

// Source returns the text of the embedded scenario name.
func Source(name string) ([]byte, error) { return files.ReadFile(name + ".yaml") }
