// Parse turns every documented field into the Config and spec.Tree it
// describes, fills the documented defaults, and rejects each kind of
// mistake with an error naming the file, the line and the field; checked
// by table tests over small YAML documents.
package config_test

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"dst/storage/config"
	"dst/storage/engine"
	"dst/storage/nbd"
	"dst/storage/node"
	"dst/storage/spec"
)

// example is the config README.md shows (fixtures/configs: the fixtures
// package's test keeps the two equal).
const example = "../../fixtures/configs/example.yaml"

func TestExampleFromTheBrief(t *testing.T) {
	c, err := config.Load(example)
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:10809", c.Listen)
	assert.Equal(t, "127.0.0.1:10810", c.Admin)
	require.Equal(t, "mirror(nbd://10.0.0.2:10809, file:/srv/dst/local.img, stripe/64KiB(nbd://10.0.0.3:10809, nbd://10.0.0.4:10809))",
		c.Storage.String())
	require.NoError(t, c.Storage.Validate())
	assert.Equal(t, example+":4", c.Storage.Where)
	assert.Equal(t, example+":8", c.Storage.Members[2].Where)
	assert.Equal(t, []string{"nbd://10.0.0.2:10809", "file:/srv/dst/local.img", "nbd://10.0.0.3:10809", "nbd://10.0.0.4:10809"},
		c.Storage.Leaves())
}

func TestDefaults(t *testing.T) {
	c, err := config.Parse("s.yaml", []byte("storage: {layout: linear, members: [file:/a]}\n"))
	require.NoError(t, err)
	assert.Equal(t, config.DefaultListen, c.Listen)
	assert.Equal(t, config.DefaultAdmin, c.Admin)
	assert.Equal(t, int64(config.DefaultRegionSize), c.RegionSize)
	assert.Equal(t, int64(config.DefaultResyncRate), c.Resync.RateBytesPerSec)
	assert.Equal(t, time.Second, c.Resync.Interval)
	assert.Equal(t, node.DefaultRetries, c.Node.Retries)
	assert.Equal(t, node.DefaultRequestTimeout, c.Node.RequestTimeout)
	assert.Equal(t, node.DefaultConnectTimeout, c.Node.ConnectTimeout)
	assert.False(t, c.AllowDegraded)
	assert.Empty(t, c.Replace)
	assert.True(t, c.Export.Allow.Empty(), "no allow list: everyone")
	assert.False(t, c.Export.TLS.Enabled())
	assert.Equal(t, "", c.Export.Name)
	ro := c.Node.RemoteOptions()
	assert.Equal(t, node.DefaultRetries, ro.Retries)
	mo := c.MonitorOptions()
	assert.Equal(t, time.Second, mo.Interval)
	assert.Equal(t, int64(100<<20), mo.ResyncBytesPerSec)
	assert.Equal(t, engine.DefaultFailover, mo.Failover)
}

func TestEveryField(t *testing.T) {
	dir := t.TempDir()
	yaml := `# every field
listen: 0.0.0.0:20809
admin: off
storage:
  layout: linear
  members:
    - file:local.img
    - nbd://127.0.0.1:10809/one
    - nbd+unix:///two?socket=/run/two.sock
    - layout: mirror
      members:
        - file:///srv/m1.img
        - layout: stripe
          chunk: 1.5 KiB
          members: ["nbd://[::1]:10809", nbd://host.example]
export:
  name: disk
  description: a test disk
  read_only: true
  allow: ["127.0.0.0/8=rw", "10.0.0.0/8=ro", "::1=rw"]
  tls: {cert: tls/c.pem, key: /etc/k.pem, ca: ca.pem, required: true}
node:
  dial_timeout: 2s
  connect_timeout: 1m
  request_timeout: 750ms
  retries: 0
  backoff_min: 10ms
  backoff_max: 1s
  ping_interval: off
resync: {rate: 64MiB/s, interval: 250ms, failover: 2s}
activity_log: {regions: 64, quiet: 2s}
scrub: {interval: 168h, rate: 100MiB/s, repair: true, digests: false}
region_size: 64KiB
allow_degraded: true
shutdown_timeout: 2500ms
replace: [file:local.img, nbd://host.example:10809]
`
	c, err := config.Parse(filepath.Join(dir, "storage.yaml"), []byte(yaml))
	require.NoError(t, err)
	assert.Equal(t, "0.0.0.0:20809", c.Listen)
	assert.Equal(t, "", c.Admin, "admin: off")
	local := "file:" + filepath.Join(dir, "local.img")
	assert.Equal(t, []string{local, "nbd://127.0.0.1:10809/one", "nbd+unix:///two?socket=/run/two.sock",
		"file:///srv/m1.img", "nbd://[::1]:10809", "nbd://host.example"}, c.Storage.Leaves())
	st := c.Storage.Members[3].Members[1]
	assert.Equal(t, spec.KindStripe, st.Kind)
	assert.Equal(t, int64(1536), st.Chunk)
	assert.Equal(t, "disk", c.Export.Name)
	assert.Equal(t, "a test disk", c.Export.Description)
	assert.True(t, c.Export.ReadOnly)
	assert.Equal(t, "::1/128=rw,10.0.0.0/8=ro,127.0.0.0/8=rw", c.Export.Allow.String())
	assert.Equal(t, config.TLS{Cert: filepath.Join(dir, "tls/c.pem"), Key: "/etc/k.pem", CA: filepath.Join(dir, "ca.pem"),
		Required: true, Where: filepath.Join(dir, "storage.yaml") + ":21"}, c.Export.TLS)
	assert.Equal(t, config.Node{DialTimeout: 2 * time.Second, ConnectTimeout: time.Minute, RequestTimeout: 750 * time.Millisecond,
		Retries: 0, BackoffMin: 10 * time.Millisecond, BackoffMax: time.Second, PingInterval: -1}, c.Node)
	ro := c.Node.RemoteOptions()
	assert.Equal(t, -1, ro.Retries, "retries: 0 means no resend, which node spells negative")
	assert.Equal(t, time.Duration(-1), ro.PingInterval)
	assert.Equal(t, time.Minute, c.Node.OpenOptions().ConnectTimeout)
	assert.Equal(t, config.Resync{RateBytesPerSec: 64 << 20, Interval: 250 * time.Millisecond, Failover: 2 * time.Second}, c.Resync)
	assert.Equal(t, config.Activity{Regions: 64, Quiet: 2 * time.Second}, c.Activity)
	assert.Equal(t, engine.ScrubSchedule{Interval: 168 * time.Hour, Rate: 100 << 20, Repair: true}, c.MonitorOptions().Scrub)
	assert.True(t, c.Scrub.NoDigests, "digests: false")
	assert.Equal(t, engine.Options{ActivityRegions: 64, ActivityQuiet: 2 * time.Second}, c.EngineOptions())
	assert.Equal(t, int64(64<<10), c.RegionSize)
	assert.Equal(t, 2500*time.Millisecond, c.ShutdownTimeout)
	assert.True(t, c.AllowDegraded)
	assert.Equal(t, []string{local, "nbd://host.example"}, c.Replace, "replace entries name the members as the storage spells them")
	acc := c.Export.Allow.Access(netip.MustParseAddr("10.1.2.3"))
	assert.Equal(t, nbd.AccessReadOnly, acc)
}

func TestUnlimitedRate(t *testing.T) {
	for _, v := range []string{"0", "unlimited"} {
		c, err := config.Parse("s.yaml", []byte("storage: {layout: linear, members: [file:/a]}\nresync: {rate: "+v+"}\n"))
		require.NoError(t, err, v)
		assert.Zero(t, c.Resync.RateBytesPerSec, v)
	}
}

// TestErrors: each mistake is reported at its line, naming its field.
func TestErrors(t *testing.T) {
	const head = "storage:\n  layout: mirror\n  members: [file:/a, file:/b]\n"
	for _, tc := range []struct {
		name, yaml string
		want       string // "LINE: FIELD: message part"
	}{
		{"empty file", "", "1: the file is empty"},
		{"only a comment", "# nothing\n", "1: the file is empty"},
		{"not a mapping", "- a\n- b\n", "1: the file must be a mapping"},
		{"syntax", "storage: [\n", "1: YAML:"},
		{"tab indentation", "storage:\n\tlayout: linear\n", "2: YAML:"},
		{"two documents", head + "---\nlisten: x\n", "5: a second YAML document"},
		{"missing storage", "listen: 127.0.0.1:1\n", "1: storage: missing"},
		{"storage is a URL", "storage: file:/a\n", "1: storage: must be a layout mapping"},
		{"unknown top field", head + "colour: blue\n", "4: colour: unknown field (known here: activity_log, admin, allow_degraded"},
		{"unknown storage field", "storage:\n  layout: linear\n  members: [file:/a]\n  raid: 5\n", "4: storage.raid: unknown field (known here: chunk, layout, members)"},
		{"unknown nested field", "storage:\n  layout: linear\n  members:\n    - layout: mirror\n      mebmers: [file:/a]\n", "5: storage.members[0].mebmers: unknown field"},
		{"repeated field", head + "listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n", "5: listen: given twice (first at line 4)"},
		{"bad layout", "storage:\n  layout: raid5\n  members: [file:/a]\n", `2: storage.layout: "raid5" is not a layout (linear, stripe or mirror)`},
		{"layout missing", "storage:\n  members: [file:/a]\n", "2: storage.layout: missing"},
		{"nested layout missing", "storage:\n  layout: linear\n  members:\n    - members: [file:/a]\n", "4: storage.members[0].layout: missing"},
		{"members missing", "storage:\n  layout: mirror\n", "2: storage.members: missing: a layout needs at least one member"},
		{"members empty", "storage:\n  layout: mirror\n  members: []\n", "3: storage.members: empty"},
		{"members null", "storage:\n  layout: mirror\n  members:\n", "3: storage.members: empty"},
		{"members not a list", "storage:\n  layout: mirror\n  members: file:/a\n", `3: storage.members: must be a list, not "file:/a"`},
		{"member is a list", "storage:\n  layout: mirror\n  members:\n    - [file:/a]\n", "4: storage.members[0]: a member is a URL"},
		{"bad URL scheme", "storage:\n  layout: linear\n  members:\n    - file:/a\n    - http://x/y\n", `5: storage.members[1]: "http://x/y" is not a member URL`},
		{"path without scheme", "storage:\n  layout: linear\n  members: [/srv/a.img]\n", `3: storage.members[0]: "/srv/a.img" is not a member URL`},
		{"nbd URL without host", "storage:\n  layout: linear\n  members: [\"nbd:///x\"]\n", `3: storage.members[0]: "nbd:///x": no host`},
		{"nbd URL query", "storage:\n  layout: linear\n  members: [\"nbd://h/x?tls=1\"]\n", `3: storage.members[0]: "nbd://h/x?tls=1": query parameter "tls" is not supported`},
		{"unix URL without socket", "storage:\n  layout: linear\n  members: [\"nbd+unix:///x\"]\n", "3: storage.members[0]:"},
		{"nbds", "storage:\n  layout: linear\n  members: [nbds://h/x]\n", "3: storage.members[0]: \"nbds://h/x\": TLS to nodes is not configurable"},
		{"file URL with host", "storage:\n  layout: linear\n  members: [file://other/x]\n", `3: storage.members[0]: "file://other/x": host "other"`},
		{"chunk on mirror", "storage:\n  layout: mirror\n  chunk: 64KiB\n  members: [file:/a]\n", "3: storage.chunk: only a stripe has a chunk, not a mirror"},
		{"chunk on nested linear", "storage:\n  layout: mirror\n  members:\n    - file:/a\n    - layout: linear\n      chunk: 4KiB\n      members: [file:/b]\n", "6: storage.members[1].chunk: only a stripe has a chunk, not a linear"},
		{"stripe without chunk", "storage:\n  layout: stripe\n  members: [file:/a, file:/b]\n", "2: storage.chunk: missing: a stripe needs a chunk size"},
		{"SI chunk", "storage:\n  layout: mirror\n  members:\n    - file:/a\n    - file:/b\n    - layout: stripe\n      chunk: 64KB\n      members: [file:/c]\n", `7: storage.members[2].chunk: "64KB" is not a size (use 64KiB)`},
		{"zero chunk", "storage:\n  layout: stripe\n  chunk: 0\n  members: [file:/a]\n", "3: storage.chunk: a chunk holds at least one byte"},
		{"negative chunk", "storage:\n  layout: stripe\n  chunk: -4KiB\n  members: [file:/a]\n", `3: storage.chunk: "-4KiB" is not a size`},
		{"fractional bytes", "storage:\n  layout: stripe\n  chunk: 1.5\n  members: [file:/a]\n", `3: storage.chunk: "1.5" is not a whole number of bytes`},
		{"unknown unit", "storage:\n  layout: stripe\n  chunk: 4 parsecs\n  members: [file:/a]\n", `3: storage.chunk: "4 parsecs" is not a size: unknown unit`},
		{"huge size", "storage:\n  layout: stripe\n  chunk: 9EiB\n  members: [file:/a]\n", `3: storage.chunk: "9EiB" is not a size: too large`},
		{"chunk is a list", "storage:\n  layout: stripe\n  chunk: [1]\n  members: [file:/a]\n", "3: storage.chunk: must be a single value, not a list"},
		{"duplicate member", "storage:\n  layout: mirror\n  members:\n    - nbd://10.0.0.2:10809\n    - file:/a\n    - nbd://10.0.0.2\n", "6: storage.members[2]: nbd://10.0.0.2 appears twice (first at line 4, storage.members[0])"},
		{"duplicate nested member", "storage:\n  layout: mirror\n  members:\n    - file:/a\n    - layout: linear\n      members: [file:///a]\n", "6: storage.members[1].members[0]: file:///a appears twice (first at line 4"},
		{"too deep", "storage:\n  layout: linear\n  members:\n" + deep(9), "18: storage.members[0].members[0].members[0].members[0].members[0].members[0].members[0].members[0]: layouts nest more than 8 deep"},
		{"too many members", "storage:\n  layout: linear\n  members: [" + manyMembers(65) + "]\n", "2: storage: 65 members; at most 64"},
		{"bad listen", head + "listen: 10809\n", `4: listen: "10809" is not HOST:PORT`},
		{"bad listen port", head + "listen: 127.0.0.1:99999\n", `4: listen: "127.0.0.1:99999": port "99999"`},
		{"bad admin", head + "admin: nowhere\n", `4: admin: "nowhere" is not HOST:PORT, or "off"`},
		{"admin equals listen", head + "listen: 127.0.0.1:5000\nadmin: 127.0.0.1:5000\n", "5: admin: 127.0.0.1:5000 is also the listen address"},
		{"listen without value", head + "listen:\n", "4: listen: has no value"},
		{"bad bool", head + "allow_degraded: maybe\n", `4: allow_degraded: "maybe" is not a boolean`},
		{"yes is no bool", head + "allow_degraded: yes\n", `4: allow_degraded: "yes" is not a boolean`},
		{"zero shutdown", head + "shutdown_timeout: 0s\n", `4: shutdown_timeout: 0s must be positive`},
		{"bad shutdown", head + "shutdown_timeout: soon\n", `4: shutdown_timeout: `},
		{"export not a mapping", head + "export: disk\n", `4: export: export must be a mapping of fields, not "disk"`},
		{"unknown export field", head + "export:\n  colour: blue\n", "5: export.colour: unknown field (known here: allow, description, name, read_only, tls)"},
		{"bad read_only", head + "export: {read_only: 1}\n", `4: export.read_only: "1" is not a boolean`},
		{"bad allow rule", head + "export:\n  allow:\n    - 127.0.0.0/8=rw\n    - 10.0.0.0/8=rx\n", `7: export.allow[1]: "10.0.0.0/8=rx": access "rx" is neither ro nor rw`},
		{"bad allow CIDR", head + "export:\n  allow: [10.0.0/8=rw]\n", `5: export.allow[0]: "10.0.0/8=rw"`},
		{"allow twice", head + "export:\n  allow: [10.0.0.0/8=rw, 10.1.0.0/8=ro]\n", "5: export.allow[1]: a second rule for 10.0.0.0/8 (first at line 5)"},
		{"allow empty", head + "export:\n  allow: []\n", "5: export.allow: an empty list refuses everyone"},
		{"allow not a list", head + "export:\n  allow: 10.0.0.0/8=rw\n", "5: export.allow: must be a list"},
		{"tls key without cert", head + "export:\n  tls: {key: k.pem}\n", "5: export.tls: cert and key go together"},
		{"tls ca alone", head + "export:\n  tls: {ca: ca.pem}\n", "5: export.tls: ca needs cert and key"},
		{"tls required alone", head + "export:\n  tls:\n    required: true\n", "6: export.tls: required needs cert and key"},
		{"tls empty path", head + "export:\n  tls: {cert: \"\", key: k.pem}\n", "5: export.tls.cert: empty path"},
		{"unknown tls field", head + "export:\n  tls: {cert: c, key: k, crl: x}\n", "5: export.tls.crl: unknown field"},
		{"duration without unit", head + "node:\n  request_timeout: 5\n", `5: node.request_timeout: "5" is not a duration (use 5s)`},
		{"bad duration", head + "node:\n  dial_timeout: soon\n", `5: node.dial_timeout: "soon" is not a duration`},
		{"negative duration", head + "node:\n  backoff_max: -1s\n", "5: node.backoff_max: -1s must be positive"},
		{"zero duration", head + "resync: {interval: 0s}\n", "4: resync.interval: 0s must be positive"},
		{"bad failover", head + "resync: {failover: soon}\n", `4: resync.failover: "soon" is not a duration`},
		{"off only for pings", head + "node: {request_timeout: off}\n", `4: node.request_timeout: "off" is not a duration`},
		{"backoff order", head + "node:\n  backoff_min: 3s\n  backoff_max: 1s\n", "5: node.backoff_min: 3s is longer than backoff_max 1s"},
		{"negative retries", head + "node: {retries: -1}\n", `4: node.retries: "-1" is not a whole number from 0 to 100`},
		{"too many retries", head + "node: {retries: 1000}\n", `4: node.retries: "1000" is not a whole number`},
		{"unknown node field", head + "node: {timeout: 5s}\n", "4: node.timeout: unknown field (known here: backoff_max, backoff_min, connect_timeout, dial_timeout, ping_interval, request_timeout, retries)"},
		{"SI rate", head + "resync:\n  rate: 100MB/s\n", `5: resync.rate: "100MB/s" is not a size (use 100MiB)`},
		{"bad rate", head + "resync: {rate: fast}\n", `4: resync.rate: "fast" is not a size`},
		{"region not a power of two", head + "region_size: 3000\n", "4: region_size: 3000 is not a power of two from 4KiB to 1GiB"},
		{"activity regions not a number", head + "activity_log: {regions: lots}\n", `4: activity_log.regions: "lots" is not a whole number from 1 to 1048576, or off`},
		{"activity regions zero", head + "activity_log: {regions: 0}\n", `4: activity_log.regions: "0" is not a whole number from 1 to 1048576, or off`},
		{"scrub interval zero", head + "scrub: {interval: 0s}\n", `4: scrub.interval: 0s: must be positive, or off`},
		{"scrub rate not a size", head + "scrub: {rate: fast}\n", `4: scrub.rate:`},
		{"scrub repair not a bool", head + "scrub: {repair: maybe}\n", `4: scrub.repair: "maybe" is not a boolean`},
		{"activity quiet not a duration", head + "activity_log: {quiet: 5}\n", `4: activity_log.quiet: "5" is not a duration (use 5s)`},
		{"region too small", head + "region_size: 2KiB\n", "4: region_size: 2KiB is not a power of two"},
		{"region too large", head + "region_size: 2GiB\n", "4: region_size: 2GiB is not a power of two"},
		{"replace unknown member", head + "replace: [file:/c]\n", "4: replace[0]: file:/c is not a member of the storage"},
		{"replace twice", head + "replace:\n  - file:/a\n  - file:///a\n", "6: replace[1]: file:///a is listed twice (first at line 5)"},
		{"replace bad URL", head + "replace: [ftp://x]\n", `4: replace[0]: "ftp://x" is not a member URL`},
		{"replace not a list", head + "replace: file:/a\n", "4: replace: must be a list"},
		{"anchor", "storage: &s\n  layout: linear\n  members: [file:/a]\n", "1: YAML anchors and aliases are not supported"},
		{"alias", head + "export: {name: &n x, description: *n}\n", "4: YAML anchors and aliases are not supported"},
		{"merge key", head + "export:\n  <<: {name: x}\n", "5: export.<<: unknown field"},
		{"non-string key", head + "1: x\n", "4: a field name must be a plain word"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := config.Parse("storage.yaml", []byte(tc.yaml))
			require.Error(t, err, "parsed as %+v", c)
			require.Nil(t, c)
			require.Contains(t, err.Error(), "storage.yaml:"+tc.want, "YAML:\n%s", tc.yaml)
			var errs config.Errors
			require.True(t, errors.As(err, &errs), "the error is config.Errors")
			var one *config.Error
			require.True(t, errors.As(err, &one), "errors.As finds a *config.Error")
			for _, e := range errs {
				require.Positive(t, e.Line, "every error has a line: %v", e)
				require.Equal(t, "storage.yaml", e.File)
			}
		})
	}
}

// TestErrorsAllReported: one pass reports every mistake, in line order.
func TestErrorsAllReported(t *testing.T) {
	yaml := "listen: nope\nstorage:\n  layout: stripe\n  chunk: 64KB\n  members: [http://x, file:/a, file:/a]\nregion_size: 3\nbogus: 1\n"
	_, err := config.Parse("s.yaml", []byte(yaml))
	require.Error(t, err)
	var errs config.Errors
	require.ErrorAs(t, err, &errs)
	var got []string
	for _, e := range errs {
		got = append(got, e.Field)
	}
	require.Equal(t, []string{"listen", "storage.chunk", "storage.members[0]", "storage.members[2]", "region_size", "bogus"}, got)
	lines := strings.Split(err.Error(), "\n")
	require.Len(t, lines, 6)
	require.True(t, strings.HasPrefix(lines[0], "s.yaml:1: listen: "), lines[0])
}

func TestErrorsBounded(t *testing.T) {
	var b strings.Builder
	b.WriteString("storage: {layout: linear, members: [file:/a]}\n")
	for i := range 50 {
		b.WriteString("bogus" + string(rune('a'+i%26)) + string(rune('a'+i/26)) + ": 1\n")
	}
	_, err := config.Parse("s.yaml", []byte(b.String()))
	var errs config.Errors
	require.ErrorAs(t, err, &errs)
	require.Len(t, errs, 21, "20 errors and a line saying how many more")
	require.Contains(t, errs[20].Msg, "and 30 more errors")
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	_, err := config.Load(filepath.Join(dir, "missing.yaml"))
	require.ErrorIs(t, err, os.ErrNotExist)

	big := filepath.Join(dir, "big.yaml")
	require.NoError(t, os.WriteFile(big, []byte(strings.Repeat("# padding\n", config.MaxBytes/10+1)), 0o644))
	_, err = config.Load(big)
	require.ErrorContains(t, err, "big.yaml:1: file is larger than")

	ok := filepath.Join(dir, "ok.yaml")
	require.NoError(t, os.WriteFile(ok, []byte("storage:\n  layout: linear\n  members: [file:disk.img]\n"), 0o644))
	c, err := config.Load(ok)
	require.NoError(t, err)
	require.Equal(t, []string{"file:" + filepath.Join(dir, "disk.img")}, c.Storage.Leaves(), "relative to the config's folder")
	require.Equal(t, ok+":2", c.Storage.Where)
}

func deep(n int) string {
	var b strings.Builder
	indent := "    "
	for range n {
		b.WriteString(indent + "- layout: linear\n" + indent + "  members:\n")
		indent += "    "
	}
	b.WriteString(indent + "- file:/a\n")
	return b.String()
}

func manyMembers(n int) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = "file:/m" + strings.Repeat("x", i)
	}
	return strings.Join(parts, ", ")
}
