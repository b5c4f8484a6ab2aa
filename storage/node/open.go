package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// DefaultConnectTimeout bounds how long Open waits for the first
// connection of a remote node unless OpenOptions says otherwise.
const DefaultConnectTimeout = 10 * time.Second

// OpenOptions configure Open. The zero value opens an existing file
// read-write, and a remote node with the zero RemoteOptions, waiting at
// most DefaultConnectTimeout for its first connection.
type OpenOptions struct {
	// ReadOnly opens a file: member read-only (a remote node's read-only
	// flag comes from its server).
	ReadOnly bool
	// CreateSize, if positive, creates a missing file: member with this
	// many bytes (sparse). Zero makes a missing file an error: a storage's
	// members must exist, since a typo would otherwise make an empty one.
	CreateSize int64
	// Remote configures nbd:// and nbd+unix:// members. Its Name defaults
	// to the URL as written.
	Remote RemoteOptions
	// ConnectTimeout bounds the wait for a remote node's first connection
	// (its Size is learned from that handshake). Zero means
	// DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// Background returns a remote node that made no connection within
	// ConnectTimeout anyway, its manager dialling on (a storage that may
	// start without it: allow_degraded). Until its first connection its
	// Size and Flags are zero and Remote.Info reports no handshake; its
	// requests wait for a connection within their budget.
	Background bool
}

// Open opens the member a URL names:
//
//	file:/PATH, file:///PATH, file://localhost/PATH   a local file or block device
//	file:PATH                                         the same, PATH relative to the working directory
//	nbd://HOST[:PORT][/EXPORT], nbd+unix:///EXPORT?socket=PATH, nbds..., see ParseURL
//
// A file is opened with OpenFile. A remote node is created with
// NewRemote, its connection manager started (Close stops it), and Open
// waits until its first connection is up, so that Size and Flags are
// known when it returns; it fails if none comes within ConnectTimeout or
// ctx (with Background, only if ctx ends first). Errors name the URL and wrap ErrBadURL, fs.ErrNotExist, the errors
// of OpenFile or ErrUnavailable; on error nothing stays open or running.
func Open(ctx context.Context, rawURL string, opts OpenOptions) (Node, error) {
	scheme, _, _ := strings.Cut(rawURL, ":")
	if scheme == "file" {
		path, err := FilePath(rawURL)
		if err != nil {
			return nil, err
		}
		return openFile(rawURL, path, opts)
	}
	addr, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	return openRemote(ctx, rawURL, addr, opts)
}

// FilePath returns the path a file: URL names: file:/PATH, file:///PATH,
// file://localhost/PATH, or file:PATH for a relative path. The path is
// percent-decoded and cleaned. Errors wrap ErrBadURL.
func FilePath(rawURL string) (string, error) {
	bad := func(format string, args ...any) (string, error) {
		return "", fmt.Errorf("%w: %q: %s", ErrBadURL, rawURL, fmt.Sprintf(format, args...))
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadURL, err)
	}
	if u.Scheme != "file" {
		return bad("not a file: URL")
	}
	var path string
	switch {
	case u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		return bad("a file URL has no user, query or fragment")
	case u.Opaque != "":
		path, err = url.PathUnescape(u.Opaque)
		if err != nil {
			return bad("%v", err)
		}
	case u.Host != "" && u.Host != "localhost":
		return bad("host %q: a file URL names a file on this machine (write file:/PATH)", u.Host)
	default:
		path = u.Path
	}
	if path == "" {
		return bad("no path")
	}
	return filepath.Clean(path), nil
}

// openFile opens the file: member at path.
func openFile(rawURL, path string, opts OpenOptions) (Node, error) {
	if opts.CreateSize <= 0 {
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("node %s: %s does not exist: %w", rawURL, path, fs.ErrNotExist)
		}
	}
	f, err := OpenFile(path, FileOptions{ReadOnly: opts.ReadOnly, Size: opts.CreateSize})
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", rawURL, err)
	}
	return f, nil
}

// openRemote starts a remote node and waits for its first connection.
func openRemote(ctx context.Context, rawURL string, addr Address, opts OpenOptions) (Node, error) {
	ro := opts.Remote
	if ro.Name == "" {
		ro.Name = rawURL
	}
	// Keep the latest reason the node is not connected, for the error.
	var mu sync.Mutex
	var lastErr error
	user := ro.OnState
	ro.OnState = func(s State, err error) {
		if err != nil {
			mu.Lock()
			lastErr = err
			mu.Unlock()
		}
		if user != nil {
			user(s, err)
		}
	}
	r, err := NewRemote(addr, ro)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", rawURL, err)
	}
	// The manager runs until Close: it is not bound to ctx, which only
	// bounds the wait below. Run fails only after Close, which is no error
	// here.
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		_ = r.Run(context.Background())
	}()
	timeout := opts.ConnectTimeout
	if timeout <= 0 {
		timeout = DefaultConnectTimeout
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := r.Ready(wctx); err != nil {
		if opts.Background && ctx.Err() == nil {
			mu.Lock()
			why := lastErr
			mu.Unlock()
			if ro.Logger != nil {
				ro.Logger.Warn("node not reachable yet; it is dialled on in the background", "node", rawURL, "waited", timeout, "err", why)
			}
			return r, nil
		}
		r.Close()
		<-ran
		mu.Lock()
		why := lastErr
		mu.Unlock()
		if why != nil {
			return nil, fmt.Errorf("node %s: %w: no connection within %v: %w", rawURL, ErrUnavailable, timeout, why)
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("node %s: waiting for the first connection: %w", rawURL, ctx.Err())
		}
		return nil, fmt.Errorf("node %s: %w: no connection within %v", rawURL, ErrUnavailable, timeout)
	}
	return r, nil
}
