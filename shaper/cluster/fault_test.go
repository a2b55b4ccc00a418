package cluster_test

import (
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sluiceproxy/sluice/shaper/cluster"
)

// stateLog records a Cluster's state changes with their times.
type stateLog struct {
	mu  sync.Mutex
	log []stateAt
}

type stateAt struct {
	s  cluster.State
	at time.Time
}

func (l *stateLog) on(s cluster.State) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.log = append(l.log, stateAt{s, time.Now()})
}

// first returns when s was first entered at or after t.
func (l *stateLog) first(s cluster.State, t time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.log {
		if e.s == s && !e.at.Before(t) {
			return e.at, true
		}
	}
	return time.Time{}, false
}

// TestRedisKilled: with Redis SIGKILLed, every instance falls back within
// 300 ms to its last share, the shares do not move during the outage,
// and leases resume when Redis is back, with no share above its
// pre-outage value while the new Redis state settles.
func TestRedisKilled(t *testing.T) {
	srv := startRedis(t)
	rec := &recorder{}
	var links []*fakeLink
	var states []*stateLog
	var cs []*cluster.Cluster
	for i, n := range []int64{10, 5, 1} {
		sl := &stateLog{}
		c := newInstance(t, srv.Addr(), string(rune('a'+i)), func(o *cluster.Options) { o.OnState = sl.on })
		cs = append(cs, c)
		states = append(states, sl)
		links = append(links, join(t, c, "hk", n, rec))
	}
	eventually(t, 5*time.Second, "leased split", func() bool {
		return links[0].share.Load() > links[1].share.Load() && links[1].share.Load() > links[2].share.Load() &&
			links[2].share.Load() > line/20
	})
	// Let a few periods pass at the split, so that every share is settled.
	time.Sleep(3 * cs[0].Period()) // real Redis time must pass
	before := make([]int64, len(links))
	for i, f := range links {
		before[i] = f.share.Load()
	}
	killed := time.Now()
	srv.kill()
	for i, sl := range states {
		eventually(t, 2*time.Second, "fallback", func() bool { _, ok := sl.first(cluster.Fallback, killed); return ok })
		at, _ := sl.first(cluster.Fallback, killed)
		d := at.Sub(killed)
		t.Logf("instance %d in fallback %s after the kill, share %d", i, d, links[i].share.Load())
		if d > 300*time.Millisecond {
			t.Errorf("instance %d fell back after %s, want at most 300ms", i, d)
		}
	}
	// An outage of a second: no share moves.
	outage := time.Now()
	time.Sleep(time.Second) // the outage's length is the point
	for i, f := range links {
		for _, a := range f.applies() {
			if a.at.After(outage) {
				t.Errorf("instance %d applied %d during the outage", i, a.share)
			}
		}
		if got := f.share.Load(); got != before[i] {
			t.Errorf("instance %d share %d during the outage, want its last %d", i, got, before[i])
		}
	}
	st := cs[0].Status()
	if st.State != cluster.Fallback || st.LastErr == nil {
		t.Errorf("Status() = %v, %v; want fallback with an error", st.State, st.LastErr)
	}
	restarted := time.Now()
	srv.restart()
	for i, sl := range states {
		eventually(t, 3*time.Second, "leases resumed", func() bool { _, ok := sl.first(cluster.Leased, restarted); return ok })
		at, _ := sl.first(cluster.Leased, restarted)
		t.Logf("instance %d leased again %s after the restart", i, at.Sub(restarted))
	}
	// No catch-up burst: while the restarted Redis settles, nobody grows.
	settle := time.Now().Add(3 * cs[0].Period())
	for i, f := range links {
		for _, a := range f.applies() {
			if a.at.After(restarted) && a.at.Before(settle) && a.share > before[i] {
				t.Errorf("instance %d grew to %d (from %d) right after the restart", i, a.share, before[i])
			}
		}
	}
	eventually(t, 5*time.Second, "split again", func() bool {
		return links[0].share.Load() > links[1].share.Load() && links[1].share.Load() > links[2].share.Load()
	})
	if m := rec.maxSum(); m > line {
		t.Errorf("shares applied at one instant summed to %d, above the line %d", m, line)
	}
}

// TestRedisStopped: with Redis SIGSTOPped for 3 s, renewals time out in
// their own goroutine; nothing a pump or an admission decision calls
// waits, the instance falls back, and it resumes on SIGCONT.
func TestRedisStopped(t *testing.T) {
	srv := startRedis(t)
	sl := &stateLog{}
	c := newInstance(t, srv.Addr(), "a", func(o *cluster.Options) { o.OnState = sl.on })
	f := join(t, c, "hk", 2, nil)
	lease, err := c.Link("other", cluster.LinkOptions{Line: line, Demand: f.demand, Apply: func(int64) {}})
	if err != nil {
		t.Fatal(err)
	}
	ctr, err := c.Counter("per-ip", cluster.CounterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bans, err := c.Bans("scanners", cluster.BanOptions{OnBan: func(string, time.Time) {}})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "leased", func() bool { return c.Status().State == cluster.Leased })

	stopped := time.Now()
	srv.pause()
	defer srv.resume()
	var worst time.Duration
	for time.Since(stopped) < 3*time.Second {
		t0 := time.Now()
		_ = lease.Share()
		ctr.Hit("192.0.2.1", 1)
		ctr.AddConns("192.0.2.1", 1)
		_ = ctr.Get("192.0.2.1")
		bans.Add("192.0.2.9", time.Now().Add(time.Minute))
		_ = c.Status()
		worst = max(worst, time.Since(t0))
		time.Sleep(time.Millisecond) // sampling, not synchronization
	}
	t.Logf("worst latency of the local calls while Redis was stopped: %s", worst)
	if worst > 20*time.Millisecond {
		t.Errorf("a local call took %s while Redis was stopped", worst)
	}
	at, ok := sl.first(cluster.Fallback, stopped)
	if !ok {
		t.Fatalf("no fallback while Redis was stopped")
	}
	t.Logf("fallback %s after SIGSTOP", at.Sub(stopped))
	if d := at.Sub(stopped); d > 300*time.Millisecond {
		t.Errorf("fell back %s after SIGSTOP, want at most 300ms", d)
	}
	st := c.Status()
	if st.Failures == 0 {
		t.Errorf("no failed renewals while Redis was stopped")
	}
	resumed := time.Now()
	srv.resume()
	eventually(t, 3*time.Second, "leases resumed", func() bool { _, ok := sl.first(cluster.Leased, resumed); return ok })
	at, _ = sl.first(cluster.Leased, resumed)
	t.Logf("leased again %s after SIGCONT; calls %d, failures %d, late %d", at.Sub(resumed), st.Calls, st.Failures, st.Late)
	eventually(t, 3*time.Second, "ban sent after the stop", func() bool {
		s := c.Status()
		return s.BansPending == 0 && s.BansSent > 0
	})
}

// TestStartWhileRedisDown: an instance made while Redis is down runs on
// the static fallback share at once, and takes leases when Redis comes.
func TestStartWhileRedisDown(t *testing.T) {
	needRedis(t)
	port := freePort(t)
	sl := &stateLog{}
	start := time.Now()
	addr := "127.0.0.1:" + strconv.Itoa(port)
	c := newInstance(t, addr, "a", func(o *cluster.Options) { o.OnState = sl.on; o.Instances = 3 })
	f := join(t, c, "hk", 2, nil)
	eventually(t, time.Second, "static fallback", func() bool { return f.share.Load() == line/3 })
	if _, ok := sl.first(cluster.Fallback, start); !ok {
		t.Errorf("state %v, want fallback", c.Status().State)
	}
	srv := &redisServer{t: t, bin: needRedis(t), port: port}
	srv.args = []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir()}
	srv.start()
	t.Cleanup(srv.kill)
	eventually(t, 3*time.Second, "leased", func() bool { return c.Status().State == cluster.Leased })
	// Alone on the line, it grows to all of it once the state settles.
	eventually(t, 3*time.Second, "whole line", func() bool { return f.share.Load() == line })
}

// TestCallsPerSecond: whatever it shares, an instance makes at most 10
// Redis calls a second (INFO commandstats).
func TestCallsPerSecond(t *testing.T) {
	srv := startRedis(t)
	var cs []*cluster.Cluster
	for i := range 3 {
		c := newInstance(t, srv.Addr(), string(rune('a'+i)), nil)
		cs = append(cs, c)
		for _, name := range []string{"hk", "sg", "fra"} {
			join(t, c, name, int64(i+1), nil)
		}
		ctr, err := c.Counter("per-ip", cluster.CounterOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ctr.Hit("192.0.2.1", 5)
		ctr.AddConns("192.0.2.1", 2)
		if _, err := c.Bans("scanners", cluster.BanOptions{OnBan: func(string, time.Time) {}}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 5*time.Second, "leased", func() bool {
		for _, c := range cs {
			if c.Status().State != cluster.Leased {
				return false
			}
		}
		return true
	})
	before := srv.commandCalls()
	t0 := time.Now()
	time.Sleep(2 * time.Second) // the measurement window
	after := srv.commandCalls()
	secs := time.Since(t0).Seconds()
	// commandstats also counts the commands scripts run inside Redis;
	// those are not calls an instance makes.
	inScript := map[string]bool{"time": true, "zadd": true, "zremrangebyscore": true, "zrangebyscore": true,
		"pexpire": true, "pttl": true, "exists": true, "hgetall": true, "hget": true, "hset": true, "hdel": true,
		"hincrby": true, "zrem": true, "publish": true}
	var total, inside int64
	for cmd, n := range after {
		d := n - before[cmd]
		if cmd == "info" || cmd == "hello" {
			d-- // ours
		}
		switch {
		case d <= 0:
		case inScript[cmd]:
			inside += d
		default:
			t.Logf("%s: %d calls", cmd, d)
			total += d
		}
	}
	t.Logf("%d commands run inside the scripts", inside)
	perInstance := float64(total) / secs / float64(len(cs))
	t.Logf("%d calls in %.2fs from %d instances (3 links, a counter and a ban policy each): %.2f calls/s per instance",
		total, secs, len(cs), perInstance)
	if perInstance > 10.5 {
		t.Errorf("%.2f Redis calls per second per instance, want at most 10", perInstance)
	}
}
