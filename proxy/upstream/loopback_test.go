package upstream_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/transport/v2/test"

	"github.com/sluiceproxy/sluice/proxy/upstream"
	"github.com/sluiceproxy/sluice/proxy/upstream/upstreamtest"
	"github.com/sluiceproxy/sluice/shaper/shapertest"
)

// backend is a loopback server that accepts and, if http, answers each
// request with its current status.
type backend struct {
	ln     net.Listener
	status atomic.Int32 // for http: the status it answers; 0: plain TCP (accept, then close)
	wg     sync.WaitGroup
}

func newBackend(t *testing.T, addr string) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{ln: ln}
	b.wg.Go(b.serve)
	t.Cleanup(b.kill)
	return b
}

func (b *backend) addr() string { return b.ln.Addr().String() }

func (b *backend) serve() {
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.wg.Go(func() {
			defer c.Close()
			code := b.status.Load()
			if code == 0 {
				return
			}
			if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
				return
			}
			c.Write([]byte("HTTP/1.0 " + itoa(int(code)) + " X\r\nContent-Length: 0\r\n\r\n"))
		})
	}
}

// kill closes the listener: dials are refused from now on.
func (b *backend) kill() {
	b.ln.Close()
	b.wg.Wait()
}

func itoa(n int) string {
	return string([]byte{byte('0' + n/100), byte('0' + n/10%10), byte('0' + n%10)})
}

// TestRetryLoopback: on real sockets, a refused server (a closed
// listener) and a blackholed one (a full backlog, dials hang until the
// connect timeout on the fake clock) are retried on the next server.
func TestRetryLoopback(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	t.Cleanup(test.CheckRoutines(t)) // last: after the backends' and pools' cleanups
	good := newBackend(t, "127.0.0.1:0")
	killed := newBackend(t, "127.0.0.1:0")
	killed.kill()
	hole := upstreamtest.Blackhole(t)
	clk := shapertest.NewClock()
	p, err := upstream.NewPool(upstream.PoolConfig{Balance: upstream.RoundRobin, Retry: 2, Servers: []upstream.ServerConfig{
		{Address: hole}, {Address: killed.addr()}, {Address: good.addr()},
	}}, upstream.Options{Clock: clk, ConnectTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	// First dial: the hole hangs for 3 s of fake time, the killed server
	// refuses, the good one answers.
	type result struct {
		l   *upstream.Lease
		err error
	}
	done := make(chan result, 1)
	go func() {
		l, err := p.DialFor(context.Background(), upstream.Request{})
		done <- result{l, err}
	}()
	clk.BlockUntil(1) // the hole's connect timeout (its dial is the first)
	clk.Advance(3*time.Second - 1)
	select {
	case r := <-done:
		t.Fatalf("dial ended before the connect timeout: %v %v", r.l, r.err)
	default:
	}
	clk.Advance(1)
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("dial did not end at the connect timeout")
	}
	if r.err != nil || r.l.Addr() != good.addr() {
		t.Fatalf("DialFor = %v, %v; want the good server after two retries", r.l, r.err)
	}
	if _, ok := r.l.Conn().(*net.TCPConn); !ok {
		t.Errorf("Conn is a %T, want the dialer's own *net.TCPConn", r.l.Conn())
	}
	r.l.Conn().Close()
	r.l.Done()
	st := p.Stats()
	if st.Retries != 2 || st.Servers[0].Failures != 1 || st.Servers[1].Failures != 1 || st.Servers[2].Failures != 0 {
		t.Errorf("stats %+v, want 2 retries and one failure each on the bad servers", st)
	}

}

// TestCheckDetectsDown: TCP checks every 2 s with a 1 s timeout and fall
// 2 take a server down within 2 intervals + the timeout of its failing,
// whether it is killed (refused) or blackholed (a full backlog: each
// check times out); rise 2 brings it back after 2 passing checks.
func TestCheckDetectsDown(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	t.Cleanup(test.CheckRoutines(t)) // last: after the backends' and pools' cleanups
	for _, how := range []string{"killed", "blackholed"} {
		t.Run(how, func(t *testing.T) {
			b := newBackend(t, "127.0.0.1:0")
			hole := upstreamtest.Blackhole(t)
			var broken atomic.Bool
			var d net.Dialer
			dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
				if addr == b.addr() && broken.Load() && how == "blackholed" {
					addr = hole // the server's port now drops SYNs
				}
				return d.DialContext(ctx, network, addr)
			}
			clk := shapertest.NewClock()
			ev := &events{}
			rounds := make(chan struct{}, 1)
			opts := upstream.WithHooks(upstream.Options{Clock: clk, DialContext: dial, OnState: ev.add},
				func(time.Duration) time.Duration { return 0 }, func() { rounds <- struct{}{} })
			const interval, timeout = 2 * time.Second, time.Second
			p, err := upstream.NewPool(upstream.PoolConfig{Servers: []upstream.ServerConfig{{Address: b.addr()}},
				Check: upstream.Check{Type: upstream.TCPCheck, Interval: interval, Timeout: timeout, Rise: 2, Fall: 2}}, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			within(t, rounds, "the first round") // at t0, passed
			t0 := clk.Now()
			broken.Store(true)
			if how == "killed" {
				b.kill()
			}
			// round advances to the next round (rounds start at t0 + k
			// intervals) and waits for its end, driving its timeout when
			// the server is blackholed.
			k := 0
			round := func() {
				k++
				clk.Advance(t0.Add(time.Duration(k) * interval).Sub(clk.Now()))
				if how == "blackholed" {
					clk.BlockUntil(1) // the round's timeout: the check hangs
					clk.Advance(timeout)
				}
				within(t, rounds, "a check round")
			}
			round()
			if s := server(t, p, b.addr()); s.State != upstream.Up || s.LastCheckErr == "" {
				t.Fatalf("after one failed check: %v (%q), want still up (fall 2)", s.State, s.LastCheckErr)
			}
			round()
			c := ev.last()
			if c.To != upstream.Down || c.Reason != upstream.ReasonCheck || c.Err == nil {
				t.Fatalf("event %+v, want down by check with its error", c)
			}
			if took := c.At.Sub(t0); took > 2*interval+timeout {
				t.Errorf("detected after %v, want at most 2 intervals + timeout (%v)", took, 2*interval+timeout)
			}
			if how == "blackholed" && !strings.Contains(c.Err.Error(), "timed out") {
				t.Errorf("error %v, want a timeout", c.Err)
			}
			if _, err := dialDone(p, ""); !errors.Is(err, upstream.ErrNoServer) {
				t.Errorf("dial to a down pool: %v, want ErrNoServer", err)
			}
			if how == "killed" {
				b = newBackend(t, b.addr()) // the same port, listening again
			}
			broken.Store(false)
			how = "back"
			round()
			if s := server(t, p, b.addr()); s.State != upstream.Down {
				t.Fatalf("after one passing check: %v, want still down (rise 2)", s.State)
			}
			round()
			if c := ev.last(); c.To != upstream.Up || c.Reason != upstream.ReasonCheck {
				t.Errorf("event %+v, want up by check", c)
			}
			if e := ev.take(); len(e) != 2 {
				t.Errorf("events %v, want one down and one up", e)
			}
		})
	}
}

// TestCheckHTTP: an http check wants its status; a server that accepts
// and never answers times out; Close stops the checks.
func TestCheckHTTP(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	t.Cleanup(test.CheckRoutines(t)) // last: after the backends' and pools' cleanups
	ok := newBackend(t, "127.0.0.1:0")
	ok.status.Store(204)
	bad := newBackend(t, "127.0.0.1:0")
	bad.status.Store(500)
	mute, err := net.Listen("tcp", "127.0.0.1:0") // accepts in the kernel, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	// The servers that answer, in one pool; the mute one in another, whose
	// round the test ends by its timeout.
	for _, c := range []struct {
		addrs []string
		mute  bool
		want  []string // state and check error of each
	}{
		{[]string{ok.addr(), bad.addr()}, false, []string{`up ""`, `down "status 500, want 2xx"`}},
		{[]string{mute.Addr().String()}, true, []string{`down "check timed out after 1s: `}},
	} {
		clk := shapertest.NewClock()
		rounds := make(chan struct{}, 1)
		opts := upstream.WithHooks(upstream.Options{Clock: clk}, func(time.Duration) time.Duration { return 0 }, func() { rounds <- struct{}{} })
		cfg := upstream.PoolConfig{Check: upstream.Check{Type: upstream.HTTPCheck, Interval: time.Second, Timeout: time.Second, Fall: 1, Expect: "2xx"}}
		for _, a := range c.addrs {
			cfg.Servers = append(cfg.Servers, upstream.ServerConfig{Address: a})
		}
		p, err := upstream.NewPool(cfg, opts)
		if err != nil {
			t.Fatal(err)
		}
		if c.mute {
			clk.BlockUntil(1) // the round's timeout
			clk.Advance(time.Second)
		}
		within(t, rounds, "the first round")
		for i, s := range p.Stats().Servers {
			if got := fmt.Sprintf("%s %q", s.State, s.LastCheckErr); !strings.HasPrefix(got, strings.TrimSuffix(c.want[i], `"`)) {
				t.Errorf("%s: %s, want %s", s.Address, got, c.want[i])
			}
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if n := clk.Timers(); n != 0 {
			t.Errorf("%d timers armed after Close", n)
		}
	}
}
