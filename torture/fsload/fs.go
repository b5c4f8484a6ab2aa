package fsload

import (
	"fmt"
	"strings"
)

// FS is a kernel filesystem type the workload can drive.
type FS uint8

// The supported filesystems. The zero value is invalid so a forgotten field
// is caught.
const (
	FSInvalid FS = iota
	Ext4
	XFS
	Btrfs
)

// AllFS lists the supported filesystems in rotation order.
var AllFS = []FS{Ext4, XFS, Btrfs}

// String returns the name used by mount -t.
func (f FS) String() string {
	switch f {
	case Ext4:
		return "ext4"
	case XFS:
		return "xfs"
	case Btrfs:
		return "btrfs"
	default:
		return fmt.Sprintf("FS(%d)", uint8(f))
	}
}

// Valid reports whether f is one of the supported filesystems.
func (f FS) Valid() bool { return f == Ext4 || f == XFS || f == Btrfs }

// ParseFS parses a filesystem name ("ext4", "xfs", "btrfs"; case-insensitive).
func ParseFS(s string) (FS, error) {
	for _, f := range AllFS {
		if strings.EqualFold(strings.TrimSpace(s), f.String()) {
			return f, nil
		}
	}
	return FSInvalid, fmt.Errorf("fsload: unknown filesystem %q (want ext4, xfs or btrfs)", s)
}

// ParseFSList parses a comma-separated list such as "ext4,xfs,btrfs".
func ParseFSList(s string) ([]FS, error) {
	var out []FS
	for _, part := range strings.Split(s, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		f, err := ParseFS(part)
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("fsload: empty filesystem list %q", s)
	}
	return out, nil
}

// Rotation returns the filesystem of rebuild number i among list: i=0 is
// list[0], i=1 is list[1], wrapping around. An empty list means AllFS.
// Negative i panics (programmer error).
func Rotation(list []FS, i int) FS {
	if i < 0 {
		panic(fmt.Sprintf("fsload: negative rotation index %d", i))
	}
	if len(list) == 0 {
		list = AllFS
	}
	return list[i%len(list)]
}

// MinSize returns the smallest device in bytes the filesystem's mkfs accepts
// (with the options Mkfs uses): xfsprogs >= 5.19 refuses filesystems under
// 300 MiB, mkfs.btrfs needs about 114 MiB for the default (non-mixed) profile,
// and ext4 is given a practical floor of 16 MiB so the workload has room.
func MinSize(f FS) int64 {
	switch f {
	case Ext4:
		return 16 << 20
	case XFS:
		return 300 << 20
	case Btrfs:
		return 114 << 20
	default:
		panic(fmt.Sprintf("fsload: MinSize of invalid %v", f))
	}
}

// tool is an external program and the Debian package providing it.
type tool struct{ name, pkg string }

var (
	toolMount    = tool{"mount", "util-linux"}
	toolUmount   = tool{"umount", "util-linux"}
	toolMkfsExt4 = tool{"mkfs.ext4", "e2fsprogs"}
	toolE2fsck   = tool{"e2fsck", "e2fsprogs"}
	toolMkfsXFS  = tool{"mkfs.xfs", "xfsprogs"}
	toolXFSRepr  = tool{"xfs_repair", "xfsprogs"}
	toolMkfsBtr  = tool{"mkfs.btrfs", "btrfs-progs"}
	toolBtrfs    = tool{"btrfs", "btrfs-progs"}
)

// tools returns the programs the workload runs for f.
func tools(f FS) []tool {
	base := []tool{toolMount, toolUmount}
	switch f {
	case Ext4:
		return append(base, toolMkfsExt4, toolE2fsck)
	case XFS:
		return append(base, toolMkfsXFS, toolXFSRepr)
	case Btrfs:
		return append(base, toolMkfsBtr, toolBtrfs)
	default:
		return base
	}
}
