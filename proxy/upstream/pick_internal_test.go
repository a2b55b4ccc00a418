package upstream

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/sluiceproxy/sluice/shaper/shapertest"
)

// BenchmarkPick measures what choosing a server costs a connection: the
// pool's lock, the clock, the balancer's choice among 3 and 10 servers
// (weights 1 to 3, one backup, quotas on), the charge, and the charge
// taken back (so that the pool stays in a steady state). The budget is
// 300 ns and 0 allocations.
func BenchmarkPick(b *testing.B) {
	for _, bal := range []Balance{LeastConn, RoundRobin, SourceHash} {
		for _, n := range []int{3, 10} {
			b.Run(fmt.Sprintf("%s/%d", bal, n), func(b *testing.B) {
				cfg := PoolConfig{Balance: bal}
				for i := range n {
					cfg.Servers = append(cfg.Servers, ServerConfig{
						Address: fmt.Sprintf("10.0.0.%d:80", i+1),
						Weight:  1 + i%3,
						Backup:  i == n-1,
						Quota:   Quota{Conns: 1 << 40, Per: 1 << 40},
					})
				}
				p, err := NewPool(cfg, Options{Clock: shapertest.NewClock()})
				if err != nil {
					b.Fatal(err)
				}
				defer p.Close()
				a := &attempt{p: p, hashed: true}
				keys := make([]uint64, 1024)
				for i := range keys {
					keys[i] = hashAddr(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}))
				}
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					a.key = keys[i&1023]
					i++
					p.mu.Lock()
					now := p.clock.Now()
					s := p.pick(a, now)
					win := p.charge(s, now)
					p.uncharge(s, win)
					p.mu.Unlock()
				}
			})
		}
	}
}

// TestPickAllocs: choosing a server allocates nothing.
func TestPickAllocs(t *testing.T) {
	for _, bal := range []Balance{LeastConn, RoundRobin, SourceHash} {
		p, err := NewPool(PoolConfig{Balance: bal, Servers: []ServerConfig{{Address: "a:1", Weight: 2}, {Address: "b:1"}, {Address: "c:1", Backup: true}}},
			Options{Clock: shapertest.NewClock()})
		if err != nil {
			t.Fatal(err)
		}
		a := &attempt{p: p, hashed: true, key: 42}
		if n := testing.AllocsPerRun(1000, func() {
			p.mu.Lock()
			now := p.clock.Now()
			s := p.pick(a, now)
			p.uncharge(s, p.charge(s, now))
			p.mu.Unlock()
		}); n != 0 {
			t.Errorf("%s: %v allocations per pick, want 0", bal, n)
		}
		p.Close()
	}
}

// TestReadyMatchesUsable: what pick reads (kept by settle) agrees with
// the server's state computed from scratch, after any sequence of
// operations and clock moves.
func TestReadyMatchesUsable(t *testing.T) {
	clk := shapertest.NewClock()
	refuse := map[string]bool{}
	var mu sync.Mutex
	dial := func(_ context.Context, _, addr string) (net.Conn, error) {
		mu.Lock()
		defer mu.Unlock()
		if refuse[addr] {
			return nil, errors.New("refused")
		}
		return nopConn{}, nil
	}
	cfg := PoolConfig{Retry: 1, HTTPRetryAfter: true, Passive: Passive{Failures: 2, Eject: time.Second, MaxEject: 8 * time.Second},
		Servers: []ServerConfig{
			{Address: "a:1", Quota: Quota{Conns: 5, Per: 3 * time.Second}},
			{Address: "b:1", Weight: 2, Quota: Quota{Bytes: 1000, Per: 2 * time.Second}},
			{Address: "c:1"},
			{Address: "d:1", Backup: true},
		}}
	p, err := NewPool(cfg, Options{Clock: clk, DialContext: dial})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	busy := Head{Status: 503, RetryAfter: 1500 * time.Millisecond, HasRetryAfter: true}
	rng := rand.New(rand.NewPCG(3, 4))
	addrs := []string{"a:1", "b:1", "c:1", "d:1"}
	var held []*Lease
	for i := range 20000 {
		switch op := rng.IntN(12); op {
		case 0, 1, 2, 3:
			if l, err := p.DialFor(context.Background(), Request{}); err == nil {
				held = append(held, l)
			}
		case 4:
			mu.Lock()
			a := addrs[rng.IntN(3)]
			refuse[a] = !refuse[a]
			mu.Unlock()
		case 5:
			clk.Advance(time.Duration(rng.IntN(700)) * time.Millisecond)
		case 6:
			p.Drain(addrs[rng.IntN(4)])
		case 7:
			p.Enable(addrs[rng.IntN(4)])
		case 8:
			p.Cool(addrs[rng.IntN(4)], clk.Now().Add(time.Duration(rng.IntN(2000))*time.Millisecond))
		case 9:
			next := cfg
			next.Servers = append([]ServerConfig(nil), cfg.Servers...)
			if rng.IntN(2) == 0 {
				next.Servers = append(next.Servers[:2:2], next.Servers[3])
			}
			next.Servers[0].Quota.Conns = int64(1 + rng.IntN(6))
			if err := p.Update(next); err != nil {
				t.Fatal(err)
			}
		default:
			if len(held) == 0 {
				continue
			}
			k := rng.IntN(len(held))
			l := held[k]
			held = append(held[:k], held[k+1:]...)
			l.AddBytes(int64(rng.IntN(600)))
			switch rng.IntN(3) {
			case 0:
				l.Done()
			case 1:
				l.Failed()
			default:
				if l.Busy(busy) {
					if n, err := l.Retry(context.Background()); err == nil {
						held = append(held, n)
					}
				} else {
					l.Done()
				}
			}
		}
		p.mu.Lock()
		now := clk.Now()
		for _, s := range p.servers {
			if s.ready(p.since(now)) != s.usable(now) {
				t.Fatalf("op %d: %s ready %v, usable %v (%+v)", i, s.addr, s.ready(p.since(now)), s.usable(now), s)
			}
		}
		p.mu.Unlock()
	}
	for _, l := range held {
		l.Done()
	}
	for _, s := range p.Stats().Servers {
		if s.Active != 0 {
			t.Errorf("%s: %d active", s.Address, s.Active)
		}
	}
}

type nopConn struct{ net.Conn }

func (nopConn) Close() error { return nil }

// BenchmarkDialFor measures a whole dial through a pool of 3 with a
// dialer that returns at once, and the lease's end: the pick, the
// connect timeout's timer and context, the lease and its cleanup.
func BenchmarkDialFor(b *testing.B) {
	p, err := NewPool(PoolConfig{Servers: []ServerConfig{{Address: "a:1"}, {Address: "b:1"}, {Address: "c:1"}}},
		Options{DialContext: func(context.Context, string, string) (net.Conn, error) { return nopConn{}, nil }})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		l, err := p.DialFor(ctx, Request{})
		if err != nil {
			b.Fatal(err)
		}
		l.Done()
	}
}
