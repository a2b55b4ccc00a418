package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pion/transport/v2/test"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluiceproxy/sluice/config"
)

// fakeCores is a core governor on a fake clock, a fake CPU time and run
// delay, and a fake GOMAXPROCS, with max cores by default. Its ticks fall
// every coreTick from its start.
type fakeCores struct {
	*coreGovernor
	at   time.Time
	next time.Time     // the next tick
	cpu  time.Duration // CPU time so far
	wait time.Duration // run delay so far
	set  []int         // what setProcs was asked, in order
	log  bytes.Buffer
}

func newFakeCores(max int, mode config.Cores) *fakeCores {
	f := &fakeCores{at: time.Unix(1000, 0)}
	f.next = f.at.Add(coreTick)
	f.coreGovernor = &coreGovernor{
		log: slog.New(slog.NewTextHandler(&f.log, nil)),
		setProcs: func(n int) int {
			f.set = append(f.set, n)
			if n == 0 {
				return max
			}
			return n
		},
		cpu:   func() (time.Duration, bool) { return f.cpu, true },
		wait:  func() (time.Duration, bool) { return f.wait, true },
		max:   max,
		procs: max,
	}
	f.gauge, f.changes = newCoreMetrics()
	f.setMode(mode, "start")
	f.tick(f.at) // the first reading, at the start
	return f
}

// spend runs for d on cpu cores of CPU time while wait more cores' worth
// of threads wait for a CPU, ticking on the way. It returns the cores
// after each tick, and when the first change happened (zero if none).
func (f *fakeCores) spend(cpu, wait float64, d time.Duration) (procs []int, changed time.Time) {
	end := f.at.Add(d)
	for f.at.Before(end) {
		step := min(f.next.Sub(f.at), end.Sub(f.at))
		f.at = f.at.Add(step)
		f.cpu += time.Duration(cpu * float64(step))
		f.wait += time.Duration(wait * float64(step))
		if f.at.Equal(f.next) {
			before := f.current()
			f.tick(f.at)
			f.next = f.next.Add(f.nextTick()) // as run does
			procs = append(procs, f.current())
			if f.current() != before && changed.IsZero() {
				changed = f.at
			}
		}
	}
	return procs, changed
}

// run spends busy cores of CPU time for d, in whole ticks, and returns
// the cores after each.
func (f *fakeCores) run(busy float64, d time.Duration) []int {
	procs, _ := f.spend(busy, 0, d)
	return procs
}

// firstAt is the index of the first element of procs that is n, or -1.
func firstAt(procs []int, n int) int {
	for i, p := range procs {
		if p == n {
			return i
		}
	}
	return -1
}

func TestCoresAuto(t *testing.T) {
	f := newFakeCores(4, config.CoresAuto)
	if f.current() != 1 || fmt.Sprint(f.set) != "[1]" {
		t.Fatalf("auto starts on %d cores (set %v), want 1", f.current(), f.set)
	}
	// Light load stays on one core, however long.
	if got := f.run(coreBusy*0.9, time.Minute); firstAt(got, 4) >= 0 {
		t.Fatalf("%.2f cores moved it to every core after %d ticks", coreBusy*0.9, firstAt(got, 4)+1)
	}
	// A load of half a core or more moves it within coreUpSpan of whole
	// ticks: after a quiet spell, the first tick is coreQuietTick long and
	// does not count.
	f.run(0, time.Second)
	got := f.run(0.6, time.Second)
	if i := firstAt(got, 4); i != int(coreUpSpan/coreTick) {
		t.Fatalf("0.6 cores: every core after %d ticks (%v), want %d", i+1, got, coreUpSpan/coreTick+1)
	}
	if !strings.Contains(f.log.String(), "reason=busy") || !strings.Contains(f.log.String(), "gomaxprocs=4") {
		t.Errorf("no busy line in the log:\n%s", f.log.String())
	}
	// Between the marks it stays on every core.
	if got := f.run(coreIdle*1.2, time.Minute); firstAt(got, 1) >= 0 {
		t.Fatalf("%.2f cores moved it back to one", coreIdle*1.2)
	}
	// A quiet spell of coreDownSpan moves it back, and not before. The
	// busy second before it counts in the span, so it takes a little
	// longer than the span from the load falling.
	f.run(1.5, time.Second)
	quiet := time.Duration(0)
	for f.current() != 1 && quiet < 2*coreDownSpan {
		f.run(0.01, coreTick)
		quiet += coreTick
	}
	// 1.5 cores for a second and 0.01 after it average 0.25 over 5 s
	// once 4.03 s of quiet are in it.
	if quiet < coreDownSpan*3/4 || quiet > coreDownSpan {
		t.Errorf("back to one core after %v of quiet (on %d), want between %v and %v", quiet, f.current(), coreDownSpan*3/4, coreDownSpan)
	}
	if g := testutil.ToFloat64(f.gauge); g != 1 {
		t.Errorf("sluice_cores = %v, want 1", g)
	}
	if b, i := testutil.ToFloat64(f.changes.WithLabelValues("busy")), testutil.ToFloat64(f.changes.WithLabelValues("idle")); b != 1 || i != 1 {
		t.Errorf("changes: busy %v, idle %v; want 1 and 1", b, i)
	}
	// A burst straight after the move back is caught within coreUpSpan too.
	got = f.run(0.8, time.Second)
	if i := firstAt(got, 4); i != int(coreUpSpan/coreTick)-1 {
		t.Fatalf("burst after the move back: every core after %d ticks, want %d", i+1, coreUpSpan/coreTick)
	}
}

func TestCoresFixedAndReload(t *testing.T) {
	f := newFakeCores(4, config.CoresAll)
	if f.current() != 4 || fmt.Sprint(f.set) != "[0]" {
		t.Fatalf("all: %d cores (set %v), want Go's default, 4", f.current(), f.set)
	}
	if got := f.run(0, time.Minute); firstAt(got, 1) >= 0 {
		t.Fatal("all: an idle minute moved it to one core")
	}
	f.setMode(2, "reload")
	if got := f.run(3, time.Second); f.current() != 2 || firstAt(got, 4) >= 0 {
		t.Fatalf("cores 2: %v under load, want 2 throughout", got)
	}
	if c := testutil.ToFloat64(f.changes.WithLabelValues("config")); c != 1 {
		t.Errorf("config changes = %v, want 1", c)
	}
	// Back to auto: from 2 cores, by the load from now on.
	f.setMode(config.CoresAuto, "reload")
	got := f.run(0, 2*coreDownSpan)
	if quiet := time.Duration(firstAt(got, 1)+1) * coreTick; quiet < coreDownSpan || quiet > coreDownSpan+coreTick {
		t.Fatalf("auto again, idle: %v, want one core after %v", got, coreDownSpan)
	}
	// One CPU: auto never changes anything.
	one := newFakeCores(1, config.CoresAuto)
	one.run(5, time.Minute)
	if len(one.set) != 0 || one.current() != 1 {
		t.Errorf("one CPU: set %v, want nothing set", one.set)
	}
	// GOMAXPROCS in the environment wins.
	env := newFakeCores(4, config.CoresAuto)
	env.set, env.fixed = nil, true
	env.procs = 4
	env.run(0, time.Minute)
	env.setMode(1, "reload")
	if len(env.set) != 0 {
		t.Errorf("GOMAXPROCS set: the governor set %v", env.set)
	}
}

// TestCoresFollowLoad runs the real binary in auto mode: it starts on one
// core, moves to every core under a heavy unshaped load, and back to one
// once the load ends, and says so in its log and metrics.
func TestCoresFollowLoad(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("one CPU: auto mode has nothing to choose")
	}
	defer test.TimeOut(60 * time.Second).Stop()
	ln := listenBackend(t)
	conf := "admin: {listen: '127.0.0.1:0'}\n" + fmt.Sprintf(runConfig, ln.Addr(), "1s")
	path := writeConfig(t, conf)
	c := exec.Command(sluiceBin, "run", "--config", path)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GOMAXPROCS=") {
			c.Env = append(c.Env, kv)
		}
	}
	cmd := startCmd(t, c)
	cmd.waitLine(t, "cores", map[string]any{"gomaxprocs": 1, "mode": "auto", "reason": "start"})
	addr := cmd.waitLine(t, "listening", map[string]any{"listener": "t"})["addr"].(string)

	// 32 connections, each echoing small messages as fast as they go:
	// many system calls and wake-ups a byte, so sluice needs more than
	// half a core.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// Not in wg: an upstream connection sluice dials late
			// would Add to wg while the test Waits on it. Each echo
			// ends when sluice closes its side.
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	var clients []net.Conn
	for range 32 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := make([]byte, 512)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := c.Write(msg); err != nil {
					return
				}
				if _, err := io.ReadFull(c, msg); err != nil {
					return
				}
			}
		}()
	}
	busy := cmd.waitLine(t, "cores", map[string]any{"reason": "busy"})
	if n, _ := busy["gomaxprocs"].(float64); n < 2 {
		t.Errorf("busy: %v, want every core", busy)
	}
	close(stop)
	for _, c := range clients {
		c.Close()
	}
	wg.Wait()
	cmd.waitLine(t, "cores", map[string]any{"gomaxprocs": 1, "reason": "idle"})

	resp, err := http.Get(cmd.adminURL(t) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := string(b)
	if !strings.Contains(m, "\nsluice_cores 1\n") || !strings.Contains(m, `sluice_cores_changes_total{reason="busy"} 1`) ||
		!strings.Contains(m, `sluice_cores_changes_total{reason="idle"} 1`) {
		t.Errorf("metrics do not show one core after one move each way:\n%s", grepLines(m, "sluice_cores"))
	}

	// A reload to every core applies at once.
	if err := os.WriteFile(path, []byte(conf+"cores: all\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	l := cmd.waitLine(t, "cores", map[string]any{"mode": "all", "reason": "reload"})
	if n, _ := l["gomaxprocs"].(float64); n < 2 {
		t.Errorf("cores: all: %v, want every core", l)
	}
	if err := c.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.wait(t, 10*time.Second); err != nil {
		t.Errorf("exit: %v", err)
	}
}

func grepLines(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestCoresSampleInAutoOnly: run samples the CPU time every coreTick in
// auto mode only; in another mode nothing wakes it but a change of mode.
// On synctest's clock.
func TestCoresSampleInAutoOnly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeCores(4, config.CoresAll)
		var sampled atomic.Int64
		f.coreGovernor.cpu = func() (time.Duration, bool) {
			sampled.Add(1)
			return 0, true
		}
		f.modeSet = make(chan struct{}, 1)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { f.coreGovernor.run(ctx); close(done) }()
		defer func() { cancel(); <-done }()

		quiet := func(mode string) {
			t.Helper()
			synctest.Wait()
			n, ticks := sampled.Load(), coreTicks.Load()
			time.Sleep(10 * coreTick) // on the bubble's clock
			synctest.Wait()
			if s, w := sampled.Load()-n, coreTicks.Load()-ticks; s != 0 || w != 0 {
				t.Fatalf("%s: run woke %d times and sampled %d in 10 ticks, want 0", mode, w, s)
			}
		}
		quiet("all")
		f.setMode(config.CoresAuto, "reload")
		synctest.Wait()
		n := sampled.Load()
		time.Sleep(10 * coreTick)
		synctest.Wait()
		if got := sampled.Load() - n; got != 10 {
			t.Fatalf("auto: %d samples in 10 ticks, want 10", got)
		}
		f.setMode(2, "reload")
		quiet("2")
	})
}

// TestCoresUpWithinSpan: a sustained load moves auto to every core within
// coreUpSpan of the first whole tick under it, wherever in a tick it
// starts, whether sluice gets the CPU (a stream on its own) or waits for
// it (16 streams on cores the load's clients share), or starts starved of
// CPU altogether.
func TestCoresUpWithinSpan(t *testing.T) {
	loads := []struct {
		name      string
		cpu, wait float64 // cores
	}{
		{"one stream alone", 0.9, 0.05},
		{"16 streams on shared cores", 0.15, 1.5},
		{"half a core", coreBusy, 0},
		{"a core's worth, shared", 0.4, coreFull - 0.4},
		{"starved", 0.01, 1.2},
	}
	for _, l := range loads {
		for _, phase := range []time.Duration{0, time.Millisecond, coreTick / 2, coreTick - time.Millisecond, coreTick, coreQuietTick - time.Millisecond} {
			t.Run(fmt.Sprintf("%s/%v", l.name, phase), func(t *testing.T) {
				f := newFakeCores(2, config.CoresAuto)
				f.spend(0.005, 0, time.Second+phase)
				start := f.at
				_, moved := f.spend(l.cpu, l.wait, time.Second)
				if moved.IsZero() {
					t.Fatalf("no move in a second of %.2f + %.2f cores", l.cpu, l.wait)
				}
				// The quiet tick the load starts in (or, if the load
				// began too late in it to make it busy, the next), then
				// coreUpSpan of whole ticks.
				late := time.Duration(coreQuiet / (l.cpu + l.wait) * float64(coreQuietTick))
				if got, want := moved.Sub(start), coreQuietTick+late+coreUpSpan+time.Millisecond; got > want || got > 300*time.Millisecond {
					t.Errorf("every core %v after the load began, want at most %v", got, want)
				}
				if !strings.Contains(f.log.String(), "reason=busy") {
					t.Errorf("no busy line in the log:\n%s", f.log.String())
				}
			})
		}
	}
}

// TestCoresBurstStays: loads that do not need half a core in each tick of
// a coreUpSpan leave auto on one core, wherever the ticks fall: a burst of
// 2 cores shorter than the span less half a tick (a storm of new
// connections),
// a load that is busy every other tick, and shaped loads with their
// connections' start, on a busy machine too.
func TestCoresBurstStays(t *testing.T) {
	cases := []struct {
		name string
		load func(f *fakeCores)
	}{
		{"burst of 2 cores for 70ms", func(f *fakeCores) {
			f.spend(2, 0, 70*time.Millisecond)
			f.spend(0.1, 0.02, time.Minute)
		}},
		{"burst of 2 cores waiting for 90ms", func(f *fakeCores) {
			f.spend(0.3, 1.7, 90*time.Millisecond)
			f.spend(0.1, 0.02, time.Minute)
		}},
		{"burst of one tick", func(f *fakeCores) {
			f.spend(0.5, 1.5, coreTick)
			f.spend(0.1, 0.02, time.Minute)
		}},
		{"busy every other tick", func(f *fakeCores) {
			for range 600 {
				f.spend(0.6, 0.1, coreTick)
				f.spend(0.2, 0.05, coreTick)
			}
		}},
		{"shaped, waiting on a busy machine", func(f *fakeCores) {
			// 200 connections at 1 MB/s, with their clients on the
			// same 2 cores (measured, CPU and run delay per tick).
			for _, l := range [][2]float64{{0.28, 0.61}, {0.21, 0.62}, {0.48, 0.32}, {0.36, 0.17}, {0.42, 0.07}, {0.49, 0.08}} {
				f.spend(l[0], l[1], coreTick)
			}
			r := rand.New(rand.NewPCG(5, 6))
			for range 1200 {
				f.spend(0.25+0.24*r.Float64(), 0.25*r.Float64(), coreTick)
			}
		}},
		{"shaped, 0.05 to 0.35 cores", func(f *fakeCores) {
			// 50 connections open at once, then shape: measured 1.55
			// cores over the first 50 ms, 0.26 over the next, then
			// 0.06–0.19.
			f.spend(0.21, 1.34, coreTick)
			f.spend(0.07, 0.19, coreTick)
			r := rand.New(rand.NewPCG(1, 2))
			for range 1200 {
				f.spend(0.05+0.2*r.Float64(), 0.1*r.Float64(), coreTick)
			}
		}},
	}
	for _, c := range cases {
		for phase := time.Duration(0); phase < coreTick; phase += coreTick / 10 {
			t.Run(fmt.Sprintf("%s/%v", c.name, phase), func(t *testing.T) {
				f := newFakeCores(2, config.CoresAuto)
				f.spend(0.005, 0, time.Second+phase)
				c.load(f)
				if len(f.set) != 1 || f.current() != 1 {
					t.Errorf("GOMAXPROCS set to %v, want [1] (the start) only\n%s", f.set, f.log.String())
				}
			})
		}
	}
}

// TestCoresNoFlap: a load at the mark, whose CPU time wanders 0.4–0.6 of a
// core from tick to tick on one core and costs a fifth more on two, moves
// auto once in two minutes (to every core, as two busy ticks in a row
// come soon). Moving back to one core still follows
// the quiet span after it, once the load's demand has fallen out of it.
func TestCoresNoFlap(t *testing.T) {
	f := newFakeCores(2, config.CoresAuto)
	f.spend(0.005, 0, time.Second)
	r := rand.New(rand.NewPCG(3, 4))
	for range 2400 {
		work := 0.4 + 0.2*r.Float64()
		if f.current() > 1 {
			work *= 1.2
		}
		f.spend(work, work*0.2, coreTick)
	}
	if fmt.Sprint(f.set) != "[1 0]" {
		t.Fatalf("GOMAXPROCS set to %v in two minutes at the mark, want [1 0]: one move, to every core", f.set)
	}
	start := f.at
	_, moved := f.spend(0.01, 0, 2*coreDownSpan)
	// About 0.7 of a core before, 0.01 after: 0.25 over the span once
	// more than half of it is quiet.
	if q := moved.Sub(start); moved.IsZero() || q < coreDownSpan/2 || q > coreDownSpan+coreTick {
		t.Errorf("back to one core %v after the load ended, want between %v and %v", q, coreDownSpan/2, coreDownSpan+coreTick)
	}
}

// TestCoresWaitCounts: threads waiting for a CPU count both ways: a
// starved load moves to every core and stays there, and a tick in which
// sluice got almost no CPU counts what its threads waited. Without a run
// delay, the CPU time alone decides.
func TestCoresWaitCounts(t *testing.T) {
	f := newFakeCores(2, config.CoresAuto)
	f.spend(0.1, 1, time.Second)
	if f.current() != 2 {
		t.Fatalf("0.1 cores waiting for 1 more: %d cores, want 2", f.current())
	}
	if procs, _ := f.spend(0.1, 0.3, time.Minute); firstAt(procs, 1) >= 0 {
		t.Fatalf("0.1 cores waiting for 0.3 more moved it back to one core after %d ticks", firstAt(procs, 1)+1)
	}
	f.spend(0.001, 0, 2*coreDownSpan)
	if f.current() != 1 {
		t.Fatalf("idle: %d cores, want 1", f.current())
	}
	// Busy (after the quiet spell's long tick), then a tick starved of
	// CPU: the wait carries it.
	f.spend(0.001, 0, f.next.Sub(f.at)) // to a quiet tick: the next is long
	f.spend(0.6, 0.1, coreQuietTick)    // busy, but long: it does not count
	f.spend(0.6, 0.1, coreUpSpan-coreTick)
	if f.current() != 1 {
		t.Fatalf("%v of busy ticks: %d cores, want still 1", coreUpSpan-coreTick, f.current())
	}
	if _, moved := f.spend(0.005, 1.2, coreTick); moved.IsZero() {
		t.Errorf("busy ticks, then one with 0.005 cores waiting for 1.2 more: %d cores, want 2", f.current())
	}

	unknown := newFakeCores(2, config.CoresAuto)
	unknown.coreGovernor.wait = func() (time.Duration, bool) { return 0, false }
	unknown.spend(0.005, 0, time.Second)
	if _, moved := unknown.spend(0.15, 1.5, time.Minute); !moved.IsZero() {
		t.Errorf("run delay unknown: 0.15 cores moved it at %v", moved)
	}
	if _, moved := unknown.spend(0.6, 0, time.Second); moved.IsZero() {
		t.Error("run delay unknown: 0.6 cores did not move it")
	}
}

// TestRunDelay sums the threads' run delays from a directory laid out as
// /proc/self/task, holds one file per live thread, closes a thread's file
// once it has gone while its delay still counts, and reads this process's
// own.
func TestRunDelay(t *testing.T) {
	root := t.TempDir()
	thread := func(tid, stat string) {
		t.Helper()
		if err := os.MkdirAll(root+"/"+tid, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(root+"/"+tid+"/schedstat", []byte(stat), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r := runDelay{root: root}
	defer r.close()
	if w, ok := r.read(); ok || w != 0 {
		t.Errorf("no threads: read() = %v, %v; want 0, false", w, ok)
	}
	thread("10", "5000 2000 7\n")
	thread("11", "9 1000000 2\n")
	if w, ok := r.read(); !ok || w != 1002*time.Microsecond {
		t.Errorf("read() = %v, %v; want 1.002ms, true", w, ok)
	}
	thread("11", "9 3000000 4\n") // read again from the start
	thread("12", "garbage")
	if w, ok := r.read(); !ok || w != 3002*time.Microsecond {
		t.Errorf("read() = %v, %v; want 3.002ms, true", w, ok)
	}
	if err := os.RemoveAll(root + "/10"); err != nil {
		t.Fatal(err)
	}
	thread("11", "9 4000000 5\n")
	if w, ok := r.read(); !ok || w != 4002*time.Microsecond {
		t.Errorf("thread 10 gone: read() = %v, %v; want 4.002ms, true (what it waited still counts)", w, ok)
	}
	if _, held := r.threads["10"]; held || len(r.threads) != 2 {
		t.Errorf("thread 10 gone: files held for %v, want 11 and 12", r.threads)
	}
	r.close()
	if len(r.threads) != 0 || r.dirOpen {
		t.Errorf("close left %d files", len(r.threads))
	}

	var self runDelay
	defer self.close()
	if _, err := os.Stat("/proc/self/task"); err != nil {
		t.Skip("no /proc/self/task")
	}
	w0, ok := self.read()
	if !ok {
		t.Skip("no schedstat (a kernel without CONFIG_SCHEDSTATS?)")
	}
	if w, _ := self.read(); w0 < 0 || w < 0 {
		t.Errorf("this process: read() = %v, then %v", w0, w)
	}
}

// BenchmarkCoresRead is what a tick's reading costs: getrusage and the
// run delay of each thread (threads: this test process's).
func BenchmarkCoresRead(b *testing.B) {
	g := &coreGovernor{cpu: processCPU}
	g.wait = g.delay.read
	defer g.delay.close()
	at := time.Unix(1, 0)
	for b.Loop() {
		at = at.Add(coreTick)
		g.readLocked(at)
	}
	if tids, err := os.ReadDir("/proc/self/task"); err == nil {
		b.ReportMetric(float64(len(tids)), "threads")
	}
}

// TestCoresQuietTick: while sluice is quiet on one core the governor
// samples every coreQuietTick (half the wake-ups), every coreTick once
// there is load or on every core; and a long tick never counts towards
// coreUpSpan, so a 2-core burst shorter than 75 ms that straddles one
// does not move it, wherever it falls.
func TestCoresQuietTick(t *testing.T) {
	f := newFakeCores(2, config.CoresAuto)
	f.spend(0.001, 0, time.Second)
	if got := f.nextTick(); got != coreQuietTick {
		t.Errorf("quiet: next tick in %v, want %v", got, coreQuietTick)
	}
	f.spend(0.2, 0, time.Second)
	if got := f.nextTick(); got != coreTick {
		t.Errorf("0.2 cores: next tick in %v, want %v", got, coreTick)
	}
	f.spend(1.5, 0, time.Second)
	if f.current() != 2 {
		t.Fatalf("1.5 cores: %d cores, want 2", f.current())
	}
	f.spend(0.001, 0, coreDownSpan/2)
	if got := f.nextTick(); got != coreTick {
		t.Errorf("quiet on every core: next tick in %v, want %v", got, coreTick)
	}
	for phase := time.Duration(0); phase < coreQuietTick+coreTick; phase += time.Millisecond {
		f := newFakeCores(2, config.CoresAuto)
		f.spend(0.001, 0, time.Second)
		f.spend(0.001, 0, f.next.Sub(f.at)+phase)
		f.spend(2, 0, 74*time.Millisecond)
		if _, moved := f.spend(0.001, 0, time.Second); !moved.IsZero() || f.current() != 1 {
			t.Fatalf("a 74 ms burst %v after a quiet tick moved it to %d cores", phase, f.current())
		}
	}
}

// TestDirNames: the governor's listing of a directory takes more than one
// read of entries when they overflow its buffer, skips "." and "..", and
// lists it again from the start on the next call.
func TestDirNames(t *testing.T) {
	root := t.TempDir()
	const n = 300 // about 10 KB of entries, over the 4 KiB buffer
	for i := range n {
		if err := os.Mkdir(fmt.Sprintf("%s/%d", root, 100000+i), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	fd, err := openRead(root)
	if err != nil {
		t.Fatal(err)
	}
	defer closeFD(fd)
	buf := make([]byte, 4096)
	var names []string
	for pass := range 2 {
		if names, err = dirNames(fd, root, buf, names); err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, name := range names {
			seen[name] = true
		}
		if len(names) != n || len(seen) != n || !seen["100000"] || !seen[fmt.Sprint(100000+n-1)] {
			t.Errorf("pass %d: %d names (%d distinct), want %d from 100000 to %d", pass, len(names), len(seen), n, 100000+n-1)
		}
	}
	if _, err := openRead(root + "/none"); err == nil {
		t.Error("openRead of a missing file succeeded")
	}
}
