// Errno maps every class of backend and operating system error to the NBD
// error the brief fixes, however deeply wrapped, checked by a table.
package nbd_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"dst/storage/nbd"
)

func TestErrno(t *testing.T) {
	pathErr := func(e error) error { return &fs.PathError{Op: "write", Path: "/x", Err: e} }
	wrap := func(e error) error { return fmt.Errorf("export: write /x offset 0 length 1: %w", e) }
	for _, tc := range []struct {
		name string
		err  error
		want nbd.Errno
	}{
		{"nil", nil, 0},
		{"nbd errno chosen by a backend", wrap(nbd.ENOSPC), nbd.ENOSPC},
		{"nbd ENOTSUP", wrap(nbd.ENOTSUP), nbd.ENOTSUP},
		{"nbd EPERM", nbd.EPERM, nbd.EPERM},
		{"ENOSPC", wrap(pathErr(syscall.ENOSPC)), nbd.ENOSPC},
		{"EDQUOT", pathErr(syscall.EDQUOT), nbd.ENOSPC},
		{"EFBIG", pathErr(syscall.EFBIG), nbd.ENOSPC},
		{"EROFS", wrap(pathErr(syscall.EROFS)), nbd.EPERM},
		{"EPERM", syscall.EPERM, nbd.EPERM},
		{"EACCES", pathErr(syscall.EACCES), nbd.EPERM},
		{"EINVAL", wrap(syscall.EINVAL), nbd.EINVAL},
		{"ENOTSUP", wrap(syscall.ENOTSUP), nbd.ENOTSUP},
		{"EOPNOTSUPP", wrap(syscall.EOPNOTSUPP), nbd.ENOTSUP},
		{"ENOMEM", syscall.ENOMEM, nbd.ENOMEM},
		{"EIO", wrap(pathErr(syscall.EIO)), nbd.EIO},
		{"EBADF is EIO", syscall.EBADF, nbd.EIO},
		{"short file is EIO", wrap(io.ErrUnexpectedEOF), nbd.EIO},
		{"plain error is EIO", errors.New("disk on fire"), nbd.EIO},
		{"canceled is ESHUTDOWN", wrap(context.Canceled), nbd.ESHUTDOWN},
		{"deadline is ESHUTDOWN", context.DeadlineExceeded, nbd.ESHUTDOWN},
		{"joined: first match in the chain", errors.Join(syscall.ENOSPC, syscall.EIO), nbd.ENOSPC},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, nbd.ErrnoOf(tc.err), "ErrnoOf(%v)", tc.err)
		})
	}
}
