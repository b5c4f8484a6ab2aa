package node

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// DefaultPort is the NBD port of a URL that names none (IANA: 10809).
const DefaultPort = "10809"

// Address is where a remote node lives: what ParseURL makes of an NBD URL.
type Address struct {
	// Network is "tcp" or "unix".
	Network string
	// Addr is "host:port" for tcp, the socket path for unix.
	Addr string
	// Export is the export name; empty asks for the server's default.
	Export string
	// TLS says the URL requires TLS (nbds:// and nbds+unix://).
	TLS bool
}

// ParseURL parses an NBD URL as the NBD URI specification
// (doc/uri.md of the NBD project) writes them:
//
//	nbd://HOST[:PORT][/EXPORT]          TCP, port 10809 by default
//	nbds://HOST[:PORT][/EXPORT]         the same, TLS required
//	nbd+unix:///[EXPORT]?socket=PATH    Unix domain socket
//	nbds+unix:///[EXPORT]?socket=PATH   the same, TLS required
//
// HOST may be a name, an IPv4 address or a bracketed IPv6 address. The
// export name is the path without its first slash, percent-decoded.
// Query parameters other than socket (tls-certificates and the like) and
// user information are refused rather than ignored. Errors wrap
// ErrBadURL.
func ParseURL(s string) (Address, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Address{}, fmt.Errorf("%w: %w", ErrBadURL, err)
	}
	bad := func(format string, args ...any) (Address, error) {
		return Address{}, fmt.Errorf("%w: %q: %s", ErrBadURL, s, fmt.Sprintf(format, args...))
	}
	var a Address
	switch u.Scheme {
	case "nbd", "nbds":
		a.Network = "tcp"
	case "nbd+unix", "nbds+unix":
		a.Network = "unix"
	case "":
		return bad("no scheme (want nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH)")
	default:
		return bad("scheme %q is not supported (nbd, nbds, nbd+unix, nbds+unix)", u.Scheme)
	}
	a.TLS = strings.HasPrefix(u.Scheme, "nbds")
	switch {
	case u.Opaque != "":
		return bad("write %s://HOST/EXPORT or %s:///EXPORT", u.Scheme, u.Scheme)
	case u.User != nil:
		return bad("user information is not supported")
	case u.Fragment != "":
		return bad("a fragment is not supported")
	}
	if u.Path != "" && !strings.HasPrefix(u.Path, "/") {
		return bad("the export path must start with /")
	}
	a.Export = strings.TrimPrefix(u.Path, "/")
	q := u.Query()
	for k := range q {
		if k != "socket" || a.Network != "unix" {
			return bad("query parameter %q is not supported", k)
		}
	}
	if a.Network == "unix" {
		if u.Host != "" {
			return bad("a unix URL has no host (write %s:///EXPORT?socket=PATH)", u.Scheme)
		}
		if len(q["socket"]) != 1 || q.Get("socket") == "" {
			return bad("a unix URL needs exactly one socket=PATH")
		}
		a.Addr = q.Get("socket")
		return a, nil
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		return bad("no host")
	}
	if port == "" {
		if strings.HasSuffix(u.Host, ":") {
			return bad("empty port")
		}
		port = DefaultPort
	}
	a.Addr = net.JoinHostPort(host, port)
	return a, nil
}

// String returns the address as a URL that ParseURL reads back.
func (a Address) String() string {
	scheme := "nbd"
	if a.TLS {
		scheme = "nbds"
	}
	export := (&url.URL{Path: a.Export}).EscapedPath()
	if a.Network == "unix" {
		return scheme + "+unix:///" + export + "?socket=" + url.QueryEscape(a.Addr)
	}
	return scheme + "://" + a.Addr + "/" + export
}
