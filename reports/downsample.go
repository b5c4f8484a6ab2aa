package reports

import (
	"math"
	"slices"
	"time"
)

// Downsample reduces samples to at most maxPoints by cutting the time span
// into maxPoints equal buckets and merging the samples of each bucket:
// rates and the p50 latency are averaged, p99 and max latency keep the
// bucket's maximum so a spike stays visible. Empty buckets produce no point.
// Non-finite rates are left out of the averages. The input is not modified;
// it need not be sorted. A series that already fits is returned as a sorted
// copy. maxPoints below 1 returns nil.
func Downsample(samples []Sample, maxPoints int) []Sample {
	if maxPoints < 1 || len(samples) == 0 {
		return nil
	}
	sorted := slices.Clone(samples)
	slices.SortStableFunc(sorted, func(a, b Sample) int { return a.T.Compare(b.T) })
	if len(sorted) <= maxPoints {
		return sorted
	}
	t0 := sorted[0].T
	span := float64(sorted[len(sorted)-1].T.Sub(t0))
	out := make([]Sample, 0, maxPoints)
	var acc bucket
	cur := -1
	for i := range sorted {
		s := &sorted[i]
		b := 0
		if span > 0 {
			b = min(int(float64(s.T.Sub(t0))/span*float64(maxPoints)), maxPoints-1)
		}
		if b != cur {
			if acc.n > 0 {
				out = append(out, acc.sample(t0))
			}
			acc, cur = bucket{}, b
		}
		acc.add(s, t0)
	}
	if acc.n > 0 {
		out = append(out, acc.sample(t0))
	}
	return out
}

// bucket accumulates the samples that fall into one downsampling bucket.
type bucket struct {
	n                   int
	offsetSum           float64 // ns since t0, summed
	write, read, ops    float64
	nWrite, nRead, nOps int
	p50Sum              float64
	p99Max, latMax      time.Duration
}

func (a *bucket) add(s *Sample, t0 time.Time) {
	a.n++
	a.offsetSum += float64(s.T.Sub(t0))
	addFinite(&a.write, &a.nWrite, s.WriteBytesPerSec)
	addFinite(&a.read, &a.nRead, s.ReadBytesPerSec)
	addFinite(&a.ops, &a.nOps, s.OpsPerSec)
	a.p50Sum += float64(s.LatencyP50)
	a.p99Max = max(a.p99Max, s.LatencyP99)
	a.latMax = max(a.latMax, s.LatencyMax)
}

func (a *bucket) sample(t0 time.Time) Sample {
	n := float64(a.n)
	return Sample{
		T:                t0.Add(time.Duration(a.offsetSum / n)),
		WriteBytesPerSec: mean(a.write, a.nWrite),
		ReadBytesPerSec:  mean(a.read, a.nRead),
		OpsPerSec:        mean(a.ops, a.nOps),
		LatencyP50:       time.Duration(a.p50Sum / n),
		LatencyP99:       a.p99Max,
		LatencyMax:       a.latMax,
	}
}

func addFinite(sum *float64, n *int, v float64) {
	if finite(v) {
		*sum += v
		*n++
	}
}

// mean of n summed values; NaN when there were none, which the chart draws
// as a gap.
func mean(sum float64, n int) float64 {
	if n == 0 {
		return math.NaN()
	}
	return sum / float64(n)
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
