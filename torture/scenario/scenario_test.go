// Scenario files parse into what they say, and every mistake is reported
// with its file, line and field — all of a file's mistakes at once —
// checked on the embedded scenarios and on a table of broken files.
package scenario_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/scenarios"
	"dst/torture/scenario"
)

func TestEmbeddedScenariosParse(t *testing.T) {
	names := scenarios.Names()
	require.Subset(t, names, []string{"smoke", "linear-split", "mirror-failover", "engine-crash", "power-loss", "overnight"})
	for _, name := range names {
		s, err := scenarios.Lookup(name)
		require.NoError(t, err, name)
		require.Equal(t, name, s.Name)
		require.NotEmpty(t, s.Description, name)
	}
	s, err := scenarios.Lookup("smoke")
	require.NoError(t, err)
	require.Equal(t, 2*time.Minute, s.Duration)
	require.Equal(t, "linear(mirror(a, b), c)", s.Topology.Storage.String())
	require.Equal(t, int64(192<<20+1234), s.Topology.Nodes[0].Size)
	require.Equal(t, []string{"ext4", "xfs", "btrfs"}, s.Workload.Filesystems)
	require.Equal(t, "kill", s.Faults.Kinds[0].Kind)
	require.Equal(t, 5*time.Second, s.Faults.Kinds[0].DowntimeMin)
	require.Equal(t, 8*time.Second, s.Faults.Kinds[0].DowntimeMax)
	require.Equal(t, "torn-write", s.Faults.Kinds[1].Kind, "the main job cuts power too")
	pl, err := scenarios.Lookup("power-loss")
	require.NoError(t, err)
	require.True(t, pl.Workload.PowerLoss)
	_, err = scenarios.Lookup("nope")
	require.ErrorContains(t, err, "no scenario \"nope\" (there are: ")
}

const good = `name: t
duration: 1m
topology:
  nodes:
    - {name: a, size: 2MiB}
    - {name: b, size: 2MiB}
    - {name: c, size: 2MiB}
  storage: {layout: linear, members: [{layout: mirror, members: [a, b]}, c]}
workload:
  filesystems: [ext4]
`

func TestGoodMinimal(t *testing.T) {
	s, err := scenario.Parse("t.yaml", []byte(good))
	require.NoError(t, err)
	require.Equal(t, 1, s.Workload.RebuildEvery)
	require.Equal(t, 5*time.Minute, s.Checks.ResyncWithin)
	require.Equal(t, 30*time.Second, s.Topology.Engine.RetryBudget())
}

func TestErrorsNameLineAndField(t *testing.T) {
	cases := []struct {
		name, file string
		want       []string
	}{
		{"unknown field", good + "bogus: 1\n", []string{"t.yaml:11: bogus: unknown field (known here: "}},
		{"nested unknown field", `name: t
duration: 1m
topology:
  nodes:
    - {name: a, size: 2MiB, colour: red}
  storage: a
workload: {filesystems: [ext4]}
`, []string{"t.yaml:5: topology.nodes[0].colour: unknown field"}},
		{"bad size", `name: t
duration: 1m
topology:
  nodes:
    - {name: a, size: 2MB}
  storage: a
workload: {filesystems: [ext4]}
`, []string{`t.yaml:5: topology.nodes[0].size: "2MB" is not a size (use 2MiB)`}},
		{"several at once, in line order", `name: T
duration: soon
topology:
  nodes:
    - {name: a, size: 2MiB}
  storage: {layout: raid5, members: [a, z]}
workload: {filesystems: [ntfs]}
`, []string{
			`t.yaml:1: name: "T" is not a name`,
			`t.yaml:2: duration: "soon" is not a duration (like 250ms, 5s, 1m30s)`,
			`t.yaml:6: topology.storage.layout: "raid5" is not a layout`,
			`t.yaml:6: topology.storage.members[1]: "z" is not a node`,
			`t.yaml:7: workload.filesystems[0]: "ntfs" is not a filesystem`,
		}},
		{"fault on a node without replica", good + `faults:
  interval: 10s
  kinds:
    - {kind: replace, targets: [c]}
    - {kind: kill, targets: [c], downtime: 1m}
    - {kind: cut, targets: [a], downtime: 1s}
    - {kind: kill, targets: [a], downtime: 1m}
`, []string{
			`t.yaml:14: faults.kinds[0].targets[0]: node "c" has no mirror replica: replace would lose its data by design`,
			`t.yaml:15: faults.kinds[1].targets[0]: node "c" has no mirror replica and a kill of up to 1m0s outlasts the engine's retry budget of 30s`,
			`t.yaml:16: faults.kinds[2].targets[0]: a cut fault needs a proxy in front of node "a"`,
		}},
		{"node used twice and unused", `name: t
duration: 1m
topology:
  nodes:
    - {name: a, size: 2MiB}
    - {name: b, size: 2MiB}
  storage: {layout: mirror, members: [a, a]}
workload: {filesystems: [ext4]}
`, []string{`t.yaml:6: topology.nodes: node "b" is not used`, `t.yaml:7: topology.storage.members[1]: node "a" is used twice`}},
		{"not a mapping", "- a\n- b\n", []string{"t.yaml:1: a scenario is a mapping"}},
		{"syntax", "name: [\n", []string{"t.yaml:"}},
		{"empty", "", []string{"t.yaml:1: the file is empty"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := scenario.Parse("t.yaml", []byte(c.file))
			require.Error(t, err)
			var errs scenario.Errors
			require.ErrorAs(t, err, &errs)
			require.GreaterOrEqual(t, len(errs), len(c.want), "%v", err)
			for i, w := range c.want {
				require.Contains(t, errs[i].Error(), w, "error %d of:\n%v", i, err)
			}
		})
	}
}
