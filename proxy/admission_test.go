package proxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pion/transport/v2/test"

	"github.com/sluiceproxy/sluice/proxy/admit"
	"github.com/sluiceproxy/sluice/shaper/shapertest"
)

// dialFrom opens a client connection to addr from the local address src
// (127.0.0.x: every address of 127.0.0.0/8 is local).
func dialFrom(t testing.TB, addr, src string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.TCPConn)
}

// startAdmitting serves one listener "t" in front of upstream with the
// given admission, limits and bans.
func startAdmitting(t testing.TB, opts Options, upstream string, a Admission) (*Server, string, *logBuffer) {
	t.Helper()
	return startProxyWith(t, opts, ListenerConfig{Upstream: upstream, Admission: a})
}

// refusedBy reads from a refused client: it returns io.EOF for a close,
// ECONNRESET for a reset, a timeout error if the connection stays open
// for wait, and the bytes read before the end.
func refusedBy(t testing.TB, c net.Conn, wait time.Duration) ([]byte, error) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(wait)); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err == nil {
		err = io.EOF
	}
	return b, err
}

// served checks that c reaches the backend: the backend accepts it and a
// message goes each way.
func served(t *testing.T, c net.Conn, b *backend) net.Conn {
	t.Helper()
	server := b.accept(t)
	roundTrip(t, c, server, "hello")
	return server
}

// TestConnLimitPerKey: three connections per source address; a fourth
// from the same address is refused (closed at once, nothing sent), one
// from another address is not; closing one lets the next in.
func TestConnLimitPerKey(t *testing.T) {
	defer test.TimeOut(30 * time.Second).Stop()
	checkRoutines(t)
	b := newBackend(t)
	srv, addr, _ := startAdmitting(t, Options{Limits: []admit.Limit{{Name: "ip", By: admit.BySourceIP, Conns: 3}}},
		b.addr(), Admission{Limits: []string{"ip"}})
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range 3 {
		c := dialFrom(t, addr, "127.0.0.2")
		held = append(held, c, served(t, c, b))
	}
	extra := dialFrom(t, addr, "127.0.0.2")
	defer extra.Close()
	if got, err := refusedBy(t, extra, 5*time.Second); len(got) != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("4th connection from 127.0.0.2: read %q, %v; want closed at once", got, err)
	}
	other := dialFrom(t, addr, "127.0.0.3")
	held = append(held, other, served(t, other, b))

	held[0].Close() // frees a slot of 127.0.0.2, once both ends are closed
	held[1].Close()
	eventually(t, func() bool { return srv.ActiveConns() == 3 })
	again := dialFrom(t, addr, "127.0.0.2")
	held = append(held, again, served(t, again, b))

	st := srv.Stats()[0].Admission
	if st.Refused["conns"] != 1 || st.Decisions[[2]string{"ip", "refuse"}] != 1 {
		t.Errorf("admission stats = %+v, want one refusal by ip for conns", st)
	}
}

// TestConnSlotsNeverLeak: a global limit of 4 connections over 1,200
// connections that end every way a connection can: a clean close, a
// client reset, an upstream that refuses (the dial fails), an idle
// timeout. At the end no slot is held, and exactly 4 connections are
// admitted at once again.
func TestConnSlotsNeverLeak(t *testing.T) {
	defer test.TimeOut(120 * time.Second).Stop()
	checkRoutines(t)
	b := newBackend(t)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := closed.Addr().String()
	closed.Close()
	opts := Options{Limits: []admit.Limit{{Name: "g", By: admit.ByGlobal, Conns: 4, QueueSize: 1000, QueueTimeout: 10 * time.Second}}}
	adm := Admission{Limits: []string{"g"}}
	srv, addr, _ := startAdmitting(t, opts, b.addr(), adm)
	dead, err := New(Options{Limits: opts.Limits, Listeners: []ListenerConfig{{Name: "dead", Addr: "127.0.0.1:0", Upstream: deadAddr,
		Admission: adm}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := dead.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	deadLn := dead.Addr("dead").String()

	for i := range 1200 {
		switch i % 3 {
		case 0: // clean: a round trip, then both close
			c := dial(t, addr)
			s := served(t, c, b)
			c.Close()
			s.Close()
		case 1: // the client resets
			c := dial(t, addr)
			s := b.accept(t)
			_ = c.SetLinger(0)
			c.Close()
			s.Close()
		case 2: // the upstream refuses: sluice resets the client
			c, err := net.Dial("tcp", deadLn)
			if err != nil {
				continue // reset before connect returned
			}
			if _, err := refusedBy(t, c, 5*time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("a connection to a dead upstream: %v, want a reset or close", err)
			}
			c.Close()
		}
	}
	eventually(t, func() bool { return srv.ActiveConns() == 0 && dead.ActiveConns() == 0 })
	for _, s := range []*Server{srv, dead} {
		limits, _ := s.AdmissionSet()
		for _, l := range limits {
			if l.Waiting != 0 {
				t.Errorf("limit %s: %d connections still queued", l.Name, l.Waiting)
			}
		}
		for _, k := range s.Client(netip.MustParseAddr("127.0.0.1"), "t") {
			if k.Conns != 0 {
				t.Errorf("after every connection ended, %s holds %d slots", k.Limit, k.Conns)
			}
		}
	}
	var held []net.Conn
	for range 4 {
		c := dial(t, addr)
		held = append(held, c, served(t, c, b))
	}
	for _, c := range held {
		c.Close()
	}
}

// TestRefuseActions: what a refused connection gets, per refuse.
func TestRefuseActions(t *testing.T) {
	deny := []netip.Prefix{netip.MustParsePrefix("127.0.0.9/32")}
	page := "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 30\r\nContent-Length: 0\r\n\r\n"
	for _, c := range []struct {
		name  string
		adm   Admission
		check func(t *testing.T, got []byte, err error)
	}{
		{"close", Admission{Deny: deny}, func(t *testing.T, got []byte, err error) {
			if len(got) != 0 || !errors.Is(err, io.EOF) {
				t.Errorf("read %q, %v; want closed at once", got, err)
			}
		}},
		{"reset", Admission{Deny: deny, Refuse: RefuseReset}, func(t *testing.T, got []byte, err error) {
			if len(got) != 0 || !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("read %q, %v; want a reset", got, err)
			}
		}},
		{"tarpit", Admission{Deny: deny, Refuse: RefuseTarpit, TarpitHold: time.Hour}, func(t *testing.T, got []byte, err error) {
			if len(got) != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("read %q, %v; want held open", got, err)
			}
		}},
		{"overflow response", Admission{Deny: deny, Refuse: RefuseOverflow, Overflow: Overflow{Respond: []byte(page)}},
			func(t *testing.T, got []byte, err error) {
				if string(got) != page || !errors.Is(err, io.EOF) {
					t.Errorf("read %q, %v; want the page, then the end", got, err)
				}
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			defer test.TimeOut(20 * time.Second).Stop()
			checkRoutines(t)
			b := newBackend(t)
			srv, addr, _ := startAdmitting(t, Options{}, b.addr(), c.adm)
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.9")}}
			client, err := d.Dial("tcp", addr)
			if err != nil { // a reset can come before connect returns
				c.check(t, nil, err)
			} else {
				defer client.Close()
				got, err := refusedBy(t, client, 500*time.Millisecond)
				c.check(t, got, err)
			}
			ok := dialFrom(t, addr, "127.0.0.8") // not denied
			served(t, ok, b).Close()
			ok.Close()
			if st := srv.Stats()[0].Admission; st.Refused["deny"] != 1 {
				t.Errorf("refusals = %v, want one deny", st.Refused)
			}
		})
	}
}

// TestOverflowUpstream: refuse: overflow with an upstream forwards the
// refused connection there, byte for byte.
func TestOverflowUpstream(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)
	b, spill := newBackend(t), newBackend(t)
	// Per address: a full global limit would stop accepting instead.
	srv, addr, _ := startAdmitting(t, Options{Limits: []admit.Limit{{Name: "one", By: admit.BySourceIP, Conns: 1}}}, b.addr(),
		Admission{Limits: []string{"one"}, Refuse: RefuseOverflow, Overflow: Overflow{Upstream: spill.addr()}})
	first := dial(t, addr)
	defer first.Close()
	s1 := served(t, first, b)
	defer s1.Close()
	second := dial(t, addr) // over the limit: to the overflow upstream
	defer second.Close()
	s2 := served(t, second, spill)
	defer s2.Close()
	if st := srv.Stats()[0].Admission; st.Overflowed != 1 {
		t.Errorf("overflowed = %d, want 1", st.Overflowed)
	}
}

// TestTarpitOnClock: a tarpitted connection is held open, reading
// nothing, for exactly its hold on the fake clock, then closed.
func TestTarpitOnClock(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)
	clk := shapertest.NewClock()
	b := newBackend(t)
	srv, addr, _ := startAdmitting(t, Options{Clock: clk}, b.addr(), Admission{Deny: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Refuse: RefuseTarpit, TarpitHold: 10 * time.Second})
	c := dial(t, addr)
	defer c.Close()
	eventually(t, func() bool { return srv.Stats()[0].Admission.Tarpitted == 1 })
	clk.Advance(10*time.Second - time.Nanosecond)
	if got, err := refusedBy(t, c, 100*time.Millisecond); len(got) != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("before its hold ends: read %q, %v; want held open", got, err)
	}
	clk.Advance(time.Nanosecond)
	if got, err := refusedBy(t, c, 5*time.Second); len(got) != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("after its hold: read %q, %v; want closed", got, err)
	}
	if n := srv.Stats()[0].Admission.Tarpitted; n != 0 {
		t.Errorf("%d still tarpitted", n)
	}
}

// TestAllowDeny: allowed clients pass a limit that refuses everyone else;
// denied ones are refused even with room.
func TestAllowDeny(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)
	b := newBackend(t)
	// Per address: a full global limit stops accepting for everyone, the
	// allowed included (the kernel queues them all).
	_, addr, _ := startAdmitting(t, Options{Limits: []admit.Limit{{Name: "none", By: admit.BySourceIP, Conns: 1}}}, b.addr(),
		Admission{Limits: []string{"none"}, Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.20/32")},
			Deny: []netip.Prefix{netip.MustParsePrefix("127.0.0.21/32")}})
	denied := dialFrom(t, addr, "127.0.0.21")
	defer denied.Close()
	if got, err := refusedBy(t, denied, 5*time.Second); len(got) != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("denied: read %q, %v; want closed", got, err)
	}
	one := dialFrom(t, addr, "127.0.0.20")
	defer one.Close()
	defer served(t, one, b).Close() // the only slot of 127.0.0.20, were it not allowed
	for range 3 {
		c := dialFrom(t, addr, "127.0.0.20") // allowed: not counted
		defer c.Close()
		defer served(t, c, b).Close()
	}
}

// TestBanOnClock: more than 2 refusals within 10 s ban a client for a
// minute, at exact instants on the fake clock; refusals by the ban do not
// extend it; an admin lift ends it early; other clients are unaffected.
func TestBanOnClock(t *testing.T) {
	defer test.TimeOut(30 * time.Second).Stop()
	checkRoutines(t)
	clk := shapertest.NewClock()
	b := newBackend(t)
	srv, addr, logs := startAdmitting(t, Options{Clock: clk,
		Limits: []admit.Limit{{Name: "ip", By: admit.BySourceIP, Conns: 1}},
		Bans:   []admit.Ban{{Name: "b", By: admit.BySourceIP, Count: admit.CountRefusals, Tiers: []admit.Tier{{Over: 2, Per: 10 * time.Second, Ban: time.Minute}}}}},
		b.addr(), Admission{Limits: []string{"ip"}, Ban: "b"})
	held := dialFrom(t, addr, "127.0.0.30")
	defer held.Close()
	heldUp := served(t, held, b)
	defer heldUp.Close()
	refuse := func(why string) {
		t.Helper()
		c := dialFrom(t, addr, "127.0.0.30")
		defer c.Close()
		if got, err := refusedBy(t, c, 5*time.Second); len(got) != 0 || !errors.Is(err, io.EOF) {
			t.Fatalf("%s: read %q, %v; want refused", why, got, err)
		}
	}
	for i := range 3 { // the third refusal is more than 2: banned
		refuse("over the conns limit " + string(rune('1'+i)))
	}
	waitLog(t, logs, "ban start", "127.0.0.30")
	held.Close()
	heldUp.Close()
	eventually(t, func() bool { return srv.ActiveConns() == 0 })
	clk.Advance(30 * time.Second)
	refuse("banned, with a free slot")
	refuse("banned, again: does not extend the ban")
	other := dialFrom(t, addr, "127.0.0.31")
	defer other.Close()
	otherUp := served(t, other, b)
	defer otherUp.Close()
	bans := srv.Bans()
	if len(bans) != 1 || bans[0].Key != "127.0.0.30/32" {
		t.Fatalf("Bans() = %+v, want 127.0.0.30/32", bans)
	}
	// A minute, and up to 1% more so that bans do not all lift together.
	if d := bans[0].Until.Sub(bans[0].Since); d < time.Minute || d > time.Minute*101/100 {
		t.Fatalf("ban of %v, want a minute + up to 1%%", d)
	}
	clk.Advance(bans[0].Until.Sub(clk.Now()) - time.Nanosecond) // a nanosecond before the ban lifts
	refuse("a nanosecond before the lift")
	clk.Advance(time.Nanosecond)
	c := dialFrom(t, addr, "127.0.0.30")
	defer c.Close()
	defer served(t, c, b).Close()

	// A ban by hand, and its lift through the API.
	key := netip.MustParsePrefix("127.0.0.31/32")
	if err := srv.AddBan("b", key, time.Hour); err != nil {
		t.Fatal(err)
	}
	other.Close()
	otherUp.Close()
	eventually(t, func() bool { return srv.ActiveConns() == 1 })
	refused := dialFrom(t, addr, "127.0.0.31")
	defer refused.Close()
	if got, err := refusedBy(t, refused, 5*time.Second); len(got) != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("banned by hand: read %q, %v; want refused", got, err)
	}
	if lifted, err := srv.LiftBan("b", key); !lifted || err != nil {
		t.Fatalf("LiftBan = %v, %v", lifted, err)
	}
	back := dialFrom(t, addr, "127.0.0.31")
	defer back.Close()
	defer served(t, back, b).Close()
	if n := strings.Count(logs.String(), "ban start"); n != 2 {
		t.Errorf("%d ban start lines, want 2 (one per ban, none per refusal)", n)
	}
}

// TestQueueOnClock: a connection over a full limit with a queue waits,
// its upstream not dialed, until a slot frees; another waits out the
// queue's timeout and is refused, with result=refused.
func TestQueueOnClock(t *testing.T) {
	defer test.TimeOut(30 * time.Second).Stop()
	checkRoutines(t)
	clk := shapertest.NewClock()
	b := newBackend(t)
	srv, addr, logs := startAdmitting(t, Options{Clock: clk,
		Limits: []admit.Limit{{Name: "one", By: admit.ByGlobal, Conns: 1, QueueSize: 5, QueueTimeout: 2 * time.Second}}},
		b.addr(), Admission{Limits: []string{"one"}})
	first := dial(t, addr)
	defer first.Close()
	s1 := served(t, first, b)
	second := dial(t, addr) // queued
	defer second.Close()
	eventually(t, func() bool { l, _ := srv.AdmissionSet(); return len(l) == 1 && l[0].Waiting == 1 })
	select {
	case c := <-b.conns:
		c.Close()
		t.Fatal("a queued connection's upstream was dialed")
	default:
	}
	first.Close()
	s1.Close()
	s2 := served(t, second, b) // the slot passed to the queued one
	defer s2.Close()

	third := dial(t, addr) // queued behind a held slot
	defer third.Close()
	eventually(t, func() bool { l, _ := srv.AdmissionSet(); return l[0].Waiting == 1 })
	clk.Advance(2 * time.Second) // its queue timeout
	if got, err := refusedBy(t, third, 5*time.Second); len(got) != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("after the queue timeout: read %q, %v; want refused", got, err)
	}
	waitLog(t, logs, "conn done", "result=refused")
	if st := srv.Stats()[0].Admission; st.QueueTimeouts != 1 {
		t.Errorf("queue timeouts = %d, want 1", st.QueueTimeouts)
	}
}

// TestDelayOnClock: rate 5/s with a burst of 2 and delay 0 holds the
// burst's connections before their upstream is dialed: 200 and 400 ms on
// the fake clock; the fourth at once is refused.
func TestDelayOnClock(t *testing.T) {
	defer test.TimeOut(30 * time.Second).Stop()
	checkRoutines(t)
	clk := shapertest.NewClock()
	b := newBackend(t)
	srv, addr, _ := startAdmitting(t, Options{Clock: clk,
		Limits: []admit.Limit{{Name: "r", By: admit.ByGlobal, Rate: admit.Every{N: 5, Per: time.Second}, Burst: 2, Delay: 0}}},
		b.addr(), Admission{Limits: []string{"r"}})
	var clients []net.Conn
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for range 3 {
		clients = append(clients, dial(t, addr))
	}
	s0 := served(t, clients[0], b)
	defer s0.Close()
	fourth := dial(t, addr)
	defer fourth.Close()
	if got, err := refusedBy(t, fourth, 5*time.Second); len(got) != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("4th at once: read %q, %v; want refused", got, err)
	}
	eventually(t, func() bool { return srv.ActiveConns() == 3 })
	for i, at := range []time.Duration{200 * time.Millisecond, 400 * time.Millisecond} {
		clk.Advance(at - time.Nanosecond - time.Duration(i)*200*time.Millisecond)
		select {
		case c := <-b.conns:
			c.Close()
			t.Fatalf("connection %d dialed before its delay", i+2)
		default:
		}
		clk.Advance(time.Nanosecond)
		s := served(t, clients[i+1], b)
		defer s.Close()
	}
}

// TestGlobalFullStopsAccepting: a full global limit leaves new connections
// in the kernel's backlog, unaccepted, and takes them when a slot frees.
func TestGlobalFullStopsAccepting(t *testing.T) {
	defer test.TimeOut(30 * time.Second).Stop()
	checkRoutines(t)
	b := newBackend(t)
	srv, addr, _ := startAdmitting(t, Options{Limits: []admit.Limit{{Name: "g", By: admit.ByGlobal, Conns: 2}}}, b.addr(),
		Admission{Limits: []string{"g"}})
	var held []net.Conn
	for range 2 {
		c := dial(t, addr)
		held = append(held, c, served(t, c, b))
	}
	waiting := dial(t, addr) // the handshake completes in the kernel
	defer waiting.Close()
	if _, err := waiting.Write([]byte("queued")); err != nil {
		t.Fatal(err)
	}
	if got, err := refusedBy(t, waiting, 300*time.Millisecond); len(got) != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("3rd connection: read %q, %v; want it waiting, not refused", got, err)
	}
	if n := srv.ActiveConns(); n != 2 {
		t.Fatalf("%d conns accepted, want 2", n)
	}
	held[0].Close()
	held[1].Close()
	s := b.accept(t) // accepted once a slot freed
	defer s.Close()
	buf := make([]byte, 6)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "queued" {
		t.Fatalf("the upstream read %q, %v; want the bytes the client sent while waiting", buf, err)
	}
	if st := srv.Stats()[0].Admission; st.AcceptPaused == 0 || len(st.Refused) != 0 {
		t.Errorf("admission = %+v, want the accept loop paused and nothing refused", st)
	}
	_ = waiting.SetReadDeadline(time.Time{})
	held[2].Close()
	held[3].Close()
}

// TestAdmissionReloadKeepsState: a reload that lowers a limit keeps live
// connections and the count of held slots; one that raises it admits at
// once; a limit's bans survive a reload.
func TestAdmissionReloadKeepsState(t *testing.T) {
	defer test.TimeOut(30 * time.Second).Stop()
	checkRoutines(t)
	b := newBackend(t)
	limit := func(n int) []admit.Limit { return []admit.Limit{{Name: "ip", By: admit.BySourceIP, Conns: n}} }
	ls := func(srv *Server) []ListenerConfig {
		return []ListenerConfig{{Name: "t", Addr: "127.0.0.1:0", Upstream: b.addr(), Admission: Admission{Limits: []string{"ip"}}}}
	}
	srv, addr, _ := startAdmitting(t, Options{Limits: limit(2)}, b.addr(), Admission{Limits: []string{"ip"}})
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range 2 {
		c := dialFrom(t, addr, "127.0.0.40")
		held = append(held, c, served(t, c, b))
	}
	refused := func(why string) {
		t.Helper()
		c := dialFrom(t, addr, "127.0.0.40")
		defer c.Close()
		if got, err := refusedBy(t, c, 5*time.Second); len(got) != 0 || !errors.Is(err, io.EOF) {
			t.Fatalf("%s: read %q, %v; want refused", why, got, err)
		}
	}
	refused("at the limit")
	if err := srv.Reload(Options{Listeners: ls(srv), Limits: limit(1)}, time.Second); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, held[0], held[1], "still live") // lowering never kills
	refused("over the lowered limit")
	held[0].Close()
	held[1].Close()
	eventually(t, func() bool { return srv.ActiveConns() == 1 })
	refused("still at the lowered limit: one live") // the reload kept the count
	if err := srv.Reload(Options{Listeners: ls(srv), Limits: limit(3)}, time.Second); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		c := dialFrom(t, addr, "127.0.0.40")
		held = append(held, c, served(t, c, b))
	}
	// A bad reload keeps the running rules.
	if err := srv.Reload(Options{Listeners: ls(srv), Limits: nil}, time.Second); err == nil {
		t.Fatal("a reload naming a limit that is gone was accepted")
	}
	refused("the running limit of 3 stays")
}
