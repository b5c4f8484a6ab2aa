package raw

import (
	"context"
	"fmt"
)

// VerifyOptions configure Verify. Zero values are documented per field.
type VerifyOptions struct {
	// Mode is the strictness: Strict (zero) or AfterLoss.
	Mode Mode
	// ChunkBytes is the read size. Zero means 1 MiB.
	ChunkBytes int64
	// Locate maps a device offset to a description of where it lives
	// ("member 2 (nbd://…) at member offset 0x…"); nil leaves it out.
	Locate func(off int64) string
	// WrittenOnly skips chunks where nothing was ever written (the ledger
	// expects zeroes only).
	WrittenOnly bool
	// MaxBad bounds the Bads kept. Zero means 1000.
	MaxBad int
	// MaxErrors bounds the read errors kept. Zero means 100.
	MaxErrors int
}

// Check is the outcome of Verify.
type Check struct {
	Mode Mode  `json:"mode"`
	Bad  []Bad `json:"bad,omitempty"`
	// BadTotal counts the Bads found, kept or not.
	BadTotal      int   `json:"bad_total"`
	BytesVerified int64 `json:"bytes_verified"`
	// ReadErrors are the first read errors (the bytes could not be
	// checked); ReadErrorTotal counts them all.
	ReadErrors     []string `json:"read_errors,omitempty"`
	ReadErrorTotal int      `json:"read_error_total"`

	settle []settleRun
}

// OK reports whether every byte checked held something allowed and every
// read succeeded.
func (c *Check) OK() bool { return c.BadTotal == 0 && c.ReadErrorTotal == 0 }

// Verify reads the device in large chunks and checks every byte against
// the ledger under o.Mode. Writes may be in flight meanwhile (a byte may
// then also hold what they write). A read that fails is recorded in the
// Check, not returned; only ctx's end or a device of the wrong size is an
// error. Pass the Check to Ledger.Settle to make later checks strict.
func Verify(ctx context.Context, dev Device, l *Ledger, o VerifyOptions) (*Check, error) {
	if dev.Size() != l.size {
		return nil, fmt.Errorf("raw: verify: device has %d bytes, ledger %d", dev.Size(), l.size)
	}
	if o.ChunkBytes <= 0 {
		o.ChunkBytes = 1 << 20
	}
	if o.MaxBad <= 0 {
		o.MaxBad = 1000
	}
	if o.MaxErrors <= 0 {
		o.MaxErrors = 100
	}
	c := &Check{Mode: o.Mode}
	m := matcher{seed: l.seed}
	buf := make([]byte, o.ChunkBytes)
	var bad []badRun
	for off := int64(0); off < l.size; off += o.ChunkBytes {
		if err := ctx.Err(); err != nil {
			return c, fmt.Errorf("raw: verify at %#x: %w", off, err)
		}
		end := min(off+o.ChunkBytes, l.size)
		tok := l.readBegin(off, end, o.Mode)
		if o.WrittenOnly && zeroOnly(tok.view) {
			continue
		}
		p := buf[:end-off]
		if err := dev.ReadAt(ctx, p, off); err != nil {
			if ctx.Err() != nil {
				return c, fmt.Errorf("raw: verify read %#x+%d: %w", off, len(p), err)
			}
			c.ReadErrorTotal++
			if len(c.ReadErrors) < o.MaxErrors {
				c.ReadErrors = append(c.ReadErrors, fmt.Sprintf("read %#x+%d: %v", off, len(p), err))
			}
			continue
		}
		spans := l.readEnd(tok, o.Mode)
		bad = bad[:0]
		m.match(p, off, spans, &bad, &c.settle)
		c.BadTotal += l.explain(&c.Bad, o.MaxBad, bad, p, off, o.Locate)
		c.BytesVerified += int64(len(p))
	}
	return c, nil
}

func zeroOnly(v []span) bool {
	for _, s := range v {
		if len(s.cands) != 1 || s.cands[0].ID != 0 {
			return false
		}
	}
	return true
}

// Settle collapses the ledger's current expectations to what c read (bad
// bytes keep theirs), so later Strict checks hold the device to it. Call it
// with no write in flight.
func (l *Ledger) Settle(c *Check) error {
	return l.settle(c.settle)
}
