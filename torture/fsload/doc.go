// Package fsload is the filesystem workload of the torture harness: it makes,
// mounts, checks and unmounts real kernel filesystems (ext4, xfs, btrfs) on a
// block device, writes seeded self-describing ("stamped") files, records what
// every file must hold in a Manifest, and verifies it after sync, remount and
// crash.
//
// # Content
//
// Every file's bytes derive from (seed, file id, generation), and every 4 KiB
// block of a file starts with a header naming them (see FillStamp), so wrong
// bytes found on read tell which file and which write they came from. The
// Manifest describes each path as layers of generations plus its size, state
// (synced or pending) and, while pending, the versions a crash may leave. It
// serialises to JSON (the expected state of a failure bundle). The same seed
// and the same sequence of calls replay the same files and filesystem UUIDs.
//
// # Use
//
// A standard cycle:
//
//	w := fsload.New(seed)
//	err := w.Cycle(ctx, fsload.CycleOptions{Dev: "/dev/loop3", MountDir: dir,
//		FS: fsload.Rotation(list, rebuilds), Rebuild: i%5 == 0, Cycle: i, Phase: report})
//
// runs [mkfs] → mount → write → sync → umount → fsck → remount → verify →
// umount and reports each phase. The phases are exported for other sequences,
// for example a crash:
//
//	fsload.Mount(ctx, fs, dev, dir)
//	w.Write(ctx, dir, fsload.WriteOptions{Plan: fsload.PlanFor(usable, 0)})
//	w.Sync(ctx, dir)                      // these files must survive exactly
//	w.Write(ctx, dir, ...)                // these may be lost
//	// crash: kill the engine, or fsload.Shutdown(dir) (no log flush)
//	fsload.Umount(ctx, dir)
//	fsload.Mount(ctx, fs, dev, dir); fsload.Umount(ctx, dir) // replay journal
//	fsload.Fsck(ctx, fs, dev)
//	fsload.Mount(ctx, fs, dev, dir)
//	w.VerifyAfterCrash(ctx, dir)          // then the manifest is settled
//
// # Limits
//
// Every external command is bounded by its context (killed on expiry, pipes
// closed after a further 5 s). syncfs(2) and reads and writes of files are
// system calls that cannot be interrupted: a device that never answers
// blocks them until the harness fails the device underneath.
package fsload
