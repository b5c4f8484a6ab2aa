// Requests counts each op's requests, bytes (not of failed requests),
// errors and latency into the right bucket with an injected clock, and
// recording allocates nothing — checked directly on the counters.
package iostats_test

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/iostats"
)

func TestRequests(t *testing.T) {
	now := time.Unix(1000, 0)
	r := iostats.NewRequests(func() time.Time { return now })
	t0 := r.Begin()
	_, inFlight := r.Snapshot()
	require.Equal(t, int64(1), inFlight)
	now = now.Add(300 * time.Microsecond)
	r.End(iostats.OpWrite, t0, 4096, nil)
	t0 = r.Begin()
	now = now.Add(20 * time.Second)
	r.End(iostats.OpRead, t0, 4096, errors.New("boom"))
	ops, inFlight := r.Snapshot()
	require.Zero(t, inFlight)
	w := ops[iostats.OpWrite]
	require.Equal(t, uint64(1), w.Count)
	require.Equal(t, uint64(4096), w.Bytes)
	require.Equal(t, uint64(300_000), w.SumNanos)
	require.Equal(t, uint64(1), w.Buckets[2], "300 us is in the 0.5 ms bucket")
	rd := ops[iostats.OpRead]
	require.Equal(t, uint64(1), rd.Errors)
	require.Zero(t, rd.Bytes, "a failed read moved no bytes")
	require.Equal(t, uint64(1), rd.Buckets[len(iostats.LatencyBuckets)], "20 s is beyond the last bound")
	require.Equal(t, "write_zeroes", iostats.OpWriteZeroes.String())
	require.Equal(t, "op(?)", iostats.Op(99).String())
}

func TestRecordingDoesNotAllocate(t *testing.T) {
	testkit.SkipUnderRace(t)
	var r iostats.Requests
	allocs := testing.AllocsPerRun(1000, func() {
		r.End(iostats.OpFlush, r.Begin(), 0, nil)
	})
	require.Zero(t, allocs)
}
