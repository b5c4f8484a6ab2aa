package export

import (
	"context"
	"errors"
	"syscall"

	"dst/storage/nbd"
)

// Errno maps an error of a backend (an engine or the operating system) to
// the error code an NBD reply carries. It is the only place in dst where
// such errors become NBD errors, and it is what Server passes as
// nbd.ServerOptions.Errno. Go error strings never reach the wire.
//
// The mapping, first match wins:
//
//	nil                                  -> 0
//	an nbd.Errno anywhere in the chain   -> that value (a backend chose it)
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
func Errno(err error) nbd.Errno {
	if err == nil {
		return 0
	}
	var ne nbd.Errno
	if errors.As(err, &ne) {
		return ne
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return nbd.ESHUTDOWN
	}
	var se syscall.Errno
	if !errors.As(err, &se) {
		return nbd.EIO
	}
	switch se {
	case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
		return nbd.ENOSPC
	case syscall.EROFS, syscall.EPERM, syscall.EACCES:
		return nbd.EPERM
	case syscall.EINVAL:
		return nbd.EINVAL
	case syscall.ENOTSUP:
		return nbd.ENOTSUP
	case syscall.ENOMEM:
		return nbd.ENOMEM
	}
	return nbd.EIO
}
