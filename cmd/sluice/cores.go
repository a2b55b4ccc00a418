package main

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluiceproxy/sluice/config"
)

// The core governor sets how many cores Go schedules sluice's goroutines on
// (GOMAXPROCS), by the config key cores (docs/operating.md#cores).
//
// Why: shaped traffic is many small grants, each a system call, and a
// goroutine woken on one core makes the Go runtime wake a thread on the
// other to look for work, which finds none and sleeps again: futex calls,
// context switches and migrations, which on a VM cost more than the bytes.
// On one core there is no other thread to wake, and sluice measured 0.64
// against 1.10 s/GB at 1 conn × 100 MB/s, 1.59 against 1.90 at
// 50 × 1 MB/s (docs/shaping.md). One core carries less, though: 16
// unshaped streams moved up to a fifth fewer bytes. So in auto mode sluice
// runs on one core while it needs less than half of one, and on every core
// from then on, until a longer quiet spell.
//
// Every coreTick it samples the process's CPU time (user and system, all
// threads: getrusage):
//   - On one core, coreBusy or more of a core over the last coreUpSpan
//     moves it to every core: a burst that needs more than one core is
//     held to one for about that long.
//   - On more cores, coreIdle or less over the last coreDownSpan moves it
//     back to one. The gap between the two marks keeps it from flapping:
//     the same load costs more on two cores than on one.
//
// Each change stops the world while the runtime resizes (a median of
// 24 µs on the benchmark VM), and is logged ("cores") and counted
// (sluice_cores_changes_total).
const (
	coreTick     = 100 * time.Millisecond
	coreUpSpan   = 200 * time.Millisecond
	coreDownSpan = 5 * time.Second
	coreBusy     = 0.5  // cores
	coreIdle     = 0.25 // cores
)

// coreSample is the process's CPU time at an instant.
type coreSample struct {
	at  time.Time
	cpu time.Duration
}

// coreGovernor applies the cores setting: it sets GOMAXPROCS from the
// config, and in auto mode from the samples run takes.
type coreGovernor struct {
	log *slog.Logger
	// setProcs sets GOMAXPROCS to n, or to Go's default if n is 0, and
	// returns what it is now.
	setProcs func(n int) int
	// cpu is the process's CPU time so far (processCPU).
	cpu func() (time.Duration, bool)
	// modeSet wakes run when the mode changes: it samples in auto mode
	// only.
	modeSet chan struct{}
	// max is Go's default: every core the process may use.
	max int
	// fixed: GOMAXPROCS is set in the environment, which wins over the
	// config.
	fixed bool

	mu      sync.Mutex
	mode    config.Cores
	procs   int
	samples []coreSample // since the last change, at most coreDownSpan back, oldest first

	gauge   prometheus.Gauge
	changes *prometheus.CounterVec
}

// newCoreGovernor takes over GOMAXPROCS in mode, unless the GOMAXPROCS
// environment variable fixes it.
func newCoreGovernor(log *slog.Logger, mode config.Cores) *coreGovernor {
	g := &coreGovernor{
		log:      log,
		setProcs: setGOMAXPROCS,
		cpu:      processCPU,
		modeSet:  make(chan struct{}, 1),
		max:      runtime.GOMAXPROCS(0),
		procs:    runtime.GOMAXPROCS(0),
	}
	_, g.fixed = os.LookupEnv("GOMAXPROCS")
	g.gauge, g.changes = newCoreMetrics()
	g.gauge.Set(float64(g.procs))
	if g.fixed {
		log.Info("cores", slog.Int("gomaxprocs", g.procs), slog.Int("cpus", runtime.NumCPU()),
			slog.String("mode", "GOMAXPROCS"), slog.String("reason", "start"))
	}
	g.setMode(mode, "start") // with GOMAXPROCS fixed, only warns if the config asked otherwise
	return g
}

// newCoreMetrics makes the governor's metrics: sluice_cores and
// sluice_cores_changes_total.
func newCoreMetrics() (prometheus.Gauge, *prometheus.CounterVec) {
	gauge := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "sluice_cores",
		Help: "Cores Go schedules sluice on now (GOMAXPROCS), as the cores setting chose them.",
	})
	changes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_cores_changes_total",
		Help: "Changes of the cores sluice runs on, by reason: busy (to every core), idle (to one), config.",
	}, []string{"reason"})
	for _, r := range []string{"busy", "idle", "config"} {
		changes.WithLabelValues(r)
	}
	return gauge, changes
}

func setGOMAXPROCS(n int) int {
	if n == 0 {
		runtime.SetDefaultGOMAXPROCS()
		return runtime.GOMAXPROCS(0)
	}
	runtime.GOMAXPROCS(n)
	return n
}

// setMode applies a mode from the config, at start or on reload.
func (g *coreGovernor) setMode(mode config.Cores, reason string) {
	if g.fixed {
		if mode != config.CoresAuto {
			g.log.Warn("cores: the GOMAXPROCS environment variable is set and wins over the config", slog.String("cores", mode.String()))
		}
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	changed := g.mode != mode
	g.mode = mode
	select {
	case g.modeSet <- struct{}{}:
	default:
	}
	switch {
	case mode == config.CoresAll:
		g.setLocked(0, reason, -1)
	case mode > 0:
		g.setLocked(int(mode), reason, -1)
	case reason == "start" && g.max > 1:
		// Nothing runs yet: begin on one core.
		g.setLocked(1, reason, -1)
	case reason == "start" || changed:
		// Into auto (or auto on one core): from what runs now, by the
		// load from now on.
		g.samples = g.samples[:0]
		g.log.Info("cores", slog.Int("gomaxprocs", g.procs), slog.Int("cpus", runtime.NumCPU()),
			slog.String("mode", mode.String()), slog.String("reason", reason))
	}
}

// setLocked sets the cores to n (0: Go's default) and logs why; busy is
// the load that moved it, or negative when the config did.
func (g *coreGovernor) setLocked(n int, reason string, busy float64) {
	prev := g.procs
	g.procs = g.setProcs(n)
	if n == 0 {
		g.max = g.procs // Go's default follows the CPUs and the cgroup's limit
	}
	g.samples = g.samples[:0]
	g.gauge.Set(float64(g.procs))
	if g.procs == prev && reason != "start" {
		return
	}
	if reason != "start" {
		label := reason
		if label != "busy" && label != "idle" {
			label = "config"
		}
		g.changes.WithLabelValues(label).Inc()
	}
	attrs := []any{slog.Int("gomaxprocs", g.procs), slog.Int("cpus", runtime.NumCPU()),
		slog.String("mode", g.mode.String()), slog.String("reason", reason)}
	if busy >= 0 {
		attrs = append(attrs, slog.Float64("busy_cores", float64(int(busy*1000))/1000))
	}
	g.log.Info("cores", attrs...)
}

// sample takes the CPU time s, and moves the cores if the load says so.
func (g *coreGovernor) sample(s coreSample) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.sampleLocked(s)
}

// tick takes a sample at now if the mode is auto. Under mu, so no sample
// starts once setMode has changed the mode.
func (g *coreGovernor) tick(now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mode != config.CoresAuto {
		return
	}
	if cpu, ok := g.cpu(); ok {
		g.sampleLocked(coreSample{at: now, cpu: cpu})
	}
}

// sampleLocked is sample with mu held.
func (g *coreGovernor) sampleLocked(s coreSample) {
	g.samples = append(g.samples, s)
	// Keep one sample at or beyond coreDownSpan back, none older.
	for len(g.samples) > 2 && s.at.Sub(g.samples[1].at) >= coreDownSpan {
		g.samples = g.samples[1:]
	}
	if g.fixed || g.mode != config.CoresAuto || g.max <= 1 {
		return
	}
	if g.procs == 1 {
		if busy, ok := g.busySince(s, coreUpSpan); ok && busy >= coreBusy {
			g.setLocked(0, "busy", busy)
			g.samples = append(g.samples, s) // the spans after it start here
		}
		return
	}
	if busy, ok := g.busySince(s, coreDownSpan); ok && busy <= coreIdle {
		g.setLocked(1, "idle", busy)
		g.samples = append(g.samples, s)
	}
}

// busySince is the cores used from the latest sample at least span before
// s to s; false if there is none.
func (g *coreGovernor) busySince(s coreSample, span time.Duration) (float64, bool) {
	for i := len(g.samples) - 1; i >= 0; i-- {
		if from := g.samples[i]; s.at.Sub(from.at) >= span {
			return float64(s.cpu-from.cpu) / float64(s.at.Sub(from.at)), true
		}
	}
	return 0, false
}

// run samples the process's CPU time every coreTick while the mode is
// auto, until ctx is done. In another mode nothing wakes it but a change.
func (g *coreGovernor) run(ctx context.Context) {
	if g.fixed || g.max <= 1 {
		return
	}
	t := time.NewTicker(coreTick)
	defer t.Stop()
	for {
		g.mu.Lock()
		auto := g.mode == config.CoresAuto
		g.mu.Unlock()
		ticks := t.C
		if !auto {
			t.Stop()
			ticks = nil
		}
		select {
		case <-ctx.Done():
			return
		case <-g.modeSet:
			t.Reset(coreTick)
		case now := <-ticks:
			coreTicks.Add(1)
			g.tick(now)
		}
	}
}

// coreTicks counts run's wake-ups by its ticker, for tests.
var coreTicks atomic.Int64

// processCPU is the CPU time of every thread of the process, user and
// system.
func processCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}

// restore gives GOMAXPROCS back to Go's default when sluice stops serving
// (it may run inside another program, as in tests).
func (g *coreGovernor) restore() {
	if g.fixed {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.procs = g.setProcs(0)
}

// collectors returns the governor's metrics.
func (g *coreGovernor) collectors() []prometheus.Collector {
	return []prometheus.Collector{g.gauge, g.changes}
}

// current is the cores now, for tests.
func (g *coreGovernor) current() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.procs
}
