package node

import (
	"fmt"
	"sync/atomic"
)

// State is the connection state of a remote node, reported through
// RemoteOptions.OnState.
type State int32

// States of a remote node.
const (
	// StateIdle: Run has not been called; requests wait for a connection.
	StateIdle State = iota
	// StateConnecting: no live connection — dialling, backing off, or the
	// last connection was fenced. Requests wait (within their budget).
	StateConnecting
	// StateConnected: a live connection serves requests.
	StateConnected
	// StateStopped: Run ended or Close was called; requests fail with
	// ErrUnavailable at once.
	StateStopped
)

func (s State) String() string {
	switch s {
	case StateIdle:
		return "idle"
	case StateConnecting:
		return "connecting"
	case StateConnected:
		return "connected"
	case StateStopped:
		return "stopped"
	}
	return fmt.Sprintf("state(%d)", int32(s))
}

// RemoteMetrics is a snapshot of a remote node's counters, all counted
// since NewRemote. The engine exports them.
type RemoteMetrics struct {
	// Requests counts the calls of ReadAt, WriteAt, Flush, Trim,
	// WriteZeroes and Cache.
	Requests uint64
	// Bytes counts the payload bytes of reads and writes that succeeded.
	Bytes uint64
	// Retries counts the tries after the first of each request (resends).
	Retries uint64
	// Connects counts the connections made; Reconnects those after the
	// first.
	Connects, Reconnects uint64
	// Fences counts the connections closed and drained because they were
	// suspect, lost or shut down by the peer.
	Fences uint64
	// Timeouts counts the tries and pings that got no reply within
	// RequestTimeout.
	Timeouts uint64
	// Pings counts the pings sent to idle connections.
	Pings uint64
	// Failures counts the calls that returned an error; Unavailable those
	// among them that wrap ErrUnavailable.
	Failures, Unavailable uint64
}

// remoteCounters are the live counters behind RemoteMetrics.
type remoteCounters struct {
	requests, bytes, retries, connects, fences, timeouts, pings, failures, unavailable atomic.Uint64
}

func (c *remoteCounters) snapshot() RemoteMetrics {
	m := RemoteMetrics{
		Requests:    c.requests.Load(),
		Bytes:       c.bytes.Load(),
		Retries:     c.retries.Load(),
		Connects:    c.connects.Load(),
		Fences:      c.fences.Load(),
		Timeouts:    c.timeouts.Load(),
		Pings:       c.pings.Load(),
		Failures:    c.failures.Load(),
		Unavailable: c.unavailable.Load(),
	}
	if m.Connects > 0 {
		m.Reconnects = m.Connects - 1
	}
	return m
}
