// The export server serves files to the dst client (nbd.Dial) with every
// command round-tripping, routes export names, enforces access rules by
// peer address (dialling from several 127.0.0.0/8 source addresses), bounds
// connections, shuts down promptly with clients connected, and serves any
// node.Node it is given (a memory node, a remote node: storages stack),
// checked against in-process servers on random loopback ports.
package export_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/export"
	"dst/storage/nbd"
	"dst/storage/node"
)

func TestClientRoundTrip(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	p := testkit.Image(t, "disk.img", 64*mib)
	srv := startServer(t, export.Config{Exports: []export.ExportConfig{{Name: "disk", Path: p}}})
	c := dial(t, srv.Addr, nbd.ClientOptions{}) // the lone export answers to ""

	info := c.Info()
	require.Equal(t, int64(64*mib), info.Size)
	want := nbd.FlagHasFlags | nbd.FlagSendFlush | nbd.FlagSendFUA | nbd.FlagSendTrim |
		nbd.FlagSendWriteZero | nbd.FlagSendFastZero | nbd.FlagSendCache | nbd.FlagCanMultiConn
	require.Equal(t, want, info.Flags, "got %v", info.Flags)

	big := make([]byte, 8*mib)
	for i := range big {
		big[i] = byte(i * 7)
	}
	require.NoError(t, c.WriteAt(ctx, big, 8*mib, 0))
	require.NoError(t, c.WriteAt(ctx, pattern(0x5a, 3000), 4097, nbd.CmdFlagFUA))
	require.NoError(t, c.Flush(ctx))
	got := make([]byte, 8*mib)
	require.NoError(t, c.ReadAt(ctx, got, 8*mib))
	require.Equal(t, big, got)
	require.NoError(t, c.ReadAt(ctx, got[:3002], 4096))
	require.Equal(t, append(append([]byte{0}, pattern(0x5a, 3000)...), 0), got[:3002])

	require.NoError(t, c.Trim(ctx, 8*mib, mib, 0))
	require.NoError(t, c.WriteZeroes(ctx, 9*mib, mib, 0))
	require.NoError(t, c.WriteZeroes(ctx, 10*mib+1, mib, nbd.CmdFlagNoHole|nbd.CmdFlagFUA))
	require.NoError(t, c.WriteZeroes(ctx, 12*mib, mib, nbd.CmdFlagFastZero))
	require.NoError(t, c.Cache(ctx, 0, mib))
	require.NoError(t, c.ReadAt(ctx, got, 8*mib))
	require.Equal(t, make([]byte, 3*mib+1), got[:3*mib+1], "trimmed and zeroed ranges read zeroes")
	require.Equal(t, big[3*mib+1:4*mib], got[3*mib+1:4*mib], "data after the NO_HOLE range survived")
	require.Equal(t, make([]byte, mib), got[4*mib:5*mib])
	require.Equal(t, big[5*mib:], got[5*mib:])

	disk, err := os.ReadFile(p)
	require.NoError(t, err)
	require.Equal(t, got, disk[8*mib:16*mib], "the file holds what the client sees")

	err = c.WriteAt(ctx, make([]byte, 4096), 64*mib-100, 0)
	require.ErrorIs(t, err, nbd.ENOSPC, "writing past the end")
	err = c.ReadAt(ctx, make([]byte, 4096), 64*mib-100)
	require.ErrorIs(t, err, nbd.EINVAL, "reading past the end")
	require.NoError(t, c.ReadAt(ctx, got[:1], 0), "errors leave the connection usable")
}

func TestServeNodes(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	// Stack two servers: "file" on the lower one, served again by the
	// upper one through a remote node; and a memory node beside it.
	img := testkit.Image(t, "disk.img", 4*mib)
	lower := startServer(t, export.Config{Exports: []export.ExportConfig{{Name: "file", Path: img}}})
	addr, err := node.ParseURL("nbd://" + lower.Addr + "/file")
	require.NoError(t, err)
	remote, err := node.NewRemote(addr, node.RemoteOptions{})
	require.NoError(t, err)
	ran := make(chan error, 1)
	go func() { ran <- remote.Run(context.Background()) }()
	require.NoError(t, remote.Ready(ctx))
	mem := node.NewMemory(mib)
	upper := startServer(t, export.Config{Exports: []export.ExportConfig{
		{Name: "remote", Node: remote},
		{Name: "mem", Node: mem, ReadOnly: true},
	}})

	c := dial(t, upper.Addr, nbd.ClientOptions{ExportName: "remote"})
	require.Equal(t, int64(4*mib), c.Info().Size)
	require.NoError(t, c.WriteAt(ctx, pattern(0x3e, 5000), mib+7, nbd.CmdFlagFUA))
	require.NoError(t, c.Flush(ctx))
	disk, err := os.ReadFile(img)
	require.NoError(t, err)
	require.Equal(t, pattern(0x3e, 5000), disk[mib+7:mib+7+5000], "through both servers into the file")

	m := dial(t, upper.Addr, nbd.ClientOptions{ExportName: "mem"})
	require.Equal(t, int64(mib), m.Info().Size)
	want := (node.MemoryFlags | nbd.FlagHasFlags | nbd.FlagReadOnly) &^ (nbd.FlagSendTrim | nbd.FlagSendWriteZero | nbd.FlagSendFastZero)
	require.Equal(t, want, m.Info().Flags, "got %v", m.Info().Flags)
	require.ErrorIs(t, m.WriteAt(ctx, []byte{1}, 0, 0), nbd.ErrUnsupported, "read-only for every peer")
	require.NoError(t, m.ReadAt(ctx, make([]byte, 10), 0))

	require.NoError(t, upper.Close())
	require.NoError(t, mem.ReadAt(ctx, make([]byte, 1), 0), "the server does not close nodes it was given")
	require.NoError(t, remote.ReadAt(ctx, make([]byte, 1), 0))
	require.NoError(t, remote.Close())
	require.NoError(t, <-ran)
}

func TestExportNames(t *testing.T) {
	ctx := testkit.Context(t, 30*time.Second)
	a, b := testkit.Image(t, "disk.img", mib), testkit.Image(t, "disk.img", 2*mib)
	srv := startServer(t, export.Config{Exports: []export.ExportConfig{
		{Name: "a", Path: a, Description: "first"},
		{Name: "b", Path: b, ReadOnly: true},
	}})
	ca := dial(t, srv.Addr, nbd.ClientOptions{ExportName: "a"})
	cb := dial(t, srv.Addr, nbd.ClientOptions{ExportName: "b"})
	require.Equal(t, int64(mib), ca.Size())
	require.Equal(t, int64(2*mib), cb.Size())
	require.Zero(t, ca.Info().Flags&nbd.FlagReadOnly)
	require.NotZero(t, cb.Info().Flags&nbd.FlagReadOnly)
	require.Zero(t, cb.Info().Flags&nbd.FlagSendTrim, "no trim on a read-only export")
	require.ErrorIs(t, cb.WriteAt(ctx, []byte{1}, 0, 0), nbd.ErrUnsupported)
	require.NoError(t, cb.ReadAt(ctx, make([]byte, 10), 0))

	for _, name := range []string{"nope", ""} {
		_, err := nbd.Dial(ctx, "tcp", srv.Addr, nbd.ClientOptions{ExportName: name})
		var oe *nbd.OptionError
		require.ErrorAs(t, err, &oe, "export %q", name)
		require.Equal(t, nbd.RepErrUnknown, oe.Reply)
		require.Contains(t, oe.Message, `no export named "`+name+`"`)
	}
}

func TestAccessRules(t *testing.T) {
	ctx := testkit.Context(t, 30*time.Second)
	acl, err := export.ParseACL("127.0.0.2/32=rw,127.0.0.0/8=ro,127.0.0.4=rw")
	require.NoError(t, err)
	only2, err := export.ParseACL("127.0.0.2/32=rw")
	require.NoError(t, err)
	srv := startServer(t, export.Config{Exports: []export.ExportConfig{
		{Name: "open", Path: testkit.Image(t, "disk.img", mib)},
		{Name: "acl", Path: testkit.Image(t, "disk.img", mib), Allow: acl},
		{Name: "only2", Path: testkit.Image(t, "disk.img", mib), Allow: only2},
		{Name: "ro", Path: testkit.Image(t, "disk.img", mib), Allow: acl, ReadOnly: true},
	}})
	for _, tc := range []struct {
		src, export string
		want        nbd.Access
	}{
		{"127.0.0.1", "open", nbd.AccessReadWrite},
		{"127.0.0.2", "acl", nbd.AccessReadWrite},
		{"127.0.0.3", "acl", nbd.AccessReadOnly},
		{"127.0.0.1", "acl", nbd.AccessReadOnly},
		{"127.0.0.2", "only2", nbd.AccessReadWrite},
		{"127.0.0.1", "only2", nbd.AccessDenied},
		{"127.0.0.3", "only2", nbd.AccessDenied},
		{"127.0.0.4", "ro", nbd.AccessReadOnly}, // ReadOnly overrides rw
	} {
		t.Run(tc.src+"/"+tc.export, func(t *testing.T) {
			c, err := dialFrom(ctx, tc.src, srv.Addr, nbd.ClientOptions{ExportName: tc.export})
			if tc.want == nbd.AccessDenied {
				var oe *nbd.OptionError
				require.ErrorAs(t, err, &oe)
				require.Equal(t, nbd.RepErrPolicy, oe.Reply)
				require.Equal(t, `peer `+tc.src+` is not allowed to use export "`+tc.export+`"`, oe.Message)
				return
			}
			require.NoError(t, err)
			defer c.Close()
			ro := c.Info().Flags&nbd.FlagReadOnly != 0
			require.Equal(t, tc.want == nbd.AccessReadOnly, ro, "flags %v", c.Info().Flags)
			if !ro {
				require.NoError(t, c.WriteAt(ctx, []byte("x"), 0, nbd.CmdFlagFUA))
			}
		})
	}
	require.Eventually(t, func() bool { return strings.Contains(srv.Log.String(), `msg="peer refused"`) },
		10*time.Second, 10*time.Millisecond, "refusals are logged")
}

func TestShutdownWithClients(t *testing.T) {
	p := testkit.Image(t, "disk.img", mib)
	srv, err := export.New(export.Config{Listen: "127.0.0.1:0", ShutdownTimeout: 10 * time.Second,
		Exports: []export.ExportConfig{{Name: "d", Path: p}}})
	require.NoError(t, err)
	defer srv.Close()
	ln, err := srv.Listen(context.Background())
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()

	c := dial(t, ln.Addr().String(), nbd.ClientOptions{})
	wctx := testkit.Context(t, 10*time.Second)
	require.NoError(t, c.WriteAt(wctx, pattern(1, 4096), 0, 0))

	start := time.Now()
	cancel()
	select {
	case err := <-served:
		require.NoError(t, err, "a drained shutdown is not an error")
	case <-time.After(8 * time.Second):
		t.Fatal("Serve did not return within 8 s of its context ending with an idle client")
	}
	require.Less(t, time.Since(start), 5*time.Second, "an idle client does not hold the shutdown")
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the client's connection stayed open after shutdown")
	}
	require.ErrorIs(t, srv.Serve(context.Background(), ln), export.ErrServerClosed)
	_, err = net.DialTimeout("tcp", ln.Addr().String(), time.Second)
	require.Error(t, err, "the listener is closed")
}

func TestMaxConns(t *testing.T) {
	ctx := testkit.Context(t, 20*time.Second)
	srv := startServer(t, export.Config{MaxConns: 1, Exports: []export.ExportConfig{{Name: "d", Path: testkit.Image(t, "disk.img", mib)}}})
	c := dial(t, srv.Addr, nbd.ClientOptions{})
	_, err := nbd.Dial(ctx, "tcp", srv.Addr, nbd.ClientOptions{})
	require.Error(t, err, "a second connection is closed at accept")
	require.NoError(t, c.Close())
	require.Eventually(t, func() bool {
		c2, err := nbd.Dial(ctx, "tcp", srv.Addr, nbd.ClientOptions{})
		if err != nil {
			return false
		}
		c2.Close()
		return true
	}, 10*time.Second, 20*time.Millisecond, "the slot frees when the first client leaves")
}

func TestNewErrors(t *testing.T) {
	img := testkit.Image(t, "disk.img", mib)
	missing := filepath.Join(t.TempDir(), "missing.img")
	for _, tc := range []struct {
		name    string
		cfg     export.Config
		wantErr error
		text    string
	}{
		{"no export", export.Config{}, export.ErrConfig, "no export"},
		{"duplicate", export.Config{Exports: []export.ExportConfig{{Name: "x", Path: img}, {Name: "x", Path: img}}}, export.ErrConfig, `two exports named "x"`},
		{"no path", export.Config{Exports: []export.ExportConfig{{Name: "x"}}}, export.ErrConfig, `export "x" has no path`},
		{"node and path", export.Config{Exports: []export.ExportConfig{{Name: "x", Path: img, Node: node.NewMemory(512)}}}, export.ErrConfig, `export "x" has a node and a path`},
		{"TLS required without TLS", export.Config{TLSRequired: true, Exports: []export.ExportConfig{{Name: "x", Path: img}}}, export.ErrConfig, "TLS"},
		{"missing file", export.Config{Exports: []export.ExportConfig{{Name: "x", Path: img}, {Name: "y", Path: missing}}}, os.ErrNotExist, missing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := export.New(tc.cfg)
			require.ErrorIs(t, err, tc.wantErr)
			require.Contains(t, err.Error(), tc.text)
		})
	}
	srv, err := export.New(export.Config{Exports: []export.ExportConfig{{Name: "x", Path: img}}})
	require.NoError(t, err)
	_, err = srv.Listen(context.Background())
	require.ErrorIs(t, err, export.ErrConfig, "Listen needs an address")
	require.NoError(t, srv.Close())
	require.NoError(t, srv.Close(), "Close twice")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	require.True(t, errors.Is(srv.Serve(context.Background(), ln), export.ErrServerClosed))
}
