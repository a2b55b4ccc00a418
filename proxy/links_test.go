package proxy

import (
	"context"
	"encoding/json"
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
	srv, err := New(Options{
		Links:     []LinkConfig{{Name: "line", Down: shaper.LinkLimit{Limit: shaper.Limit{Rate: rate}}, KeyBy: "source_ip"}},
		Listeners: []ListenerConfig{{Name: "t", Addr: "127.0.0.1:0", Upstream: endless(t), Links: []string{"line"}}},
		Logger:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	addr := srv.Addr("t").String()

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
	time.Sleep(time.Second) // letting the shares settle, real time for a rate measurement
	a0, b0, t0 := sum(readers[0]), sum(readers[1]), time.Now()
	time.Sleep(3 * time.Second)
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
	time.Sleep(500 * time.Millisecond)
	a0, b0, t0 = sum(readers[0]), sum(readers[1]), time.Now()
	time.Sleep(2 * time.Second)
	el = time.Since(t0).Seconds()
	if got := float64(sum(readers[0])-a0+sum(readers[1])-b0) / el; got/(rate/2) > 1.05 || got/(rate/2) < 0.9 {
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
		{[]LinkConfig{{Name: "x", Up: shaper.LinkLimit{Limit: shaper.Limit{Rate: 5}}, KeyBy: "tenant"}}, `unknown key mode "tenant"`},
		{[]LinkConfig{{Name: "x", Up: shaper.LinkLimit{Limit: shaper.Limit{Rate: 5}}}, {Name: "x", Up: shaper.LinkLimit{Limit: shaper.Limit{Rate: 5}}}}, "duplicate name"},
	} {
		if _, err := New(Options{Links: tc.links, Listeners: lis}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(links %+v) = %v, want %q", tc.links, err, tc.want)
		}
	}
}

func TestAdminLinks(t *testing.T) {
	defer test.TimeOut(30 * time.Second).Stop()
	f := newAdminFixture(t, AdminOptions{})
	b := newBackend(t)
	err := f.srv.Reconfigure([]LinkConfig{{Name: "line", Up: shaper.LinkLimit{Limit: shaper.Limit{Rate: 1 << 20}}, KeyBy: "listener"}},
		[]ListenerConfig{{Name: "t", Addr: "127.0.0.1:0", Upstream: b.addr(), Links: []string{"line"}}}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	client, server := connect(t, f.srv.Addr("t").String(), b)
	defer client.Close()
	defer server.Close()
	roundTrip(t, client, server, "through the link")

	status, body := f.call(t, "GET", "/v1/links/line", "", "")
	var l LinkJSON
	if err := json.Unmarshal([]byte(body), &l); status != 200 || err != nil || l.Up == nil || l.Down != nil ||
		l.Up.Rate != 1<<20 || l.Up.Members != 1 || len(l.Up.KeyStats) != 1 || l.Up.KeyStats[0].Key != "t" || l.Up.Bytes < 16 {
		t.Fatalf("GET /v1/links/line: %d %s", status, body)
	}
	if s, b := f.call(t, "PUT", "/v1/links/line/limits", adminToken, `{"up": {"rate": "1000KB/s"}}`); s != 200 || !strings.Contains(b, `"rate": 1000000`) {
		t.Errorf("PUT link limits: %d %s", s, b)
	}
	for _, tc := range []struct {
		path, body string
		status     int
	}{
		{"/v1/links/nope/limits", `{"up": {"rate": 5}}`, 404},
		{"/v1/links/line/limits", `{"down": {"rate": 5}}`, 409},
		{"/v1/links/line/limits", `{"up": {"rate": 0}}`, 400},
		{"/v1/links/line/limits", `{"up": {"rate": 5}, "kernel_pacing": true}`, 400},
		{"/v1/links/line/limits", `{}`, 400},
	} {
		if s, b := f.call(t, "PUT", tc.path, adminToken, tc.body); s != tc.status {
			t.Errorf("PUT %s %s: %d %s, want %d", tc.path, tc.body, s, b, tc.status)
		}
	}
	if s, _ := f.call(t, "PUT", "/v1/links/line/limits", "", `{"up": {"rate": 5}}`); s != 401 {
		t.Errorf("PUT link limits without a token: %d, want 401", s)
	}
	_, metrics := f.call(t, "GET", "/metrics", "", "")
	for _, want := range []string{`sluice_link_rate_limit_bytes_per_second{direction="up",link="line"} 1e+06`, `sluice_link_connections{direction="up",link="line"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
