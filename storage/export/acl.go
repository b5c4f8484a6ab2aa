package export

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"dst/storage/nbd"
)

// ErrBadRule is wrapped by every error of ParseRule and ParseACL.
var ErrBadRule = errors.New("export: bad access rule")

// Rule grants peers whose address lies in Prefix the access Access
// (nbd.AccessReadOnly or nbd.AccessReadWrite).
type Rule struct {
	Prefix netip.Prefix
	Access nbd.Access
}

// String formats r as ParseRule reads it: "10.0.0.0/8=rw".
func (r Rule) String() string {
	mode := "rw"
	if r.Access == nbd.AccessReadOnly {
		mode = "ro"
	}
	return r.Prefix.String() + "=" + mode
}

// ParseRule parses "CIDR=ro" or "CIDR=rw". A bare address stands for a
// single host (/32 or /128). Host bits are cleared: "10.1.2.3/8" is
// 10.0.0.0/8. IPv4-mapped IPv6 prefixes are refused; write them as IPv4.
func ParseRule(s string) (Rule, error) {
	cidr, mode, ok := strings.Cut(strings.TrimSpace(s), "=")
	if !ok {
		return Rule{}, fmt.Errorf("%w %q: want CIDR=ro or CIDR=rw", ErrBadRule, s)
	}
	var r Rule
	switch mode {
	case "ro":
		r.Access = nbd.AccessReadOnly
	case "rw":
		r.Access = nbd.AccessReadWrite
	default:
		return Rule{}, fmt.Errorf("%w %q: access %q is neither ro nor rw", ErrBadRule, s, mode)
	}
	var err error
	if strings.Contains(cidr, "/") {
		r.Prefix, err = netip.ParsePrefix(cidr)
	} else {
		var a netip.Addr
		a, err = netip.ParseAddr(cidr)
		if err == nil && a.Zone() != "" {
			return Rule{}, fmt.Errorf("%w %q: zones are not supported", ErrBadRule, s)
		}
		r.Prefix = netip.PrefixFrom(a, a.BitLen())
	}
	if err != nil {
		return Rule{}, fmt.Errorf("%w %q: %v", ErrBadRule, s, err)
	}
	if r.Prefix.Addr().Is4In6() {
		return Rule{}, fmt.Errorf("%w %q: write IPv4-mapped addresses as IPv4", ErrBadRule, s)
	}
	r.Prefix = r.Prefix.Masked()
	return r, nil
}

// ACL is the access control list of one export: rules matched by longest
// prefix. The zero value has no rules and lets every peer read and write.
// An ACL is immutable once built and safe for concurrent use.
type ACL struct {
	rules []Rule // longest prefix first; no two with the same prefix
}

// NewACL builds an ACL from rules. Two rules for the same prefix are an
// error, even with the same access.
func NewACL(rules ...Rule) (ACL, error) {
	var a ACL
	for _, r := range rules {
		if r.Access != nbd.AccessReadOnly && r.Access != nbd.AccessReadWrite {
			return ACL{}, fmt.Errorf("%w %v: access %v", ErrBadRule, r.Prefix, r.Access)
		}
		r.Prefix = r.Prefix.Masked()
		if a.index(r.Prefix) >= 0 {
			return ACL{}, fmt.Errorf("%w: two rules for %v", ErrBadRule, r.Prefix)
		}
		a.rules = append(a.rules, r)
	}
	a.sort()
	return a, nil
}

// ParseACL parses a comma-separated list of rules, for example
// "127.0.0.0/8=rw,::1/128=ro". The empty string is the empty ACL.
func ParseACL(s string) (ACL, error) {
	var rules []Rule
	for f := range strings.SplitSeq(s, ",") {
		if strings.TrimSpace(f) == "" {
			continue
		}
		r, err := ParseRule(f)
		if err != nil {
			return ACL{}, err
		}
		rules = append(rules, r)
	}
	return NewACL(rules...)
}

// Override returns a copy of a with the rules of b added; a rule of b
// replaces a rule of a for the same prefix. It combines rules given for
// every export with rules given for one export.
func (a ACL) Override(b ACL) ACL {
	out := ACL{rules: slices.Clone(a.rules)}
	for _, r := range b.rules {
		if i := out.index(r.Prefix); i >= 0 {
			out.rules[i] = r
		} else {
			out.rules = append(out.rules, r)
		}
	}
	out.sort()
	return out
}

// Rules returns the rules, longest prefix first.
func (a ACL) Rules() []Rule { return slices.Clone(a.rules) }

// Empty reports whether a has no rules (everyone may read and write).
func (a ACL) Empty() bool { return len(a.rules) == 0 }

// String formats a as ParseACL reads it.
func (a ACL) String() string {
	s := make([]string, len(a.rules))
	for i, r := range a.rules {
		s[i] = r.String()
	}
	return strings.Join(s, ",")
}

// Access returns what a peer at addr may do: the access of the rule with
// the longest prefix containing addr, nbd.AccessReadWrite if a has no
// rules, nbd.AccessDenied if no rule matches. IPv4-mapped IPv6 addresses
// (from dual-stack listeners) are matched as IPv4.
func (a ACL) Access(addr netip.Addr) nbd.Access {
	if len(a.rules) == 0 {
		return nbd.AccessReadWrite
	}
	addr = addr.Unmap().WithZone("")
	for _, r := range a.rules {
		if r.Prefix.Contains(addr) {
			return r.Access
		}
	}
	return nbd.AccessDenied
}

// AccessOf is Access for a connection's remote address. Peers that are not
// TCP or UDP addresses match no rule.
func (a ACL) AccessOf(peer net.Addr) nbd.Access {
	if len(a.rules) == 0 {
		return nbd.AccessReadWrite
	}
	addr, ok := peerAddr(peer)
	if !ok {
		return nbd.AccessDenied
	}
	return a.Access(addr)
}

// peerAddr extracts the IP address of a connection's remote address.
func peerAddr(peer net.Addr) (netip.Addr, bool) {
	switch p := peer.(type) {
	case *net.TCPAddr:
		return p.AddrPort().Addr(), true
	case *net.UDPAddr:
		return p.AddrPort().Addr(), true
	}
	if peer == nil {
		return netip.Addr{}, false
	}
	ap, err := netip.ParseAddrPort(peer.String())
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr(), true
}

func (a ACL) index(p netip.Prefix) int {
	return slices.IndexFunc(a.rules, func(r Rule) bool { return r.Prefix == p })
}

// sort orders the rules longest prefix first; prefixes of equal length
// cannot both contain one address unless they are equal, so the order
// among them does not matter (it is made deterministic for String).
func (a ACL) sort() {
	slices.SortStableFunc(a.rules, func(x, y Rule) int {
		if d := y.Prefix.Bits() - x.Prefix.Bits(); d != 0 {
			return d
		}
		return x.Prefix.Addr().Compare(y.Prefix.Addr())
	})
}
