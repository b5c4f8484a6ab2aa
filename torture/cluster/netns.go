package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// netnsPort is the port every node listens on inside its own namespace:
// each namespace has its own address, so they never collide.
const netnsPort = 10809

// ipTimeout bounds one run of ip(8).
const ipTimeout = 10 * time.Second

// netns is a network namespace with a veth pair: the node side, inside,
// has address nsIP; the host side has hostIP. The engine and the proxies
// stay in the harness's namespace and reach the node over the pair.
type netns struct {
	name, hostVeth, nsVeth string
	hostIP, nsIP           string
}

// NetnsSupported reports why netns mode cannot run here, or nil: it needs
// root and ip(8) with netns support.
func NetnsSupported(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("cluster: netns mode needs root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("cluster: netns mode needs ip(8) from iproute2: %w", err)
	}
	if _, err := runIP(ctx, "netns", "list"); err != nil {
		return fmt.Errorf("cluster: netns mode needs `ip netns`: %w", err)
	}
	return nil
}

// newTag returns a short random tag that names one cluster's namespaces
// and interfaces, so clusters running at the same time do not clash.
func newTag() (string, error) {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// freeSubnets picks n third octets of 10.199.0.0/16 that no interface of
// this host uses yet, starting at a random one.
func freeSubnets(ctx context.Context, n int) ([]int, error) {
	out, err := runIP(ctx, "-o", "-4", "addr", "show")
	if err != nil {
		return nil, err
	}
	var b [1]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	var picked []int
	for i := range 256 {
		s := (int(b[0]) + i) % 256
		if !strings.Contains(out, fmt.Sprintf(" 10.199.%d.", s)) {
			picked = append(picked, s)
			if len(picked) == n {
				return picked, nil
			}
		}
	}
	return nil, fmt.Errorf("cluster: no %d free subnets in 10.199.0.0/16", n)
}

// addNetns creates namespace i of the cluster tagged tag, on subnet
// 10.199.subnet.0/24. On error it removes what it made.
func addNetns(ctx context.Context, tag string, i, subnet int) (ns *netns, err error) {
	ns = &netns{
		name:     fmt.Sprintf("dst-%s-%d", tag, i),
		hostVeth: fmt.Sprintf("dc%sh%d", tag, i),
		nsVeth:   fmt.Sprintf("dc%sn%d", tag, i),
		hostIP:   fmt.Sprintf("10.199.%d.1", subnet),
		nsIP:     fmt.Sprintf("10.199.%d.2", subnet),
	}
	if _, err := runIP(ctx, "netns", "add", ns.name); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			ns.remove(context.WithoutCancel(ctx))
		}
	}()
	steps := [][]string{
		{"link", "add", ns.hostVeth, "type", "veth", "peer", "name", ns.nsVeth},
		{"link", "set", ns.nsVeth, "netns", ns.name},
		{"addr", "add", ns.hostIP + "/24", "dev", ns.hostVeth},
		{"link", "set", ns.hostVeth, "up"},
		{"-n", ns.name, "addr", "add", ns.nsIP + "/24", "dev", ns.nsVeth},
		{"-n", ns.name, "link", "set", ns.nsVeth, "up"},
		{"-n", ns.name, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if _, err := runIP(ctx, s...); err != nil {
			return nil, err
		}
	}
	return ns, nil
}

// remove deletes the namespace and the host side of the pair (deleting
// the namespace destroys its end of the pair, which takes the host end
// along; the explicit delete covers a half-made pair). Processes inside
// must be gone first.
func (ns *netns) remove(ctx context.Context) error {
	var errs []error
	if _, err := runIP(ctx, "netns", "del", ns.name); err != nil && !strings.Contains(err.Error(), "No such file") {
		errs = append(errs, err)
	}
	if out, err := runIP(ctx, "link", "show", ns.hostVeth); err == nil && out != "" {
		// The kernel destroys the pair asynchronously after the namespace
		// goes: the link may vanish between show and del (iproute2 says
		// "Cannot find device" or, from the kernel, "No such device").
		if _, err := runIP(ctx, "link", "del", ns.hostVeth); err != nil &&
			!strings.Contains(err.Error(), "Cannot find device") && !strings.Contains(err.Error(), "No such device") {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// exec prefixes argv so that it runs inside the namespace. ip netns exec
// execs the command in place, so the PID is the command's own.
func (ns *netns) exec(argv []string) []string {
	return append([]string{"ip", "netns", "exec", ns.name}, argv...)
}

// runIP runs ip(8) with args within ipTimeout.
func runIP(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, ipTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("cluster: ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
