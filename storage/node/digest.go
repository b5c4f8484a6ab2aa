package node

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"sync"

	"dst/storage/nbd"
)

// DigestBlock is the block a digest covers: the page, so that any
// member's data area (page-aligned) and any scrub region line up with
// whole blocks.
const DigestBlock = 4096

// DigestSize is the size of one digest: a CRC-32C, big-endian.
const DigestSize = 4

// DigestSuffix names the digest export of an export: dst export serves,
// beside export NAME, a hidden read-only export NAME+DigestSuffix whose
// bytes are the digests of NAME's blocks (Digests).
const DigestSuffix = ":crc32c"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Digest is the digest of one block's bytes (a last partial block is
// hashed as it is, not padded).
func Digest(p []byte) uint32 { return crc32.Checksum(p, castagnoli) }

// DigestURL is the URL of the digest export of the dst export at url
// (any NBD URL: nbd://, nbds://, the unix forms), and false for a URL
// that names no NBD export (a file member is hashed where it is read).
func DigestURL(url string) (string, bool) {
	a, err := ParseURL(url)
	if err != nil {
		return "", false
	}
	a.Export += DigestSuffix
	return a.String(), true
}

// Digests is a read-only node whose bytes are the digests of under's
// blocks: bytes [4k, 4k+4) are the CRC-32C of under's block k, read when
// asked for. A scrub reads 4 bytes for each 4 KiB of a replica that sits
// behind a dst export, instead of the 4 KiB.
//
// Durability: a digest reflects the writes under completed before the
// read; it changes nothing.
type Digests struct {
	under Node
}

var _ Node = (*Digests)(nil)

// NewDigests returns the digest node of under.
func NewDigests(under Node) *Digests { return &Digests{under: under} }

// digestReadBlocks bounds the blocks read from under at once.
const digestReadBlocks = 64

// digestBufs are the read buffers of digestReadBlocks blocks: reused, so
// a scrub does not make the server's collector run every few requests.
var digestBufs = sync.Pool{New: func() any {
	b := make([]byte, digestReadBlocks*DigestBlock)
	return &b
}}

// Size is 4 bytes for each block of under, the last partial one too.
func (d *Digests) Size() int64 {
	return (d.under.Size() + DigestBlock - 1) / DigestBlock * DigestSize
}

// Flags: read-only; nothing to flush.
func (d *Digests) Flags() nbd.TransmissionFlags { return nbd.FlagReadOnly | nbd.FlagSendFlush }

func (d *Digests) String() string { return "digests of " + d.under.String() }

// Close closes nothing: under belongs to its export.
func (d *Digests) Close() error { return nil }

// ReadAt fills p with the digests from byte off (any offset and length
// within Size).
func (d *Digests) ReadAt(ctx context.Context, p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > d.Size() {
		return fmt.Errorf("node: digests: read of %d bytes at %d past %d: %w", len(p), off, d.Size(), nbd.EINVAL)
	}
	size := d.under.Size()
	first, end := off/DigestSize, (off+int64(len(p))+DigestSize-1)/DigestSize
	bp := digestBufs.Get().(*[]byte)
	defer digestBufs.Put(bp)
	buf := *bp
	var word [DigestSize]byte
	for b := first; b < end; {
		n := min(end-b, digestReadBlocks)
		from := b * DigestBlock
		chunk := buf[:min(n*DigestBlock, size-from)]
		if err := d.under.ReadAt(ctx, chunk, from); err != nil {
			return err
		}
		for k := range n {
			blk := chunk[k*DigestBlock : min((k+1)*DigestBlock, int64(len(chunk)))]
			binary.BigEndian.PutUint32(word[:], Digest(blk))
			// The part of this digest's 4 bytes p asks for.
			at := (b+k)*DigestSize - off
			lo, hi := max(at, 0), min(at+DigestSize, int64(len(p)))
			copy(p[lo:hi], word[lo-at:hi-at])
		}
		b += n
	}
	return nil
}

func (d *Digests) WriteAt(context.Context, []byte, int64, nbd.CmdFlags) error {
	return fmt.Errorf("node: digests are read-only: %w", nbd.EPERM)
}

func (d *Digests) Flush(context.Context) error { return nil }

func (d *Digests) Trim(context.Context, int64, int64, nbd.CmdFlags) error {
	return fmt.Errorf("node: digests are read-only: %w", nbd.EPERM)
}

func (d *Digests) WriteZeroes(context.Context, int64, int64, nbd.CmdFlags) error {
	return fmt.Errorf("node: digests are read-only: %w", nbd.EPERM)
}

func (d *Digests) Cache(context.Context, int64, int64) error { return nil }
