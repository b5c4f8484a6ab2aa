// A member whose machine restarted (its server reports another boot id at
// the reconnect) while it held writes that were not flushed may have lost
// them with its page cache: a mirror member then leaves service and gets
// the regions its mirror's activity log holds (every region with writes
// not yet flushed everywhere) copied back, instead of serving reads it may
// no longer hold. After a
// flush, or when only the server process restarted (same boot), nothing
// was lost and it stays in sync.
package engine

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
)

func TestMemberMachineRestart(t *testing.T) {
	for _, tc := range []struct {
		name       string
		flush      bool
		newBoot    bool
		wantFailed bool
	}{
		{"machine restart with unflushed writes", false, true, true},
		{"machine restart after a flush", true, true, false},
		{"server restart on the same boot", false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := newModelSUT(t, modelGeometries["mirror"], nil)
			require.NoError(t, err)
			defer m.close()
			ctx := testkit.Context(t, 60*time.Second)
			p := bytes.Repeat([]byte{0x6b}, 8192)
			require.NoError(t, m.st.e.WriteAt(ctx, p, 4096, 0))
			if tc.flush {
				require.NoError(t, m.st.e.Flush(ctx))
			}
			m.expectConnect(1)
			m.stopServer(1)
			if tc.newBoot {
				m.boots = []string{"", "another-boot"}
			}
			require.NoError(t, m.startServer(1))
			require.NoError(t, m.waitConnect(1))
			st := m.st.e.Status()
			if tc.wantFailed {
				require.Equal(t, "failed", st[1].State)
				require.Contains(t, st[1].LastError, "machine restarted")
				require.False(t, m.st.e.wholeDue(1), "the activity log says what to copy")
				require.Equal(t, 1, st[1].DirtyRegions, "the one region written since the last flush")
				require.NoError(t, m.st.e.Rejoin(ctx, 1, false, nil))
				require.Equal(t, int64(modelRegion), m.st.e.Status()[1].ResyncedBytes)
			} else {
				require.Equal(t, "in-sync", st[1].State)
			}
			require.Equal(t, "in-sync", st[0].State)
			got := make([]byte, len(p))
			require.NoError(t, m.st.e.ReadAt(ctx, got, 4096))
			require.Equal(t, p, got)
		})
	}
}

// TestMemberMachineRestartDuringFlush: a FLUSH sent before the member's
// machine restarted and replayed after it would succeed over writes the
// restart took. The member must leave service all the same (the torture
// harness's power cuts found this: the flag of unflushed writes is
// cleared when the flush begins).
func TestMemberMachineRestartDuringFlush(t *testing.T) {
	m, err := newModelSUT(t, modelGeometries["mirror"], nil)
	require.NoError(t, err)
	defer m.close()
	ctx := testkit.Context(t, 60*time.Second)
	p := bytes.Repeat([]byte{0x5d}, 8192)
	require.NoError(t, m.st.e.WriteAt(ctx, p, 4096, 0))
	m.expectConnect(1)
	m.stopServer(1)
	flushed := make(chan error, 1)
	go func() { flushed <- m.st.e.Flush(ctx) }()
	require.Eventually(t, func() bool { return m.st.e.members[1].flushing.Load() > 0 }, 10*time.Second, time.Millisecond)
	m.boots = []string{"", "another-boot"}
	require.NoError(t, m.startServer(1))
	require.NoError(t, m.waitConnect(1))
	require.NoError(t, <-flushed, "the replica in sync stands in")
	st := m.st.e.Status()
	require.Equal(t, "failed", st[1].State)
	require.Contains(t, st[1].LastError, "machine restarted")
	require.True(t, m.st.e.wholeDue(1), "it must be copied whole")
}
