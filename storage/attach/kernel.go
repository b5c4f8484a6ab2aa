package attach

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"dst/storage/nbd"
	"dst/storage/node"
)

// DefaultKernelTimeout is the kernel NBD driver's request timeout unless
// Options say otherwise.
const DefaultKernelTimeout = 60 * time.Second

// ErrNoNBDDriver means this kernel has no nbd driver.
var ErrNoNBDDriver = errors.New("no nbd driver (no /sys/module/nbd, no /dev/nbd0; try modprobe nbd)")

// The NBD ioctls of <linux/nbd.h>: _IO(0xab, n). They match
// github.com/pojntfx/go-nbd/pkg/ioctl (which lacks NBD_SET_FLAGS and
// NBD_SET_SIZE); a test compares them with the installed kernel header.
const (
	ioctlSetSock       = 0xab<<8 | 0
	ioctlSetBlkSize    = 0xab<<8 | 1
	ioctlSetSize       = 0xab<<8 | 2
	ioctlDoIt          = 0xab<<8 | 3
	ioctlClearSock     = 0xab<<8 | 4
	ioctlClearQue      = 0xab<<8 | 5
	ioctlSetSizeBlocks = 0xab<<8 | 7
	ioctlDisconnect    = 0xab<<8 | 8
	ioctlSetTimeout    = 0xab<<8 | 9
	ioctlSetFlags      = 0xab<<8 | 10
)

// kernelBlockBytes is the block size given to the driver: 512, like the
// loop device of the FUSE path, so a file system moves between the two.
const kernelBlockBytes = 512

// kernelKnownFlags are the transmission flags the nbd driver acts on.
const kernelKnownFlags = nbd.FlagHasFlags | nbd.FlagReadOnly | nbd.FlagSendFlush | nbd.FlagSendFUA |
	nbd.FlagRotational | nbd.FlagSendTrim | nbd.FlagSendWriteZero | nbd.FlagCanMultiConn

// KernelNBDAvailable returns nil where the kernel has the nbd driver
// (/sys/module/nbd or /dev/nbd0 exists), else an error wrapping
// ErrNoNBDDriver.
func KernelNBDAvailable() error { return kernelNBDAvailable("/") }

// kernelNBDAvailable is KernelNBDAvailable under root.
func kernelNBDAvailable(root string) error {
	for _, p := range []string{"sys/module/nbd", "dev/nbd0"} {
		if _, err := os.Stat(filepath.Join(root, p)); err == nil {
			return nil
		}
	}
	return ErrNoNBDDriver
}

// kernelFlags returns the NBD_SET_FLAGS argument for an export whose
// handshake announced f: what the driver acts on, with READ_ONLY added
// for a read-only attachment.
func kernelFlags(f nbd.TransmissionFlags, readOnly bool) uintptr {
	f = f&kernelKnownFlags | nbd.FlagHasFlags
	if readOnly {
		f |= nbd.FlagReadOnly
	}
	if f&nbd.FlagReadOnly != 0 {
		f &^= nbd.FlagSendTrim | nbd.FlagSendWriteZero
	}
	return uintptr(f)
}

// kernelLink is a node connected to /dev/nbdX: the node is served by an
// nbd.Server on one end of a socket pair whose other end the driver owns.
type kernelLink struct {
	dev     *os.File // /dev/nbdX
	sock    *os.File // the driver's end
	cancel  context.CancelFunc
	doIt    chan error // NBD_DO_IT's result
	served  chan error // ServeConn's result
	log     *slog.Logger
	closeMu sync.Mutex
}

// attachKernel connects dev to a free /dev/nbdX.
func attachKernel(ctx context.Context, dev node.Node, opts Options, log *slog.Logger) (*Attachment, error) {
	size := dev.Size()
	if size%kernelBlockBytes != 0 {
		log.Warn("size is not a multiple of the block size; the tail is not attached", "size", size, "block", kernelBlockBytes)
	}
	flags := dev.Flags()
	if opts.ReadOnly {
		flags |= nbd.FlagReadOnly
	}
	srv, err := nbd.NewServer(nbd.ServerOptions{
		Exports: []*nbd.Export{{Name: opts.Name, Size: size, Flags: flags, Backend: dev}},
		Logger:  log,
	})
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", dev, err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("attach %s: socket pair: %w", dev, err)
	}
	kernelEnd := os.NewFile(uintptr(fds[0]), "nbd-kernel")
	serverEnd := os.NewFile(uintptr(fds[1]), "nbd-server")
	serverConn, err := net.FileConn(serverEnd)
	serverEnd.Close()
	if err != nil {
		kernelEnd.Close()
		return nil, fmt.Errorf("attach %s: %w", dev, err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	link := &kernelLink{sock: kernelEnd, cancel: cancel, doIt: make(chan error, 1), served: make(chan error, 1), log: log}
	go func() { link.served <- srv.ServeConn(sctx, serverConn) }()
	fail := func(err error) (*Attachment, error) {
		cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer ccancel()
		return nil, errors.Join(fmt.Errorf("attach %s: %w", dev, err), link.close(cctx))
	}
	info, err := handshakeFile(ctx, kernelEnd, opts.Name)
	if err != nil {
		return fail(err)
	}
	path, nbdDev, err := connectFree(kernelEnd, info, opts, log)
	if err != nil {
		return fail(err)
	}
	link.dev = nbdDev
	go func() {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, nbdDev.Fd(), ioctlDoIt, 0)
		if errno != 0 {
			link.doIt <- fmt.Errorf("NBD_DO_IT: %w", errno)
			return
		}
		link.doIt <- nil
	}()
	log.Info("attached", "device", path, "size", info.Size, "flags", nbd.TransmissionFlags(kernelFlags(info.Flags, opts.ReadOnly)))
	return &Attachment{device: path, mode: ModeKernel, log: log, kernel: link}, nil
}

// handshakeFile runs the client handshake on a duplicate of f, leaving f
// itself blocking and ready for the driver.
func handshakeFile(ctx context.Context, f *os.File, name string) (nbd.ExportInfo, error) {
	c, err := net.FileConn(f)
	if err != nil {
		return nbd.ExportInfo{}, err
	}
	info, _, err := nbd.Negotiate(ctx, c, nbd.ClientOptions{ExportName: name})
	c.Close()
	if err != nil {
		return info, err
	}
	// The duplicate shared the file status flags: make them blocking again.
	if err := unix.SetNonblock(int(f.Fd()), false); err != nil {
		return info, fmt.Errorf("socket: %w", err)
	}
	return info, nil
}

// connectFree configures the first free /dev/nbdX with sock and info.
func connectFree(sock *os.File, info nbd.ExportInfo, opts Options, log *slog.Logger) (string, *os.File, error) {
	timeout := opts.KernelTimeout
	if timeout <= 0 {
		timeout = DefaultKernelTimeout
	}
	paths, err := filepath.Glob("/dev/nbd[0-9]*")
	if err != nil || len(paths) == 0 {
		return "", nil, fmt.Errorf("%w: no /dev/nbd* device", ErrNoNBDDriver)
	}
	var tried []string
	for _, path := range paths {
		if _, err := os.Stat(filepath.Join("/sys/block", filepath.Base(path), "pid")); err == nil {
			continue // connected
		}
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s: %v", path, err))
			continue
		}
		err = configure(f.Fd(), sock.Fd(), info, timeout, opts.ReadOnly)
		if errors.Is(err, unix.EBUSY) {
			f.Close()
			continue // taken meanwhile
		}
		if err != nil {
			_, _, _ = unix.Syscall(unix.SYS_IOCTL, f.Fd(), ioctlClearSock, 0)
			f.Close()
			return "", nil, fmt.Errorf("%s: %w", path, err)
		}
		log.Debug("nbd device configured", "device", path)
		return path, f, nil
	}
	return "", nil, fmt.Errorf("no free /dev/nbd device (%s)", strings.Join(tried, "; "))
}

// configure runs the ioctls that hand sock to the driver.
func configure(dev, sock uintptr, info nbd.ExportInfo, timeout time.Duration, readOnly bool) error {
	steps := []struct {
		name string
		req  uintptr
		arg  uintptr
	}{
		{"NBD_SET_SOCK", ioctlSetSock, sock},
		{"NBD_SET_BLKSIZE", ioctlSetBlkSize, kernelBlockBytes},
		{"NBD_SET_SIZE_BLOCKS", ioctlSetSizeBlocks, uintptr(info.Size / kernelBlockBytes)},
		{"NBD_SET_TIMEOUT", ioctlSetTimeout, uintptr(max(1, timeout/time.Second))},
		{"NBD_SET_FLAGS", ioctlSetFlags, kernelFlags(info.Flags, readOnly)},
	}
	for _, s := range steps {
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, dev, s.req, s.arg); errno != 0 {
			return fmt.Errorf("%s: %w", s.name, errno)
		}
	}
	return nil
}

// close disconnects the device, waits for NBD_DO_IT to return and the
// server to end, within ctx.
func (k *kernelLink) close(ctx context.Context) error {
	k.closeMu.Lock()
	defer k.closeMu.Unlock()
	var errs []error
	if k.dev != nil {
		fd := k.dev.Fd()
		_, _, _ = unix.Syscall(unix.SYS_IOCTL, fd, ioctlDisconnect, 0)
		select {
		case err := <-k.doIt:
			if err != nil && !errors.Is(err, unix.EPIPE) && !errors.Is(err, unix.ECONNRESET) {
				k.log.Debug("NBD_DO_IT ended", "err", err)
			}
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("NBD_DO_IT did not return: %w", ctx.Err()))
		}
		_, _, _ = unix.Syscall(unix.SYS_IOCTL, fd, ioctlClearQue, 0)
		_, _, _ = unix.Syscall(unix.SYS_IOCTL, fd, ioctlClearSock, 0)
		if err := k.dev.Close(); err != nil && !errors.Is(err, fs.ErrClosed) {
			errs = append(errs, err)
		}
		k.dev = nil
	}
	if k.sock != nil {
		k.sock.Close()
		k.sock = nil
	}
	if k.cancel != nil {
		k.cancel()
		select {
		case <-k.served:
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("the NBD server of the device did not stop: %w", ctx.Err()))
		}
		k.cancel = nil
	}
	return errors.Join(errs...)
}
