package membership

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
)

// TestScripts runs the scripts in testdata (etcd-io/raft's datadriven
// style): each command is an event, its output the decision. Rewrite the
// expected output after a deliberate change of the rules with
// go test ./storage/membership -rewrite, and read the diff.
//
// Commands:
//
//	new members=N        the mirrors follow, one per line, outermost first:
//	                     children separated by |, members by spaces
//	fail M cause [unflushed] [logged]
//	suspend M [unflushed]
//	release M
//	rejoin M [full]
//	resync-done M ok|failed [unflushed]
//	recorded ok|failed
//	start M serve|copy-dirty|copy-whole|skip
//	unclean source=M served=M,M,...
//	stall failover=D     ticks follow, one per line: t=D M [watched] done=N busy=N
//	states               every member's state, whole-due, pending, redundant
func TestScripts(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		var c *Core
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			if d.Cmd != "new" && c == nil {
				d.Fatalf(t, "%s before new", d.Cmd)
			}
			out, err := run(t, &c, d)
			if err != nil {
				return "error: " + err.Error() + "\n" + c.states()
			}
			return out
		})
	})
}

func run(t *testing.T, cp **Core, d *datadriven.TestData) (string, error) {
	c := *cp
	pos := positional(d)
	member := func() int {
		if len(pos) == 0 {
			d.Fatalf(t, "%s: which member?", d.Cmd)
		}
		m, err := strconv.Atoi(pos[0])
		if err != nil || m < 0 || (c != nil && m >= c.Members()) {
			d.Fatalf(t, "%s: bad member %q", d.Cmd, pos[0])
		}
		return m
	}
	has := func(word string) bool {
		for _, p := range pos {
			if p == word {
				return true
			}
		}
		return false
	}
	facts := func() Facts { return Facts{Unflushed: has("unflushed"), Logged: has("logged")} }
	decided := func(dec Decision, err error) (string, error) {
		if err != nil {
			return "", err
		}
		return dec.String() + "\n" + c.states(), nil
	}
	switch d.Cmd {
	case "new":
		var n int
		d.ScanArgs(t, "members", &n)
		var mirrors [][][]int
		for _, line := range strings.Split(strings.TrimSpace(d.Input), "\n") {
			if line == "" {
				continue
			}
			var children [][]int
			for _, part := range strings.Split(line, "|") {
				var leaves []int
				for _, f := range strings.Fields(part) {
					l, err := strconv.Atoi(f)
					if err != nil {
						d.Fatalf(t, "new: %q is not a member", f)
					}
					leaves = append(leaves, l)
				}
				children = append(children, leaves)
			}
			mirrors = append(mirrors, children)
		}
		nc, err := New(n, mirrors)
		if err != nil {
			return "", err
		}
		*cp = nc
		return nc.states(), nil
	case "fail":
		if len(pos) < 2 {
			d.Fatalf(t, "fail M cause")
		}
		cause := -1
		for i, name := range causeNames {
			if name == pos[1] {
				cause = i
			}
		}
		if cause < 0 {
			d.Fatalf(t, "fail: no cause %q (%v)", pos[1], causeNames)
		}
		return decided(c.Fail(member(), Cause(cause), facts()), nil)
	case "suspend":
		return decided(c.Suspend(member(), facts()))
	case "release":
		return decided(c.Release(member()))
	case "rejoin":
		return decided(c.Rejoin(member(), has("full")))
	case "resync-done":
		return decided(c.ResyncDone(member(), has("ok"), facts()), nil)
	case "recorded":
		c.Recorded(has("ok"))
		return c.states(), nil
	case "start":
		i := member()
		s := map[string]Start{"serve": Serve, "copy-dirty": CopyDirty, "copy-whole": CopyWhole, "skip": Skip}
		st, ok := s[pos[len(pos)-1]]
		if !ok {
			d.Fatalf(t, "start: how? (%v)", s)
		}
		c.Started(i, st)
		return c.states(), nil
	case "unclean":
		var source int
		var served string
		d.ScanArgs(t, "source", &source)
		d.ScanArgs(t, "served", &served)
		in := make([]bool, c.Members())
		for _, f := range strings.Split(served, ",") {
			if f == "" {
				continue
			}
			l, err := strconv.Atoi(f)
			if err != nil || l < 0 || l >= len(in) {
				d.Fatalf(t, "unclean: bad member %q", f)
			}
			in[l] = true
		}
		copies, sources := c.UncleanCopies(source, in)
		return fmt.Sprintf("copies %v\nsources %v\n", copies, sources), nil
	case "stall":
		var failover string
		d.ScanArgs(t, "failover", &failover)
		fo, err := time.ParseDuration(failover)
		if err != nil {
			d.Fatalf(t, "stall: %v", err)
		}
		s := NewStall(c.Members(), fo)
		t0 := time.Unix(0, 0)
		var b strings.Builder
		for _, line := range strings.Split(strings.TrimSpace(d.Input), "\n") {
			var at time.Duration
			var m int
			var p Progress
			for _, f := range strings.Fields(line) {
				k, v, _ := strings.Cut(f, "=")
				var err error
				switch k {
				case "t":
					at, err = time.ParseDuration(v)
				case "watched":
					p.Watched = true
				case "done":
					p.Done, err = strconv.ParseUint(v, 10, 64)
				case "busy":
					var n int64
					n, err = strconv.ParseInt(v, 10, 32)
					p.Busy = int32(n)
				default:
					m, err = strconv.Atoi(k)
				}
				if err != nil {
					d.Fatalf(t, "stall: %q: %v", f, err)
				}
			}
			stalled, quiet := s.Tick(t0.Add(at), m, p)
			fmt.Fprintf(&b, "t=%v %d: stalled=%v quiet=%v\n", at, m, stalled, quiet)
		}
		return b.String(), nil
	case "states":
		return c.states(), nil
	}
	d.Fatalf(t, "unknown command %q", d.Cmd)
	return "", nil
}

// positional returns the command's arguments without a value.
func positional(d *datadriven.TestData) []string {
	var out []string
	for _, a := range d.CmdArgs {
		if len(a.Vals) == 0 {
			out = append(out, a.Key)
		}
	}
	return out
}

// states prints every member's state, whether a whole copy is due and
// whether a replica stands in for it, and whether a change is pending.
func (c *Core) states() string {
	var b strings.Builder
	for i := range c.state {
		fmt.Fprintf(&b, "  %d %v", i, c.state[i])
		if c.whole[i] {
			b.WriteString(" whole-due")
		}
		if c.Redundant(i) {
			b.WriteString(" redundant")
		}
		b.WriteString("\n")
	}
	if c.pending {
		b.WriteString("  record pending\n")
	}
	return b.String()
}
