package upstream_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/pion/transport/v2/test"

	"github.com/sluiceproxy/sluice/proxy/upstream"
	"github.com/sluiceproxy/sluice/shaper/shapertest"
)

// TestStalledServerSkipped: a server with passive.failures dials in
// flight, none answered for 20 ms, takes no new connection while another
// can; when every server is so, one still takes it (a wait rather than no
// server); a dial that ends lifts it.
func TestStalledServerSkipped(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	clk := shapertest.NewClock()
	release := make(chan struct{})
	hang := map[string]bool{"a:1": true}
	fn := newFakeNet()
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if hang[addr] {
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return fn.dial(ctx, network, addr)
	}
	p, err := upstream.NewPool(upstream.PoolConfig{Balance: upstream.RoundRobin,
		Servers: []upstream.ServerConfig{{Address: "a:1"}, {Address: "b:1"}},
		Passive: upstream.Passive{Failures: 1, Eject: time.Minute}},
		upstream.Options{Clock: clk, DialContext: dial, ConnectTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	pending := make(chan *upstream.Lease, 4)
	go func() { // round robin: the first goes to a, and hangs
		l, err := p.DialFor(context.Background(), upstream.Request{})
		if err != nil {
			t.Error(err)
		}
		pending <- l
	}()
	clk.BlockUntil(1) // the connect timeout's timer: a's dial is in flight
	clk.Advance(21 * time.Millisecond)
	for range 3 {
		l, err := p.DialFor(context.Background(), upstream.Request{})
		if err != nil || l.Addr() != "b:1" {
			t.Fatalf("with a stalled: %v, %v; want b:1", l, err)
		}
		l.Done()
	}
	close(release)
	l := <-pending
	if l.Addr() != "a:1" {
		t.Fatalf("the hung dial ended at %s, want a:1", l.Addr())
	}
	l.Done()
	got := map[string]int{}
	for range 4 {
		l, err := p.DialFor(context.Background(), upstream.Request{})
		if err != nil {
			t.Fatal(err)
		}
		got[l.Addr()]++
		l.Done()
	}
	if got["a:1"] != 2 || got["b:1"] != 2 {
		t.Errorf("after a's dial ended: %v, want both in turn", got)
	}
}

// TestAllStalledStillPicked: when every server is stalled, a connection
// still gets one (a wait), not ErrNoServer.
func TestAllStalledStillPicked(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	clk := shapertest.NewClock()
	release := make(chan struct{})
	fn := newFakeNet()
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		<-release
		return fn.dial(ctx, network, addr)
	}
	p, err := upstream.NewPool(upstream.PoolConfig{Balance: upstream.RoundRobin,
		Servers: []upstream.ServerConfig{{Address: "a:1"}, {Address: "b:1"}},
		Passive: upstream.Passive{Failures: 1, Eject: time.Minute}},
		upstream.Options{Clock: clk, DialContext: dial, ConnectTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	done := make(chan error, 3)
	for i := range 3 {
		go func() {
			l, err := p.DialFor(context.Background(), upstream.Request{})
			if err == nil {
				l.Done()
			}
			done <- err
		}()
		clk.BlockUntil(i + 1) // its connect timer: its dial is in flight
		if i == 1 {
			clk.Advance(21 * time.Millisecond) // both stalled now
		}
	}
	close(release)
	for range 3 {
		if err := <-done; err != nil {
			t.Errorf("DialFor with every server stalled: %v, want a server", err)
		}
	}
}
