// Real third-party NBD clients — nbdinfo, qemu-io, nbdcopy and fio's nbd
// engine — see the right size and flags, write and read back patterns
// (unaligned and multi-MiB), copy images byte-identically, pass fio's
// verification, get zeroes after TRIM and WRITE_ZEROES, and are refused
// writes, peers and unknown names as configured, run against in-process
// export servers on random loopback ports.
package export_test

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"dst/internal/testkit"
	"dst/storage/export"
	"dst/storage/node"
)

// nbdinfoExport is the part of `nbdinfo --json` output the tests check.
type nbdinfoExport struct {
	Name         string `json:"export-name"`
	Size         int64  `json:"export-size"`
	ReadOnly     bool   `json:"is_read_only"`
	CanFlush     bool   `json:"can_flush"`
	CanFUA       bool   `json:"can_fua"`
	CanTrim      bool   `json:"can_trim"`
	CanZero      bool   `json:"can_zero"`
	CanFastZero  bool   `json:"can_fast_zero"`
	CanCache     bool   `json:"can_cache"`
	CanMultiConn bool   `json:"can_multi_conn"`
	MinBlock     int    `json:"block_size_minimum"`
	MaxBlock     int    `json:"block_size_maximum"`
}

// nbdinfo runs `nbdinfo --json uri` and returns its only export.
func nbdinfo(t *testing.T, uri string) (nbdinfoExport, bool) {
	t.Helper()
	out := mustRunTool(t, "nbdinfo", "--json", uri)
	var info struct {
		TLS     bool            `json:"TLS"`
		Exports []nbdinfoExport `json:"exports"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &info), out)
	require.Len(t, info.Exports, 1, out)
	return info.Exports[0], info.TLS
}

func nbdURI(srv *testServer, name string) string {
	return fmt.Sprintf("nbd://127.0.0.1:%s/%s", srv.Port, name)
}

func sha256File(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	require.NoError(t, err)
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	require.NoError(t, err)
	return hex.EncodeToString(h.Sum(nil))
}

// qemuIO runs qemu-io on a raw NBD URI with one -c per command.
func qemuIO(t *testing.T, uri string, cmds ...string) (string, error) {
	t.Helper()
	args := []string{"-f", "raw", uri}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	return runTool(t, nil, "qemu-io", args...)
}

func TestNbdinfoFlags(t *testing.T) {
	testkit.Need(t, "nbdinfo")
	srv := startServer(t, export.Config{Exports: []export.ExportConfig{
		{Name: "rw", Path: testkit.Image(t, "disk.img", 64*mib)},
		{Name: "ro", Path: testkit.Image(t, "disk.img", 3*mib), ReadOnly: true},
	}})
	rw, tls := nbdinfo(t, nbdURI(srv, "rw"))
	require.False(t, tls)
	require.Equal(t, nbdinfoExport{Name: "rw", Size: 64 * mib, CanFlush: true, CanFUA: true, CanTrim: true,
		CanZero: true, CanFastZero: true, CanCache: true, CanMultiConn: true, MinBlock: 1, MaxBlock: 32 * mib}, rw)

	ro, _ := nbdinfo(t, nbdURI(srv, "ro"))
	require.Equal(t, int64(3*mib), ro.Size)
	require.True(t, ro.ReadOnly)
	require.False(t, ro.CanTrim)
	require.False(t, ro.CanZero)
}

func TestQemuIO(t *testing.T) {
	testkit.Need(t, "qemu-io")
	p := testkit.Image(t, "disk.img", 32*mib)
	srv := startServer(t, export.Config{Exports: []export.ExportConfig{{Name: "d", Path: p}}})
	uri := nbdURI(srv, "")
	out := mustRunTool(t, "qemu-io", "-f", "raw", uri,
		"-c", "write -P 0xab 0 1M",
		"-c", "read -P 0xab 0 1M",
		"-c", "write -P 0x5a 4097 3000",
		"-c", "read -P 0x5a 4097 3000",
		"-c", "read -P 0xab 0 4097",
		"-c", "read -P 0xab 7097 1000",
		"-c", "write -P 0x3c 8M 8M",
		"-c", "read -P 0x3c 8M 8M",
		"-c", "write -f -P 0x11 20M 64k", // FUA
		"-c", "flush",
		"-c", "read -P 0x11 20M 64k",
		"-c", "discard 0 64k",
		"-c", "read -P 0 0 64k",
		"-c", "write -z 8M 1M", // WRITE_ZEROES with NO_HOLE
		"-c", "read -P 0 8M 1M",
		"-c", "write -z -u 9M 1M", // WRITE_ZEROES that may punch
		"-c", "read -P 0 9M 1M",
		"-c", "read -P 0x3c 10M 6M",
	)
	require.NotContains(t, out, "Pattern verification failed", out)

	disk, err := os.ReadFile(p)
	require.NoError(t, err)
	require.Equal(t, make([]byte, 64<<10), disk[:64<<10], "the discarded range is zero in the file")
	require.Equal(t, pattern(0xab, 1<<20-64<<10), disk[64<<10:1<<20])
	require.Equal(t, pattern(0x3c, 6*mib), disk[10*mib:16*mib])
	require.Equal(t, pattern(0x11, 64<<10), disk[20*mib:20*mib+64<<10])

	// qemu-io exits 0 even when a pattern does not match; make sure a
	// mismatch would be seen.
	out, _ = qemuIO(t, uri, "read -P 0x99 20M 4k")
	require.Contains(t, out, "Pattern verification failed", "a wrong pattern is reported")
}

func TestNbdcopy(t *testing.T) {
	testkit.Need(t, "nbdcopy")
	src := randomFile(t, 32*mib)
	img := testkit.Image(t, "disk.img", 32*mib)
	srv := startServer(t, export.Config{Exports: []export.ExportConfig{{Name: "d", Path: img}}})
	mustRunTool(t, "nbdcopy", src, nbdURI(srv, "d"))
	require.Equal(t, sha256File(t, src), sha256File(t, img), "copied in byte for byte")

	out := filepath.Join(t.TempDir(), "out.img")
	mustRunTool(t, "nbdcopy", nbdURI(srv, "d"), out)
	require.Equal(t, sha256File(t, src), sha256File(t, out), "copied out byte for byte")
}

// nbdcopy reads the digest export beside an export: the CRC-32C of each
// 4 KiB block of the data, big-endian, as the test computes them; nbdinfo
// --list shows only the export itself, and a lone export still answers to
// the default name.
func TestDigestExport(t *testing.T) {
	testkit.Need(t, "nbdcopy", "nbdinfo")
	const size = 3*mib + 1000
	src := randomFile(t, size)
	srv := startServer(t, export.Config{Exports: []export.ExportConfig{{Name: "d", Path: src}}})
	out := filepath.Join(t.TempDir(), "digests")
	mustRunTool(t, "nbdcopy", nbdURI(srv, "d"+node.DigestSuffix), out)
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	data, err := os.ReadFile(src)
	require.NoError(t, err)
	want := make([]byte, 0, len(got))
	for off := 0; off < len(data); off += node.DigestBlock {
		want = binary.BigEndian.AppendUint32(want, node.Digest(data[off:min(off+node.DigestBlock, len(data))]))
	}
	require.Equal(t, want, got)
	alias := filepath.Join(t.TempDir(), "digests-of-default")
	mustRunTool(t, "nbdcopy", nbdURI(srv, node.DigestSuffix), alias)
	got, err = os.ReadFile(alias)
	require.NoError(t, err)
	require.Equal(t, want, got, "the lone export's digests answer to the default name's too")
	list := mustRunTool(t, "nbdinfo", "--list", "--json", nbdURI(srv, ""))
	require.NotContains(t, list, node.DigestSuffix, "the digest export is not listed")
	require.Contains(t, mustRunTool(t, "nbdinfo", "--size", nbdURI(srv, "")), fmt.Sprint(size), "the lone export answers to the default name")
	_, err = runTool(t, nil, "nbdcopy", src, nbdURI(srv, "d"+node.DigestSuffix))
	require.Error(t, err, "the digest export is read-only")
}

func TestFio(t *testing.T) {
	testkit.Need(t, "fio")
	srv := startServer(t, export.Config{Exports: []export.ExportConfig{{Name: "d", Path: testkit.Image(t, "disk.img", 16*mib)}}})
	out := mustRunTool(t, "fio", "--name=verify", "--ioengine=nbd", "--uri="+nbdURI(srv, "d"),
		"--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=16M",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--output-format=json")
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Write struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"write"`
			Read struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"read"`
		} `json:"jobs"`
	}
	// fio may print notes before the JSON document.
	require.NoError(t, json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &res), out)
	require.Len(t, res.Jobs, 1)
	require.Zero(t, res.Jobs[0].Error, out)
	require.Equal(t, int64(16*mib), res.Jobs[0].Write.IOBytes, "every block written")
	require.Equal(t, int64(16*mib), res.Jobs[0].Read.IOBytes, "every block read back and verified")
	require.NotContains(t, out, "verify: bad", out)
}

func TestReadOnlyExportRefusesWrites(t *testing.T) {
	testkit.Need(t, "qemu-io", "nbdinfo")
	p := testkit.Image(t, "disk.img", mib)
	require.NoError(t, os.WriteFile(p, pattern(0x42, mib), 0o644))
	srv := startServer(t, export.Config{Exports: []export.ExportConfig{{Name: "d", Path: p, ReadOnly: true}}})
	info, _ := nbdinfo(t, nbdURI(srv, "d"))
	require.True(t, info.ReadOnly)

	out, err := qemuIO(t, nbdURI(srv, "d"), "write -P 0x1 0 4k")
	require.Error(t, err, out)
	require.Contains(t, out, "Permission denied", out)
	out, _ = runTool(t, nil, "qemu-io", "-r", "-f", "raw", nbdURI(srv, "d"), "-c", "read -P 0x42 0 1M", "-c", "write -P 0x1 0 4k")
	require.Contains(t, out, "read 1048576/1048576", out)
	require.NotContains(t, out, "wrote", out)
	disk, err := os.ReadFile(p)
	require.NoError(t, err)
	require.Equal(t, pattern(0x42, mib), disk, "the file is unchanged")
}

func TestDisallowedPeer(t *testing.T) {
	testkit.Need(t, "qemu-io", "nbdinfo")
	acl, err := export.ParseACL("127.0.0.2/32=rw")
	require.NoError(t, err)
	srv := startServer(t, export.Config{Exports: []export.ExportConfig{{Name: "x", Path: testkit.Image(t, "disk.img", mib), Allow: acl}}})
	const msg = `peer 127.0.0.1 is not allowed to use export "x"`

	// libnbd 1.14 tells the server's message only in its debug output.
	out, err := runTool(t, []string{"LIBNBD_DEBUG=1"}, "nbdinfo", nbdURI(srv, "x"))
	require.Error(t, err, out)
	require.Contains(t, out, "server error message: "+msg, out)

	out, err = qemuIO(t, nbdURI(srv, "x"), "read 0 4k")
	require.Error(t, err, out)
	require.Contains(t, out, "server reported: "+msg, out)
}

func TestUnknownExport(t *testing.T) {
	testkit.Need(t, "qemu-io", "nbdinfo")
	srv := startServer(t, export.Config{Exports: []export.ExportConfig{{Name: "x", Path: testkit.Image(t, "disk.img", mib)}}})
	out, err := runTool(t, nil, "nbdinfo", nbdURI(srv, "nope"))
	require.Error(t, err, out)
	require.Contains(t, out, "for export: nope", out)
	out, err = qemuIO(t, nbdURI(srv, "nope"), "read 0 4k")
	require.Error(t, err, out)
	require.Contains(t, out, `server reported: no export named "nope"`, out)
}

// mapEntry is one line of `nbdinfo --map --json`.
type mapEntry struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
	Type   int   `json:"type"`
}

// sparseImage writes random data at the given 64 KiB-aligned runs of a
// new sparse file of size bytes and returns its path.
func sparseImage(t *testing.T, size int64, runs [][2]int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sparse.img")
	f, err := os.Create(p)
	require.NoError(t, err)
	defer f.Close()
	require.NoError(t, f.Truncate(size))
	rng := rand.New(rand.NewPCG(1, 2))
	for _, r := range runs {
		b := make([]byte, r[1])
		for i := range b {
			b[i] = byte(rng.Uint32()) | 1
		}
		_, err := f.WriteAt(b, r[0])
		require.NoError(t, err)
	}
	return p
}

// nbdinfo --map, nbdinfo --map --totals and qemu-img map see exactly the
// data written to a sparse file, and nbdcopy copies it to a sparse file
// byte for byte (block status lets it skip the holes).
func TestBlockStatusInterop(t *testing.T) {
	testkit.Need(t, "nbdinfo", "qemu-img", "nbdcopy")
	const size = 64 * mib
	runs := [][2]int64{{3 * mib, 2 * mib}, {20 * mib, 192 << 10}, {size - 64<<10, 64 << 10}}
	img := sparseImage(t, size, runs)
	srv := startServer(t, export.Config{Exports: []export.ExportConfig{{Name: "d", Path: img}}})
	uri := nbdURI(srv, "d")

	var want []mapEntry
	at := int64(0)
	for _, r := range runs {
		if r[0] > at {
			want = append(want, mapEntry{Offset: at, Length: r[0] - at, Type: 3})
		}
		want = append(want, mapEntry{Offset: r[0], Length: r[1], Type: 0})
		at = r[0] + r[1]
	}
	var got []mapEntry
	require.NoError(t, json.Unmarshal([]byte(mustRunTool(t, "nbdinfo", "--map", "--json", uri)), &got))
	require.Equal(t, want, got, "nbdinfo --map")

	totals := mustRunTool(t, "nbdinfo", "--map", "--totals", uri)
	require.Regexp(t, `(?m)^\s*`+fmt.Sprint(2*mib+256<<10)+`\s+\S+%\s+0\s+data$`, totals)

	var qmap []struct {
		Start  int64 `json:"start"`
		Length int64 `json:"length"`
		Data   bool  `json:"data"`
		Zero   bool  `json:"zero"`
	}
	require.NoError(t, json.Unmarshal([]byte(mustRunTool(t, "qemu-img", "map", "--output=json", uri)), &qmap))
	require.Len(t, qmap, len(want))
	for i, q := range qmap {
		require.Equal(t, want[i].Offset, q.Start, "qemu-img map entry %d", i)
		require.Equal(t, want[i].Length, q.Length, "qemu-img map entry %d", i)
		require.Equal(t, want[i].Type == 0, q.Data, "qemu-img map entry %d", i)
		require.Equal(t, want[i].Type == 3, q.Zero, "qemu-img map entry %d", i)
	}

	out := filepath.Join(t.TempDir(), "copy.img")
	mustRunTool(t, "nbdcopy", uri, out)
	require.Equal(t, sha256File(t, img), sha256File(t, out), "copied byte for byte")
	var st unix.Stat_t
	require.NoError(t, unix.Stat(out, &st))
	require.Less(t, st.Blocks*512, int64(4*mib), "the copy is sparse: %d bytes allocated for %d of data", st.Blocks*512, 2*mib+256<<10)
}
