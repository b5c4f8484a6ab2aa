// ParseURL reads the NBD URL forms dst accepts (TCP with default port,
// IPv6, escaped export names, Unix sockets, TLS schemes) and refuses the
// rest with ErrBadURL, and Address.String writes URLs ParseURL reads back
// to the same address — checked by a table.
package node_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"dst/storage/node"
)

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want node.Address
	}{
		{"nbd://host:10810/disk", node.Address{Network: "tcp", Addr: "host:10810", Export: "disk"}},
		{"nbd://host/disk", node.Address{Network: "tcp", Addr: "host:10809", Export: "disk"}},
		{"nbd://127.0.0.1:1", node.Address{Network: "tcp", Addr: "127.0.0.1:1"}},
		{"nbd://127.0.0.1:1/", node.Address{Network: "tcp", Addr: "127.0.0.1:1"}},
		{"nbd://[::1]:99/a/b", node.Address{Network: "tcp", Addr: "[::1]:99", Export: "a/b"}},
		{"nbd://h/with%20space", node.Address{Network: "tcp", Addr: "h:10809", Export: "with space"}},
		{"nbds://h:1/x", node.Address{Network: "tcp", Addr: "h:1", Export: "x", TLS: true}},
		{"nbd+unix:///disk?socket=/run/nbd.sock", node.Address{Network: "unix", Addr: "/run/nbd.sock", Export: "disk"}},
		{"nbd+unix:///?socket=/tmp/s", node.Address{Network: "unix", Addr: "/tmp/s"}},
		{"nbd+unix://?socket=rel.sock", node.Address{Network: "unix", Addr: "rel.sock"}},
		{"nbds+unix:///e?socket=/s", node.Address{Network: "unix", Addr: "/s", Export: "e", TLS: true}},
	} {
		t.Run(tc.url, func(t *testing.T) {
			got, err := node.ParseURL(tc.url)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
			again, err := node.ParseURL(got.String())
			require.NoError(t, err, "String() = %q", got.String())
			require.Equal(t, got, again, "String() = %q", got.String())
		})
	}
}

func TestParseURLErrors(t *testing.T) {
	for _, url := range []string{
		"",
		"host:10809",
		"http://host/disk",
		"nbd+vsock://3:10809/x",
		"nbd://",
		"nbd://:10809/x",
		"nbd://host:/x",
		"nbd://user@host/x",
		"nbd://host/x#frag",
		"nbd://host/x?socket=/s",
		"nbd://host/x?tls-certificates=/etc/pki",
		"nbd+unix:///x",
		"nbd+unix://host/x?socket=/s",
		"nbd+unix:///x?socket=/a&socket=/b",
		"nbd+unix:///x?socket=",
		"nbd:opaque",
		"nbd://host:port/x",
	} {
		t.Run(url, func(t *testing.T) {
			_, err := node.ParseURL(url)
			require.ErrorIs(t, err, node.ErrBadURL)
		})
	}
}
