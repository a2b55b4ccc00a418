package admit_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluiceproxy/sluice/proxy/admit"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func conn(ip string) admit.Conn {
	return admit.Conn{Listener: "web", Client: netip.AddrPortFrom(netip.MustParseAddr(ip), 40000)}
}

func newPolicy(t testing.TB, r admit.Rules, pc admit.PolicyConfig) (*admit.Set, *admit.Policy) {
	t.Helper()
	s, err := admit.NewSet(r, admit.Options{Rand: func() float64 { return 0 }})
	if err != nil {
		t.Fatal(err)
	}
	pc.Listener = "web"
	p, err := s.Policy(pc)
	if err != nil {
		t.Fatal(err)
	}
	return s, p
}

// TestNginxExample: rate 5/s, burst 12, delay 8, twenty connections at
// one instant: nine at once, four delayed 200, 400, 600, 800 ms, seven
// refused (nginx limit_req, exactly).
func TestNginxExample(t *testing.T) {
	_, p := newPolicy(t, admit.Rules{Limits: []admit.Limit{{Name: "r", Rate: admit.Every{N: 5, Per: time.Second}, Burst: 12, Delay: 8}}},
		admit.PolicyConfig{Limits: []string{"r"}})
	var now, delayed []time.Duration
	refused := 0
	for range 20 {
		d := p.Admit(conn("192.0.2.1"), t0)
		switch {
		case d.Verdict == admit.Refuse:
			refused++
			if d.Reason != "rate" || d.Limit != "r" {
				t.Errorf("refusal %+v, want reason rate by r", d)
			}
		case d.Delay == 0:
			now = append(now, 0)
		default:
			delayed = append(delayed, d.Delay)
		}
	}
	want := []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 600 * time.Millisecond, 800 * time.Millisecond}
	if len(now) != 9 || refused != 7 || fmt.Sprint(delayed) != fmt.Sprint(want) {
		t.Errorf("%d at once, delays %v, %d refused; want 9, %v, 7", len(now), delayed, refused, want)
	}
}

// TestRate121st: rate 100/s, burst 20: one connection every 5 ms (200 a
// second) from t0: the excess grows by half a connection each time, so
// the 42nd (at 205 ms, excess 20.5) is the first refused; and with all
// at t0, the 22nd. Over the first second, with connections every 1/121 s
// ... the 121st of a steady 121/s stream within the first second is
// refused: 100 + 20 + the first.
func TestRate121st(t *testing.T) {
	rules := admit.Rules{Limits: []admit.Limit{{Name: "r", Rate: admit.Every{N: 100, Per: time.Second}, Burst: 20, Delay: 20}}}
	_, p := newPolicy(t, rules, admit.PolicyConfig{Limits: []string{"r"}})
	for i := range 22 {
		d := p.Admit(conn("192.0.2.1"), t0)
		if got, want := d.Verdict == admit.Refuse, i == 21; got != want {
			t.Fatalf("connection %d at t0: refused %v, want %v", i+1, got, want)
		}
	}
	// 121 at once after a quiet second: 21 pass, the rest are refused;
	// a connection every 10 ms (the rate) after that always passes.
	_, p = newPolicy(t, rules, admit.PolicyConfig{Limits: []string{"r"}})
	first := -1
	for i := range 200 {
		at := t0.Add(time.Duration(i) * time.Second / 200) // 200/s for a second
		if d := p.Admit(conn("192.0.2.2"), at); d.Verdict == admit.Refuse {
			first = i
			break
		}
	}
	if first != 41 {
		t.Errorf("at 200/s against 100/s burst 20, the first refused is connection %d, want 42", first+1)
	}
	_, p = newPolicy(t, rules, admit.PolicyConfig{Limits: []string{"r"}})
	admitted := 0
	for i := range 300 {
		at := t0.Add(time.Duration(i) * time.Second / 300)
		if d := p.Admit(conn("192.0.2.3"), at); d.Verdict != admit.Refuse {
			admitted++
		}
	}
	if admitted != 120 && admitted != 121 {
		t.Errorf("300 connections in the first second admitted %d, want 100 a second + 20 burst (+1 for the first)", admitted)
	}
}

func TestConnsAndRelease(t *testing.T) {
	s, p := newPolicy(t, admit.Rules{Limits: []admit.Limit{{Name: "c", Conns: 2}}}, admit.PolicyConfig{Limits: []string{"c"}})
	a, b := p.Admit(conn("192.0.2.1"), t0), p.Admit(conn("192.0.2.1"), t0)
	if a.Verdict != admit.Admit || b.Verdict != admit.Admit {
		t.Fatal("first two refused")
	}
	if d := p.Admit(conn("192.0.2.1"), t0); d.Verdict != admit.Refuse || d.Reason != "conns" {
		t.Fatalf("third = %+v, want refused for conns", d)
	}
	if d := p.Admit(conn("192.0.2.2"), t0); d.Verdict != admit.Admit {
		t.Fatal("another key refused")
	}
	a.Release()
	a.Release() // idempotent
	if d := p.Admit(conn("192.0.2.1"), t0); d.Verdict != admit.Admit {
		t.Fatal("refused after a release")
	}
	if d := p.Admit(conn("192.0.2.1"), t0); d.Verdict != admit.Refuse {
		t.Fatal("a double release gave back two slots")
	}
	if ks := s.Key(netip.MustParseAddr("192.0.2.1"), "web", t0); len(ks) != 1 || ks[0].Conns != 2 {
		t.Errorf("Key = %+v, want 2 conns", ks)
	}
}

func TestQueue(t *testing.T) {
	s, p := newPolicy(t, admit.Rules{Limits: []admit.Limit{{Name: "c", Conns: 1, QueueSize: 2, QueueTimeout: time.Second}}},
		admit.PolicyConfig{Limits: []string{"c"}})
	first := p.Admit(conn("192.0.2.1"), t0)
	w1 := p.Admit(conn("192.0.2.1"), t0)
	w2 := p.Admit(conn("192.0.2.1"), t0)
	if w1.Verdict != admit.Queue || w2.Verdict != admit.Queue {
		t.Fatalf("over the limit: %v, %v; want queued", w1.Verdict, w2.Verdict)
	}
	if d := p.Admit(conn("192.0.2.1"), t0); d.Verdict != admit.Refuse || d.Reason != "queue_full" {
		t.Fatalf("over the queue: %+v, want queue_full", d)
	}
	first.Release()
	select {
	case <-w1.Waiter.Ready():
	default:
		t.Fatal("the first waiter did not get the slot")
	}
	select {
	case <-w2.Waiter.Ready():
		t.Fatal("the second waiter got a slot too")
	default:
	}
	if !w2.Waiter.Cancel() || w1.Waiter.Cancel() {
		t.Fatal("Cancel: want true for the waiting one, false for the served one")
	}
	w1.Waiter.Hold().Release()
	if l, _ := s.Stats(); l[0].Waiting != 0 {
		t.Errorf("%d still waiting", l[0].Waiting)
	}
	if d := p.Admit(conn("192.0.2.1"), t0); d.Verdict != admit.Admit {
		t.Fatalf("after all ended: %+v, want admitted", d)
	}
}

func TestWindow(t *testing.T) {
	_, p := newPolicy(t, admit.Rules{Limits: []admit.Limit{{Name: "w", By: admit.ByCIDR, Window: admit.Every{N: 3, Per: time.Minute}}}},
		admit.PolicyConfig{Limits: []string{"w"}})
	for i, ip := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"} {
		if d := p.Admit(conn(ip), t0.Add(time.Duration(i)*time.Second)); d.Verdict != admit.Admit {
			t.Fatalf("%d: refused", i)
		}
	}
	if d := p.Admit(conn("192.0.2.200"), t0.Add(59*time.Second)); d.Verdict != admit.Refuse || d.Reason != "window" {
		t.Fatalf("4th in the /24's window: %+v, want refused", d)
	}
	if d := p.Admit(conn("192.0.3.1"), t0.Add(59*time.Second)); d.Verdict != admit.Admit {
		t.Fatal("another /24 refused")
	}
	if d := p.Admit(conn("192.0.2.9"), t0.Add(time.Minute)); d.Verdict != admit.Admit {
		t.Fatal("a new window refused")
	}
}

// TestAllOrNothing: a connection the second limit refuses takes nothing
// from the first.
func TestAllOrNothing(t *testing.T) {
	s, p := newPolicy(t, admit.Rules{Limits: []admit.Limit{{Name: "a", Conns: 5, Rate: admit.Every{N: 1, Per: time.Second}, Burst: 10, Delay: 10},
		{Name: "b", By: admit.ByGlobal, Conns: 1}}}, admit.PolicyConfig{Limits: []string{"a", "b"}})
	p.Admit(conn("192.0.2.1"), t0)
	for range 3 {
		if d := p.Admit(conn("192.0.2.1"), t0); d.Verdict != admit.Refuse || d.Limit != "b" {
			t.Fatalf("%+v, want refused by b", d)
		}
	}
	ks := s.Key(netip.MustParseAddr("192.0.2.1"), "web", t0)
	if ks[0].Conns != 1 || ks[0].Excess != 0 {
		t.Errorf("a after refusals by b: %+v, want 1 conn and no excess", ks[0])
	}
}

// TestBorrow: keys over their own rate go on while the global limit admits
// at once; once it is tight, they are refused and a key within its own
// rate still gets the global's burst.
func TestBorrow(t *testing.T) {
	_, p := newPolicy(t, admit.Rules{Limits: []admit.Limit{
		{Name: "ip", Rate: admit.Every{N: 1, Per: time.Second}, Borrow: "g"},
		{Name: "g", By: admit.ByGlobal, Rate: admit.Every{N: 10, Per: time.Second}, Burst: 5, Delay: 3}}},
		admit.PolicyConfig{Limits: []string{"ip", "g"}})
	admitted := 0
	for range 10 {
		if d := p.Admit(conn("192.0.2.1"), t0); d.Verdict == admit.Admit && d.Delay == 0 {
			admitted++
		}
	}
	if admitted != 4 { // the global admits 1 + delay 3 at once
		t.Errorf("one key over its rate: %d admitted at once, want 4 (the global's room)", admitted)
	}
	if d := p.Admit(conn("192.0.2.2"), t0); d.Verdict != admit.Admit || d.Delay == 0 {
		t.Errorf("a key within its own rate on a tight global: %+v, want admitted with a delay", d)
	}
}

func TestAllowDeny(t *testing.T) {
	_, p := newPolicy(t, admit.Rules{Limits: []admit.Limit{{Name: "g", By: admit.ByGlobal, Conns: 1}}}, admit.PolicyConfig{
		Limits: []string{"g"}, Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		Deny: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/32")}})
	if d := p.Admit(conn("192.0.2.7"), t0); d.Reason != "deny" {
		t.Errorf("denied: %+v", d)
	}
	if d := p.Admit(conn("::ffff:192.0.2.7"), t0); d.Reason != "deny" {
		t.Errorf("mapped denied: %+v", d)
	}
	if d := p.Admit(conn("2001:db8::1"), t0); d.Reason != "deny" {
		t.Errorf("v6 denied: %+v", d)
	}
	p.Admit(conn("198.51.100.1"), t0)
	for range 3 {
		if d := p.Admit(conn("10.1.2.3"), t0); d.Verdict != admit.Admit || !d.Hold.IsZero() {
			t.Errorf("allowed: %+v, want admitted holding nothing", d)
		}
	}
}

// TestBanTiers: more than 2 refusals within 10 s ban for a minute, lifted
// at its exact instant; refusals while banned do not count; a second ban
// lasts twice as long.
func TestBanTiers(t *testing.T) {
	var logs bytes.Buffer
	s, err := admit.NewSet(admit.Rules{Limits: []admit.Limit{{Name: "c", Conns: 1}},
		Bans: []admit.Ban{{Name: "b", Tiers: []admit.Tier{{Over: 2, Per: 10 * time.Second, Ban: time.Minute}}}}},
		admit.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil)), Rand: func() float64 { return 0 }})
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.Policy(admit.PolicyConfig{Listener: "web", Limits: []string{"c"}, Ban: "b"})
	if err != nil {
		t.Fatal(err)
	}
	held := p.Admit(conn("192.0.2.1"), t0)
	for i := range 3 {
		if d := p.Admit(conn("192.0.2.1"), t0.Add(time.Duration(i)*time.Second)); d.Reason != "conns" {
			t.Fatalf("refusal %d: %+v", i, d)
		}
	}
	held.Release()
	banAt := t0.Add(2 * time.Second)
	for range 5 {
		if d := p.Admit(conn("192.0.2.1"), banAt.Add(30*time.Second)); d.Reason != "ban" {
			t.Fatalf("banned: %+v", d)
		}
	}
	if d := p.Admit(conn("192.0.2.1"), banAt.Add(time.Minute-1)); d.Reason != "ban" {
		t.Fatalf("a nanosecond before the lift: %+v", d)
	}
	if d := p.Admit(conn("192.0.2.1"), banAt.Add(time.Minute)); d.Verdict != admit.Admit {
		t.Fatalf("at the lift: %+v", d)
	}
	// Again: three refusals, a ban twice as long.
	at := banAt.Add(2 * time.Minute)
	for range 3 {
		p.Admit(conn("192.0.2.1"), at)
	}
	bans := s.Bans()
	if len(bans) != 1 || bans[0].Until.Sub(bans[0].Since) != 2*time.Minute || bans[0].Key != "192.0.2.1/32" {
		t.Fatalf("second ban = %+v, want 2 minutes for 192.0.2.1/32", bans)
	}
	if n := strings.Count(logs.String(), "ban start"); n != 2 || strings.Count(logs.String(), "ban lift") != 1 {
		t.Errorf("log:\n%s\nwant 2 ban start lines and 1 ban lift", logs.String())
	}
	if ok, _ := s.LiftBan("b", netip.MustParsePrefix("192.0.2.1/32"), at); !ok {
		t.Fatal("LiftBan found no ban")
	}
	if d := p.Admit(conn("192.0.2.1"), at); d.Reason == "ban" {
		t.Fatal("banned after LiftBan")
	}
	if err := s.AddBan("b", netip.MustParsePrefix("198.51.100.0/24"), time.Hour, at); err != nil {
		t.Fatal(err)
	}
	if err := s.AddBan("nope", netip.MustParsePrefix("198.51.100.0/24"), time.Hour, at); err == nil {
		t.Fatal("AddBan to an unknown policy")
	}
}

// TestBanTableBound: a flood of distinct addresses never evicts a live
// ban; past the table, new keys count under their /24, and sweeping
// forgets every key that is not banned.
func TestBanTableBound(t *testing.T) {
	s, p := newPolicy(t, admit.Rules{Bans: []admit.Ban{{Name: "b", Count: admit.CountConnections, Table: 64,
		Tiers: []admit.Tier{{Over: 3, Per: time.Second, Ban: time.Hour}}}}}, admit.PolicyConfig{Ban: "b"})
	for range 4 {
		p.Admit(conn("203.0.113.9"), t0)
	}
	for i := range 5000 {
		p.Admit(conn(fmt.Sprintf("10.%d.%d.%d", i/65536, i/256%256, i%256)), t0.Add(time.Millisecond))
	}
	if d := p.Admit(conn("203.0.113.9"), t0.Add(time.Second)); d.Reason != "ban" {
		t.Fatal("the live ban was lost to the flood")
	}
	_, bs := s.Stats()
	if bs[0].Keys > 64+64 {
		t.Errorf("%d keys tracked, want at most the table (64) plus its aggregates' room", bs[0].Keys)
	}
	// The flood's /24 aggregates counted together, and may be banned as
	// networks; a sweep keeps only bans.
	s.Sweep(t0.Add(time.Minute))
	if _, bs := s.Stats(); bs[0].Keys != bs[0].Active || bs[0].Active < 1 {
		t.Errorf("after a sweep: %+v, want only banned keys left", bs[0])
	}
}

// TestUpdateKeepsState: an update that keeps a limit's name keeps its
// counts; its new numbers apply at once.
func TestUpdateKeepsState(t *testing.T) {
	s, p := newPolicy(t, admit.Rules{Limits: []admit.Limit{{Name: "c", Conns: 2}}}, admit.PolicyConfig{Limits: []string{"c"}})
	a := p.Admit(conn("192.0.2.1"), t0)
	p.Admit(conn("192.0.2.1"), t0)
	if err := s.Update(admit.Rules{Limits: []admit.Limit{{Name: "c", Conns: 1}}}); err != nil {
		t.Fatal(err)
	}
	a.Release()
	if d := p.Admit(conn("192.0.2.1"), t0); d.Verdict != admit.Refuse {
		t.Fatal("admitted over a lowered limit")
	}
	if err := s.Update(admit.Rules{Limits: []admit.Limit{{Name: "c", Conns: 3}}}); err != nil {
		t.Fatal(err)
	}
	if d := p.Admit(conn("192.0.2.1"), t0); d.Verdict != admit.Admit {
		t.Fatal("refused under a raised limit")
	}
	if err := s.Update(admit.Rules{Limits: []admit.Limit{{Name: "c"}}}); err == nil {
		t.Fatal("an invalid update was accepted")
	}
}

func TestFull(t *testing.T) {
	_, p := newPolicy(t, admit.Rules{Limits: []admit.Limit{{Name: "g", By: admit.ByGlobal, Conns: 1}}}, admit.PolicyConfig{Limits: []string{"g"}})
	if p.Full(t0) != nil {
		t.Fatal("full while empty")
	}
	d := p.Admit(conn("192.0.2.1"), t0)
	full := p.Full(t0)
	if full == nil {
		t.Fatal("not full at the limit")
	}
	d.Release()
	select {
	case <-full:
	default:
		t.Fatal("a release did not close the channel")
	}
}

func TestPrefixSet(t *testing.T) {
	s := admit.NewPrefixSet([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.7/32"),
		netip.MustParsePrefix("::ffff:198.51.100.0/120"), netip.MustParsePrefix("2001:db8::/32")})
	for _, c := range []struct {
		addr string
		want bool
	}{{"10.9.9.9", true}, {"11.0.0.1", false}, {"192.0.2.7", true}, {"192.0.2.8", false}, {"198.51.100.4", true},
		{"::ffff:10.1.1.1", true}, {"2001:db8:1::1", true}, {"2001:db9::1", false}} {
		if got := s.Contains(netip.MustParseAddr(c.addr)); got != c.want {
			t.Errorf("Contains(%s) = %v, want %v", c.addr, got, c.want)
		}
	}
}

// BenchmarkAdmit: three limits (per address conns and rate, per /24
// window, global conns and rate) and a ban policy, over 10,000 client
// addresses: one Admit and its Release.
// benchPolicy is the policy of the admission benchmarks: three limits
// (per address: conns and rate; per /24: a window; global: conns and
// rate) and a ban policy, and 10,000 clients.
func benchPolicy(b *testing.B) (*admit.Policy, []admit.Conn) {
	_, p := newPolicy(b, admit.Rules{
		Limits: []admit.Limit{
			{Name: "ip", Conns: 100, Rate: admit.Every{N: 1_000_000, Per: time.Second}, Burst: 1000, Delay: 1000},
			{Name: "net", By: admit.ByCIDR, Window: admit.Every{N: 1 << 30, Per: time.Minute}},
			{Name: "g", By: admit.ByGlobal, Conns: 1 << 30, Rate: admit.Every{N: 1e9, Per: time.Second}, Burst: 1 << 20, Delay: 1 << 20},
		},
		Bans: []admit.Ban{{Name: "b", Tiers: []admit.Tier{{Over: 100, Per: time.Second, Ban: time.Minute}}}},
	}, admit.PolicyConfig{Limits: []string{"ip", "net", "g"}, Ban: "b"})
	conns := make([]admit.Conn, 10_000)
	for i := range conns {
		conns[i] = admit.Conn{Listener: "web", Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 1)}
	}
	return p, conns
}

// BenchmarkAdmit is a connection's whole admission: the decision, and
// the release of its slots when it ends.
func BenchmarkAdmit(b *testing.B) {
	p, conns := benchPolicy(b)
	b.ReportAllocs()
	i := 0
	now := t0
	for b.Loop() {
		d := p.Admit(conns[i%len(conns)], now)
		if d.Verdict != admit.Admit {
			b.Fatalf("refused: %+v", d)
		}
		d.Release()
		i++
		now = now.Add(time.Microsecond)
	}
}

// BenchmarkAdmitDecision is the decision alone: the releases run with
// the timer stopped, a thousand at a time.
func BenchmarkAdmitDecision(b *testing.B) {
	p, conns := benchPolicy(b)
	b.ReportAllocs()
	held := make([]admit.Decision, 0, 1000)
	now := t0
	for i := 0; i < b.N; i++ {
		d := p.Admit(conns[i%len(conns)], now)
		if d.Verdict != admit.Admit {
			b.Fatalf("refused: %+v", d)
		}
		held = append(held, d)
		now = now.Add(time.Microsecond)
		if len(held) == cap(held) {
			b.StopTimer()
			for _, d := range held {
				d.Release()
			}
			held = held[:0]
			b.StartTimer()
		}
	}
}

// TestKeyMemory reports the memory a limit holds per tracked key, over
// 200,000 addresses, and that a sweep gives it back.
func TestKeyMemory(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("memory measurement")
	}
	// A table twice the keys: shards fill unevenly (keys hash by /24), and
	// the test counts own keys.
	s, p := newPolicy(t, admit.Rules{Limits: []admit.Limit{{Name: "r", Rate: admit.Every{N: 10, Per: time.Second}, Table: 2 << 20}}},
		admit.PolicyConfig{Limits: []string{"r"}})
	const n = 1_000_000
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	for i := range n {
		p.Admit(admit.Conn{Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 1)}, t0)
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	per := float64(m1.HeapAlloc-m0.HeapAlloc) / n
	t.Logf("%.0f bytes per tracked key", per)
	if per > 64 {
		t.Errorf("%.0f bytes per key, want at most 64", per)
	}
	if l, _ := s.Stats(); l[0].Keys != n {
		t.Errorf("%d keys tracked, want %d", l[0].Keys, n)
	}
	if st := s.Sweep(t0.Add(time.Second)); st.Forgotten != n {
		t.Errorf("Sweep forgot %d keys, want %d", st.Forgotten, n)
	}
}

// BenchmarkDenyLookup: a 10,000-entry deny list of /32s and /24s.
func BenchmarkDenyLookup(b *testing.B) {
	var ps []netip.Prefix
	for i := range 10_000 {
		bits := 32
		if i%2 == 0 {
			bits = 24
		}
		a := netip.AddrFrom4([4]byte{byte(i >> 16), byte(i >> 8), byte(i), 1})
		p, _ := a.Prefix(bits)
		ps = append(ps, p)
	}
	s := admit.NewPrefixSet(ps)
	probe := make([]netip.Addr, 1024)
	for i := range probe {
		probe[i] = netip.AddrFrom4([4]byte{byte(i * 7), byte(i * 13), byte(i), byte(i)})
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		s.Contains(probe[i%len(probe)])
		i++
	}
}

// BenchmarkAdmitParallel is BenchmarkAdmit from every core at once, each
// goroutine on its own clients: keyed limits contend only on a shared
// shard, the global limit only on its atomics.
func BenchmarkAdmitParallel(b *testing.B) {
	p, conns := benchPolicy(b)
	b.ReportAllocs()
	var seq atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		i := int(seq.Add(1)) * 7919
		now := t0
		for pb.Next() {
			d := p.Admit(conns[i%len(conns)], now)
			d.Release()
			i++
			now = now.Add(time.Microsecond)
		}
	})
}
