package testkit

import "testing"

// NoAllocs is the allocation test of a steady-state path: it skips under
// -race (make test runs the allocation tests again without it), calls op
// warm times to grow pools and buffers, then requires that runs more calls
// neither fail nor allocate.
func NoAllocs(t testing.TB, name string, warm, runs int, op func() error) {
	t.Helper()
	SkipUnderRace(t)
	for range warm {
		if err := op(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	var err error
	allocs := testing.AllocsPerRun(runs, func() {
		if e := op(); e != nil && err == nil {
			err = e
		}
	})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if allocs != 0 {
		t.Fatalf("%s allocates %.2f times per call", name, allocs)
	}
}

// SkipUnderRace skips an allocation test under -race.
func SkipUnderRace(t testing.TB) {
	t.Helper()
	if RaceEnabled {
		t.Skip("allocation counts are meaningless under -race; make test runs this test without it")
	}
}
