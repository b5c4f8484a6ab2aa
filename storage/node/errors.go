package node

import "errors"

// Sentinel errors of this package, checked with errors.Is.
var (
	// ErrUnavailable is wrapped by errors of a node that cannot serve
	// requests at all: a remote node whose last retry failed, a closed
	// node.
	ErrUnavailable = errors.New("node unavailable")

	// ErrNotDevice: the path given to OpenFile is neither a regular file
	// nor a block device.
	ErrNotDevice = errors.New("node: not a regular file or block device")
	// ErrSize: the size asked of OpenFile is impossible (negative, zero,
	// larger than a block device or than a read-only file).
	ErrSize = errors.New("node: bad node size")
	// ErrInUse: a block device to be opened read-write is in use by the
	// system (mounted, or held by device mapper, md, ...).
	ErrInUse = errors.New("node: block device is in use")

	// ErrSizeChanged is reported through RemoteOptions.OnState when a
	// remote node reconnects to an export whose size differs from the
	// previous connection's (the peer's media was replaced or resized).
	ErrSizeChanged = errors.New("node: remote export size changed")
	// ErrMediaChanged fails a request that began before a reconnect to
	// media the node's verifier did not recognise (see Remote.SetVerify):
	// its answer would come from other media than the caller addressed.
	ErrMediaChanged = errors.New("node: the media behind the node changed")
	// ErrFlagsChanged is reported like ErrSizeChanged when the export's
	// transmission flags differ from the previous connection's.
	ErrFlagsChanged = errors.New("node: remote export flags changed")
	// ErrTimeout is wrapped by the reason a remote connection was fenced
	// after a request or a ping got no reply within its deadline.
	ErrTimeout = errors.New("node: no reply within the deadline")
	// ErrBadURL is wrapped by every error of ParseURL.
	ErrBadURL = errors.New("node: bad NBD URL")
)
