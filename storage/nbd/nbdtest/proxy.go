package nbdtest

import (
	"context"
	"testing"

	"dst/storage/nbd/nbdproxy"
)

// StartProxy starts a proxy to upstream for the test and closes it when
// the test ends.
func StartProxy(t testing.TB, network, upstream string, opts nbdproxy.Options) *nbdproxy.Proxy {
	t.Helper()
	p, err := nbdproxy.New(network, upstream, opts)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(context.Background()) }()
	t.Cleanup(func() {
		p.Close()
		if err := <-done; err != nil {
			t.Errorf("proxy: %v", err)
		}
	})
	return p
}
