// ACL parsing refuses malformed rules and ACL matching picks the longest
// prefix (denying unmatched peers, allowing all without rules), checked by
// tables of rules and peer addresses.
package export_test

import (
	"net"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"dst/storage/export"
	"dst/storage/nbd"
)

func TestParseRule(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // formatted rule; empty means an error
	}{
		{"127.0.0.0/8=rw", "127.0.0.0/8=rw"},
		{"::1/128=ro", "::1/128=ro"},
		{" 10.1.2.3/8=ro ", "10.0.0.0/8=ro"}, // host bits cleared, spaces trimmed
		{"10.1.2.3=rw", "10.1.2.3/32=rw"},    // bare address is one host
		{"fe80::1=ro", "fe80::1/128=ro"},
		{"0.0.0.0/0=ro", "0.0.0.0/0=ro"},
		{"::/0=rw", "::/0=rw"},
		{"10.0.0.0/8", ""},         // no access
		{"10.0.0.0/8=", ""},        // empty access
		{"10.0.0.0/8=RW", ""},      // access is case-sensitive
		{"10.0.0.0/8=wr", ""},      // unknown access
		{"10.0.0.0/33=rw", ""},     // impossible length
		{"10.0.0/8=rw", ""},        // not an address
		{"host.example=rw", ""},    // names are not resolved
		{"=rw", ""},                // no prefix
		{"fe80::1%eth0=rw", ""},    // zones unsupported
		{"::ffff:10.0.0.1=rw", ""}, // IPv4-mapped: write IPv4
		{"10.0.0.0/8=rw=ro", ""},   // trailing junk
	} {
		t.Run(tc.in, func(t *testing.T) {
			r, err := export.ParseRule(tc.in)
			if tc.want == "" {
				require.ErrorIs(t, err, export.ErrBadRule)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, r.String())
		})
	}
}

func TestParseACL(t *testing.T) {
	a, err := export.ParseACL("127.0.0.0/8=rw,::1/128=ro,,10.0.0.0/16=ro")
	require.NoError(t, err)
	require.Equal(t, "::1/128=ro,10.0.0.0/16=ro,127.0.0.0/8=rw", a.String(), "longest prefix first")

	a, err = export.ParseACL("")
	require.NoError(t, err)
	require.True(t, a.Empty())

	_, err = export.ParseACL("10.0.0.0/8=rw,10.1.0.0/8=ro")
	require.ErrorIs(t, err, export.ErrBadRule, "same prefix twice after masking")
	_, err = export.ParseACL("10.0.0.0/8=rw,bogus")
	require.ErrorIs(t, err, export.ErrBadRule)
	_, err = export.NewACL(export.Rule{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Access: nbd.AccessDenied})
	require.ErrorIs(t, err, export.ErrBadRule, "a rule grants ro or rw, never denied")
}

func TestACLAccess(t *testing.T) {
	acl, err := export.ParseACL("127.0.0.0/8=ro,127.0.0.2/32=rw,10.0.0.0/8=rw,10.9.0.0/16=ro,::1=rw,fd00::/8=ro")
	require.NoError(t, err)
	for _, tc := range []struct {
		peer string
		want nbd.Access
	}{
		{"127.0.0.1", nbd.AccessReadOnly},
		{"127.0.0.2", nbd.AccessReadWrite}, // /32 beats /8
		{"127.0.0.3", nbd.AccessReadOnly},
		{"10.1.2.3", nbd.AccessReadWrite},
		{"10.9.2.3", nbd.AccessReadOnly}, // /16 beats /8
		{"11.0.0.1", nbd.AccessDenied},   // no rule matches
		{"::1", nbd.AccessReadWrite},
		{"::2", nbd.AccessDenied},
		{"fd12::7", nbd.AccessReadOnly},
		{"::ffff:127.0.0.2", nbd.AccessReadWrite}, // dual-stack listener: matched as IPv4
		{"::ffff:11.0.0.1", nbd.AccessDenied},
	} {
		t.Run(tc.peer, func(t *testing.T) {
			require.Equal(t, tc.want, acl.Access(netip.MustParseAddr(tc.peer)))
		})
	}

	var none export.ACL
	require.Equal(t, nbd.AccessReadWrite, none.Access(netip.MustParseAddr("192.0.2.1")), "no rules: everyone rw")
	require.Equal(t, nbd.AccessReadWrite, none.AccessOf(&net.UnixAddr{Name: "/s", Net: "unix"}))
	require.Equal(t, nbd.AccessReadWrite, acl.AccessOf(&net.TCPAddr{IP: net.ParseIP("127.0.0.2"), Port: 4000}))
	require.Equal(t, nbd.AccessDenied, acl.AccessOf(&net.UnixAddr{Name: "/s", Net: "unix"}), "non-IP peers match no rule")
	require.Equal(t, nbd.AccessDenied, acl.AccessOf(nil))
}

func TestACLOverride(t *testing.T) {
	global, err := export.ParseACL("10.0.0.0/8=rw,127.0.0.1=rw")
	require.NoError(t, err)
	own, err := export.ParseACL("10.0.0.0/8=ro,192.168.0.0/16=rw")
	require.NoError(t, err)
	got := global.Override(own)
	require.Equal(t, "127.0.0.1/32=rw,192.168.0.0/16=rw,10.0.0.0/8=ro", got.String())
	require.Equal(t, "127.0.0.1/32=rw,10.0.0.0/8=rw", global.String(), "Override leaves its receiver alone")
	require.Equal(t, nbd.AccessReadOnly, got.Access(netip.MustParseAddr("10.3.3.3")))
}
