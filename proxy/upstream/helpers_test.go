package upstream_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluiceproxy/sluice/proxy/upstream"
	"github.com/sluiceproxy/sluice/shaper/shapertest"
)

// fakeConn is the conn a fakeNet dial returns; any call but Close
// crashes (the embedded nil interface).
type fakeConn struct {
	net.Conn
	addr string
}

func (c *fakeConn) Close() error { return nil }

// fakeNet dials nothing: it records dials and refuses those to the
// addresses in refuse.
type fakeNet struct {
	mu     sync.Mutex
	refuse map[string]bool
	dials  []string
}

func newFakeNet(refuse ...string) *fakeNet {
	f := &fakeNet{refuse: map[string]bool{}}
	for _, a := range refuse {
		f.refuse[a] = true
	}
	return f
}

func (f *fakeNet) setRefuse(addr string, refuse bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refuse[addr] = refuse
}

func (f *fakeNet) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dials = append(f.dials, addr)
	if f.refuse[addr] {
		return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
	}
	return &fakeConn{addr: addr}, nil
}

func (f *fakeNet) takeDials() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.dials
	f.dials = nil
	return d
}

// events collects a pool's state changes.
type events struct {
	mu  sync.Mutex
	all []upstream.StateChange
}

func (e *events) add(c upstream.StateChange) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.all = append(e.all, c)
}

// take returns the changes so far as "addr from>to reason" lines and
// forgets them.
func (e *events) take() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, c := range e.all {
		out = append(out, fmt.Sprintf("%s %s>%s %s", c.Server, c.From, c.To, c.Reason))
	}
	e.all = nil
	return out
}

func (e *events) last() upstream.StateChange {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.all) == 0 {
		return upstream.StateChange{}
	}
	return e.all[len(e.all)-1]
}

// servers makes server configs for addresses a, b, c… with the given
// weights.
func servers(weights ...int) []upstream.ServerConfig {
	s := make([]upstream.ServerConfig, len(weights))
	for i, w := range weights {
		s[i] = upstream.ServerConfig{Address: addrOf(i), Weight: w}
	}
	return s
}

// addrOf names the i-th test server: "a:1", "b:1", …
func addrOf(i int) string { return string(rune('a'+i)) + ":1" }

// name returns the letter of a test server's address.
func name(addr string) string { return addr[:1] }

// testPool makes a pool on a fake clock and a fake network.
func testPool(t *testing.T, cfg upstream.PoolConfig) (*upstream.Pool, *shapertest.Clock, *fakeNet, *events) {
	t.Helper()
	clk := shapertest.NewClock()
	fn := newFakeNet()
	ev := &events{}
	p, err := upstream.NewPool(cfg, upstream.Options{Clock: clk, DialContext: fn.dial, OnState: ev.add})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, clk, fn, ev
}

// dialDone dials once and ends the lease at once; it returns the
// server's letter, or "-" and the error.
func dialDone(p *upstream.Pool, client string) (string, error) {
	var req upstream.Request
	if client != "" {
		req.Client = mustAddrPort(client)
	}
	l, err := p.DialFor(context.Background(), req)
	if err != nil {
		return "-", err
	}
	l.Done()
	return name(l.Addr()), nil
}

// sequence dials n times, ending each lease at once, and returns the
// servers' letters.
func sequence(t *testing.T, p *upstream.Pool, n int) string {
	t.Helper()
	var b []byte
	for range n {
		s, err := dialDone(p, "")
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, s...)
	}
	return string(b)
}

func activeConns(p *upstream.Pool) int64 {
	var n int64
	for _, s := range p.Stats().Servers {
		n += s.Active
	}
	return n
}

func server(t *testing.T, p *upstream.Pool, addr string) upstream.ServerStats {
	t.Helper()
	s, ok := p.Server(addr)
	if !ok {
		t.Fatalf("no server %s in the pool", addr)
	}
	return s
}

// within fails the test if ch gets nothing within a generous real time:
// for a goroutine's work, never for timing.
func within(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
