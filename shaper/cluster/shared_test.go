package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluiceproxy/sluice/shaper/cluster"
)

// TestCounterShared: hits and open connections recorded on two instances
// are seen by a third after a renewal of each.
func TestCounterShared(t *testing.T) {
	srv := startRedis(t)
	var cs []*cluster.Cluster
	var ks []*cluster.Counter
	for i := range 3 {
		c := newInstance(t, srv.Addr(), string(rune('a'+i)), nil)
		k, err := c.Counter("per-ip", cluster.CounterOptions{Window: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		cs, ks = append(cs, c), append(ks, k)
	}
	const ip = "192.0.2.1"
	ks[0].Hit(ip, 5)
	ks[0].AddConns(ip, 2)
	ks[1].Hit(ip, 3)
	ks[1].AddConns(ip, 1)
	ks[2].Hit(ip, 1)
	renewAll := func() {
		for _, c := range cs {
			if err := c.Renew(); err != nil {
				t.Fatalf("Renew: %v", err)
			}
		}
	}
	renewAll()
	renewAll()
	got := ks[2].Get(ip)
	want := cluster.Count{Hits: 9, RemoteHits: 8, Conns: 3, RemoteConns: 3}
	if got != want {
		t.Errorf("Get(%q) = %+v, want %+v", ip, got, want)
	}
	if r := ks[2].TakeRemoteHits(ip); r != 8 {
		t.Errorf("TakeRemoteHits = %d, want 8", r)
	}
	if r := ks[2].TakeRemoteHits(ip); r != 0 {
		t.Errorf("second TakeRemoteHits = %d, want 0", r)
	}
	// Local updates show at once, remote ones after a renewal.
	ks[2].Hit(ip, 1)
	if got := ks[2].Get(ip).Hits; got != 10 {
		t.Errorf("Hits after a local hit = %d, want 10", got)
	}
	ks[0].AddConns(ip, -2)
	ks[0].Hit(ip, 4)
	renewAll()
	renewAll()
	got = ks[2].Get(ip)
	want = cluster.Count{Hits: 14, RemoteHits: 12, Conns: 1, RemoteConns: 1}
	if got != want {
		t.Errorf("Get(%q) = %+v, want %+v", ip, got, want)
	}
	if r := ks[2].TakeRemoteHits(ip); r != 4 {
		t.Errorf("TakeRemoteHits = %d, want 4", r)
	}
	// An instance that leaves takes its connections with it.
	cs[1].Close()
	renewLeft := func() {
		for _, c := range []*cluster.Cluster{cs[0], cs[2]} {
			if err := c.Renew(); err != nil {
				t.Fatalf("Renew: %v", err)
			}
		}
	}
	renewLeft()
	if got := ks[2].Get(ip).Conns; got != 0 {
		t.Errorf("Conns after b left = %d, want 0", got)
	}
}

// TestCounterDeadInstance: a crashed instance's open connections stop
// counting after the expiry.
func TestCounterDeadInstance(t *testing.T) {
	srv := startRedis(t)
	a := newInstance(t, srv.Addr(), "a", nil)
	b := newInstance(t, srv.Addr(), "b", nil)
	ka, _ := a.Counter("per-ip", cluster.CounterOptions{})
	kb, _ := b.Counter("per-ip", cluster.CounterOptions{})
	ka.AddConns("k", 3)
	kb.AddConns("k", 1)
	eventually(t, 3*time.Second, "shared conns", func() bool { return kb.Get("k").Conns == 4 })
	crash(t, a)
	d := eventually(t, 3*time.Second, "dead instance's conns expired", func() bool { return kb.Get("k").Conns == 1 })
	t.Logf("dead instance's connections dropped after %s", d)
}

func TestCounterErrors(t *testing.T) {
	srv := startRedis(t)
	c := newInstance(t, srv.Addr(), "a", nil)
	tests := []struct {
		name string
		ctr  string
		o    cluster.CounterOptions
		want error
	}{
		{"no name", "", cluster.CounterOptions{}, cluster.ErrBadOptions},
		{"window below period", "x", cluster.CounterOptions{Window: time.Millisecond}, cluster.ErrBadOptions},
		{"ok", "x", cluster.CounterOptions{}, nil},
		{"taken", "x", cluster.CounterOptions{}, cluster.ErrExists},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := c.Counter(tt.ctr, tt.o); !errors.Is(err, tt.want) {
				t.Errorf("Counter(%q) = %v, want %v", tt.ctr, err, tt.want)
			}
		})
	}
}

// banSink collects the bans an instance receives, with their arrival.
type banSink struct {
	mu    sync.Mutex
	got   map[string]time.Time // key → arrival
	until map[string]time.Time
	lifts map[string]bool
	ch    chan string
}

func newBanSink() *banSink {
	return &banSink{got: map[string]time.Time{}, until: map[string]time.Time{}, lifts: map[string]bool{}, ch: make(chan string, 1000)}
}

func (s *banSink) onBan(key string, until time.Time) {
	s.mu.Lock()
	if _, ok := s.got[key]; !ok {
		s.got[key] = time.Now()
	}
	s.until[key] = until
	s.mu.Unlock()
	select {
	case s.ch <- key:
	default:
	}
}

func (s *banSink) onLift(key string) {
	s.mu.Lock()
	s.lifts[key] = true
	s.mu.Unlock()
}

func (s *banSink) arrival(key string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.got[key]
	return at, ok
}

func (s *banSink) lifted(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lifts[key]
}

// TestBanLatency: 100 bans made on one instance reach the two others,
// p99 within 100 ms.
func TestBanLatency(t *testing.T) {
	srv := startRedis(t)
	var bans []*cluster.Bans
	var sinks []*banSink
	for i := range 3 {
		c := newInstance(t, srv.Addr(), string(rune('a'+i)), nil)
		s := newBanSink()
		b, err := c.Bans("scanners", cluster.BanOptions{OnBan: s.onBan, OnLift: s.onLift})
		if err != nil {
			t.Fatal(err)
		}
		bans, sinks = append(bans, b), append(sinks, s)
	}
	// The subscriptions are up once a ban goes round.
	bans[0].Add("warmup", time.Now().Add(time.Minute))
	eventually(t, 3*time.Second, "warm-up ban", func() bool {
		_, ok1 := sinks[1].arrival("warmup")
		_, ok2 := sinks[2].arrival("warmup")
		return ok1 && ok2
	})
	var lat []time.Duration
	for i := range 100 {
		key := fmt.Sprintf("198.51.100.%d", i)
		sent := time.Now()
		bans[0].Add(key, sent.Add(10*time.Minute))
		for _, s := range sinks[1:] {
			eventually(t, 2*time.Second, "ban "+key, func() bool { _, ok := s.arrival(key); return ok })
			at, _ := s.arrival(key)
			lat = append(lat, at.Sub(sent))
		}
		if _, ok := sinks[0].arrival(key); ok {
			t.Errorf("instance a was told of its own ban %s", key)
		}
	}
	slices.Sort(lat)
	p50, p99, worst := lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1]
	t.Logf("ban propagation over %d deliveries: p50 %s, p99 %s, max %s", len(lat), p50, p99, worst)
	if p99 > 100*time.Millisecond {
		t.Errorf("ban propagation p99 %s, want at most 100ms", p99)
	}
	// The time left travels, not the instant: the end agrees within the
	// propagation time.
	sinks[1].mu.Lock()
	u := sinks[1].until["198.51.100.0"]
	sinks[1].mu.Unlock()
	if d := time.Until(u); d < 9*time.Minute || d > 10*time.Minute {
		t.Errorf("ban received ends in %s, want about 10m", d)
	}
	bans[0].Lift("198.51.100.0")
	eventually(t, 2*time.Second, "lift", func() bool { return sinks[1].lifted("198.51.100.0") && sinks[2].lifted("198.51.100.0") })
}

// TestBansReread: a ban the subscriber missed (it is in the set, its
// message never came) is found when the subscription restarts.
func TestBansReread(t *testing.T) {
	srv := startRedis(t)
	c := newInstance(t, srv.Addr(), "b", nil)
	s := newBanSink()
	if _, err := c.Bans("scanners", cluster.BanOptions{OnBan: s.onBan}); err != nil {
		t.Fatal(err)
	}
	rc := srv.client()
	ctx := context.Background()
	eventually(t, 3*time.Second, "subscribed", func() bool {
		n, err := rc.PubSubNumSub(ctx, "{"+t.Name()+"}:ban:scanners").Result()
		return err == nil && n["{"+t.Name()+"}:ban:scanners"] == 1
	})
	// A ban written behind the subscriber's back: no message.
	tm, err := rc.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	end := float64(tm.Add(time.Hour).UnixMilli())
	if err := rc.ZAdd(ctx, "{"+t.Name()+"}:ban:scanners", redisZ(end, "203.0.113.7")).Err(); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.arrival("203.0.113.7"); ok {
		t.Fatal("ban seen before the subscription restarted")
	}
	if err := rc.ClientKillByFilter(ctx, "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	d := eventually(t, 3*time.Second, "ban re-read after resubscribing", func() bool { _, ok := s.arrival("203.0.113.7"); return ok })
	t.Logf("missed ban found %s after the subscription was cut", d)
}

// TestBansAcrossRestart: a ban made while Redis is down is sent when it
// returns, and reaches the others.
func TestBansAcrossRestart(t *testing.T) {
	srv := startRedis(t)
	a := newInstance(t, srv.Addr(), "a", nil)
	b := newInstance(t, srv.Addr(), "b", nil)
	ba, err := a.Bans("scanners", cluster.BanOptions{OnBan: func(string, time.Time) {}})
	if err != nil {
		t.Fatal(err)
	}
	s := newBanSink()
	if _, err := b.Bans("scanners", cluster.BanOptions{OnBan: s.onBan}); err != nil {
		t.Fatal(err)
	}
	ba.Add("warmup", time.Now().Add(time.Minute))
	eventually(t, 3*time.Second, "warm-up ban", func() bool { _, ok := s.arrival("warmup"); return ok })
	srv.kill()
	ba.Add("203.0.113.8", time.Now().Add(time.Hour))
	eventually(t, 2*time.Second, "ban pending", func() bool { return a.Status().BansPending == 1 })
	srv.restart()
	d := eventually(t, 5*time.Second, "ban across the restart", func() bool { _, ok := s.arrival("203.0.113.8"); return ok })
	t.Logf("ban made during the outage arrived %s after the restart", d)
}

func redisZ(score float64, member string) redis.Z { return redis.Z{Score: score, Member: member} }

// TestCounterGetFetchesUnknownKey: a key an instance never counted is
// zero at its first Get, and the next renewal fetches the others' counts
// of it.
func TestCounterGetFetchesUnknownKey(t *testing.T) {
	srv := startRedis(t)
	a := newInstance(t, srv.Addr(), "a", nil)
	b := newInstance(t, srv.Addr(), "b", nil)
	ka, err := a.Counter("conns", cluster.CounterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kb, err := b.Counter("conns", cluster.CounterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	const ip = "192.0.2.9"
	ka.AddConns(ip, 3)
	if err := a.Renew(); err != nil {
		t.Fatal(err)
	}
	if got := kb.Get(ip); got != (cluster.Count{}) {
		t.Errorf("first Get on b = %+v, want zero", got)
	}
	if err := b.Renew(); err != nil {
		t.Fatal(err)
	}
	if got := kb.Get(ip).RemoteConns; got != 3 {
		t.Errorf("Get on b after a renewal: RemoteConns = %d, want 3", got)
	}
}
