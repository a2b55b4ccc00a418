package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pion/transport/v2/test"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluiceproxy/sluice/config"
)

// fakeCores is a core governor on a fake clock and a fake GOMAXPROCS, with
// max cores by default.
type fakeCores struct {
	*coreGovernor
	at  time.Time
	cpu time.Duration
	set []int // what setProcs was asked, in order
	log bytes.Buffer
}

func newFakeCores(max int, mode config.Cores) *fakeCores {
	f := &fakeCores{at: time.Unix(1000, 0)}
	f.coreGovernor = &coreGovernor{
		log: slog.New(slog.NewTextHandler(&f.log, nil)),
		setProcs: func(n int) int {
			f.set = append(f.set, n)
			if n == 0 {
				return max
			}
			return n
		},
		max:   max,
		procs: max,
	}
	f.gauge, f.changes = newCoreMetrics()
	f.setMode(mode, "start")
	return f
}

// run spends busy cores for d, in coreTick samples, and returns the cores
// after each.
func (f *fakeCores) run(busy float64, d time.Duration) []int {
	var out []int
	for e := time.Duration(0); e < d; e += coreTick {
		f.at = f.at.Add(coreTick)
		f.cpu += time.Duration(busy * float64(coreTick))
		f.sample(coreSample{at: f.at, cpu: f.cpu})
		out = append(out, f.current())
	}
	return out
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
	// A load of half a core or more moves it within coreUpSpan.
	f.run(0, time.Second)
	got := f.run(0.6, time.Second)
	if i := firstAt(got, 4); i != int(coreUpSpan/coreTick)-1 {
		t.Fatalf("0.6 cores: every core after %d ticks (%v), want %d", i+1, got, coreUpSpan/coreTick)
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

// TestCoresSampleInAutoOnly: run samples the CPU time in auto mode only;
// in another mode nothing wakes it but a change of mode.
func TestCoresSampleInAutoOnly(t *testing.T) {
	f := newFakeCores(4, config.CoresAll)
	sampled := make(chan struct{}, 100)
	f.coreGovernor.cpu = func() (time.Duration, bool) {
		sampled <- struct{}{}
		return 0, true
	}
	f.modeSet = make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.coreGovernor.run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	quiet := func(mode string) {
		t.Helper()
		ticks := coreTicks.Load()
		select {
		case <-sampled:
			t.Fatalf("%s: run sampled the CPU time", mode)
		case <-time.After(3 * coreTick): // three ticks' worth without a sample
		}
		if n := coreTicks.Load() - ticks; n != 0 {
			t.Fatalf("%s: run woke %d times", mode, n)
		}
	}
	quiet("all")
	f.setMode(config.CoresAuto, "reload")
	select {
	case <-sampled:
	case <-time.After(5 * time.Second):
		t.Fatal("auto: no sample within 5 s")
	}
	f.setMode(2, "reload")
	for len(sampled) > 0 { // taken before setMode: tick holds mu while it samples
		<-sampled
	}
	quiet("2")
}
