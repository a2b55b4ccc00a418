package admit_test

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/sluiceproxy/sluice/proxy/admit"
)

// fakeShared is a Shared whose other instances are what the test says:
// remote conns, hits and new hits per key; it records what the Set
// reports.
type fakeShared struct {
	admit.Shared // nil: unexpected calls crash

	mu                   sync.Mutex
	remoteConns, hits    map[string]int64
	newHits              map[string]int64
	localConns, localHit map[string]int64
}

func newFakeShared() *fakeShared {
	return &fakeShared{remoteConns: map[string]int64{}, hits: map[string]int64{}, newHits: map[string]int64{},
		localConns: map[string]int64{}, localHit: map[string]int64{}}
}

func (f *fakeShared) Get(key string) admit.SharedCount {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := admit.SharedCount{RemoteConns: f.remoteConns[key], Hits: f.hits[key] + f.localHit[key], NewRemoteHits: f.newHits[key]}
	f.newHits[key] = 0
	return c
}

func (f *fakeShared) Hit(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.localHit[key]++
}

func (f *fakeShared) AddConns(key string, delta int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.localConns[key] += int64(delta)
}

func (f *fakeShared) local(key string) (conns, hits int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.localConns[key], f.localHit[key]
}

func TestSharedConns(t *testing.T) {
	for _, tc := range []struct {
		name string
		by   admit.By
		key  string
	}{
		{"source_ip", admit.BySourceIP, "192.0.2.1"},
		{"cidr", admit.ByCIDR, "192.0.2.0/24"},
		{"listener", admit.ByListener, "web"},
		{"global", admit.ByGlobal, "*"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeShared()
			f.remoteConns[tc.key] = 3
			_, p := newPolicy(t, admit.Rules{Limits: []admit.Limit{{Name: "c", By: tc.by, Conns: 5, Shared: f}}},
				admit.PolicyConfig{Limits: []string{"c"}})
			var held []admit.Decision
			for i := range 3 {
				d := p.Admit(conn("192.0.2.1"), t0)
				if i < 2 && d.Verdict != admit.Admit {
					t.Fatalf("conn %d: %v, want admit (3 remote + %d here < 5)", i, d.Verdict, i)
				}
				if i == 2 && (d.Verdict != admit.Refuse || d.Reason != "conns") {
					t.Fatalf("conn %d: %+v, want refused on conns", i, d)
				}
				held = append(held, d)
			}
			if c, _ := f.local(tc.key); c != 2 {
				t.Errorf("AddConns sum = %d, want 2", c)
			}
			for _, d := range held {
				d.Release()
				d.Release() // once only
			}
			if c, _ := f.local(tc.key); c != 0 {
				t.Errorf("AddConns sum after release = %d, want 0", c)
			}
			f.mu.Lock()
			f.remoteConns[tc.key] = 5
			f.mu.Unlock()
			if d := p.Admit(conn("192.0.2.1"), t0); d.Verdict != admit.Refuse {
				t.Errorf("with 5 remote: %v, want refuse", d.Verdict)
			}
		})
	}
}

func TestSharedRateAndWindow(t *testing.T) {
	f := newFakeShared()
	_, p := newPolicy(t, admit.Rules{Limits: []admit.Limit{
		{Name: "r", Rate: admit.Every{N: 10, Per: time.Second}, Burst: 4, Shared: f},
		{Name: "w", By: admit.ByGlobal, Window: admit.Every{N: 20, Per: time.Minute}, Shared: f},
	}}, admit.PolicyConfig{Limits: []string{"r", "w"}})
	// Four connections elsewhere in this instant: with the burst of 4,
	// one more passes here (the fifth), then the rate refuses.
	f.newHits["192.0.2.1"] = 4
	if d := p.Admit(conn("192.0.2.1"), t0); d.Verdict != admit.Admit {
		t.Fatalf("first: %+v, want admit", d)
	}
	if d := p.Admit(conn("192.0.2.1"), t0); d.Verdict != admit.Refuse || d.Reason != "rate" {
		t.Fatalf("second: %+v, want refused on rate", d)
	}
	// 100 ms later the rate admits one again.
	if d := p.Admit(conn("192.0.2.1"), t0.Add(100*time.Millisecond)); d.Verdict != admit.Admit {
		t.Fatalf("after 100ms: %+v, want admit", d)
	}
	if _, h := f.local("192.0.2.1"); h != 2 {
		t.Errorf("hits reported = %d, want 2 (refusals report none)", h)
	}
	// The cluster's window: 18 elsewhere, 2 here: full.
	f.mu.Lock()
	f.hits["*"] = 18
	f.mu.Unlock()
	if d := p.Admit(conn("192.0.2.2"), t0.Add(time.Second)); d.Verdict != admit.Refuse || d.Reason != "window" || d.Limit != "w" {
		t.Fatalf("window: %+v, want refused on window by w", d)
	}
}

func TestSharedQueueGrantReports(t *testing.T) {
	f := newFakeShared()
	_, p := newPolicy(t, admit.Rules{Limits: []admit.Limit{{Name: "c", Conns: 1, QueueSize: 1, QueueTimeout: time.Second, Shared: f}}},
		admit.PolicyConfig{Limits: []string{"c"}})
	first := p.Admit(conn("192.0.2.1"), t0)
	q := p.Admit(conn("192.0.2.1"), t0)
	if first.Verdict != admit.Admit || q.Verdict != admit.Queue {
		t.Fatalf("verdicts %v, %v, want admit, queue", first.Verdict, q.Verdict)
	}
	first.Release()
	<-q.Waiter.Ready()
	if c, _ := f.local("192.0.2.1"); c != 1 {
		t.Errorf("conns after the slot passed = %d, want 1", c)
	}
	q.Waiter.Hold().Release()
	if c, _ := f.local("192.0.2.1"); c != 0 {
		t.Errorf("conns after release = %d, want 0", c)
	}
}

func TestBanHooksAndImports(t *testing.T) {
	type ev struct {
		ban, key string
		until    time.Time
		lift     bool
	}
	var mu sync.Mutex
	var evs []ev
	s, err := admit.NewSet(admit.Rules{Bans: []admit.Ban{{Name: "b", Count: admit.CountConnections,
		Tiers: []admit.Tier{{Over: 1, Per: time.Minute, Ban: time.Minute}}}}},
		admit.Options{
			Rand: func() float64 { return 0 },
			OnBan: func(b string, k netip.Prefix, u time.Time) {
				mu.Lock()
				evs = append(evs, ev{b, k.String(), u, false})
				mu.Unlock()
			},
			OnLift: func(b string, k netip.Prefix) {
				mu.Lock()
				evs = append(evs, ev{b, k.String(), time.Time{}, true})
				mu.Unlock()
			},
		})
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.Policy(admit.PolicyConfig{Listener: "web", Ban: "b"})
	if err != nil {
		t.Fatal(err)
	}
	p.Admit(conn("192.0.2.1"), t0)
	p.Admit(conn("192.0.2.1"), t0) // over 1: banned a minute
	if d := p.Admit(conn("192.0.2.1"), t0); d.Reason != "ban" {
		t.Fatalf("third: %+v, want ban", d)
	}
	key := netip.MustParsePrefix("198.51.100.7/32")
	if err := s.AddBan("b", key, time.Hour, t0); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.LiftBan("b", key, t0); !ok || err != nil {
		t.Fatalf("LiftBan = %v, %v", ok, err)
	}
	// Imports: no hook; a ban only lengthens.
	other := netip.MustParsePrefix("203.0.113.9/32")
	if err := s.ImportBan("b", other, t0.Add(time.Hour), t0); err != nil {
		t.Fatal(err)
	}
	if err := s.ImportBan("b", other, t0.Add(time.Minute), t0); err != nil {
		t.Fatal(err)
	}
	if d := p.Admit(conn("203.0.113.9"), t0.Add(30*time.Minute)); d.Reason != "ban" {
		t.Errorf("imported ban at 30m: %+v, want ban (the shorter import must not shorten it)", d)
	}
	if ok, _ := s.ImportLift("b", other, t0.Add(31*time.Minute)); !ok {
		t.Errorf("ImportLift = false, want true")
	}
	if d := p.Admit(conn("203.0.113.9"), t0.Add(32*time.Minute)); d.Verdict != admit.Admit {
		t.Errorf("after import lift: %+v, want admit", d)
	}
	if err := s.ImportBan("nope", other, t0.Add(time.Hour), t0); err == nil {
		t.Errorf("ImportBan of an unknown policy: no error")
	}
	mu.Lock()
	defer mu.Unlock()
	want := []ev{
		{"b", "192.0.2.1/32", t0.Add(time.Minute), false},
		{"b", "198.51.100.7/32", t0.Add(time.Hour), false},
		{"b", "198.51.100.7/32", time.Time{}, true},
	}
	if len(evs) != len(want) {
		t.Fatalf("hook calls = %+v, want %+v", evs, want)
	}
	for i := range want {
		if evs[i].ban != want[i].ban || evs[i].key != want[i].key || evs[i].lift != want[i].lift || !evs[i].until.Equal(want[i].until) {
			t.Errorf("hook call %d = %+v, want %+v", i, evs[i], want[i])
		}
	}
}
