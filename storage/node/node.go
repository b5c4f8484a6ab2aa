// Package node holds the member devices of a dst storage behind one small
// interface: a local file or block device, memory (tests), and a remote NBD
// node whose every request is a transaction (resent on timeout, replayed
// after reconnect, failed after a bounded number of tries).
//
// The engine (storage/engine) composes nodes with a layout; the exporter
// (storage/export) serves one node, or an assembled storage, over NBD.
package node

import (
	"dst/storage/nbd"
)

// Node is one member device. Its methods are those of nbd.Backend and may
// be called concurrently; offsets and lengths are within Size. A method
// returns an error wrapping an nbd.Errno where a specific NBD error applies
// (ENOSPC, EPERM, ENOTSUP), and wrapping ErrUnavailable when the device
// cannot be reached at all (a remote node after its last retry).
type Node interface {
	nbd.Backend
	// Size is the device size in bytes. For a remote node it is learned at
	// every (re)connect and may change when the peer's media is replaced.
	Size() int64
	// Flags are the NBD capabilities the device honestly supports
	// (FlagSendFlush, FlagSendFUA, FlagSendTrim, FlagSendWriteZero,
	// FlagSendFastZero, FlagSendCache, FlagReadOnly).
	Flags() nbd.TransmissionFlags
	// Close releases the device; requests in flight fail.
	Close() error
	// String names the node in logs and errors (a path or a URL).
	String() string
}
