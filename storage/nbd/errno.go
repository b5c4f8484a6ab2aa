package nbd

import (
	"context"
	"errors"
	"fmt"
	"syscall"
)

// Errno is an error value of the transmission phase, as carried in replies.
// The values are fixed by the protocol (they match Linux errno numbers).
type Errno uint32

// Errors a server may return for a request.
const (
	EPERM     Errno = 1
	EIO       Errno = 5
	ENOMEM    Errno = 12
	EINVAL    Errno = 22
	ENOSPC    Errno = 28
	EOVERFLOW Errno = 75
	ENOTSUP   Errno = 95
	ESHUTDOWN Errno = 108
)

func (e Errno) Error() string {
	switch e {
	case EPERM:
		return "nbd: operation not permitted (EPERM)"
	case EIO:
		return "nbd: input/output error (EIO)"
	case ENOMEM:
		return "nbd: out of memory (ENOMEM)"
	case EINVAL:
		return "nbd: invalid argument (EINVAL)"
	case ENOSPC:
		return "nbd: no space left on device (ENOSPC)"
	case EOVERFLOW:
		return "nbd: value too large (EOVERFLOW)"
	case ENOTSUP:
		return "nbd: operation not supported (ENOTSUP)"
	case ESHUTDOWN:
		return "nbd: server is shutting down (ESHUTDOWN)"
	}
	return fmt.Sprintf("nbd: error %d", uint32(e))
}

// Sentinel errors of this package, checked with errors.Is.
var (
	// ErrProtocol is wrapped by every error caused by a peer that broke the
	// protocol (bad magic, impossible lengths, unexpected replies).
	ErrProtocol = errors.New("nbd: protocol violation")
	// ErrClosed is returned for requests on a client whose connection is gone.
	ErrClosed = errors.New("nbd: connection closed")
	// ErrUnsupported is returned by a client for a command the export does
	// not advertise.
	ErrUnsupported = errors.New("nbd: command not supported by the export")
	// ErrTooLarge is returned for a request larger than the negotiated maximum.
	ErrTooLarge = errors.New("nbd: request larger than the maximum payload")
)

// OptionError is an error reply to an option in the handshake.
type OptionError struct {
	Option  Option
	Reply   ReplyType
	Message string
}

func (e *OptionError) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("nbd: option %v refused: %v: %s", e.Option, e.Reply, e.Message)
	}
	return fmt.Sprintf("nbd: option %v refused: %v", e.Option, e.Reply)
}

// ErrnoOf maps an error of a backend (an engine, a node, the operating
// system) to the error code an NBD reply carries, and through
// SyscallErrno to the errno a FUSE file answers. It is the only place in
// dst where such errors become error codes: every Server uses it, so
// `dst export`, `dst serve` and the kernel attach path answer alike, and
// Go error strings never reach the wire.
//
// The mapping, first match wins:
//
//	nil                                  -> 0
//	an Errno anywhere in the chain       -> that value (a backend or a peer chose it)
//	context.Canceled, DeadlineExceeded   -> ESHUTDOWN (the server is stopping)
//	ENOSPC, EDQUOT, EFBIG                -> ENOSPC
//	EROFS, EPERM, EACCES                 -> EPERM
//	EINVAL                               -> EINVAL
//	ENOTSUP (= EOPNOTSUPP on Linux)      -> ENOTSUP
//	ENOMEM                               -> ENOMEM
//	anything else                        -> EIO
//
// Operating system errors are found with errors.As, so they may be wrapped
// any number of times (os.PathError, fmt.Errorf with %w, ...).
func ErrnoOf(err error) Errno {
	if err == nil {
		return 0
	}
	var ne Errno
	if errors.As(err, &ne) {
		return ne
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return ESHUTDOWN
	}
	var se syscall.Errno
	if !errors.As(err, &se) {
		return EIO
	}
	switch se {
	case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
		return ENOSPC
	case syscall.EROFS, syscall.EPERM, syscall.EACCES:
		return EPERM
	case syscall.EINVAL:
		return EINVAL
	case syscall.ENOTSUP:
		return ENOTSUP
	case syscall.ENOMEM:
		return ENOMEM
	}
	return EIO
}

// SyscallErrno is ErrnoOf as a Linux errno, for paths that answer the
// kernel directly (the FUSE file of an attachment): the protocol's values
// are Linux's numbers, so the kernel sees what an NBD client would.
func SyscallErrno(err error) syscall.Errno { return syscall.Errno(ErrnoOf(err)) }
