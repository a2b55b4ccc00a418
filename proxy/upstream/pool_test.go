package upstream_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluiceproxy/sluice/proxy/upstream"
)

// TestConfigErrors: each bad value is refused with a *ConfigError naming
// its field and the expected form.
func TestConfigErrors(t *testing.T) {
	ok := servers(1, 1)
	for _, c := range []struct {
		name  string
		cfg   upstream.PoolConfig
		field string
	}{
		{"no servers", upstream.PoolConfig{}, "servers"},
		{"only backups", upstream.PoolConfig{Servers: []upstream.ServerConfig{{Address: "a:1", Backup: true}}}, "servers"},
		{"empty address", upstream.PoolConfig{Servers: []upstream.ServerConfig{{Address: ""}}}, "servers[0].address"},
		{"no port", upstream.PoolConfig{Servers: []upstream.ServerConfig{{Address: "a:1"}, {Address: "10.0.0.1"}}}, "servers[1].address"},
		{"port 0", upstream.PoolConfig{Servers: []upstream.ServerConfig{{Address: "a:0"}}}, "servers[0].address"},
		{"port too big", upstream.PoolConfig{Servers: []upstream.ServerConfig{{Address: "a:65536"}}}, "servers[0].address"},
		{"duplicate", upstream.PoolConfig{Servers: []upstream.ServerConfig{{Address: "a:1"}, {Address: "a:1"}}}, "servers[1].address"},
		{"weight negative", upstream.PoolConfig{Servers: servers(1, -1)}, "servers[1].weight"},
		{"weight too big", upstream.PoolConfig{Servers: servers(1001)}, "servers[0].weight"},
		{"quota without per", upstream.PoolConfig{Servers: []upstream.ServerConfig{{Address: "a:1", Quota: upstream.Quota{Conns: 5}}}}, "servers[0].quota.per"},
		{"quota negative", upstream.PoolConfig{Servers: []upstream.ServerConfig{{Address: "a:1", Quota: upstream.Quota{Bytes: -5, Per: time.Second}}}}, "servers[0].quota.bytes"},
		{"balance", upstream.PoolConfig{Servers: ok, Balance: 9}, "balance"},
		{"retry negative", upstream.PoolConfig{Servers: ok, Retry: -1}, "retry"},
		{"retry too many", upstream.PoolConfig{Servers: ok, Retry: 11}, "retry"},
		{"check interval", upstream.PoolConfig{Servers: ok, Check: upstream.Check{Type: upstream.TCPCheck, Interval: -time.Second}}, "check.interval"},
		{"check timeout over interval", upstream.PoolConfig{Servers: ok, Check: upstream.Check{Type: upstream.TCPCheck, Interval: time.Second, Timeout: 2 * time.Second}}, "check.timeout"},
		{"check rise", upstream.PoolConfig{Servers: ok, Check: upstream.Check{Type: upstream.TCPCheck, Rise: -1}}, "check.rise"},
		{"check fall", upstream.PoolConfig{Servers: ok, Check: upstream.Check{Type: upstream.TCPCheck, Fall: 101}}, "check.fall"},
		{"check expect", upstream.PoolConfig{Servers: ok, Check: upstream.Check{Type: upstream.HTTPCheck, Expect: "2x"}}, "check.expect"},
		{"check expect 600", upstream.PoolConfig{Servers: ok, Check: upstream.Check{Type: upstream.HTTPCheck, Expect: "600"}}, "check.expect"},
		{"send on tcp", upstream.PoolConfig{Servers: ok, Check: upstream.Check{Type: upstream.TCPCheck, Send: "x"}}, "check.type"},
		{"passive failures", upstream.PoolConfig{Servers: ok, Passive: upstream.Passive{Failures: -1}}, "passive.failures"},
		{"passive max under eject", upstream.PoolConfig{Servers: ok, Passive: upstream.Passive{Failures: 1, Eject: time.Minute, MaxEject: time.Second}}, "passive.max_eject"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := upstream.NewPool(c.cfg, upstream.Options{})
			var ce *upstream.ConfigError
			if !errors.As(err, &ce) || ce.Field != c.field {
				t.Fatalf("NewPool error = %v, want a ConfigError on %s", err, c.field)
			}
			if !strings.HasPrefix(err.Error(), c.field+": want ") {
				t.Errorf("error %q does not start with %q", err, c.field+": want ")
			}
		})
	}
	for _, c := range []struct{ in, field string }{{"fastest", "balance"}} {
		if _, err := upstream.ParseBalance(c.in); err == nil || !strings.HasPrefix(err.Error(), c.field+": want") {
			t.Errorf("ParseBalance(%q) error = %v", c.in, err)
		}
	}
	if _, err := upstream.ParseCheckType("icmp"); err == nil || !strings.Contains(err.Error(), `check.type: want tcp or http, got "icmp"`) {
		t.Errorf("ParseCheckType(icmp) error = %v", err)
	}
}

// TestRoundRobinSmooth: weights 5, 1, 1 give nginx's smooth order,
// a a b a c a a, every cycle.
func TestRoundRobinSmooth(t *testing.T) {
	p, _, _, _ := testPool(t, upstream.PoolConfig{Balance: upstream.RoundRobin, Servers: servers(5, 1, 1)})
	if got, want := sequence(t, p, 21), strings.Repeat("aabacaa", 3); got != want {
		t.Errorf("order %s, want %s", got, want)
	}
}

// TestLeastConnWeighted: least_conn counts active connections per
// weight, and breaks ties in turn rather than always on the first.
func TestLeastConnWeighted(t *testing.T) {
	p, _, _, _ := testPool(t, upstream.PoolConfig{Servers: servers(2, 1)})
	var held []*upstream.Lease
	count := map[string]int{}
	for range 30 {
		l, err := p.DialFor(context.Background(), upstream.Request{})
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
		count[name(l.Addr())]++
	}
	if count["a"] != 20 || count["b"] != 10 {
		t.Errorf("held connections a=%d b=%d, want 20 and 10 (weights 2:1)", count["a"], count["b"])
	}
	for _, l := range held {
		l.Done()
	}

	// Idle, equal weights: every server in turn.
	p2, _, _, _ := testPool(t, upstream.PoolConfig{Servers: servers(1, 1, 1)})
	if got := sequence(t, p2, 9); got != "abcabcabc" {
		t.Errorf("idle least_conn order %s, want abcabcabc", got)
	}
	// A busy server is skipped until the others catch up.
	l, _ := p2.DialFor(context.Background(), upstream.Request{})
	if got := sequence(t, p2, 4); strings.Contains(got, name(l.Addr())) {
		t.Errorf("order %s while %s holds a connection: it should get none", got, name(l.Addr()))
	}
	l.Done()
}

// TestBackupOnlyWhileNoPrimary: a backup takes connections only while
// no primary can: drained, down, ejected, cooling, or already tried by
// this connection.
func TestBackupOnlyWhileNoPrimary(t *testing.T) {
	cfg := upstream.PoolConfig{Balance: upstream.RoundRobin, Servers: servers(1, 1, 1), Retry: 1}
	cfg.Servers[2].Backup = true
	p, _, fn, _ := testPool(t, cfg)
	if got := sequence(t, p, 6); got != "ababab" {
		t.Errorf("order %s, want ababab (c is a backup)", got)
	}
	p.Drain("a:1")
	if got := sequence(t, p, 3); got != "bbb" {
		t.Errorf("a drained: order %s, want bbb", got)
	}
	p.Drain("b:1")
	if got := sequence(t, p, 3); got != "ccc" {
		t.Errorf("a and b drained: order %s, want ccc", got)
	}
	p.Enable("b:1")
	if got := sequence(t, p, 3); got != "bbb" {
		t.Errorf("b enabled: order %s, want bbb", got)
	}
	// b refuses: the retry goes to the backup, not to b again.
	fn.setRefuse("b:1", true)
	fn.takeDials()
	if got := sequence(t, p, 1); got != "c" {
		t.Errorf("b refused: got %s, want c", got)
	}
	if d := fn.takeDials(); !slices.Equal(d, []string{"b:1", "c:1"}) {
		t.Errorf("dials %v, want b then c", d)
	}
}

// TestQuotaExact: quotas are exact on the fake clock. Two primaries and a
// backup with 100 conns/min each take 250 connections as 100/100/50;
// weights 2, 2, 1 take them so too; three equal servers take 300 and
// refuse the 50 beyond (ErrNoServer) until the window ends.
func TestQuotaExact(t *testing.T) {
	quota := upstream.Quota{Conns: 100, Per: time.Minute}
	withQuota := func(weights []int, backup int) []upstream.ServerConfig {
		s := servers(weights...)
		for i := range s {
			s[i].Quota = quota
			s[i].Backup = i == backup
		}
		return s
	}
	for _, c := range []struct {
		name    string
		balance upstream.Balance
		servers []upstream.ServerConfig
		dials   int
		want    string
		refused int
	}{
		{"least_conn backup", upstream.LeastConn, withQuota([]int{1, 1, 1}, 2), 250, "a=100 b=100 c=50", 0},
		{"round_robin backup", upstream.RoundRobin, withQuota([]int{1, 1, 1}, 2), 250, "a=100 b=100 c=50", 0},
		{"least_conn design weights", upstream.LeastConn, withQuota([]int{2, 1, 1}, 2), 250, "a=100 b=100 c=50", 0},
		{"round_robin weights 2 2 1", upstream.RoundRobin, withQuota([]int{2, 2, 1}, -1), 250, "a=100 b=100 c=50", 0},
		{"least_conn equal over", upstream.LeastConn, withQuota([]int{1, 1, 1}, -1), 350, "a=100 b=100 c=100", 50},
		{"round_robin equal over", upstream.RoundRobin, withQuota([]int{1, 1, 1}, -1), 350, "a=100 b=100 c=100", 50},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, clk, _, ev := testPool(t, upstream.PoolConfig{Balance: c.balance, Servers: c.servers})
			count := map[string]int{}
			refused := 0
			for i := range c.dials {
				s, err := dialDone(p, "")
				if errors.Is(err, upstream.ErrNoServer) {
					refused++
					continue
				} else if err != nil {
					t.Fatal(err)
				}
				count[s]++
				if count[s] > 100 {
					t.Fatalf("dial %d: %s took its connection %d, over its quota of 100", i, s, count[s])
				}
			}
			if got := fmt.Sprintf("a=%d b=%d c=%d", count["a"], count["b"], count["c"]); got != c.want || refused != c.refused {
				t.Errorf("%s, %d refused; want %s, %d refused", got, refused, c.want, c.refused)
			}
			if st := p.Stats(); st.NoServer != uint64(c.refused) {
				t.Errorf("Stats.NoServer = %d, want %d", st.NoServer, c.refused)
			}
			a := server(t, p, "a:1")
			if a.State != upstream.Cooling || a.Quota.Conns != 100 || !a.Quota.Reset.Equal(clk.Now().Add(time.Minute)) || !a.CoolingUntil.Equal(a.Quota.Reset) {
				t.Errorf("a after its quota: %+v; want cooling until the window resets in 1m", a)
			}
			if e := ev.take(); !slices.Contains(e, "a:1 up>cooling quota") {
				t.Errorf("events %v, want a:1 up>cooling quota", e)
			}
			clk.Advance(time.Minute - 1)
			if _, err := dialDone(p, ""); c.refused > 0 && !errors.Is(err, upstream.ErrNoServer) {
				t.Errorf("1 ns before the window ends: %v, want ErrNoServer", err)
			}
			clk.Advance(1)
			if e := ev.take(); !slices.Contains(e, "a:1 cooling>up expired") {
				t.Errorf("events at the window's end %v, want a:1 cooling>up expired", e)
			}
			if _, err := dialDone(p, ""); err != nil {
				t.Errorf("after the window: %v", err)
			}
		})
	}
}

// TestBytesQuota: bytes the proxy reports cool the server once its
// quota is spent, until the window ends; open connections go on.
func TestBytesQuota(t *testing.T) {
	cfg := upstream.PoolConfig{Servers: servers(1)}
	cfg.Servers[0].Quota = upstream.Quota{Bytes: 1000, Per: 10 * time.Second}
	p, clk, _, ev := testPool(t, cfg)
	l, err := p.DialFor(context.Background(), upstream.Request{})
	if err != nil {
		t.Fatal(err)
	}
	l.AddBytes(999)
	if s := server(t, p, "a:1"); s.State != upstream.Up || s.Quota.Bytes != 999 || s.Quota.BytesLimit != 1000 {
		t.Fatalf("after 999 bytes: %+v", s)
	}
	l.AddBytes(1)
	if _, err := dialDone(p, ""); !errors.Is(err, upstream.ErrNoServer) {
		t.Errorf("dial after the bytes quota: %v, want ErrNoServer", err)
	}
	l.AddBytes(5000) // the open connection goes on
	l.Done()
	if e := ev.take(); !slices.Equal(e, []string{"a:1 up>cooling quota"}) {
		t.Errorf("events %v", e)
	}
	clk.Advance(10 * time.Second)
	if _, err := dialDone(p, ""); err != nil {
		t.Errorf("dial in the next window: %v", err)
	}
	if s := server(t, p, "a:1"); s.Quota.Bytes != 0 || s.Quota.Conns != 0 {
		t.Errorf("new window: %+v, want nothing used", s.Quota)
	}
}

// TestSourceHashMovesOnlyRemoved: source_hash keeps a client on its
// server; when a server leaves (a reload removes it, or it is drained),
// only its clients move, spread over the others; weights share clients.
func TestSourceHashMovesOnlyRemoved(t *testing.T) {
	for _, weights := range [][]int{{1, 1, 1, 1, 1}, {1, 2, 3, 1, 5}} {
		t.Run(fmt.Sprint(weights), func(t *testing.T) {
			cfg := upstream.PoolConfig{Balance: upstream.SourceHash, Servers: servers(weights...)}
			p, _, _, _ := testPool(t, cfg)
			rng := rand.New(rand.NewPCG(1, 2))
			clients := make([]string, 5000)
			before := map[string]string{}
			share := map[string]int{}
			for i := range clients {
				clients[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())}), uint16(rng.Uint32())).String()
				s, err := dialDone(p, clients[i])
				if err != nil {
					t.Fatal(err)
				}
				again, _ := dialDone(p, clients[i])
				if again != s {
					t.Fatalf("client %s went to %s, then %s", clients[i], s, again)
				}
				before[clients[i]] = s
				share[s]++
			}
			total := 0
			for _, w := range weights {
				total += w
			}
			for i, w := range weights {
				want := float64(len(clients)) * float64(w) / float64(total)
				if got := float64(share[name(addrOf(i))]); got < want*0.85 || got > want*1.15 {
					t.Errorf("server %s (weight %d) has %v clients, want %.0f ±15%%", addrOf(i), w, got, want)
				}
			}
			check := func(gone string) {
				t.Helper()
				moved := map[string]int{}
				for _, c := range clients {
					s, err := dialDone(p, c)
					if err != nil {
						t.Fatal(err)
					}
					switch {
					case before[c] != gone && s != before[c]:
						t.Fatalf("client %s moved from %s to %s though %s stayed", c, before[c], s, before[c])
					case before[c] == gone && s == gone:
						t.Fatalf("client %s still on %s, which left", c, gone)
					case before[c] == gone:
						moved[s]++
					}
				}
				if len(moved) < len(weights)-2 {
					t.Errorf("the clients of %s moved to %v: want them spread over the others", gone, moved)
				}
			}
			p.Drain("c:1")
			check("c")
			p.Enable("c:1")
			cfg.Servers = slices.Delete(slices.Clone(cfg.Servers), 2, 3)
			if err := p.Update(cfg); err != nil {
				t.Fatal(err)
			}
			check("c")
		})
	}
}

// TestEjectionBackoff: 3 failures in a row eject a server for 10 s; a
// failure right after an ejection ejects it again for twice as long, up
// to 35 s; a success forgets it all.
func TestEjectionBackoff(t *testing.T) {
	p, clk, fn, ev := testPool(t, upstream.PoolConfig{Balance: upstream.RoundRobin, Servers: servers(1, 1),
		Passive: upstream.Passive{Failures: 3, Eject: 10 * time.Second, MaxEject: 35 * time.Second}})
	fn.setRefuse("a:1", true)
	// failA dials until a dial to a fails.
	failA := func() {
		t.Helper()
		for range 10 {
			if _, err := dialDone(p, ""); err != nil {
				return
			}
		}
		t.Fatal("no dial went to a")
	}
	failA()
	failA()
	if s := server(t, p, "a:1"); s.State != upstream.Up || s.ConsecutiveFailures != 2 {
		t.Fatalf("after 2 failures: %v, %d in a row", s.State, s.ConsecutiveFailures)
	}
	for _, want := range []time.Duration{10 * time.Second, 20 * time.Second, 35 * time.Second, 35 * time.Second} {
		failA()
		start := clk.Now()
		s := server(t, p, "a:1")
		if s.State != upstream.Ejected || !s.EjectedUntil.Equal(start.Add(want)) {
			t.Fatalf("ejected: %v until %v, want ejected for %v", s.State, s.EjectedUntil.Sub(start), want)
		}
		if c := ev.last(); c.To != upstream.Ejected || c.Reason != upstream.ReasonFailures || !c.Until.Equal(start.Add(want)) || c.Err == nil {
			t.Errorf("event %+v, want ejected for %v with the dial error", c, want)
		}
		if got := sequence(t, p, 4); got != "bbbb" {
			t.Errorf("while a is ejected: %s, want bbbb", got)
		}
		clk.Advance(want - 1)
		if server(t, p, "a:1").State != upstream.Ejected {
			t.Fatal("ejection ended early")
		}
		clk.Advance(1)
		if c := ev.last(); c.To != upstream.Up || c.Reason != upstream.ReasonExpired || !c.At.Equal(start.Add(want)) {
			t.Errorf("event %+v, want up at the ejection's end", c)
		}
	}
	fn.setRefuse("a:1", false)
	if got := sequence(t, p, 4); !strings.Contains(got, "a") {
		t.Fatalf("a recovered but got no connection: %s", got)
	}
	fn.setRefuse("a:1", true)
	failA()
	if s := server(t, p, "a:1"); s.State != upstream.Up || s.ConsecutiveFailures != 1 {
		t.Errorf("a success forgets: after one failure %v with %d in a row, want up with 1", s.State, s.ConsecutiveFailures)
	}
	if st := server(t, p, "a:1"); st.Failures != 7 {
		t.Errorf("a's failures = %d, want 7", st.Failures)
	}
}

// TestAllEjectedProbes: with every server ejected, a connection probes
// the one whose ejection ends first; its success ends the ejection.
func TestAllEjectedProbes(t *testing.T) {
	p, clk, fn, ev := testPool(t, upstream.PoolConfig{Balance: upstream.RoundRobin, Servers: servers(1, 1),
		Passive: upstream.Passive{Failures: 1, Eject: time.Minute}})
	fn.setRefuse("a:1", true)
	fn.setRefuse("b:1", true)
	dialDone(p, "")
	clk.Advance(time.Second)
	dialDone(p, "")
	if st := p.Stats(); st.Servers[0].State != upstream.Ejected || st.Servers[1].State != upstream.Ejected {
		t.Fatalf("states %v %v, want both ejected", st.Servers[0].State, st.Servers[1].State)
	}
	fn.setRefuse("a:1", false)
	fn.takeDials()
	if s, err := dialDone(p, ""); err != nil || s != "a" {
		t.Fatalf("probe: %s %v; want a, ejected first", s, err)
	}
	if s := server(t, p, "a:1"); s.State != upstream.Up {
		t.Errorf("a after a probe succeeded: %v, want up", s.State)
	}
	if c := ev.last(); c.Server != "a:1" || c.To != upstream.Up || c.Reason != upstream.ReasonSuccess {
		t.Errorf("event %+v, want a up on success", c)
	}
	if st := p.Stats(); st.EjectedPicks != 1 {
		t.Errorf("EjectedPicks = %d, want 1", st.EjectedPicks)
	}
	// Drained and cooling servers are never probed.
	p.Drain("a:1")
	p.Cool("b:1", clk.Now().Add(time.Hour))
	if _, err := dialDone(p, ""); !errors.Is(err, upstream.ErrNoServer) {
		t.Errorf("all drained or cooling: %v, want ErrNoServer", err)
	}
}

// TestRetryAfterCoolsExactly: a 429 with Retry-After: 5 cools its server
// for exactly 5 s on the fake clock, not a tick more; the connection is
// retried on another server without counting a failure.
func TestRetryAfterCoolsExactly(t *testing.T) {
	p, clk, _, ev := testPool(t, upstream.PoolConfig{Balance: upstream.RoundRobin, Servers: servers(1, 1), Retry: 1,
		HTTPRetryAfter: true, Passive: upstream.Passive{Failures: 1}})
	l, err := p.DialFor(context.Background(), upstream.Request{})
	if err != nil || l.Addr() != "a:1" {
		t.Fatal(l, err)
	}
	t0 := clk.Now()
	h, err := upstream.ParseResponseHead([]byte("HTTP/1.1 429 Too Many Requests\r\nRetry-After: 5\r\nContent-Length: 0\r\n\r\n"), t0)
	if err != nil {
		t.Fatal(err)
	}
	if !l.Busy(h) {
		t.Fatal("Busy(429) = false")
	}
	next, err := l.Retry(context.Background())
	if err != nil || next.Addr() != "b:1" {
		t.Fatalf("Retry = %v, %v; want b", next, err)
	}
	next.Done()
	a := server(t, p, "a:1")
	if a.State != upstream.Cooling || !a.CoolingUntil.Equal(t0.Add(5*time.Second)) || a.Failures != 0 || a.Active != 0 {
		t.Fatalf("a: %+v; want cooling for 5 s, no failure, no active conn", a)
	}
	if c := ev.last(); c.To != upstream.Cooling || c.Reason != upstream.ReasonRetryAfter || !c.Until.Equal(t0.Add(5*time.Second)) {
		t.Errorf("event %+v", c)
	}
	p.Drain("b:1")
	clk.Advance(5*time.Second - 1)
	if _, err := dialDone(p, ""); !errors.Is(err, upstream.ErrNoServer) {
		t.Fatalf("1 ns before 5 s: %v, want ErrNoServer (a cooling, b drained)", err)
	}
	clk.Advance(1)
	if c := ev.last(); c.Server != "a:1" || c.To != upstream.Up || !c.At.Equal(t0.Add(5*time.Second)) {
		t.Errorf("event %+v, want a up at exactly 5 s", c)
	}
	if s, err := dialDone(p, ""); err != nil || s != "a" {
		t.Errorf("at 5 s: %s %v, want a", s, err)
	}
	if st := p.Stats(); st.Retries != 1 {
		t.Errorf("Retries = %d, want 1", st.Retries)
	}

	// Without http_retry_after, Busy does nothing.
	p2, _, _, _ := testPool(t, upstream.PoolConfig{Servers: servers(1)})
	l2, _ := p2.DialFor(context.Background(), upstream.Request{})
	if l2.Busy(h) {
		t.Error("Busy = true without HTTPRetryAfter")
	}
	l2.Done()
}

// TestRetryAfterBounds: a 503 without Retry-After cools for the pool's
// default; a long one is cut to the pool's max.
func TestRetryAfterBounds(t *testing.T) {
	p, clk, _, _ := testPool(t, upstream.PoolConfig{Servers: servers(1, 1), HTTPRetryAfter: true,
		RetryAfterDefault: 7 * time.Second, RetryAfterMax: time.Minute})
	for _, c := range []struct {
		head string
		want time.Duration
	}{
		{"HTTP/1.1 503 Service Unavailable\r\n\r\n", 7 * time.Second},
		{"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 86400\r\n\r\n", time.Minute},
		{"HTTP/1.1 429 x\r\nRetry-After: DATE\r\n\r\n", 30 * time.Second}, // DATE: now + 30 s
	} {
		c.head = strings.Replace(c.head, "DATE", clk.Now().Add(30*time.Second).Format("Mon, 02 Jan 2006 15:04:05 GMT"), 1)
		l, err := p.DialFor(context.Background(), upstream.Request{})
		if err != nil {
			t.Fatal(err)
		}
		h, err := upstream.ParseResponseHead([]byte(c.head), clk.Now())
		if err != nil || !l.Busy(h) {
			t.Fatalf("%q: %v", c.head, err)
		}
		if s := server(t, p, l.Addr()); !s.CoolingUntil.Equal(clk.Now().Add(c.want)) {
			t.Errorf("%q cools until +%v, want +%v", c.head, s.CoolingUntil.Sub(clk.Now()), c.want)
		}
		p.Enable(l.Addr())
		clk.Advance(time.Minute)
	}
}

// TestLeaseCycles: thousands of dials and ends, on every path (done,
// failed, busy, retried, refused, ended twice), from several goroutines,
// leave no active connection and count every pick.
func TestLeaseCycles(t *testing.T) {
	cfg := upstream.PoolConfig{Servers: servers(1, 2, 1), Retry: 2, HTTPRetryAfter: true, RetryAfterDefault: time.Millisecond,
		Passive: upstream.Passive{Failures: 2, Eject: time.Millisecond, MaxEject: 4 * time.Millisecond}}
	cfg.Servers[1].Quota = upstream.Quota{Conns: 50, Per: time.Millisecond}
	for _, b := range []upstream.Balance{upstream.LeastConn, upstream.RoundRobin, upstream.SourceHash} {
		t.Run(b.String(), func(t *testing.T) {
			cfg.Balance = b
			p, clk, fn, _ := testPool(t, cfg)
			busy, _ := upstream.ParseResponseHead([]byte("HTTP/1.0 503 x\r\n\r\n"), clk.Now())
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Go(func() {
					rng := rand.New(rand.NewPCG(uint64(g), 9))
					for i := range 1000 {
						if g == 0 && i%50 == 0 {
							fn.setRefuse("c:1", i%100 == 0)
						}
						clk.Advance(100 * time.Microsecond) // fires ejections' and coolings' ends

						req := upstream.Request{Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(g), byte(i)}), 1)}
						l, err := p.DialFor(context.Background(), req)
						if err != nil {
							continue
						}
						switch rng.IntN(5) {
						case 0:
							l.Done()
							l.Done()
						case 1:
							l.Failed()
							l.Done()
						case 2:
							if l.Busy(busy) {
								if n, err := l.Retry(context.Background()); err == nil {
									n.Done()
								}
							} else {
								l.Done()
							}
						case 3:
							if n, err := l.Retry(context.Background()); err == nil {
								n.AddBytes(10)
								n.Failed()
							}
						default:
							l.AddBytes(100)
							l.Done()
						}
					}
				})
			}
			wg.Wait()
			st := p.Stats()
			var total uint64
			for _, s := range st.Servers {
				if s.Active != 0 {
					t.Errorf("server %s has %d active conns after every lease ended", s.Address, s.Active)
				}
				total += s.Total
			}
			if total != st.Picks || st.Picks < 4000 || st.Retries == 0 || st.NoServer == 0 {
				t.Errorf("servers' totals %d, picks %d, retries %d, no server %d; want totals = picks, and every path taken",
					total, st.Picks, st.Retries, st.NoServer)
			}
			if st.Leaked != 0 {
				t.Errorf("Leaked = %d", st.Leaked)
			}
		})
	}
}

// TestLeakedLeaseCaught: a lease dropped without being ended is ended by
// the garbage collector, and counted.
func TestLeakedLeaseCaught(t *testing.T) {
	p, _, _, _ := testPool(t, upstream.PoolConfig{Servers: servers(1)})
	func() {
		if _, err := p.DialFor(context.Background(), upstream.Request{}); err != nil {
			t.Fatal(err)
		}
	}()
	for i := 0; p.Stats().Leaked == 0; i++ {
		if i == 1000 {
			t.Fatal("a dropped lease was never collected")
		}
		runtime.GC()
		runtime.Gosched()
	}
	if n := activeConns(p); n != 0 {
		t.Errorf("%d active conns after the leaked lease was collected", n)
	}
}

// TestUpdateKeepsState: a reload keeps the state of servers that stay,
// adds new ones, and drains removed ones until their last connection
// ends.
func TestUpdateKeepsState(t *testing.T) {
	cfg := upstream.PoolConfig{Name: "api", Balance: upstream.RoundRobin, Servers: servers(1, 1, 1), Passive: upstream.Passive{Failures: 1}}
	cfg.Servers[0].Quota = upstream.Quota{Conns: 10, Per: time.Minute}
	p, clk, fn, ev := testPool(t, cfg)
	fn.setRefuse("b:1", true)
	held, _ := p.DialFor(context.Background(), upstream.Request{}) // a
	dialDone(p, "")                                                // b fails: ejected
	c, _ := p.DialFor(context.Background(), upstream.Request{})    // c, held across the reload
	if held.Addr() != "a:1" || c.Addr() != "c:1" {
		t.Fatalf("dials went to %s and %s", held.Addr(), c.Addr())
	}
	p.Cool("a:1", clk.Now().Add(time.Hour))
	ev.take()

	next := cfg
	next.Servers = []upstream.ServerConfig{cfg.Servers[0], cfg.Servers[1], {Address: "d:1", Weight: 3}}
	if err := p.Update(next); err != nil {
		t.Fatal(err)
	}
	st := p.Stats()
	got := make([]string, len(st.Servers))
	for i, s := range st.Servers {
		got[i] = fmt.Sprintf("%s %s active=%d quota=%d", name(s.Address), s.State, s.Active, s.Quota.Conns)
	}
	want := []string{"a cooling active=1 quota=1", "b ejected active=0 quota=0", "d up active=0 quota=0", "c draining active=1 quota=0"}
	if !slices.Equal(got, want) {
		t.Errorf("after the reload:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if e := ev.take(); !slices.Equal(e, []string{"c:1 up>draining removed"}) {
		t.Errorf("events %v", e)
	}
	if got := sequence(t, p, 3); got != "ddd" {
		t.Errorf("after the reload: %s, want ddd (a cooling, b ejected, c removed)", got)
	}
	if err := p.Enable("c:1"); !errors.Is(err, upstream.ErrUnknownServer) {
		t.Errorf("Enable of a removed server: %v, want ErrUnknownServer", err)
	}
	c.Done()
	held.Done()
	if _, ok := p.Server("c:1"); ok {
		t.Error("c still listed after its last connection ended")
	}
	// Back again: a new server, up.
	if err := p.Update(cfg); err != nil {
		t.Fatal(err)
	}
	if s := server(t, p, "c:1"); s.State != upstream.Up || s.Total != 0 {
		t.Errorf("c added back: %+v", s)
	}
	bad := cfg
	bad.Servers = nil
	if err := p.Update(bad); err == nil {
		t.Error("Update with no servers succeeded")
	}
}

// TestDrainEnable: admin operations name the server; unknown addresses
// are errors; each state change is reported once.
func TestDrainEnable(t *testing.T) {
	p, _, _, ev := testPool(t, upstream.PoolConfig{Name: "api", Servers: servers(1, 1)})
	for _, op := range []func(string) error{p.Drain, p.Enable, func(a string) error { return p.Cool(a, time.Time{}) }} {
		if err := op("z:1"); !errors.Is(err, upstream.ErrUnknownServer) || !strings.Contains(err.Error(), `"z:1"`) {
			t.Errorf("op on an unknown server: %v", err)
		}
	}
	p.Drain("a:1")
	p.Drain("a:1")
	if got := sequence(t, p, 3); got != "bbb" {
		t.Errorf("a drained: %s", got)
	}
	p.Enable("a:1")
	p.Enable("a:1")
	if e := ev.take(); !slices.Equal(e, []string{"a:1 up>draining drain", "a:1 draining>up enable"}) {
		t.Errorf("events %v", e)
	}
	if st := p.Stats(); st.Name != "api" || p.Addr() != "api" {
		t.Errorf("names %q %q", st.Name, p.Addr())
	}
}

// TestDialRetriesNeverTwice: with retries to spare, each server is tried
// once; then ErrNoServer, wrapping the last dial error.
func TestDialRetriesNeverTwice(t *testing.T) {
	p, _, fn, _ := testPool(t, upstream.PoolConfig{Servers: servers(1, 1, 1), Retry: 5, Passive: upstream.Passive{Failures: 1}})
	for _, a := range []string{"a:1", "b:1", "c:1"} {
		fn.setRefuse(a, true)
	}
	_, err := p.DialFor(context.Background(), upstream.Request{})
	if !errors.Is(err, upstream.ErrNoServer) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("error %v, want ErrNoServer with the last refusal", err)
	}
	if d := fn.takeDials(); len(d) != 3 || len(slices.Compact(slices.Sorted(slices.Values(d)))) != 3 {
		t.Errorf("dials %v, want each server once", d)
	}
	// Retries spent: the dial error, not ErrNoServer.
	p2, _, fn2, _ := testPool(t, upstream.PoolConfig{Servers: servers(1, 1, 1), Retry: 1})
	for _, a := range []string{"a:1", "b:1", "c:1"} {
		fn2.setRefuse(a, true)
	}
	_, err = p2.DialFor(context.Background(), upstream.Request{})
	if err == nil || errors.Is(err, upstream.ErrNoServer) || len(fn2.takeDials()) != 2 {
		t.Errorf("retry 1: %v; want two dials and the last dial's error", err)
	}
	// A pool of one may retry its one server.
	p3, _, fn3, _ := testPool(t, upstream.PoolConfig{Servers: servers(1), Retry: 2})
	fn3.setRefuse("a:1", true)
	p3.DialFor(context.Background(), upstream.Request{})
	if d := fn3.takeDials(); len(d) != 3 {
		t.Errorf("pool of one, retry 2: dials %v, want 3", d)
	}
}

// TestEarlyFailureRetry: a connection reported failed before its first
// byte is a passive failure, and Retry goes to a server not tried yet,
// within the retries.
func TestEarlyFailureRetry(t *testing.T) {
	p, _, _, _ := testPool(t, upstream.PoolConfig{Balance: upstream.RoundRobin, Servers: servers(1, 1, 1), Retry: 2, Passive: upstream.Passive{Failures: 2}})
	l, _ := p.DialFor(context.Background(), upstream.Request{})
	var seen []string
	for {
		seen = append(seen, name(l.Addr()))
		next, err := l.Retry(context.Background())
		if err != nil {
			if !errors.Is(err, upstream.ErrNoRetry) {
				t.Fatalf("Retry: %v, want ErrNoRetry", err)
			}
			break
		}
		l = next
	}
	if strings.Join(seen, "") != "abc" {
		t.Errorf("tried %v, want a b c", seen)
	}
	for _, s := range p.Stats().Servers {
		if s.Failures != 1 || s.ConsecutiveFailures != 1 || s.Active != 0 {
			t.Errorf("%s: %+v, want one failure and no active conn", s.Address, s)
		}
	}
	l.Failed() // ended by the last Retry already: no second failure
	if s := server(t, p, "c:1"); s.Failures != 1 {
		t.Errorf("c failures = %d after a second end, want 1", s.Failures)
	}
}

// TestDialCancelled: a dial ended by the caller's ctx is not the
// server's failure.
func TestDialCancelled(t *testing.T) {
	blocked := make(chan struct{})
	clkPool := func() *upstream.Pool {
		p, err := upstream.NewPool(upstream.PoolConfig{Servers: servers(1), Passive: upstream.Passive{Failures: 1}},
			upstream.Options{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				close(blocked)
				<-ctx.Done()
				return nil, ctx.Err()
			}})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := clkPool()
	defer p.Close()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-blocked; cancel() }()
	if _, err := p.DialFor(ctx, upstream.Request{}); !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled", err)
	}
	if s := server(t, p, "a:1"); s.Failures != 0 || s.State != upstream.Up || s.Active != 0 {
		t.Errorf("after a cancelled dial: %+v", s)
	}
	p.Close()
	if _, err := p.DialFor(context.Background(), upstream.Request{}); !errors.Is(err, upstream.ErrClosed) {
		t.Errorf("dial after Close: %v, want ErrClosed", err)
	}
}

// TestOnStateMayCallPool: a callback that calls the pool does not
// deadlock, and its own changes are delivered after, in order.
func TestOnStateMayCallPool(t *testing.T) {
	var p *upstream.Pool
	var got []string
	var err error
	p, err = upstream.NewPool(upstream.PoolConfig{Servers: servers(1, 1)}, upstream.Options{DialContext: newFakeNet().dial,
		OnState: func(c upstream.StateChange) {
			got = append(got, c.Server+" "+c.To.String())
			p.Stats()
			if c.Server == "a:1" && c.To == upstream.Draining {
				p.Drain("b:1")
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Drain("a:1")
	if want := []string{"a:1 draining", "b:1 draining"}; !slices.Equal(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}
}

// TestStatic: a host:port target leases without accounting.
func TestStaticDialFor(t *testing.T) {
	fn := newFakeNet()
	s, err := upstream.NewStatic("a:1", upstream.Options{DialContext: fn.dial})
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.DialFor(context.Background(), upstream.Request{})
	if err != nil || l.Addr() != "a:1" || l.Conn() == nil {
		t.Fatal(l, err)
	}
	l.AddBytes(5)
	l.Failed()
	if _, err := l.Retry(context.Background()); !errors.Is(err, upstream.ErrNoRetry) {
		t.Errorf("Retry on a static lease: %v", err)
	}
}

// TestPoolDial: as a plain Dialer, a pool dials and ends the lease at
// once: the pick counts, no connection stays active.
func TestPoolDial(t *testing.T) {
	p, _, _, _ := testPool(t, upstream.PoolConfig{Name: "api", Servers: servers(1, 1)})
	var d upstream.Dialer = p
	c, err := d.Dial(context.Background())
	if err != nil || c == nil {
		t.Fatal(c, err)
	}
	if st := p.Stats(); st.Picks != 1 || activeConns(p) != 0 {
		t.Errorf("after Dial: %d picks, %d active; want 1 and 0", st.Picks, activeConns(p))
	}
}
