// Package raw is the raw block workload of the torture harness: seeded
// writes of self-describing sectors at offsets drawn around the layout's
// node and page boundaries, a ledger of what every byte may read back as,
// and a checker that makes every bad byte explain itself (which write it
// holds, where that write was aimed, which member holds it).
//
// A torture run uses it in phases over one Ledger:
//
//	l := raw.NewLedger(seed, dev.Size())
//	st, err := raw.Run(ctx, raw.NBD(client), l, raw.Options{Seed: seed, Duration: time.Minute,
//		Boundaries: layoutEdges, Locate: describe, Observe: chart})
//	// … faults; when the harness SIGKILLs the engine (writes may be in flight):
//	l.Loss()
//	st, err = raw.Run(ctx, dev2, l, raw.Options{Seed: seed + 1, Ops: 5000, Boundaries: layoutEdges})
//	chk, err := raw.Verify(ctx, dev2, l, raw.VerifyOptions{Locate: describe})
//	for _, b := range chk.Bad { log(b.Diagnosis) }
//	_ = l.Settle(chk) // later checks hold the device to what was read
//
// The failure bundle holds json.Marshal(l) (bounded expected state), the
// Stats (op log of the last ops, failed ops, latencies) and the Options:
// Ops(o.GenOptions(size), n) replays the op stream from the seed.
//
// Stamps: the bytes write W of the run with seed S puts at device byte x
// are Image(S, W, x&^511)[x&511] — a 52-byte header (magic "DSTRAW01",
// sector offset, W, S, the write's target offset and length, crc32c of
// the rest) then fill derived from (S, W, sector). Writes start and end at
// any byte, so a sector may legitimately hold pieces of several writes;
// the checker therefore compares bytes with the images of the writes the
// ledger allows there, and uses Decode only to explain wrong bytes.
//
// The ledger's rules, per byte: Begin makes a write possible at once (it
// may land at any time, in part); an acknowledged write W replaces every
// candidate that ended (acknowledged or failed) before W began, so writes
// that overlapped in time all stay possible; a failed write stays possible
// until replaced. A write is durable when acknowledged with FUA, or when a
// flush that began after its acknowledgement succeeds; after a loss event
// a byte may hold its newest durable write or anything issued over it
// since.
package raw
