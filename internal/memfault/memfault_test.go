// A copy from a mapping whose file shrank faults; Do returns ErrFault for
// it and lets other panics through.
package memfault_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"dst/internal/memfault"
)

func TestDoTurnsAFaultIntoAnError(t *testing.T) {
	p := filepath.Join(t.TempDir(), "m")
	require.NoError(t, os.WriteFile(p, make([]byte, 1<<16), 0o644))
	f, err := os.Open(p)
	require.NoError(t, err)
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, 1<<16, unix.PROT_READ, unix.MAP_SHARED)
	require.NoError(t, err)
	defer unix.Munmap(m)
	dst := make([]byte, 4096)
	require.NoError(t, memfault.Do(func() { copy(dst, m[8192:]) }))
	require.NoError(t, os.Truncate(p, 0))
	require.ErrorIs(t, memfault.Do(func() { copy(dst, m[8192:]) }), memfault.ErrFault)
	require.Panics(t, func() { _ = memfault.Do(func() { panic("not a fault") }) })
}
