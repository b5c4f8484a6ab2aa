// Stamp tests: sector images round-trip through Decode, unaligned fills
// agree with whole images byte for byte (a gopter property seeded by
// PROP_SEED), and Decode tells zeroes, intact stamps, misdirected and
// shifted stamps, torn sectors and garbage apart, saying which bytes match
// which write.
package raw

import (
	"math/rand/v2"
	"testing"

	"github.com/leanovate/gopter"
	"github.com/leanovate/gopter/gen"
	"github.com/leanovate/gopter/prop"
	"github.com/stretchr/testify/require"

	"dst/internal/proptest"
)

const testSeed = 0x5eed

func TestStampRoundTrip(t *testing.T) {
	w := Write{ID: 812, Off: 0x3f000 + 7, Len: 4096}
	var s [SectorSize]byte
	Image(&s, testSeed, w, 0x3f200)
	d := Decode(s[:], 0x3f200, testSeed)
	require.Equal(t, KindStamp, d.Kind)
	require.True(t, d.Intact)
	require.Equal(t, w, d.Write)
	require.Equal(t, uint64(testSeed), d.Seed)
	require.Equal(t, int64(0x3f200), d.Recorded)
	require.Equal(t, "holds write 812 aimed at 0x3f007+4096", d.String())

	// Different writes, sectors and seeds give different images.
	var o [SectorSize]byte
	for _, c := range []struct {
		seed   uint64
		w      Write
		sector int64
	}{{testSeed + 1, w, 0x3f200}, {testSeed, Write{ID: 813, Off: w.Off, Len: w.Len}, 0x3f200}, {testSeed, w, 0x3f400}} {
		Image(&o, c.seed, c.w, c.sector)
		require.NotEqual(t, s[headerSize:], o[headerSize:], "fill must depend on seed, write and sector")
	}
	var z [SectorSize]byte
	Image(&z, testSeed, Write{}, 0)
	require.Equal(t, KindZero, Decode(z[:], 0, testSeed).Kind)
}

func TestPropFillMatchesImages(t *testing.T) {
	props := gopter.NewProperties(proptest.Params(t, 200))
	props.Property("Fill(p, off) byte x is Image(x&^511)[x&511]", prop.ForAll(
		func(off int64, n int, id uint64) bool {
			w := Write{ID: id, Off: off, Len: int64(n)}
			p := make([]byte, n)
			Fill(p, off, testSeed, w)
			var s [SectorSize]byte
			for i := range p {
				x := off + int64(i)
				Image(&s, testSeed, w, x&^511)
				if p[i] != s[x&511] {
					return false
				}
			}
			return true
		},
		gen.Int64Range(0, 1<<20), gen.IntRange(1, 3000), gen.UInt64Range(1, 1<<40),
	))
	props.TestingRun(t)
}

func TestDecodeKinds(t *testing.T) {
	w := Write{ID: 5, Off: 0x1000, Len: 8192}
	v := Write{ID: 9, Off: 0x1100, Len: 100}
	var img [SectorSize]byte
	Image(&img, testSeed, w, 0x1000)

	t.Run("misdirected", func(t *testing.T) {
		d := Decode(img[:], 0x8000, testSeed)
		require.Equal(t, KindMisdirected, d.Kind)
		require.Equal(t, w, d.Write)
		require.Equal(t, int64(0x1000), d.Recorded)
		require.Contains(t, d.String(), "stamped for sector 0x1000 (misdirected)")
	})
	t.Run("corrupt byte", func(t *testing.T) {
		s := img
		s[300] ^= 0x5a
		d := Decode(s[:], 0x1000, testSeed)
		require.Equal(t, KindMixed, d.Kind)
		require.Equal(t, []Part{
			{From: 0, To: 300, Write: w, Image: 0x1000},
			{From: 300, To: 301, Unknown: true},
			{From: 301, To: 512, Write: w, Image: 0x1000 + 301},
		}, d.Parts)
	})
	t.Run("mixed writes", func(t *testing.T) {
		// Write v (0x1100+100) landed over w's sector: bytes 0x100..0x164.
		s := img
		Fill(s[0x100:0x164], 0x1100, testSeed, v)
		d := Decode(s[:], 0x1000, testSeed, w, v)
		require.Equal(t, KindMixed, d.Kind)
		require.Equal(t, []Part{
			{From: 0, To: 0x100, Write: w, Image: 0x1000},
			{From: 0x100, To: 0x164, Write: v, Image: 0x1100},
			{From: 0x164, To: 512, Write: w, Image: 0x1164},
		}, d.Parts)
		require.Contains(t, d.String(), "+0x100..+0x164 write 9 aimed at 0x1100+100")
	})
	t.Run("shifted stamp", func(t *testing.T) {
		// w's bytes for 0x1000..0x1400 landed 100 bytes late at 0x9064.
		buf := make([]byte, 1024)
		Fill(buf, 0x1000-100, testSeed, w)
		d := Decode(buf[512:], 0x9000+512, testSeed)
		require.Equal(t, KindMisdirected, d.Kind)
		require.Equal(t, w, d.Write)
		require.Equal(t, []Part{{From: 0, To: 512, Write: w, Image: 0x1000 + 412}}, d.Parts)
		require.Contains(t, d.String(), "holds bytes of write 5 aimed at 0x1000+8192 meant for 0x119c (misdirected by +0x8064)")
	})
	t.Run("zeroes and garbage", func(t *testing.T) {
		var s [SectorSize]byte
		require.Equal(t, KindZero, Decode(s[:], 0, testSeed).Kind)
		rng := rand.New(rand.NewPCG(1, 2))
		for i := range s {
			s[i] = byte(rng.Uint32() | 1)
		}
		d := Decode(s[:], 0, testSeed, w)
		require.Equal(t, KindGarbage, d.Kind)
		for i := 0; i < 100; i++ {
			s[i] = 0
		}
		d = Decode(s[:], 0, testSeed)
		require.Equal(t, KindGarbage, d.Kind)
		require.Equal(t, Part{From: 0, To: 100, Image: -1}, d.Parts[0])
		require.Equal(t, Part{From: 100, To: 512, Unknown: true}, d.Parts[1])
	})
}
