package proxy

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/transport/v2/test"

	"github.com/sluiceproxy/sluice/shaper"
)

// endless is a backend that sends every connection an endless stream.
func endless(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				buf := make([]byte, 64<<10)
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// reader counts what a client receives.
type reader struct {
	n    atomic.Int64
	done chan struct{}
}

func readFrom(t *testing.T, addr, local string) (*reader, net.Conn) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	r := &reader{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			r.n.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	return r, c
}

// TestLinkKeysEndToEnd: two source addresses are two keys of one link; the
// one with 1 connection and the one with 10 each get half the link.
func TestLinkKeysEndToEnd(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	checkRoutines(t)
	const rate = 4_000_000
	srv, addr := startLinks(t, []LinkConfig{{Name: "line", Down: shaper.LinkLimit{Limit: shaper.Limit{Rate: rate}}, KeyBy: KeySourceIP}},
		ListenerConfig{Upstream: endless(t), Links: []string{"line"}})

	var readers [2][]*reader
	var conns []net.Conn
	for i, n := range []int{1, 10} {
		for range n {
			r, c := readFrom(t, addr, []string{"127.0.0.2", "127.0.0.3"}[i])
			readers[i] = append(readers[i], r)
			conns = append(conns, c)
		}
	}
	sum := func(rs []*reader) int64 {
		var s int64
		for _, r := range rs {
			s += r.n.Load()
		}
		return s
	}
	realWait(time.Second) // letting the shares settle
	a0, b0, t0 := sum(readers[0]), sum(readers[1]), time.Now()
	realWait(3 * time.Second)
	a1, b1, el := sum(readers[0]), sum(readers[1]), time.Since(t0).Seconds()
	ra, rb := float64(a1-a0)/el, float64(b1-b0)/el
	for name, got := range map[string]float64{"127.0.0.2 (1 conn)": ra, "127.0.0.3 (10 conns)": rb} {
		if r := got / (rate / 2); r < 0.9 || r > 1.1 {
			t.Errorf("key %s: %.0f B/s, %.3f× half the link; want within ±10%%", name, got, r)
		}
	}
	if total := (ra + rb) / rate; total > 1.02 {
		t.Errorf("link carried %.3f× its rate", total)
	}
	st := srv.Links(true)
	if len(st) != 1 || st[0].Dirs[Down] == nil || st[0].Dirs[Up] != nil || len(st[0].Dirs[Down].Keys) != 2 {
		t.Fatalf("Links() = %+v, want one down-only link with 2 keys", st)
	}

	// Halve the link live: both keys follow within a second.
	if err := srv.SetLinkLimit("line", Down, shaper.LinkLimit{Limit: shaper.Limit{Rate: rate / 2}}); err != nil {
		t.Fatal(err)
	}
	if got := overRealTime(500*time.Millisecond, 2*time.Second, func() int64 { return sum(readers[0]) + sum(readers[1]) }); got/(rate/2) > 1.05 || got/(rate/2) < 0.9 {
		t.Errorf("after halving: %.0f B/s, %.3f× the new rate", got, got/(rate/2))
	}
	for _, c := range conns {
		c.Close()
	}
	for _, rs := range readers {
		for _, r := range rs {
			<-r.done
		}
	}
	eventually(t, func() bool { return srv.ActiveConns() == 0 })
	if st := srv.Links(false)[0].Dirs[Down]; st.Members != 0 || st.LinkStats.Keys != 0 {
		t.Errorf("after every conn closed: %d members, %d keys on the link", st.Members, st.LinkStats.Keys)
	}
}

func TestLinkConfigErrors(t *testing.T) {
	b := newBackend(t)
	lis := []ListenerConfig{{Name: "t", Addr: "127.0.0.1:0", Upstream: b.addr(), Links: []string{"x"}}}
	for _, tc := range []struct {
		links []LinkConfig
		want  string
	}{
		{nil, `listener "t": no link "x"`},
		{[]LinkConfig{{Name: "x"}}, `link "x": a rate in up, down or both is required`},
		{[]LinkConfig{{Name: "x", Up: shaper.LinkLimit{Limit: shaper.Limit{Rate: 5}, Key: shaper.KeyLimit{Weight: -1}}}}, `link "x" up: shaper: invalid limit`},
		{[]LinkConfig{{Name: "x", Up: shaper.LinkLimit{Limit: shaper.Limit{Rate: 5}}, KeyBy: 9}}, `unknown key mode 9`},
		{[]LinkConfig{{Name: "x", Up: shaper.LinkLimit{Limit: shaper.Limit{Rate: 5}}}, {Name: "x", Up: shaper.LinkLimit{Limit: shaper.Limit{Rate: 5}}}}, "duplicate name"},
	} {
		if _, err := New(Options{Links: tc.links, Listeners: lis}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(links %+v) = %v, want %q", tc.links, err, tc.want)
		}
	}
}

// startLinks serves listener cfg, named "t", with links.
func startLinks(t *testing.T, links []LinkConfig, cfg ListenerConfig) (*Server, string) {
	t.Helper()
	cfg.Name, cfg.Addr = "t", "127.0.0.1:0"
	srv, err := New(Options{Links: links, Listeners: []ListenerConfig{cfg}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv, srv.Addr("t").String()
}

// startLinked serves listener "t" in front of upstream, crossing link
// "line" that limits both directions at rate.
func startLinked(t *testing.T, upstream string, rate int64, lim ConnLimits) (*Server, string) {
	t.Helper()
	ll := shaper.LinkLimit{Limit: shaper.Limit{Rate: rate}}
	return startLinks(t, []LinkConfig{{Name: "line", Up: ll, Down: ll}},
		ListenerConfig{Upstream: upstream, Links: []string{"line"}, Limits: lim})
}

// TestLinkInLoop: connections on a link, with a limit of their own and
// without, are moved by the shaping loops, whose link grants come through
// Member.Ask. Three conns both ways at once, to receivers that stall
// until every socket fills, so that the loop hands directions back with
// part of a grant unmoved: byte-exact, and the link and the gates granted
// exactly the bytes moved, net of refunds (a grant the hand-back kept or
// lost would show). Every direction leaves the loop at the end.
func TestLinkInLoop(t *testing.T) {
	for _, c := range []struct {
		name  string
		lim   ConnLimits
		size  int
		stall time.Duration // over 4 MB at a conn's rate: more than sluice's send buffer takes
	}{
		{"link only", ConnLimits{}, 12 << 20, 600 * time.Millisecond}, // 10 MB/s a conn
		{"link and gate", ConnLimits{Up: shaper.Limit{Rate: 3_000_000}, Down: shaper.Limit{Rate: 3_000_000}}, // 15 KB grants
			6 << 20, 1500 * time.Millisecond},
	} {
		t.Run(c.name, func(t *testing.T) {
			defer test.TimeOut(60 * time.Second).Stop()
			checkRoutines(t)
			b := newBackend(t)
			srv, addr := startLinked(t, b.addr(), 30_000_000, c.lim)
			const conns = 3
			size := c.size
			type pair struct{ client, server *net.TCPConn }
			var pairs []pair
			for range conns {
				client, server := connect(t, addr, b)
				defer client.Close()
				defer server.Close()
				smallReadBuffers(t, client, server)
				pairs = append(pairs, pair{client, server})
			}
			// Every conn listed (the last may still be dialing its
			// upstream), and its gates, if limited.
			var gates []*shaper.Gate
			eventually(t, func() bool {
				gates = gates[:0]
				srv.mu.Lock()
				defer srv.mu.Unlock()
				for cn := range srv.conns {
					for d := range cn.pumps {
						if g := cn.pumps[d].gate.Load(); g != nil {
							gates = append(gates, g)
						}
					}
				}
				return len(srv.conns) == conns && (c.lim.Down.Unlimited() || len(gates) == 2*conns)
			})

			// Sluice's writes find no room.
			stall := c.stall
			errs := make(chan error, 2*conns)
			for i, p := range pairs {
				go func() { errs <- transfer(p.client, p.server, uint64(2*i), size, stall).exact(size) }()
				go func() { errs <- transfer(p.server, p.client, uint64(2*i+1), size, stall).exact(size) }()
			}
			for range 2 * conns {
				if err := <-errs; err != nil {
					t.Error(err)
				}
			}
			for _, p := range pairs {
				p.client.Close()
			}
			waitIdle(t, srv)
			if n := srv.loopStats().Tasks; n != 0 {
				t.Errorf("the loops serve %d directions after every conn ended", n)
			}
			// Each direction at least once; most again after finding
			// their client full, but under -race some never do.
			if n := srv.loopStats().HandIns; n < 2*conns {
				t.Errorf("the loop was handed a direction %d times, want at least %d", n, 2*conns)
			}
			for d, st := range srv.Links(false)[0].Dirs {
				if st.Bytes != int64(conns*size) || st.Waiting != 0 {
					t.Errorf("link %s: %d bytes granted, %d waiting; want %d, none", Dir(d), st.Bytes, st.Waiting, conns*size)
				}
			}
			for _, g := range gates {
				if st := g.Stats(); st.Bytes != int64(size) {
					t.Errorf("a gate granted %d bytes, want %d", st.Bytes, size)
				}
			}
		})
	}
}

// TestLinkInLoopLive: a download on a link, in the shaping loop, follows
// live changes: a limit of its own on a conn that had none (a new gate,
// which the loop sees and hands the direction back for), the link's rate
// lowered, the link removed by a reload (the conn's own limit stays).
func TestLinkInLoopLive(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	checkRoutines(t)
	upstream := endless(t)
	srv, addr := startLinked(t, upstream, 2_000_000, ConnLimits{})
	r, c := readFrom(t, addr, "127.0.0.1")
	defer func() { c.Close(); <-r.done }()
	rate := func(name string, want float64) {
		t.Helper()
		got := overRealTime(300*time.Millisecond, time.Second, r.n.Load) // after the change takes hold
		if got/want < 0.85 || got/want > 1.15 {
			t.Errorf("%s: %.0f B/s, %.2f× %.0f; want within ±15%%", name, got, got/want, want)
		}
	}
	rate("link at 2 MB/s", 2_000_000)
	if n := waitLoopServed(srv, 1); n != 1 {
		t.Errorf("the loops serve %d directions, want the download", n)
	}
	own := ConnLimits{Down: shaper.Limit{Rate: 1_000_000}}
	if err := srv.SetLimits("t", own); err != nil {
		t.Fatal(err)
	}
	rate("own limit 1 MB/s", 1_000_000)
	if err := srv.SetLinkLimit("line", Down, shaper.LinkLimit{Limit: shaper.Limit{Rate: 500_000}}); err != nil {
		t.Fatal(err)
	}
	rate("link lowered to 500 KB/s", 500_000)
	if n := waitLoopServed(srv, 1); n != 1 {
		t.Errorf("the loops serve %d directions, want the download", n)
	}
	err := srv.Reconfigure(nil, []ListenerConfig{{Name: "t", Addr: "127.0.0.1:0", Upstream: upstream, Limits: own}}, time.Second) // as configured: same socket
	if err != nil {
		t.Fatal(err)
	}
	rate("link removed", 1_000_000)
}

// TestLinkWaitEndsOnShutdown: a connection the shaping loop holds waiting
// for its link's grant (8 KiB at 100 B/s is 80 s) is closed promptly when
// the drain runs out.
func TestLinkWaitEndsOnShutdown(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)
	srv, addr := startLinks(t, []LinkConfig{{Name: "line", Down: shaper.LinkLimit{Limit: shaper.Limit{Rate: 100, Burst: 8192}}}},
		ListenerConfig{Upstream: endless(t), Links: []string{"line"}})
	r, c := readFrom(t, addr, "127.0.0.1")
	defer c.Close()
	poll(func() bool { return r.n.Load() >= 8192 && srv.loopStats().Tasks == 1 })
	if n, l := r.n.Load(), srv.loopStats().Tasks; n != 8192 || l != 1 {
		t.Fatalf("%d bytes read, %d directions in the loop; want the first burst, and the download waiting in the loop", n, l)
	}
	srv.mu.Lock()
	for cn := range srv.conns {
		if !cn.pumps[Down].inLink.Load() {
			t.Error("the download is not waiting for the link")
		}
	}
	srv.mu.Unlock()
	shutdownPromptly(t, srv)
	<-r.done
	if n := srv.loopStats().Tasks; n != 0 {
		t.Errorf("the loops serve %d directions after shutdown", n)
	}
	if st := srv.Links(false)[0].Dirs[Down]; st.Bytes != 8192 || st.Waiting != 0 {
		t.Errorf("link: %d bytes granted, %d waiting; want 8192 (the one grant moved), none", st.Bytes, st.Waiting)
	}
}

// TestLinkGrantsFollowShare: a download under a link alone takes grants of
// 10 ms of its share of the link, at least a chunk and at most 16 KiB:
// alone on 4 MB/s (40 KB), 16 KiB; with three more downloads (1 MB/s
// each), 10 KB. Measured by the link's own counters, bytes over grants.
func TestLinkGrantsFollowShare(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	checkRoutines(t)
	upstream := endless(t)
	srv, addr := startLinked(t, upstream, 4_000_000, ConnLimits{}) // a 20 KB burst: the most a grant can be
	grant := func(name string, want float64) {
		t.Helper()
		realWait(500 * time.Millisecond) // for the share to be measured and the grants to follow
		st0 := srv.Links(false)[0].Dirs[Down]
		realWait(time.Second)
		st1 := srv.Links(false)[0].Dirs[Down]
		grants := st1.Grants - st0.Grants
		if grants == 0 {
			t.Fatalf("%s: no grants in a second", name)
		}
		got := float64(st1.Bytes-st0.Bytes) / float64(grants)
		if got/want < 0.9 || got/want > 1.1 {
			t.Errorf("%s: grants of %.0f bytes on average (%d of them), want %.0f ±10%%", name, got, grants, want)
		}
	}
	r, c := readFrom(t, addr, "127.0.0.1")
	defer func() { c.Close(); <-r.done }()
	grant("alone on 4 MB/s", maxLinkGrant)
	for range 3 {
		r, c := readFrom(t, addr, "127.0.0.1")
		defer func() { c.Close(); <-r.done }()
	}
	grant("four on 4 MB/s", 10_000)
}

func TestKeyByRoundTrip(t *testing.T) {
	for _, k := range []KeyBy{KeyNone, KeySourceIP, KeyCIDR, KeyListener, KeyUpstream} {
		t.Run(k.String(), func(t *testing.T) {
			got, err := ParseKeyBy(k.String())
			if err != nil || got != k {
				t.Errorf("ParseKeyBy(%q) = %v, %v; want %v", k.String(), got, err, k)
			}
		})
	}
	if got, err := ParseKeyBy(""); err != nil || got != KeyNone {
		t.Errorf(`ParseKeyBy("") = %v, %v; want none`, got, err)
	}
	if _, err := ParseKeyBy("tenant"); err == nil || !strings.Contains(err.Error(), "want none, source_ip") {
		t.Errorf(`ParseKeyBy("tenant") error = %v, want one naming the forms`, err)
	}
}
