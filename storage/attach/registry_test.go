// A Registry records attachments in a state directory: the lock of a name
// is exclusive while held and free once released, which is what "alive"
// means; states round-trip and are found by device; detaching a name that
// is neither recorded nor alive fails with ErrNotAttached — checked on a
// temporary directory, no root needed.
package attach

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRegistryLockAndState(t *testing.T) {
	reg := Registry{Dir: t.TempDir() + "/state"}
	require.False(t, reg.Alive("dst0"))
	lock, err := reg.Lock("dst0")
	require.NoError(t, err)
	require.True(t, reg.Alive("dst0"))
	_, err = reg.Lock("dst0")
	require.ErrorIs(t, err, ErrAttached)
	require.ErrorContains(t, err, "being attached or detached", "no state recorded yet")

	s := State{Name: "dst0", PID: 42, URL: "nbd://127.0.0.1:10809", Mode: "fuse", Mountpoint: reg.Mountpoint("dst0"), File: reg.Mountpoint("dst0") + "/dst0", Device: "/dev/loop7"}
	require.NoError(t, reg.Write(s))
	got, err := reg.Read("dst0")
	require.NoError(t, err)
	require.Equal(t, s, got)
	got, err = reg.Find("/dev/loop7")
	require.NoError(t, err)
	require.Equal(t, s, got)
	_, err = reg.Find("/dev/loop8")
	require.ErrorIs(t, err, ErrNotAttached)
	_, err = reg.Lock("dst0")
	require.ErrorContains(t, err, "dst0 is already attached (pid 42, device /dev/loop7; detach it first)")

	lock.Unlock()
	require.False(t, reg.Alive("dst0"), "the lock is released with its holder")
	require.NoError(t, reg.Remove("dst0"))
	_, err = reg.Read("dst0")
	require.ErrorIs(t, err, ErrNotAttached)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = reg.Detach(ctx, "dst0", slog.New(slog.DiscardHandler))
	require.ErrorIs(t, err, ErrNotAttached)
}
