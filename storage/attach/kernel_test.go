// The kernel NBD path is checked as far as a machine without the nbd
// driver allows: the ioctl numbers equal those of the installed
// <linux/nbd.h>, the flags handed to NBD_SET_FLAGS are table-tested, the
// driver detection names what is missing, ModeAuto picks the FUSE path
// and ModeKernel fails clearly here, and the handshake runs against the
// real nbd.Server over a real socket pair, after which the socket — as
// the driver would get it — carries raw NBD requests.
package attach

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"dst/internal/testkit"
	"dst/storage/nbd"
	"dst/storage/node"
)

func TestIoctlNumbersMatchKernelHeader(t *testing.T) {
	const header = "/usr/include/linux/nbd.h"
	f, err := os.Open(header)
	if err != nil {
		t.Skipf("needs %s (apt-get install linux-libc-dev): %v", header, err)
	}
	defer f.Close()
	want := map[string]uintptr{
		"NBD_SET_SOCK": ioctlSetSock, "NBD_SET_BLKSIZE": ioctlSetBlkSize, "NBD_SET_SIZE": ioctlSetSize,
		"NBD_DO_IT": ioctlDoIt, "NBD_CLEAR_SOCK": ioctlClearSock, "NBD_CLEAR_QUE": ioctlClearQue,
		"NBD_SET_SIZE_BLOCKS": ioctlSetSizeBlocks, "NBD_DISCONNECT": ioctlDisconnect,
		"NBD_SET_TIMEOUT": ioctlSetTimeout, "NBD_SET_FLAGS": ioctlSetFlags,
	}
	re := regexp.MustCompile(`^#define\s+(NBD_\w+)\s+_IO\(\s*0x([0-9a-f]+)\s*,\s*(\d+)\s*\)`)
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := re.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		typ, _ := strconv.ParseUint(m[2], 16, 8)
		nr, _ := strconv.ParseUint(m[3], 10, 8)
		if v, ok := want[m[1]]; ok {
			require.Equal(t, uintptr(typ<<8|nr), v, m[1])
			seen[m[1]] = true
		}
	}
	require.Len(t, seen, len(want), "every ioctl found in %s", header)
}

func TestKernelFlags(t *testing.T) {
	all := nbd.FlagSendFlush | nbd.FlagSendFUA | nbd.FlagSendTrim | nbd.FlagSendWriteZero
	for _, tc := range []struct {
		name     string
		in       nbd.TransmissionFlags
		readOnly bool
		want     nbd.TransmissionFlags
	}{
		{"none", 0, false, nbd.FlagHasFlags},
		{"memory node", node.MemoryFlags | nbd.FlagHasFlags, false,
			nbd.FlagHasFlags | all | nbd.FlagCanMultiConn},
		{"read-only attachment drops trim and zeroes", nbd.FlagHasFlags | all, true,
			nbd.FlagHasFlags | nbd.FlagReadOnly | nbd.FlagSendFlush | nbd.FlagSendFUA},
		{"read-only export", nbd.FlagHasFlags | nbd.FlagReadOnly | nbd.FlagSendFlush, false,
			nbd.FlagHasFlags | nbd.FlagReadOnly | nbd.FlagSendFlush},
		{"unknown to the driver: cache, fast zero, DF, resize", nbd.FlagSendCache | nbd.FlagSendFastZero | nbd.FlagSendDF | nbd.FlagSendResize, false,
			nbd.FlagHasFlags},
		{"rotational passes", nbd.FlagRotational, false, nbd.FlagHasFlags | nbd.FlagRotational},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, nbd.TransmissionFlags(kernelFlags(tc.in, tc.readOnly)))
		})
	}
}

func TestKernelDriverDetection(t *testing.T) {
	root := t.TempDir()
	err := kernelNBDAvailable(root)
	require.ErrorIs(t, err, ErrNoNBDDriver)
	require.Contains(t, err.Error(), "no nbd driver (no /sys/module/nbd")
	require.NoError(t, os.MkdirAll(filepath.Join(root, "sys/module/nbd"), 0o755))
	require.NoError(t, kernelNBDAvailable(root))

	root = t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(root, "dev"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "dev/nbd0"), nil, 0o644))
	require.NoError(t, kernelNBDAvailable(root))
}

func TestModesWithoutTheDriver(t *testing.T) {
	if KernelNBDAvailable() == nil {
		t.Skip("this kernel has the nbd driver: the test is for machines without it")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := Attach(ctx, node.NewMemory(1<<20), Options{Mode: ModeKernel})
	require.ErrorIs(t, err, ErrNoNBDDriver)
	require.Contains(t, err.Error(), "no nbd driver (no /sys/module/nbd")

	testkit.NeedAttach(t)
	_, a := attachMemory(t, 1<<20, Options{})
	require.Equal(t, ModeFUSE, a.Mode(), "ModeAuto picks FUSE without the driver")
}

func TestParseMode(t *testing.T) {
	for _, m := range []Mode{ModeAuto, ModeFUSE, ModeKernel} {
		got, err := ParseMode(m.String())
		require.NoError(t, err)
		require.Equal(t, m, got)
	}
	_, err := ParseMode("nbd")
	require.ErrorContains(t, err, `mode "nbd": want auto, fuse or kernel`)
}

// TestHandshakeLeavesSocketForTheDriver runs the kernel path up to the
// ioctls: the node served on one end of a socket pair, the handshake on
// the other, then raw NBD requests as the driver would send them on that
// end, now blocking again.
func TestHandshakeLeavesSocketForTheDriver(t *testing.T) {
	mem := node.NewMemory(1 << 20)
	require.NoError(t, mem.WriteAt(context.Background(), []byte("kernel"), 4096, 0))
	srv, err := nbd.NewServer(nbd.ServerOptions{Exports: []*nbd.Export{{Name: "dst0", Size: mem.Size(), Flags: mem.Flags(), Backend: mem}}})
	require.NoError(t, err)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	kernelEnd := os.NewFile(uintptr(fds[0]), "kernel")
	defer kernelEnd.Close()
	serverFile := os.NewFile(uintptr(fds[1]), "server")
	serverConn, err := net.FileConn(serverFile)
	serverFile.Close()
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- srv.ServeConn(ctx, serverConn) }()

	info, err := handshakeFile(ctx, kernelEnd, "dst0")
	require.NoError(t, err)
	require.Equal(t, int64(1<<20), info.Size)
	require.NotZero(t, info.Flags&nbd.FlagSendFlush)
	flags, err := unix.FcntlInt(kernelEnd.Fd(), unix.F_GETFL, 0)
	require.NoError(t, err)
	require.Zero(t, flags&unix.O_NONBLOCK, "the driver gets a blocking socket")

	// A read and a flush, as the driver sends them (simple replies).
	hdr := make([]byte, 28)
	nbd.EncodeRequest(hdr, &nbd.Request{Cmd: nbd.CmdRead, Cookie: 1, Offset: 4096, Length: 6})
	_, err = kernelEnd.Write(hdr)
	require.NoError(t, err)
	reply := make([]byte, 16+6)
	_, err = io.ReadFull(kernelEnd, reply)
	require.NoError(t, err)
	require.Equal(t, uint32(0x67446698), binary.BigEndian.Uint32(reply), "simple reply magic")
	require.Zero(t, binary.BigEndian.Uint32(reply[4:]), "no error")
	require.Equal(t, "kernel", string(reply[16:]))
	nbd.EncodeRequest(hdr, &nbd.Request{Cmd: nbd.CmdFlush, Cookie: 2})
	_, err = kernelEnd.Write(hdr)
	require.NoError(t, err)
	_, err = io.ReadFull(kernelEnd, reply[:16])
	require.NoError(t, err)
	require.Equal(t, uint64(2), binary.BigEndian.Uint64(reply[8:]))
	require.Equal(t, 1, mem.Flushes())
	nbd.EncodeRequest(hdr, &nbd.Request{Cmd: nbd.CmdDisc, Cookie: 3})
	_, err = kernelEnd.Write(hdr)
	require.NoError(t, err)
	select {
	case err := <-served:
		require.NoError(t, err, "a clean disconnect")
	case <-ctx.Done():
		t.Fatal("the server did not end after NBD_CMD_DISC")
	}
}
