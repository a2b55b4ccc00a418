package cluster_test

import (
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluiceproxy/sluice/shaper/cluster"
)

const line = 30 << 20 // 30 MiB/s

// newInstance joins a cluster on srv as instance id.
func newInstance(t testing.TB, addr, id string, edit func(*cluster.Options)) *cluster.Cluster {
	t.Helper()
	o := cluster.Options{Addr: addr, Instance: id, Prefix: t.Name()}
	if edit != nil {
		edit(&o)
	}
	c, err := cluster.New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// fakeLink stands for a shaper.Link: it reports a demand and records the
// shares applied.
type fakeLink struct {
	conns atomic.Int64
	want  atomic.Int64
	share atomic.Int64
	mu    sync.Mutex
	log   []applied
	rec   *recorder
	name  string
}

type applied struct {
	at    time.Time
	share int64
}

func (f *fakeLink) demand() cluster.Demand {
	return cluster.Demand{Conns: int(f.conns.Load()), Want: f.want.Load()}
}

func (f *fakeLink) apply(share int64) {
	now := time.Now()
	f.share.Store(share)
	f.mu.Lock()
	f.log = append(f.log, applied{now, share})
	f.mu.Unlock()
	if f.rec != nil {
		f.rec.applied(f.name, share)
	}
}

func (f *fakeLink) applies() []applied {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]applied(nil), f.log...)
}

// recorder checks that the shares applied at any instant sum to at most
// the line.
type recorder struct {
	mu     sync.Mutex
	shares map[string]int64
	max    int64
}

func (r *recorder) applied(name string, share int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.shares == nil {
		r.shares = map[string]int64{}
	}
	r.shares[name] = share
	var sum int64
	for _, s := range r.shares {
		sum += s
	}
	r.max = max(r.max, sum)
}

func (r *recorder) maxSum() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.max
}

func join(t testing.TB, c *cluster.Cluster, link string, conns int64, rec *recorder) *fakeLink {
	t.Helper()
	f := &fakeLink{rec: rec, name: c.Instance()}
	f.conns.Store(conns)
	if _, err := c.Link(link, cluster.LinkOptions{Line: line, Demand: f.demand, Apply: f.apply}); err != nil {
		t.Fatalf("Link: %v", err)
	}
	return f
}

func near(got, want, tol int64) bool { return got >= want-tol && got <= want+tol }

// TestSplitByConns: three instances with 10, 5 and 1 busy connections
// split the line 10:5:1, as their 16 connections would on one machine.
func TestSplitByConns(t *testing.T) {
	srv := startRedis(t)
	noFloor := func(o *cluster.Options) { o.Floor = -1 }
	rec := &recorder{}
	var links []*fakeLink
	for i, n := range []int64{10, 5, 1} {
		c := newInstance(t, srv.Addr(), string(rune('a'+i)), noFloor)
		links = append(links, join(t, c, "hk", n, rec))
	}
	want := []int64{line * 10 / 16, line * 5 / 16, line / 16}
	d := eventually(t, 5*time.Second, "10:5:1 split", func() bool {
		for i, f := range links {
			if !near(f.share.Load(), want[i], 2) {
				return false
			}
		}
		return true
	})
	t.Logf("converged in %s: shares %d %d %d of %d", d, links[0].share.Load(), links[1].share.Load(), links[2].share.Load(), line)
	if m := rec.maxSum(); m > line {
		t.Errorf("shares applied at one instant summed to %d, above the line %d", m, line)
	}
}

// TestWantCapsShare: an instance that can use only 1 MiB/s gets that, the
// other the rest.
func TestWantCapsShare(t *testing.T) {
	srv := startRedis(t)
	noFloor := func(o *cluster.Options) { o.Floor = -1 }
	a := join(t, newInstance(t, srv.Addr(), "a", noFloor), "hk", 10, nil)
	a.want.Store(1 << 20)
	b := join(t, newInstance(t, srv.Addr(), "b", noFloor), "hk", 1, nil)
	eventually(t, 5*time.Second, "capped split", func() bool {
		return near(a.share.Load(), 1<<20, 2) && near(b.share.Load(), line-1<<20, 2)
	})
}

// TestFloor: an idle instance keeps the floor, and the busy one the rest.
func TestFloor(t *testing.T) {
	srv := startRedis(t)
	a := join(t, newInstance(t, srv.Addr(), "a", nil), "hk", 0, nil)
	b := join(t, newInstance(t, srv.Addr(), "b", nil), "hk", 3, nil)
	floor := cluster.DefaultFloor
	fl := int64(float64(line) * floor)
	eventually(t, 5*time.Second, "floor split", func() bool {
		return near(a.share.Load(), fl, 2) && near(b.share.Load(), line-fl, 2)
	})
}

// TestIdleShareMoves: when one of two busy instances goes idle, the other
// gets its share at its first renewal after the idle one's report (and
// the hold for the reply in flight).
func TestIdleShareMoves(t *testing.T) {
	srv := startRedis(t)
	noFloor := func(o *cluster.Options) { o.Floor = -1 }
	rec := &recorder{}
	ca := newInstance(t, srv.Addr(), "a", noFloor)
	a := join(t, ca, "hk", 4, rec)
	b := join(t, newInstance(t, srv.Addr(), "b", noFloor), "hk", 4, rec)
	eventually(t, 5*time.Second, "even split", func() bool {
		return near(a.share.Load(), line/2, 2) && near(b.share.Load(), line/2, 2)
	})
	a.conns.Store(0)
	d := eventually(t, 2*time.Second, "idle share moved", func() bool { return near(b.share.Load(), line-1, 2) })
	p := ca.Period()
	t.Logf("idle share moved in %s (period %s)", d, p)
	// a reports within a period, b renews within a period after the hold.
	if limit := 2*p + cluster.DefaultTimeout*3/2 + 100*time.Millisecond; d > limit {
		t.Errorf("idle share moved in %s, want at most %s", d, limit)
	}
	if m := rec.maxSum(); m > line {
		t.Errorf("shares applied at one instant summed to %d, above the line %d", m, line)
	}
}

// TestDeadInstanceExpires: an instance that stops renewing without a
// goodbye (a crash) loses its share after the expiry.
func TestDeadInstanceExpires(t *testing.T) {
	srv := startRedis(t)
	noFloor := func(o *cluster.Options) { o.Floor = -1 }
	ca := newInstance(t, srv.Addr(), "a", noFloor)
	a := join(t, ca, "hk", 1, nil)
	b := join(t, newInstance(t, srv.Addr(), "b", noFloor), "hk", 1, nil)
	ghost := newInstance(t, srv.Addr(), "ghost", noFloor)
	g := join(t, ghost, "hk", 1, nil)
	eventually(t, 5*time.Second, "three-way split", func() bool {
		return near(a.share.Load(), line/3, 2) && near(b.share.Load(), line/3, 2) && near(g.share.Load(), line/3, 2)
	})
	crash(t, ghost)
	d := eventually(t, 5*time.Second, "dead instance expired", func() bool {
		return near(a.share.Load(), line/2, 2) && near(b.share.Load(), line/2, 2)
	})
	t.Logf("dead instance's share reclaimed %s after it stopped (expiry %s)", d, 3*ca.Period())
	if limit := 3*ca.Period() + 3*ca.Period() + 200*time.Millisecond; d > limit {
		t.Errorf("dead instance's share reclaimed after %s, want at most %s", d, limit)
	}
}

// crash stops c's renewals without its goodbye call.
func crash(t testing.TB, c *cluster.Cluster) {
	t.Helper()
	cluster.Crash(c)
}

func TestLinkErrors(t *testing.T) {
	srv := startRedis(t)
	c := newInstance(t, srv.Addr(), "a", nil)
	nop := func() cluster.Demand { return cluster.Demand{} }
	set := func(int64) {}
	tests := []struct {
		name string
		link string
		o    cluster.LinkOptions
		want error
	}{
		{"no name", "", cluster.LinkOptions{Line: 1, Demand: nop, Apply: set}, cluster.ErrBadOptions},
		{"no line", "x", cluster.LinkOptions{Demand: nop, Apply: set}, cluster.ErrBadOptions},
		{"fallback above line", "x", cluster.LinkOptions{Line: 1, Fallback: 2, Demand: nop, Apply: set}, cluster.ErrBadOptions},
		{"no funcs", "x", cluster.LinkOptions{Line: 1}, cluster.ErrBadOptions},
		{"ok", "x", cluster.LinkOptions{Line: 1, Demand: nop, Apply: set}, nil},
		{"taken", "x", cluster.LinkOptions{Line: 1, Demand: nop, Apply: set}, cluster.ErrExists},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Link(tt.link, tt.o)
			if !errors.Is(err, tt.want) {
				t.Errorf("Link(%q) = %v, want %v", tt.link, err, tt.want)
			}
		})
	}
	c.Close()
	if _, err := c.Link("y", cluster.LinkOptions{Line: 1, Demand: nop, Apply: set}); !errors.Is(err, cluster.ErrClosed) {
		t.Errorf("Link after Close = %v, want ErrClosed", err)
	}
}

// TestSumUnderChurn: while three instances' demands change every 50 ms,
// the shares applied at any instant never sum above the line (given no
// renewal failed: a reply lost after the script ran is the documented
// exception).
func TestSumUnderChurn(t *testing.T) {
	srv := startRedis(t)
	rec := &recorder{}
	var cs []*cluster.Cluster
	var links []*fakeLink
	for i := range 3 {
		c := newInstance(t, srv.Addr(), string(rune('a'+i)), nil)
		cs = append(cs, c)
		links = append(links, join(t, c, "hk", 1, rec))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); <-tick.C {
		links[rng.IntN(3)].conns.Store(int64(rng.IntN(12)))
	}
	var failures int64
	for _, c := range cs {
		failures += c.Status().Failures
	}
	m := rec.maxSum()
	t.Logf("largest sum of applied shares %d (line %d, %.4f×), %d failed renewals", m, line, float64(m)/line, failures)
	if m > line && failures == 0 {
		t.Errorf("shares applied at one instant summed to %d, above the line %d", m, line)
	}
}
