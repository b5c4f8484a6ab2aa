package nbd

import (
	"context"
	"crypto/tls"
	"net"
)

// Backend is the device behind an export. The server calls its methods
// concurrently from several goroutines; a Backend must be safe for that.
//
// Offsets and lengths are already checked against the export size and block
// constraints when a method is called. A method returns an error wrapping an
// Errno to choose the reply (for example ENOSPC or ENOTSUP); any other
// error is mapped by ErrnoOf (operating system errors to their NBD code,
// the rest to EIO).
type Backend interface {
	// ReadAt fills all of p from offset off.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt writes all of p at offset off; with CmdFlagFUA the data is
	// durable when WriteAt returns.
	WriteAt(ctx context.Context, p []byte, off int64, flags CmdFlags) error
	// Flush makes every completed write durable.
	Flush(ctx context.Context) error
	// Trim hints that [off, off+length) is no longer needed; reads of it
	// may afterwards return anything that was written there or zeroes.
	Trim(ctx context.Context, off, length int64, flags CmdFlags) error
	// WriteZeroes makes [off, off+length) read back as zeroes. Without
	// CmdFlagNoHole it may deallocate; with CmdFlagFastZero it must fail
	// with ENOTSUP rather than be slower than a write.
	WriteZeroes(ctx context.Context, off, length int64, flags CmdFlags) error
	// Cache hints that [off, off+length) will be read soon.
	Cache(ctx context.Context, off, length int64) error
}

// NowaitBackend is what a Backend implements when it can sometimes finish
// a read or a write at once, without waiting for media: data in the page
// cache, a memory-backed file. The connection's reader then serves such a
// request where it decoded it, with no hand-off to a worker goroutine, and
// sends its reply with the others of the same burst in one write.
//
// Neither method may block on media or on other requests: when it would,
// it does nothing that matters and returns done=false, and the request
// takes the ordinary path (ReadAt or WriteAt on a worker). With done=true,
// err is the request's outcome, exactly as ReadAt or WriteAt would return
// it.
type NowaitBackend interface {
	Backend
	// TryReadAt fills all of p from off, or returns done=false.
	TryReadAt(p []byte, off int64) (done bool, err error)
	// TryWriteAt writes all of p at off (honouring CmdFlagFUA), or
	// returns done=false. p is only valid during the call.
	TryWriteAt(p []byte, off int64, flags CmdFlags) (done bool, err error)
}

// ViewBackend is what a Backend implements when some of its bytes lie in
// memory the server may send from directly (a file on a memory file
// system, mapped): a read reply is then written from them, one copy (to
// the socket) instead of two (to a buffer, then to the socket).
//
// View returns the bytes [off, off+n) of the export, or ok=false (the
// read then takes the ordinary path). It must not block. The slice is
// read by the kernel when the reply is written, which may be after later
// requests ran: a read overlapping a write in flight at the same time
// may show either's bytes, as with ReadAt. If the memory goes away
// (the file shrank), writing the reply fails and ends the connection.
type ViewBackend interface {
	Backend
	View(off int64, n int) (p []byte, ok bool)
}

// WriteViewBackend is a ViewBackend whose memory may also be written: the
// payload of a large write is received from the socket straight into it
// (one copy instead of two), and WroteView then finishes the write
// (CmdFlagFUA: makes it durable).
//
// WritableView returns the bytes [off, off+n) to receive into, or
// ok=false (the write then takes the ordinary path). The bytes land as
// they arrive, so a write whose connection breaks mid-payload leaves part
// of its range written — as any write that was not acknowledged may. The
// server receives into the view only when the connection is not fenced
// (see OptFence), and counts the write as started meanwhile. If the
// memory goes away (the file shrank), the fault ends the connection, not
// the process.
type WriteViewBackend interface {
	ViewBackend
	WritableView(off int64, n int) (p []byte, ok bool)
	WroteView(off int64, n int, flags CmdFlags) error
}

// Export is one named device a Server offers.
type Export struct {
	// Name is the export name; a server with a single export also answers
	// to the empty (default) name.
	Name string
	// Description is an optional human-readable text sent on request.
	Description string
	// Size of the export in bytes.
	Size int64
	// Flags are the capabilities of the backend: any of FlagSendFlush,
	// FlagSendFUA, FlagSendTrim, FlagSendWriteZero, FlagSendFastZero,
	// FlagSendCache, FlagCanMultiConn, FlagReadOnly, FlagRotational.
	// FlagHasFlags is always added; FlagReadOnly is added for read-only
	// peers.
	Flags TransmissionFlags
	// MinBlock, PreferredBlock and MaxBlock are the block size constraints
	// advertised to clients. Zero means 1, 4096 and the server's maximum
	// payload. Requests not aligned to MinBlock get EINVAL.
	MinBlock, PreferredBlock, MaxBlock uint32
	// Backend serves the requests.
	Backend Backend
	// Hidden exports answer to their name only: NBD_OPT_LIST leaves them
	// out, and they do not count for the lone export that answers to the
	// empty name (dst export's digest exports).
	Hidden bool
}

// Access is what a peer may do with an export.
type Access int

// Access levels returned by ServerOptions.Authorize.
const (
	AccessDenied Access = iota
	AccessReadOnly
	AccessReadWrite
)

func (a Access) String() string {
	switch a {
	case AccessDenied:
		return "denied"
	case AccessReadOnly:
		return "read-only"
	case AccessReadWrite:
		return "read-write"
	}
	return "access(?)"
}

// Peer describes the client of a connection during the handshake.
type Peer struct {
	Addr net.Addr
	// TLS is nil until the connection switched to TLS.
	TLS *tls.ConnectionState
}
