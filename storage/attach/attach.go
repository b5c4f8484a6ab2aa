package attach

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"dst/storage/node"
)

// Mode chooses how a storage is attached.
type Mode int

// Modes of Attach.
const (
	// ModeAuto uses the kernel NBD driver where it is present and the FUSE
	// file with a loop device otherwise.
	ModeAuto Mode = iota
	// ModeFUSE always uses the FUSE file and a loop device.
	ModeFUSE
	// ModeKernel always uses the kernel NBD driver and fails where it is
	// missing.
	ModeKernel
)

func (m Mode) String() string {
	switch m {
	case ModeAuto:
		return "auto"
	case ModeFUSE:
		return "fuse"
	case ModeKernel:
		return "kernel"
	}
	return fmt.Sprintf("mode(%d)", int(m))
}

// ParseMode parses "auto", "fuse" or "kernel".
func ParseMode(s string) (Mode, error) {
	for _, m := range []Mode{ModeAuto, ModeFUSE, ModeKernel} {
		if m.String() == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("attach: mode %q: want auto, fuse or kernel", s)
}

// DefaultCloseTimeout bounds Close when its context has no deadline.
const DefaultCloseTimeout = 30 * time.Second

// Options configure Attach. The zero value of each field is documented
// next to it.
type Options struct {
	// Dir is the mountpoint of the FUSE file system; it is created if
	// missing (and then removed by Close). Required for the FUSE path, unused by the kernel path.
	Dir string
	// Name is the name of the one file in Dir, and of the export the
	// kernel path offers its handshake. Empty means "disk".
	Name string
	// ReadOnly attaches the storage read-only: the file refuses writes
	// (EROFS) and the block device is read-only.
	ReadOnly bool
	// Logger receives attach, detach and node-failure events; nil discards
	// them.
	Logger *slog.Logger
	// Mode chooses the path; the zero value is ModeAuto.
	Mode Mode
	// KernelTimeout is the kernel NBD driver's request timeout. Zero means
	// DefaultKernelTimeout.
	KernelTimeout time.Duration
}

// Attachment is a storage attached to this kernel as a block device.
// Close detaches it; nothing it started outlives Close.
type Attachment struct {
	device string
	file   string
	mode   Mode
	log    *slog.Logger
	fuse   *fuseMount  // FUSE path
	kernel *kernelLink // kernel path
}

// Device returns the block device, e.g. /dev/loop3 or /dev/nbd0.
func (a *Attachment) Device() string { return a.device }

// File returns the FUSE file the loop device reads and writes, or "" on
// the kernel path.
func (a *Attachment) File() string { return a.file }

// Mode returns the path taken: ModeFUSE or ModeKernel.
func (a *Attachment) Mode() Mode { return a.mode }

// Attach attaches dev to this kernel as a block device. In ModeFUSE it
// first cleans what a crashed attachment left in opts.Dir (CleanStale),
// mounts a FUSE file system with one file over dev, and binds a loop
// device to it; in ModeKernel it connects dev to a free /dev/nbdX. ctx
// bounds the attaching only. On error nothing stays mounted, bound or
// running. The caller keeps owning dev: Close does not close it.
func Attach(ctx context.Context, dev node.Node, opts Options) (*Attachment, error) {
	if opts.Name == "" {
		opts.Name = "disk"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Name != filepath.Base(opts.Name) || opts.Name == "." || opts.Name == ".." {
		return nil, fmt.Errorf("attach: name %q is not a plain file name", opts.Name)
	}
	mode := opts.Mode
	if mode == ModeAuto {
		mode = ModeFUSE
		if KernelNBDAvailable() == nil {
			mode = ModeKernel
		}
	}
	log := opts.Logger.With("node", dev.String(), "mode", mode.String())
	switch mode {
	case ModeFUSE:
		return attachFUSE(ctx, dev, opts, log)
	case ModeKernel:
		if err := KernelNBDAvailable(); err != nil {
			return nil, fmt.Errorf("attach %s: %w", dev, err)
		}
		return attachKernel(ctx, dev, opts, log)
	}
	return nil, fmt.Errorf("attach: unknown mode %v", opts.Mode)
}

// attachFUSE mounts the FUSE file and binds a loop device to it.
func attachFUSE(ctx context.Context, dev node.Node, opts Options, log *slog.Logger) (*Attachment, error) {
	if opts.Dir == "" {
		return nil, errors.New("attach: no mountpoint directory (Options.Dir)")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("attach: mountpoint %s: %w", opts.Dir, err)
	}
	if err := CleanStale(ctx, dir, log); err != nil {
		return nil, fmt.Errorf("attach %s: %w", dev, err)
	}
	_, statErr := os.Stat(dir)
	created := errors.Is(statErr, os.ErrNotExist)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("attach %s: mountpoint: %w", dev, err)
	}
	m, err := mountFile(dev, dir, opts.Name, opts.ReadOnly, log)
	if err != nil {
		if created {
			_ = os.Remove(dir)
		}
		return nil, fmt.Errorf("attach %s: %w", dev, err)
	}
	m.created = created
	loop, err := LoopAttach(ctx, m.file, opts.ReadOnly)
	if err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), DefaultCloseTimeout)
		defer cancel()
		return nil, errors.Join(fmt.Errorf("attach %s: %w", dev, err), m.unmount(cctx))
	}
	log.Info("attached", "device", loop, "file", m.file, "size", dev.Size(), "read_only", opts.ReadOnly)
	return &Attachment{device: loop, file: m.file, mode: ModeFUSE, log: log, fuse: m}, nil
}

// Close detaches the block device and then ends the FUSE file system or
// the kernel link, within ctx (DefaultCloseTimeout if ctx has no
// deadline). It works after the node died: requests fail with EIO
// meanwhile. Close is not safe for concurrent use; a second call returns
// nil.
func (a *Attachment) Close(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultCloseTimeout)
		defer cancel()
	}
	var err error
	switch {
	case a.fuse != nil:
		err = LoopDetach(ctx, a.device)
		err = errors.Join(err, a.fuse.unmount(ctx))
		a.fuse = nil
	case a.kernel != nil:
		err = a.kernel.close(ctx)
		a.kernel = nil
	default:
		return nil
	}
	if err != nil {
		return fmt.Errorf("detach %s: %w", a.device, err)
	}
	a.log.Info("detached", "device", a.device)
	return nil
}
