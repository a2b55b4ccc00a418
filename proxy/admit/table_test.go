package admit_test

import (
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/sluiceproxy/sluice/proxy/admit"
)

// TestTableAggregates: a key that finds its shard full counts under its
// /24; when the aggregates are full too, the connection is refused with
// table_full. Table 64 is one key per shard, and a /24 always shares its
// keys' shard.
func TestTableAggregates(t *testing.T) {
	s, p := newPolicy(t, admit.Rules{Limits: []admit.Limit{{Name: "c", Conns: 1, Table: 64}}},
		admit.PolicyConfig{Limits: []string{"c"}})
	a := p.Admit(conn("10.0.0.1"), t0)
	b := p.Admit(conn("10.0.0.2"), t0)
	if a.Verdict != admit.Admit || b.Verdict != admit.Admit {
		t.Fatalf("first two of a /24: %v, %v; want both admitted (own key, then the /24's)", a.Verdict, b.Verdict)
	}
	if d := p.Admit(conn("10.0.0.3"), t0); d.Verdict != admit.Refuse || d.Reason != "conns" {
		t.Fatalf("a third of the /24: %+v, want refused on conns (the /24 holds one)", d)
	}
	ks := s.Key(netip.MustParseAddr("10.0.0.3"), "web", t0)
	if len(ks) != 1 || ks[0].Key != "10.0.0.0/24" || ks[0].Conns != 1 {
		t.Errorf("Key(10.0.0.3) = %+v, want counted under 10.0.0.0/24 with 1 conn", ks)
	}
	// 4,096 more networks, an address each: every shard fills its own and
	// aggregate room, and the rest find no room.
	refused := 0
	for i := range 64 * 64 {
		d := p.Admit(conn(netip.AddrFrom4([4]byte{10, byte(1 + i>>8), byte(i), 1}).String()), t0)
		if d.Verdict == admit.Refuse && d.Reason == "table_full" {
			refused++
		}
	}
	if l, _ := s.Stats(); l[0].Keys > 128 || refused == 0 {
		t.Errorf("%d keys tracked, %d refused table_full; want at most 128 and some refused", l[0].Keys, refused)
	}
	a.Release()
	b.Release()
}

// TestFloodBounded: a flood of random source addresses keeps the tables
// within twice Table (own keys and aggregates), and a sweep after the
// rate's period forgets them all.
func TestFloodBounded(t *testing.T) {
	s, p := newPolicy(t, admit.Rules{Limits: []admit.Limit{
		{Name: "r", Rate: admit.Every{N: 10, Per: time.Second}, Table: 4096},
		{Name: "n", By: admit.ByCIDR, Prefix6: 96, Window: admit.Every{N: 100, Per: time.Second}, Table: 4096},
	}}, admit.PolicyConfig{Limits: []string{"r", "n"}})
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200_000 {
		var a netip.Addr
		if rng.IntN(2) == 0 {
			a = netip.AddrFrom4([4]byte{byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())})
		} else {
			var b [16]byte
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			a = netip.AddrFrom16(b)
		}
		p.Admit(admit.Conn{Client: netip.AddrPortFrom(a, 1)}, t0)
	}
	l, _ := s.Stats()
	for _, x := range l {
		if x.Keys > 2*4096 {
			t.Errorf("limit %s tracks %d keys, want at most %d", x.Name, x.Keys, 2*4096)
		}
	}
	s.Sweep(t0.Add(2 * time.Second))
	if l, _ := s.Stats(); l[0].Keys != 0 || l[1].Keys != 0 {
		t.Errorf("after a sweep: %d and %d keys, want none", l[0].Keys, l[1].Keys)
	}
}

// TestGlobalQueue: a ByGlobal limit's queue is FIFO, a newcomer does not
// pass the waiters, and Cancel gives back the place.
func TestGlobalQueue(t *testing.T) {
	s, p := newPolicy(t, admit.Rules{Limits: []admit.Limit{{Name: "g", By: admit.ByGlobal, Conns: 1, QueueSize: 2, QueueTimeout: time.Second}}},
		admit.PolicyConfig{Limits: []string{"g"}})
	first := p.Admit(conn("192.0.2.1"), t0)
	w1 := p.Admit(conn("192.0.2.2"), t0)
	w2 := p.Admit(conn("192.0.2.3"), t0)
	if first.Verdict != admit.Admit || w1.Verdict != admit.Queue || w2.Verdict != admit.Queue {
		t.Fatalf("verdicts %v %v %v, want admit queue queue", first.Verdict, w1.Verdict, w2.Verdict)
	}
	if d := p.Admit(conn("192.0.2.4"), t0); d.Verdict != admit.Refuse || d.Reason != "queue_full" {
		t.Fatalf("over the queue: %+v, want queue_full", d)
	}
	first.Release()
	<-w1.Waiter.Ready()
	if !w2.Waiter.Cancel() {
		t.Fatal("the second waiter was served, want still waiting")
	}
	w3 := p.Admit(conn("192.0.2.5"), t0)
	if w3.Verdict != admit.Queue {
		t.Fatalf("with the slot held: %+v, want queued", w3)
	}
	w1.Waiter.Hold().Release()
	<-w3.Waiter.Ready()
	w3.Waiter.Hold().Release()
	ks := s.Key(netip.MustParseAddr("192.0.2.1"), "web", t0)
	if l, _ := s.Stats(); ks[0].Conns != 0 || l[0].Waiting != 0 {
		t.Errorf("after all ended: %d conns, %d waiting; want none", ks[0].Conns, l[0].Waiting)
	}
}

// TestNoLeakConcurrent: thousands of admissions from several goroutines,
// released, queued and cancelled or served, leave no slot taken and no
// place in a queue.
func TestNoLeakConcurrent(t *testing.T) {
	s, p := newPolicy(t, admit.Rules{Limits: []admit.Limit{
		{Name: "ip", Conns: 2, QueueSize: 2, QueueTimeout: time.Second, Rate: admit.Every{N: 1e6, Per: time.Second}, Burst: 100},
		{Name: "g", By: admit.ByGlobal, Conns: 5, QueueSize: 3, QueueTimeout: time.Second},
	}}, admit.PolicyConfig{Limits: []string{"ip", "g"}})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			var held []admit.Hold
			for i := range 3000 {
				c := conn(netip.AddrFrom4([4]byte{192, 0, 2, byte(rng.IntN(4))}).String())
				d := p.Admit(c, t0.Add(time.Duration(i)*time.Millisecond))
				switch d.Verdict {
				case admit.Admit:
					held = append(held, d.Hold)
				case admit.Queue:
					if rng.IntN(2) == 0 && d.Waiter.Cancel() {
						break
					}
					// Served or not yet: release what we hold so it can be.
					for _, h := range held {
						h.Release()
					}
					held = held[:0]
					select {
					case <-d.Waiter.Ready():
						held = append(held, d.Waiter.Hold())
					case <-time.After(10 * time.Millisecond): // others hold the slots: give up
						if !d.Waiter.Cancel() {
							held = append(held, d.Waiter.Hold())
						}
					}
				}
				if len(held) > 1 || rng.IntN(3) == 0 {
					for _, h := range held {
						h.Release()
					}
					held = held[:0]
				}
			}
			for _, h := range held {
				h.Release()
			}
		}()
	}
	wg.Wait()
	for _, ks := range s.Key(netip.MustParseAddr("192.0.2.1"), "web", t0) {
		if ks.Conns != 0 || ks.Queued != 0 {
			t.Errorf("%s: %d conns, %d queued after all ended; want none", ks.Limit, ks.Conns, ks.Queued)
		}
	}
	l, _ := s.Stats()
	for _, x := range l {
		if x.Waiting != 0 {
			t.Errorf("%s: %d waiting after all ended", x.Name, x.Waiting)
		}
		if x.Admitted+x.Delayed+x.Queued == 0 {
			t.Errorf("%s: decided nothing: the test exercised nothing", x.Name)
		}
	}
	// Every slot is back: the global limit admits five at once again.
	for i := range 5 {
		if d := p.Admit(conn(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}).String()), t0.Add(time.Hour)); d.Verdict != admit.Admit {
			t.Fatalf("connection %d after all ended: %+v, want admitted", i, d)
		}
	}
}

// TestUpdateNewKey: a limit whose key changes on Update starts afresh;
// one that keeps it keeps its counts.
func TestUpdateNewKey(t *testing.T) {
	r := admit.Rules{Limits: []admit.Limit{{Name: "c", Conns: 1}}}
	s, p := newPolicy(t, r, admit.PolicyConfig{Limits: []string{"c"}})
	p.Admit(conn("192.0.2.1"), t0)
	r.Limits[0].Conns = 2
	if err := s.Update(r); err != nil {
		t.Fatal(err)
	}
	if ks := s.Key(netip.MustParseAddr("192.0.2.1"), "web", t0); ks[0].Conns != 1 {
		t.Fatalf("same key, new number: %d conns, want 1 kept", ks[0].Conns)
	}
	r.Limits[0].By = admit.ByCIDR
	if err := s.Update(r); err != nil {
		t.Fatal(err)
	}
	if ks := s.Key(netip.MustParseAddr("192.0.2.1"), "web", t0); ks[0].Conns != 0 || ks[0].Key != "192.0.2.0" {
		t.Fatalf("new key: %+v, want a fresh 192.0.2.0 with no conns", ks[0])
	}
}
