package shaper_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/sluiceproxy/sluice/shaper"
	"github.com/sluiceproxy/sluice/shaper/shapertest"
)

// sim drives a Link on a fake clock from one goroutine: members ask for a
// chunk, and ask again at once when granted (saturated) or when their own
// pace allows. Everything is deterministic.
type sim struct {
	t     *testing.T
	clock *shapertest.Clock
	link  *shaper.Link
	ms    []*simMember
	tick  time.Duration // how often members act; 0 means 100 µs

	// With simDriven, the sim drives the link (SetDriver) as a shaping
	// loop does, calling Dispatch at the very instant asked, where the
	// link's own timer would fire.
	driveAt time.Time
}

// simDriven makes newSim's links driven; TestLinkDriven sets it.
var simDriven bool

type simMember struct {
	m       *shaper.Member
	key     string
	pace    int64         // bytes/s the member itself can take; 0 = as much as it gets
	start   time.Time     // a paced member's demand: pace × (now - start) bytes in all
	total   int64         // bytes got since start
	nextAsk time.Time     // when a paced member asks again
	busy    time.Duration // time a member spends moving each grant before it asks again
	upTo    int           // what it asks for at most (credit); 0 = one chunk
	asking  bool
	got     int64
	gone    bool

	// Every other member asks with Ask and its grants come through
	// notify (as a shaping loop's do), the rest with Begin and a channel:
	// the link must treat both alike.
	notified bool
	pending  int // an Ask's grant, from notify
}

const chunk = 8192

func newSim(t *testing.T, ll shaper.LinkLimit) *sim {
	c := shapertest.NewClock()
	s := &sim{t: t, clock: c, link: shaper.NewLink(ll, c)}
	if simDriven {
		s.link.SetDriver(func(at time.Time) { s.driveAt = at })
	}
	return s
}

func (s *sim) add(key string, n int, pace int64) []*simMember {
	var out []*simMember
	for range n {
		sm := &simMember{m: s.link.Join(key), key: key, pace: pace, start: s.clock.Now(), nextAsk: s.clock.Now(), notified: simDriven || len(s.ms)%2 == 1}
		s.ms = append(s.ms, sm)
		out = append(out, sm)
	}
	return out
}

func (s *sim) leave(ms []*simMember) {
	for _, sm := range ms {
		sm.gone = true
		switch {
		case sm.asking && sm.notified:
			// Withdraw returns the grant if notify has come, as the
			// caller may not have seen it yet.
			if got := sm.m.Withdraw(); got != sm.pending {
				s.t.Fatalf("Withdraw returned %d; notify gave %d", got, sm.pending)
			}
			sm.m.Refund(sm.pending)
			sm.pending = 0
		case sm.asking:
			sm.m.Cancel() // what Take does when its ctx ends
		}
		sm.m.Leave()
	}
}

// step collects grants and makes new asks at the current instant.
func (s *sim) step() {
	for progress := true; progress; {
		progress = false
		for _, sm := range s.ms {
			if sm.gone {
				continue
			}
			if sm.asking {
				n, ok := sm.m.Granted()
				if sm.notified {
					n, ok = sm.pending, sm.pending > 0
					sm.pending = 0
				}
				if !ok {
					continue
				}
				sm.granted(s, n)
				sm.asking = false
				progress = true
			}
			if !sm.asking && !s.clock.Now().Before(sm.nextAsk) {
				ask := sm.m.Begin
				if sm.notified {
					ask = func(n, upTo int) (int, error) {
						return sm.m.Ask(n, upTo, func(n int) { sm.pending = n })
					}
				}
				n, err := ask(chunk, max(chunk, sm.upTo))
				if err != nil {
					s.t.Fatal(err)
				}
				if n > 0 {
					sm.granted(s, n)
					progress = true
				} else {
					sm.asking = true
				}
			}
		}
	}
}

// granted counts n; a paced member asks again once its demand, pace since
// start, is above what it got.
func (sm *simMember) granted(s *sim, n int) {
	sm.got += int64(n)
	sm.total += int64(n)
	if sm.pace > 0 {
		sm.nextAsk = sm.start.Add(time.Duration(sm.total * int64(time.Second) / sm.pace))
	}
	if sm.busy > 0 {
		sm.nextAsk = s.clock.Now().Add(sm.busy)
	}
}

// run advances d in steps of s.tick.
func (s *sim) run(d time.Duration) {
	tick := s.tick
	if tick == 0 {
		tick = 100 * time.Microsecond
	}
	for el := time.Duration(0); el < d; el += tick {
		s.step()
		s.advance(tick)
	}
	s.step()
	if simDriven && s.clock.Timers() != 0 {
		s.t.Fatalf("a driven link armed %d timers of its own", s.clock.Timers())
	}
}

// advance moves the clock on by d, dispatching a driven link when asked.
func (s *sim) advance(d time.Duration) {
	end := s.clock.Now().Add(d)
	for !s.driveAt.IsZero() && !s.driveAt.After(end) {
		if w := s.driveAt.Sub(s.clock.Now()); w > 0 {
			s.clock.Advance(w)
		}
		s.driveAt = time.Time{}
		s.link.Dispatch() // may ask again
	}
	s.clock.Advance(end.Sub(s.clock.Now()))
}

// bytes returns what members got since the last reset, per key.
func (s *sim) byKey() map[string]int64 {
	out := map[string]int64{}
	for _, sm := range s.ms {
		out[sm.key] += sm.got
	}
	return out
}

func (s *sim) reset() {
	for _, sm := range s.ms {
		sm.got = 0
	}
}

// near checks got is want within tol (a fraction), reporting name.
func near(t *testing.T, name string, got, want int64, tol float64) {
	t.Helper()
	if math.Abs(float64(got-want)) > tol*float64(want) {
		t.Errorf("%s: %d bytes, want %d ±%.1f%% (%.4f×)", name, got, want, tol*100, float64(got)/float64(want))
	}
}

const mbps = 1_000_000 // 1 MB/s

// warm runs a second to let the link reach a steady state, then resets the
// counters.
func (s *sim) warm() {
	s.run(time.Second)
	s.reset()
}

func TestLinkEqualDemand(t *testing.T) {
	s := newSim(t, shaper.LinkLimit{Limit: shaper.Limit{Rate: mbps}})
	ms := s.add("", 4, 0)
	s.warm()
	s.run(10 * time.Second)
	var total int64
	for i, sm := range ms {
		near(t, fmt.Sprintf("member %d", i), sm.got, 10*mbps/4, 0.005)
		total += sm.got
	}
	near(t, "link", total, 10*mbps, 0.001)
}

// A slow consumer takes what it wants; the others split the rest.
func TestLinkSlowConsumer(t *testing.T) {
	s := newSim(t, shaper.LinkLimit{Limit: shaper.Limit{Rate: mbps}})
	slow := s.add("", 1, 100_000)[0]
	fast := s.add("", 3, 0)
	s.warm()
	s.run(10 * time.Second)
	near(t, "slow member", slow.got, 10*100_000, 0.01)
	for i, sm := range fast {
		near(t, fmt.Sprintf("fast member %d", i), sm.got, 10*300_000, 0.005)
	}
}

// A key with one connection and a key with fifty get the same share.
func TestLinkKeysOneVsFifty(t *testing.T) {
	s := newSim(t, shaper.LinkLimit{Limit: shaper.Limit{Rate: mbps}})
	s.add("one", 1, 0)
	fifty := s.add("fifty", 50, 0)
	s.warm()
	s.run(10 * time.Second)
	got := s.byKey()
	near(t, "key one", got["one"], 5*mbps, 0.005)
	near(t, "key fifty", got["fifty"], 5*mbps, 0.005)
	for i, sm := range fifty { // equal inside the key
		if d := sm.got - 5*mbps/50; d > chunk || d < -chunk {
			t.Errorf("fifty[%d]: %d bytes, want %d within one chunk", i, sm.got, 5*mbps/50)
		}
	}
}

// A key whose one connection is slow to come back for its next grant (it
// is busy moving the last one: 1 ms per grant caps it at 8 MB/s in 8 KiB
// grants) still gets its half against a key with ten, through credit.
func TestLinkLatencyBoundKeyGetsItsShare(t *testing.T) {
	s := newSim(t, shaper.LinkLimit{Limit: shaper.Limit{Rate: 20 * mbps}})
	slow := s.add("one", 1, 0)[0]
	slow.busy, slow.upTo = time.Millisecond, 64*chunk
	s.add("ten", 10, 0)
	s.warm()
	s.run(5 * time.Second)
	got := s.byKey()
	near(t, "latency-bound key", got["one"], 5*10*mbps, 0.02)
	near(t, "key with ten", got["ten"], 5*10*mbps, 0.02)

	// Without credit (asks for one chunk at most) it could not.
	s = newSim(t, shaper.LinkLimit{Limit: shaper.Limit{Rate: 20 * mbps}})
	slow = s.add("one", 1, 0)[0]
	slow.busy = time.Millisecond
	s.add("ten", 10, 0)
	s.warm()
	s.run(5 * time.Second)
	if got := s.byKey()["one"]; got > 5*9*mbps {
		t.Errorf("without credit the latency-bound key got %d bytes: the test does not exercise credit", got)
	}
}

// Alone, a key borrows up to its ceil and no further.
func TestLinkBorrowUpToCeil(t *testing.T) {
	s := newSim(t, shaper.LinkLimit{Limit: shaper.Limit{Rate: mbps}, Key: shaper.KeyLimit{Rate: 100_000, Ceil: 600_000}})
	s.add("a", 3, 0)
	s.warm()
	s.run(10 * time.Second)
	near(t, "key a alone", s.byKey()["a"], 10*600_000, 0.005)
	st := s.link.Stats()
	if st.Borrowed == 0 {
		t.Error("a key above its assured rate borrowed nothing")
	}
}

// Under contention every key gets its assured rate; the spare is split by
// weight.
func TestLinkContentionAssured(t *testing.T) {
	s := newSim(t, shaper.LinkLimit{Limit: shaper.Limit{Rate: mbps}, Overrides: map[string]shaper.KeyLimit{
		"a": {Rate: 700_000}, "b": {Rate: 300_000},
	}})
	s.add("a", 1, 0)
	s.add("b", 5, 0)
	s.warm()
	s.run(10 * time.Second)
	got := s.byKey()
	near(t, "key a (700 KB/s assured)", got["a"], 10*700_000, 0.005)
	near(t, "key b (300 KB/s assured)", got["b"], 10*300_000, 0.01)

	// Assured 200 + 200; the 600 KB/s spare split equally.
	s2 := newSim(t, shaper.LinkLimit{Limit: shaper.Limit{Rate: mbps}, Key: shaper.KeyLimit{Rate: 200_000}})
	s2.add("a", 1, 0)
	s2.add("b", 3, 0)
	s2.warm()
	s2.run(10 * time.Second)
	got = s2.byKey()
	near(t, "key a (200 + half the spare)", got["a"], 10*500_000, 0.005)
	near(t, "key b (200 + half the spare)", got["b"], 10*500_000, 0.005)
}

func TestLinkWeights(t *testing.T) {
	s := newSim(t, shaper.LinkLimit{Limit: shaper.Limit{Rate: mbps}, Overrides: map[string]shaper.KeyLimit{
		"light": {Weight: 1}, "heavy": {Weight: 3},
	}})
	s.add("light", 2, 0)
	s.add("heavy", 2, 0)
	s.warm()
	s.run(10 * time.Second)
	got := s.byKey()
	near(t, "weight 1", got["light"], 10*250_000, 0.005)
	near(t, "weight 3", got["heavy"], 10*750_000, 0.005)
}

// A key that joins gets its share within 200 ms; one that leaves returns
// its share at once.
func TestLinkKeyJoinsAndLeaves(t *testing.T) {
	s := newSim(t, shaper.LinkLimit{Limit: shaper.Limit{Rate: mbps}})
	s.add("a", 2, 0)
	s.warm()
	s.run(2 * time.Second)
	near(t, "a alone", s.byKey()["a"], 2*mbps, 0.005)

	b := s.add("b", 1, 0)
	s.reset()
	s.run(200 * time.Millisecond)
	got := s.byKey()
	near(t, "b in its first 200 ms", got["b"], 100_000, 0.1)
	s.reset()
	s.run(5 * time.Second)
	got = s.byKey()
	near(t, "a shared", got["a"], 5*mbps/2, 0.005)
	near(t, "b shared", got["b"], 5*mbps/2, 0.005)

	s.leave(b)
	s.reset()
	s.run(2 * time.Second)
	near(t, "a after b left", s.byKey()["a"], 2*mbps, 0.005)
	if st := s.link.Stats(); st.Keys != 1 || st.Members != 2 {
		t.Errorf("after b left: %d keys, %d members; want 1, 2", st.Keys, st.Members)
	}
}

func TestLinkRateHalved(t *testing.T) {
	s := newSim(t, shaper.LinkLimit{Limit: shaper.Limit{Rate: mbps}})
	s.add("", 3, 0)
	s.add("x", 2, 0)
	s.warm()
	s.run(5 * time.Second)
	near(t, "at 1 MB/s", s.byKey()[""]+s.byKey()["x"], 5*mbps, 0.002)
	if err := s.link.SetLimit(shaper.LinkLimit{Limit: shaper.Limit{Rate: mbps / 2}}); err != nil {
		t.Fatal(err)
	}
	s.reset()
	s.run(5 * time.Second)
	got := s.byKey()
	near(t, "link at 500 KB/s", got[""]+got["x"], 5*mbps/2, 0.005)
	near(t, "key \"\" at 500 KB/s", got[""], 5*mbps/4, 0.01)
	near(t, "key x at 500 KB/s", got["x"], 5*mbps/4, 0.01)
}

// Late timers and slow members (they act every 15 ms, past the 5 ms burst)
// lose nothing: the link and every key keep shaper.MaxCatchUp's worth while busy.
func TestLinkLateTimers(t *testing.T) {
	for _, tc := range []struct {
		ll   shaper.LinkLimit
		keys []string
	}{
		{shaper.LinkLimit{Limit: shaper.Limit{Rate: 100 * mbps}}, []string{""}}, // one key takes the whole link
		{shaper.LinkLimit{Limit: shaper.Limit{Rate: 100 * mbps}}, []string{"a", "b"}},
		{shaper.LinkLimit{Limit: shaper.Limit{Rate: 100 * mbps}, Key: shaper.KeyLimit{Rate: 10 * mbps, Ceil: 60 * mbps}}, []string{"a", "b"}},
	} {
		s := newSim(t, tc.ll)
		s.tick = 15 * time.Millisecond
		for _, k := range tc.keys {
			s.add(k, 60/len(tc.keys), 0)
		}
		s.warm()
		s.run(5 * time.Second)
		var total int64
		for _, v := range s.byKey() {
			total += v
		}
		near(t, fmt.Sprintf("keys %q, %+v", tc.keys, tc.ll.Key), total, 5*100*mbps, 0.005)
	}
}

// The link never exceeds rate × t + burst over any interval.
func TestLinkNeverOverrun(t *testing.T) {
	ll := shaper.LinkLimit{Limit: shaper.Limit{Rate: mbps, Burst: 16384}, Key: shaper.KeyLimit{Rate: 100_000, Ceil: 800_000, Weight: 2}}
	s := newSim(t, ll)
	s.add("a", 3, 0)
	s.add("b", 7, 0)
	s.add("c", 1, 50_000)
	s.run(100 * time.Millisecond) // the bucket starts full
	var total int64
	for range 50 {
		s.reset()
		s.run(100 * time.Millisecond)
		got := s.byKey()
		w := got["a"] + got["b"] + got["c"]
		total += w
		// 100 ms of rate, plus what the catch-up allows for late timers.
		if w > 100_000+16384+20_000 {
			t.Fatalf("a 100 ms window carried %d bytes, over rate×0.1s + burst + catch-up", w)
		}
		for k, v := range got {
			if v > 80_000+4*chunk {
				t.Fatalf("key %s carried %d bytes in 100 ms, over its ceil", k, v)
			}
		}
	}
	near(t, "5 s total", total, 5*mbps, 0.005)
}

func TestLinkTakeCancelAndLeave(t *testing.T) {
	clock := shapertest.NewClock()
	l := shaper.NewLink(shaper.LinkLimit{Limit: shaper.Limit{Rate: 1000, Burst: 8192}}, clock)
	a, b := l.Join("a"), l.Join("b")
	if n, err := a.Take(context.Background(), 8192); n != 8192 || err != nil {
		t.Fatalf("first Take = %d, %v; want the full burst", n, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := b.Take(ctx, 100)
		done <- err
	}()
	clock.BlockUntil(1) // b waits on the link's timer
	if st := l.Stats(); st.Waiting != 1 {
		t.Fatalf("waiting = %d, want 1", st.Waiting)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Take = %v", err)
	}
	if st := l.Stats(); st.Waiting != 0 || st.Bytes != 8192 {
		t.Fatalf("after cancel: %+v; want nobody waiting, 8192 granted", st)
	}
	// 100 ms at 1000 B/s: 100 bytes for b.
	go func() {
		n, err := b.Take(context.Background(), 100)
		if n != 100 || err != nil {
			done <- fmt.Errorf("Take = %d: %w", n, err)
			return
		}
		done <- nil
	}()
	clock.BlockUntil(1)
	clock.Advance(100 * time.Millisecond)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	b.Leave()
	if _, err := b.Take(context.Background(), 1); !errors.Is(err, shaper.ErrLeft) {
		t.Errorf("Take after Leave = %v, want shaper.ErrLeft", err)
	}
	a.Refund(8192)
	a.Leave()
	if st := l.Stats(); st.Keys != 0 || st.Members != 0 || st.Bytes != 100 {
		t.Errorf("after both left: %+v; want no keys, 100 bytes net", st)
	}
}

func TestLinkLimitValidate(t *testing.T) {
	for _, ll := range []shaper.LinkLimit{
		{},
		{Limit: shaper.Limit{Rate: -1}},
		{Limit: shaper.Limit{Rate: 10}, Key: shaper.KeyLimit{Rate: 20, Ceil: 10}},
		{Limit: shaper.Limit{Rate: 10}, Key: shaper.KeyLimit{Weight: shaper.MaxWeight + 1}},
		{Limit: shaper.Limit{Rate: 10}, Overrides: map[string]shaper.KeyLimit{"x": {Ceil: -1}}},
	} {
		if err := ll.Validate(); !errors.Is(err, shaper.ErrBadLimit) {
			t.Errorf("Validate(%+v) = %v, want shaper.ErrBadLimit", ll, err)
		}
	}
	if err := (shaper.LinkLimit{Limit: shaper.Limit{Rate: 10}, Key: shaper.KeyLimit{Rate: 5, Ceil: 8, Weight: 2}}).Validate(); err != nil {
		t.Error(err)
	}
}

// BenchmarkLinkGrant100k: 100,000 members wait on one link, in 1,000 keys;
// each grant goes to the next in fair order, through Ask's notify as a
// shaping loop gets it, and that member asks again at once. Reports ns per
// grant: scheduler, timer and hand-off.
func BenchmarkLinkGrant100k(b *testing.B) {
	const members, keys = 100_000, 1_000
	clock := shapertest.NewClock()
	l := shaper.NewLink(shaper.LinkLimit{Limit: shaper.Limit{Rate: 1 << 40}}, clock)
	var served []int // members granted by the last Advance, by index
	ms := make([]*shaper.Member, members)
	notify := make([]func(int), members)
	for i := range ms {
		ms[i] = l.Join(fmt.Sprint(i % keys))
		notify[i] = func(int) { served = append(served, i) }
	}
	l.Drain() // empty, so everyone queues
	for i, m := range ms {
		if n, _ := m.Ask(chunk, chunk, notify[i]); n != 0 {
			b.Fatal("granted with an empty bucket")
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	var batch []int
	for granted := 0; granted < b.N; {
		clock.Advance(shaper.LinkTick) // one timer fire serves every grant due
		batch, served = served, batch[:0]
		for _, i := range batch {
			granted++
			// Ask again; a grant on the spot (nobody waiting) counts too.
			for n, _ := ms[i].Ask(chunk, chunk, notify[i]); n > 0; n, _ = ms[i].Ask(chunk, chunk, notify[i]) {
				granted++
			}
		}
	}
	b.StopTimer()
	if st := l.Stats(); st.Waiting < members-10 {
		b.Fatalf("%d waiting, want about %d", st.Waiting, members)
	}
}

// Keys and overrides changed live apply to members in flight.
func TestLinkKeysChangeLive(t *testing.T) {
	s := newSim(t, shaper.LinkLimit{Limit: shaper.Limit{Rate: mbps}})
	s.add("a", 2, 0)
	s.add("b", 2, 0)
	s.warm()
	s.run(2 * time.Second)
	got := s.byKey()
	near(t, "a before", got["a"], mbps, 0.01)
	near(t, "b before", got["b"], mbps, 0.01)
	// b gets weight 3, a is capped at 200 KB/s.
	if err := s.link.SetLimit(shaper.LinkLimit{Limit: shaper.Limit{Rate: mbps}, Overrides: map[string]shaper.KeyLimit{
		"a": {Ceil: 200_000}, "b": {Weight: 3},
	}}); err != nil {
		t.Fatal(err)
	}
	s.run(100 * time.Millisecond)
	s.reset()
	s.run(5 * time.Second)
	got = s.byKey()
	near(t, "a capped at 200 KB/s (plus its 32 KiB ceil burst)", got["a"], 5*200_000+32<<10, 0.01)
	near(t, "b takes the rest", got["b"], 5*800_000, 0.01)
	// Back to equal shares, and a burst of 64 KiB.
	if err := s.link.SetLimit(shaper.LinkLimit{Limit: shaper.Limit{Rate: mbps, Burst: 64 << 10}}); err != nil {
		t.Fatal(err)
	}
	s.run(100 * time.Millisecond)
	s.reset()
	s.run(5 * time.Second)
	got = s.byKey()
	near(t, "a equal again", got["a"], 5*mbps/2, 0.01)
	near(t, "b equal again", got["b"], 5*mbps/2, 0.01)
	if l := s.link.Limit(); l.Burst != 64<<10 {
		t.Errorf("burst = %d, want 64 KiB", l.Burst)
	}
}

// TestLinkAsk checks the non-blocking ask of a shaping loop: a grant on
// the spot is returned, not notified; a queued one comes through notify
// when the link's timer fires; Withdraw takes back a queued ask (nothing
// is granted later) or returns a grant notified meanwhile, which the
// caller refunds; a member that has left is refused.
func TestLinkAsk(t *testing.T) {
	clock := shapertest.NewClock()
	l := shaper.NewLink(shaper.LinkLimit{Limit: shaper.Limit{Rate: 1000, Burst: 100}}, clock)
	a := l.Join("a")
	var notified []int
	notify := func(n int) { notified = append(notified, n) }
	if n, err := a.Ask(100, 100, notify); n != 100 || err != nil || len(notified) != 0 {
		t.Fatalf("Ask on a full bucket = %d, %v, notified %v; want 100 on the spot", n, err, notified)
	}
	// The bucket is empty: queued, granted 100 ms later through notify.
	if n, err := a.Ask(100, 100, notify); n != 0 || err != nil {
		t.Fatalf("Ask on an empty bucket = %d, %v; want 0, queued", n, err)
	}
	if st := l.Stats(); st.Waiting != 1 {
		t.Fatalf("waiting = %d, want 1", st.Waiting)
	}
	clock.Advance(99 * time.Millisecond)
	if len(notified) != 0 {
		t.Fatalf("notified %v after 99 ms; want nothing before 100 bytes are there", notified)
	}
	clock.Advance(time.Millisecond)
	if len(notified) != 1 || notified[0] != 100 {
		t.Fatalf("notified %v after 100 ms; want [100]", notified)
	}
	if st := l.Stats(); st.Waiting != 0 || st.Bytes != 200 {
		t.Fatalf("after the grant: %+v; want nobody waiting, 200 granted", st)
	}

	// Withdrawn while queued: nothing is granted, then or later.
	notified = nil
	if n, _ := a.Ask(100, 100, notify); n != 0 {
		t.Fatalf("Ask = %d; want queued", n)
	}
	if got := a.Withdraw(); got != 0 {
		t.Fatalf("Withdraw of a queued ask = %d, want 0", got)
	}
	clock.Advance(time.Second)
	if len(notified) != 0 || l.Stats().Waiting != 0 || l.Stats().Bytes != 200 {
		t.Fatalf("after a withdrawn ask: notified %v, %+v; want nothing granted", notified, l.Stats())
	}

	// Notified, then withdrawn before the caller saw the grant: Withdraw
	// returns it, and the refund makes it as if never granted.
	l.Drain()
	if n, _ := a.Ask(100, 100, notify); n != 0 {
		t.Fatalf("Ask = %d; want queued", n)
	}
	clock.Advance(100 * time.Millisecond)
	if got := a.Withdraw(); got != 100 || len(notified) != 1 {
		t.Fatalf("Withdraw after the grant = %d (notified %v), want 100", got, notified)
	}
	a.Refund(100)
	if st := l.Stats(); st.Bytes != 200 || st.Tokens != 100 {
		t.Fatalf("after the refund: %+v; want 200 granted, 100 tokens", st)
	}

	// Granted by the Ask's own dispatch (another key waits, held by its
	// ceil, so the ask queues first): returned, not notified.
	l2 := shaper.NewLink(shaper.LinkLimit{Limit: shaper.Limit{Rate: mbps, Burst: 100_000},
		Overrides: map[string]shaper.KeyLimit{"slow": {Ceil: 10}}}, clock)
	slow, b := l2.Join("slow"), l2.Join("b")
	if n, _ := slow.Ask(4*chunk, 4*chunk, notify); n != 4*chunk { // the ceil's burst
		t.Fatalf("slow's first Ask = %d, want %d", n, 4*chunk)
	}
	if n, _ := slow.Ask(10, 10, notify); n != 0 {
		t.Fatalf("slow's second Ask = %d, want queued behind its ceil", n)
	}
	notified = nil
	if n, err := b.Ask(50, 50, notify); n != 50 || err != nil || len(notified) != 0 {
		t.Fatalf("Ask while another key waits = %d, %v, notified %v; want 50 returned", n, err, notified)
	}
	if got := slow.Withdraw(); got != 0 {
		t.Fatalf("slow's Withdraw = %d, want 0", got)
	}

	a.Leave()
	if _, err := a.Ask(100, 100, notify); !errors.Is(err, shaper.ErrLeft) {
		t.Fatalf("Ask after Leave: %v, want ErrLeft", err)
	}
}

// TestLinkDriven runs the scenarios again with the link driven from
// outside (SetDriver, Dispatch) and every member asking with Ask, as the
// shaping loops drive sluice's links: the same shares must come out, and
// no timer of the link's own may be armed.
func TestLinkDriven(t *testing.T) {
	simDriven = true
	defer func() { simDriven = false }()
	for _, tc := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"EqualDemand", TestLinkEqualDemand},
		{"SlowConsumer", TestLinkSlowConsumer},
		{"KeysOneVsFifty", TestLinkKeysOneVsFifty},
		{"LatencyBoundKeyGetsItsShare", TestLinkLatencyBoundKeyGetsItsShare},
		{"BorrowUpToCeil", TestLinkBorrowUpToCeil},
		{"ContentionAssured", TestLinkContentionAssured},
		{"Weights", TestLinkWeights},
		{"KeyJoinsAndLeaves", TestLinkKeyJoinsAndLeaves},
		{"RateHalved", TestLinkRateHalved},
		{"NeverOverrun", TestLinkNeverOverrun},
		{"KeysChangeLive", TestLinkKeysChangeLive},
	} {
		t.Run(tc.name, tc.f)
	}
}

// TestLinkDriverDisarmed: a driven link asks its driver for a Dispatch
// while someone waits, and says when nobody does any more (the zero
// time), so that a loop driving it need not stay awake for it.
func TestLinkDriverDisarmed(t *testing.T) {
	clock := shapertest.NewClock()
	l := shaper.NewLink(shaper.LinkLimit{Limit: shaper.Limit{Rate: 1000, Burst: 100}}, clock)
	var drives []time.Time
	l.SetDriver(func(at time.Time) { drives = append(drives, at) })
	a := l.Join("a")
	if n, _ := a.Ask(100, 100, func(int) {}); n != 100 || len(drives) != 0 {
		t.Fatalf("Ask on a full bucket = %d, drives %v; want 100 and no drive", n, drives)
	}
	if n, _ := a.Ask(100, 100, func(int) {}); n != 0 {
		t.Fatalf("Ask = %d; want queued", n)
	}
	if want := clock.Now().Add(100 * time.Millisecond); len(drives) != 1 || !drives[0].Equal(want) {
		t.Fatalf("drives %v; want one at +100ms", drives)
	}
	a.Withdraw()
	if len(drives) != 2 || !drives[1].IsZero() {
		t.Fatalf("drives after the only waiter withdrew: %v; want the zero time last", drives)
	}
	if clock.Timers() != 0 {
		t.Errorf("a driven link armed %d timers of its own", clock.Timers())
	}
}

// TestLinkDriverWithTake: while a member waits in Take, a driven link
// arms its own timer (the driver may be busy), and hands the timing back
// to the driver once only Asks wait.
func TestLinkDriverWithTake(t *testing.T) {
	clock := shapertest.NewClock()
	l := shaper.NewLink(shaper.LinkLimit{Limit: shaper.Limit{Rate: 1000, Burst: 100}}, clock)
	var drives []time.Time
	l.SetDriver(func(at time.Time) { drives = append(drives, at) })
	a, b := l.Join("a"), l.Join("b")
	if n, _ := a.Begin(100, 100); n != 100 {
		t.Fatalf("Begin on a full bucket = %d, want 100", n)
	}
	if n, _ := a.Begin(100, 100); n != 0 {
		t.Fatalf("Begin = %d; want queued", n)
	}
	if len(drives) != 0 || clock.Timers() != 1 {
		t.Fatalf("a Take waits: drives %v, %d timers; want the link's own timer", drives, clock.Timers())
	}
	clock.Advance(100 * time.Millisecond)
	if n, ok := a.Granted(); !ok || n != 100 {
		t.Fatalf("after 100 ms: granted %d, %v; want 100 by the link's own timer", n, ok)
	}
	if n, _ := b.Ask(100, 100, func(int) {}); n != 0 {
		t.Fatalf("Ask = %d; want queued", n)
	}
	if len(drives) != 1 {
		t.Fatalf("only an Ask waits: drives %v; want the driver asked", drives)
	}
}

// Share measures a member's share of the link: its key's rate over its
// last window, split among the key's members.
func TestLinkShare(t *testing.T) {
	s := newSim(t, shaper.LinkLimit{Limit: shaper.Limit{Rate: 3 * mbps}})
	a := s.add("a", 2, 0)
	b := s.add("b", 1, 0)[0]
	shares := func() []int64 {
		return []int64{a[0].m.Share(), a[1].m.Share(), b.m.Share()}
	}
	if got := shares(); got[0] != 0 || got[1] != 0 || got[2] != 0 {
		t.Fatalf("shares before a measure = %v, want 0s", got)
	}
	s.warm()
	s.run(500 * time.Millisecond)
	got := shares()
	near(t, "a[0]'s share", got[0], 3*mbps/4, 0.02)
	near(t, "a[1]'s share", got[1], 3*mbps/4, 0.02)
	near(t, "b's share", got[2], 3*mbps/2, 0.02)
	if got[0] != got[1] {
		t.Errorf("members of one key: shares %d and %d, want them equal", got[0], got[1])
	}

	// A measure stands for a window: over a second of 1 ms steps, a
	// key's share changes at most once a window.
	changes, last := 0, b.m.Share()
	for range 1000 {
		s.run(time.Millisecond)
		if n := b.m.Share(); n != last {
			changes++
			last = n
		}
	}
	if most := int(time.Second / shaper.ShareWindow); changes > most {
		t.Errorf("b's share changed %d times in a second, want at most %d (one a window)", changes, most)
	}

	// b leaves: its share is 0, and a's key takes the whole link.
	s.leave([]*simMember{b})
	if n := b.m.Share(); n != 0 {
		t.Errorf("share of a member that left = %d, want 0", n)
	}
	s.run(500 * time.Millisecond)
	near(t, "a[0]'s share alone", a[0].m.Share(), 3*mbps/2, 0.02)
}
