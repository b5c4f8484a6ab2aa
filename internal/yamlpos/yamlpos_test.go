// Decode takes one document and refuses what dst's files never hold
// (anchors, aliases, a second document, runaway nesting) at its line;
// Report sorts and bounds; Duration's messages — table tests on small
// documents.
package yamlpos_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"dst/internal/yamlpos"
)

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		name, doc, want string // want "" means no error
		empty           bool
	}{
		{"mapping", "a: 1\nb: [x, y]\n", "", false},
		{"empty", "", "", true},
		{"only null", "~\n", "", true},
		{"syntax", "a: 1\n b: 2\n", "f.yaml:2: YAML: ", false},
		{"second document", "a: 1\n---\nb: 2\n", "f.yaml:3: a second YAML document", false},
		{"anchor", "a: &x 1\nb: *x\n", "f.yaml:1: YAML anchors and aliases are not supported", false},
		{"too deep", strings.Repeat("[", 70) + strings.Repeat("]", 70), "nested more than 64 levels deep", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := yamlpos.Report{File: "f.yaml"}
			root, ok := yamlpos.Decode([]byte(tc.doc), &r)
			if tc.want != "" {
				require.False(t, ok)
				require.ErrorContains(t, r.Err(0), tc.want)
				return
			}
			require.True(t, ok, "%v", r.Err(0))
			require.NoError(t, r.Err(0))
			require.Equal(t, tc.empty, root == nil)
		})
	}
}

func TestReportSortsAndBounds(t *testing.T) {
	r := yamlpos.Report{File: "f.yaml"}
	require.NoError(t, r.Err(10))
	r.Errorf(9, "b", "late")
	r.Errorf(0, "", "no line")
	r.Errorf(3, "a.c", "first of 3")
	r.Errorf(3, "a.d", "second of 3")
	err := r.Err(0)
	require.Equal(t, "f.yaml:1: no line\nf.yaml:3: a.c: first of 3\nf.yaml:3: a.d: second of 3\nf.yaml:9: b: late", err.Error())
	var e *yamlpos.Error
	require.True(t, errors.As(err, &e), "errors.As finds each Error")
	require.Equal(t, "f.yaml:1: no line\nf.yaml:3: a.c: first of 3\nf.yaml:3: and 2 more errors", r.Err(2).Error())
	require.Equal(t, 4, r.Len())
}

func TestDurationAndHelpers(t *testing.T) {
	d, err := yamlpos.Duration("1m30s")
	require.NoError(t, err)
	require.Equal(t, "1m30s", d.String())
	for in, msg := range map[string]string{"5": `"5" is not a duration (use 5s)`, "soon": "(like 250ms, 5s, 1m30s)", "0s": "0s must be positive", "-1s": "must be positive"} {
		_, err := yamlpos.Duration(in)
		require.ErrorContains(t, err, msg, in)
	}
	require.Equal(t, "a.b", yamlpos.Join("a", "b"))
	require.Equal(t, "b", yamlpos.Join("", "b"))
	r := yamlpos.Report{File: "f.yaml"}
	root, _ := yamlpos.Decode([]byte("m: {a: 1}\nl: [1]\nn:\ns: x\n"), &r)
	var got []string
	for i := 1; i < len(root.Content); i += 2 {
		got = append(got, yamlpos.Describe(root.Content[i]))
	}
	require.Equal(t, []string{"a mapping", "a list", "nothing", `"x"`}, got)
}
