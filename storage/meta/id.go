package meta

import (
	"encoding/hex"
	"fmt"
	"io"
)

// ID identifies a storage (all its members share it) or one member medium.
// It is 16 random bytes with the RFC 4122 version-4 bits set, so it prints
// like a UUID. The zero ID means "none" and never appears on disk.
type ID [16]byte

// NewID draws a random ID from r (crypto/rand.Reader in production, a
// seeded source in tests so runs replay). The same generator serves storage
// ids and member ids.
func NewID(r io.Reader) (ID, error) {
	var id ID
	if _, err := io.ReadFull(r, id[:]); err != nil {
		return ID{}, fmt.Errorf("meta: new id: %w", err)
	}
	id[6] = id[6]&0x0f | 0x40 // version 4
	id[8] = id[8]&0x3f | 0x80 // variant 10
	return id, nil
}

// IsZero reports whether id is the zero ID.
func (id ID) IsZero() bool { return id == ID{} }

// String formats id as 8-4-4-4-12 lowercase hex.
func (id ID) String() string {
	var b [36]byte
	hex.Encode(b[0:8], id[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], id[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], id[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], id[8:10])
	b[23] = '-'
	hex.Encode(b[24:36], id[10:16])
	return string(b[:])
}
