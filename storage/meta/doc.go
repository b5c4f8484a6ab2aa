// Package meta encodes and decodes the metadata every dst member carries at
// the start of its device, and decides from it how a storage is assembled.
// It does no I/O: the engine reads and writes these bytes at the offsets
// given here, so the client never sees them.
//
// # Reserved area
//
// Plan lays out a member of RawSize bytes:
//
//	member offset                  content
//	0                              superblock slot 0 (SuperblockSize)
//	4096                           superblock slot 1 (SuperblockSize)
//	BitmapOffset (8192)            write-intent bitmap, BitmapBytes (whole pages)
//	BitmapOffset+BitmapBytes       unused pages, if any (the bitmap is sized from
//	                               RawSize, then trimmed to the data area)
//	DataOffset (multiple of 4096)  data area, DataSize bytes, to RawSize
//
// A 1 TiB member with 1 MiB regions reserves 140 KiB: 8 KiB of superblocks
// and a 33-page bitmap.
//
// # Superblock (SuperblockSize bytes, big-endian)
//
//	offset  size  field
//	0       8     magic "DSTSUPER"
//	8       4     version (1)
//	12      4     flags (bit 0: clean; bit 1: activity log; other bits must be 0)
//	16      16    storage id
//	32      16    member id
//	48      4     member index (< member count)
//	52      4     member count (1..64)
//	56      8     generation
//	64      8     in-sync mask (bit i: member i in sync at this generation)
//	72      8     region size (power of two, 4 KiB..1 GiB)
//	80      8     raw size
//	88      8     data offset
//	96      8     data size
//	104     8     bitmap offset
//	112     8     bitmap bytes
//	120     8     creation time, unix ns (signed)
//	128     2     layout description length (0..2048; 0 is invalid)
//	130     2     reserved, zero
//	132     2048  layout description, UTF-8, zero padded
//	2180    1024  member table: 64 member ids (16 bytes each; zero: unknown;
//	              zero at positions >= member count; the own entry is
//	              zero or the member id)
//	3204    512   member raw sizes: 64 signed 64-bit sizes, the raw size
//	              each member's area was planned from (zero: unknown; the
//	              same rules as the member table; known: >= the minimum)
//	3716    376   reserved, zero
//	4092    4     CRC32C (Castagnoli) of bytes 0..4091
//
// Magic and version keep their offsets in every future version, so old code
// says ErrVersion, not ErrChecksum, for a newer format. All reserved and
// padding bytes must be zero, which makes decoding exact: what decodes
// re-encodes to the same bytes.
//
// # Two superblock slots
//
// A single superblock rewritten in place loses the member's identity if the
// write tears. There are two slots instead; a superblock of generation g is
// written to slot g%2 (SlotOffset) and every superblock write bumps the
// generation, so an update never overwrites the newest intact copy. Newest
// picks the valid slot with the higher generation. A torn write thus costs
// at most the update being written: the member then looks one generation
// older, which Classify handles like any lagging superblock. Creating a
// member writes the bitmap, then the same superblock to both slots.
//
// # Write-intent bitmap
//
// One bit per region of the data area (RegionSize bytes; the last region
// may be short), set before writes to the region are issued, cleared lazily
// once every member holds the region. The bitmap is stored as pages:
//
//	offset  size  field
//	0       4088  bits: byte k, bit j (LSB = 0) is region page*32704 + 8k + j
//	4088    4     page index, big-endian
//	4092    4     CRC32C (Castagnoli) of bytes 0..4091, big-endian
//
// Why a checksum per page rather than a plain bitmap: a page is written
// whole, but a device may persist only some of its sectors (torn write), or
// return zeros or garbage for a sector that was being written at power
// loss. With a plain bitmap a torn page could read back with a dirty bit
// cleared, and a region that needs resync would look clean: silent
// divergence of the mirror. With the checksum a torn page is detected and
// loaded as all dirty (Unmarshal), so the worst case is resyncing the
// 32704 regions of one page. The page index detects a page written at the
// wrong offset. A page that was never written (zeros) fails its checksum
// too, and is likewise all dirty. The cost is 8 bytes per page and a
// divide by 32704 instead of a shift.
//
// The same bitmap is the mirror's activity log when the superblock has
// FlagActivityLog: a region is also set while a write to it may be in
// flight or not yet flushed on some member, so after an unclean stop the
// union of the members' bitmaps covers every region where replicas may
// differ (see package engine for the contract and its cost bound).
//
// Ordering the engine must keep: a page with a newly set bit is written
// (and durable: FUA or flush) before any data write to the region is
// issued; a bit is cleared only after the region's data is durable on
// every member; the bitmap is written before the superblock that points at
// it.
//
// # Concurrency and allocation
//
// Encoders and decoders are pure functions of their arguments. A Bitmap is
// not safe for concurrent use; its owner serialises calls. Superblock
// MarshalTo and the Bitmap's Set, Clear, Test, NextDirty, PageOf and
// MarshalPage allocate nothing (tested).
package meta
