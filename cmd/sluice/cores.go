package main

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
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
// It samples its CPU time (user and system, all threads: getrusage) and
// its run delay: the time its threads were ready to run but waited for a
// CPU (Linux: /proc/self/task/*/schedstat). CPU time alone says too
// little where other programs share the cores: under 16 unshaped streams
// on a 2-core machine shared with the load's own clients, sluice on one
// core got 0.1 to 0.55 of a core while its threads waited for 1 to 3.6
// more, so half a core over 200 ms was crossed by chance, 1 to 1.8 s
// into the load, or not within 3 s. Its demand, CPU time plus run delay,
// was 0.95 of a core or more in every 50 ms. Where the run delay
// cannot be read, the demand is the CPU time.
//
// Every coreTick it takes a sample:
//   - On one core, each tick of the last coreUpSpan busy moves it to every
//     core. A tick is busy if sluice used coreBusy or more of a core in
//     it, or its demand was coreFull or more: the one core it runs on was
//     not enough. Each tick must be busy, so a burst of two cores shorter
//     than 75 ms, the span less half a tick (connections opening at
//     once), does not move it, and a sustained load moves it within coreUpSpan plus the
//     tick in which it began. Half a core of demand is not enough, as
//     shaped loads on a busy machine wait too: 200 connections at 1 MB/s
//     used 0.25 to 0.5 of a core with a demand up to 0.63 (0.9 as they
//     opened), and 50 at 1 MB/s 0.06 to 0.2 (0.77).
//   - On more cores, a demand of coreIdle or less over the last
//     coreDownSpan moves it back to one. The gap between the marks keeps
//     it from flapping: the same load costs more on two cores than on one.
//
// The run delay is read every tick, even when the CPU time looks idle: a
// process starved of CPU gets almost none, as it did for 70 ms in one of
// those runs. A sample is one getrusage and one pread of each thread's
// schedstat, which it keeps open: about 10 µs with 5 threads, a
// fortieth of a millisecond of CPU a second. On Linux these are raw
// system calls (sampling_linux.go), which do not wake the runtime's
// sysmon thread.
//
// Each change stops the world while the runtime resizes (a median of
// 24 µs on the benchmark VM), and is logged ("cores") and counted
// (sluice_cores_changes_total).
//
// While sluice is quiet on one core (under coreQuiet of demand in the last
// tick), it samples every coreQuietTick instead: each wake-up costs
// (with the sysmon thread's, about 0.1–0.25 ms of CPU on the benchmark
// VM), which at one connection shaped to 1 MB/s was a fifth of sluice's
// CPU. A tick that long never counts towards coreUpSpan, so a burst
// shorter than 75 ms still cannot move it; a sustained load starting in a
// quiet spell moves it within coreQuietTick + coreUpSpan (250 ms).
const (
	coreTick      = 50 * time.Millisecond
	coreQuietTick = 100 * time.Millisecond
	coreQuiet     = 0.05 // cores of CPU time and run delay
	coreUpSpan    = 150 * time.Millisecond
	coreDownSpan  = 5 * time.Second
	coreBusy      = 0.5  // cores of CPU time
	coreFull      = 0.9  // cores of CPU time and run delay
	coreIdle      = 0.25 // cores of CPU time and run delay
)

// coreSample is the process's CPU time so far at an instant, and its
// demand: the CPU time plus the run delay of the ticks whose run delay was
// read at both ends.
type coreSample struct {
	at     time.Time
	cpu    time.Duration
	demand time.Duration
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
	// wait is the time the process's threads have waited for a CPU so
	// far (runDelay.read); false if unknown. Nil: never known.
	wait func() (time.Duration, bool)
	// delay is what wait reads, closed by restore.
	delay runDelay
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
	// The last tick's reading, and its run delay (if waitOK).
	last     coreSample
	lastWait time.Duration
	waitOK   bool

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
	g.wait = g.delay.read
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
		g.setLocked(0, reason)
	case mode > 0:
		g.setLocked(int(mode), reason)
	case reason == "start" && g.max > 1:
		// Nothing runs yet: begin on one core.
		g.setLocked(1, reason)
	case reason == "start" || changed:
		// Into auto (or auto on one core): from what runs now, by the
		// load from now on.
		g.samples = g.samples[:0]
		g.log.Info("cores", slog.Int("gomaxprocs", g.procs), slog.Int("cpus", runtime.NumCPU()),
			slog.String("mode", mode.String()), slog.String("reason", reason))
	}
}

// setLocked sets the cores to n (0: Go's default) and logs why, with
// load, the attributes of the load that moved it, if it did.
func (g *coreGovernor) setLocked(n int, reason string, load ...any) {
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
	attrs = append(attrs, load...)
	g.log.Info("cores", attrs...)
}

// tick takes a sample at now if the mode is auto. Under mu, so no sample
// starts once setMode has changed the mode.
func (g *coreGovernor) tick(now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mode != config.CoresAuto {
		return
	}
	if s, ok := g.readLocked(now); ok {
		g.sampleLocked(s)
	}
}

// readLocked reads the process's demand at now: the CPU time since the
// last reading, plus the run delay since then if it was read both times.
// It requires g.mu held.
func (g *coreGovernor) readLocked(now time.Time) (coreSample, bool) {
	cpu, ok := g.cpu()
	if !ok {
		return coreSample{}, false
	}
	s := coreSample{at: now, cpu: cpu, demand: g.last.demand}
	if !g.last.at.IsZero() {
		s.demand += cpu - g.last.cpu
	}
	var wait time.Duration
	waitOK := false
	if g.wait != nil {
		if wait, waitOK = g.wait(); waitOK && g.waitOK && wait > g.lastWait {
			s.demand += wait - g.lastWait
		}
	}
	g.last, g.lastWait, g.waitOK = s, wait, waitOK
	return s, true
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
		if from, ok := g.busyEachTick(coreUpSpan); ok {
			g.setLocked(0, "busy", spanAttrs(from, s)...)
			g.samples = append(g.samples, s) // the spans after it start here
		}
		return
	}
	if from, ok := g.sampleBefore(s, coreDownSpan); ok && from.demandTo(s) <= coreIdle {
		g.setLocked(1, "idle", spanAttrs(from, s)...)
		g.samples = append(g.samples, s)
	}
}

// cpuTo is the cores of CPU time from a to b.
func (a coreSample) cpuTo(b coreSample) float64 {
	return float64(b.cpu-a.cpu) / float64(b.at.Sub(a.at))
}

// demandTo is the cores of CPU time and run delay from a to b.
func (a coreSample) demandTo(b coreSample) float64 {
	return float64(b.demand-a.demand) / float64(b.at.Sub(a.at))
}

// spanAttrs are the log attributes of the load from a to b.
func spanAttrs(a, b coreSample) []any {
	return []any{slog.Float64("busy_cores", float64(int(a.cpuTo(b)*1000))/1000),
		slog.Float64("demand_cores", float64(int(a.demandTo(b)*1000))/1000)}
}

// sampleBefore is the latest sample at least span before s; false if
// there is none.
func (g *coreGovernor) sampleBefore(s coreSample, span time.Duration) (coreSample, bool) {
	for i := len(g.samples) - 1; i >= 0; i-- {
		if from := g.samples[i]; s.at.Sub(from.at) >= span {
			return from, true
		}
	}
	return coreSample{}, false
}

// busyEachTick reports whether each tick of the last span (back to the
// latest sample at least span before the last) was busy: coreBusy or more
// of CPU time, or coreFull or more of demand. It returns the sample the
// span starts at.
func (g *coreGovernor) busyEachTick(span time.Duration) (coreSample, bool) {
	if len(g.samples) == 0 {
		return coreSample{}, false
	}
	end := g.samples[len(g.samples)-1]
	for i := len(g.samples) - 1; i > 0; i-- {
		to, from := g.samples[i], g.samples[i-1]
		if !to.at.After(from.at) || to.at.Sub(from.at) > coreTick*3/2 ||
			from.cpuTo(to) < coreBusy && from.demandTo(to) < coreFull {
			return coreSample{}, false // a long tick (quiet, or starved) does not count
		}
		if end.at.Sub(from.at) >= span {
			return from, true
		}
	}
	return coreSample{}, false
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
		case <-ticks:
			// Not the tick's time: the read may come a tick or more
			// after it when sluice is starved of CPU.
			coreTicks.Add(1)
			g.tick(time.Now())
			t.Reset(g.nextTick())
		}
	}
}

// nextTick is how long until the next sample: coreQuietTick while sluice
// runs on one core and its last tick's demand was under coreQuiet,
// coreTick otherwise.
func (g *coreGovernor) nextTick() time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	if n := len(g.samples); g.procs == 1 && n >= 2 && g.samples[n-2].demandTo(g.samples[n-1]) < coreQuiet {
		return coreQuietTick
	}
	return coreTick
}

// coreTicks counts run's wake-ups by its ticker, for tests.
var coreTicks atomic.Int64

// processCPU is the CPU time of every thread of the process, user and
// system.
func processCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if getrusageSelf(&ru) != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}

// runDelay reads the time the process's threads have spent ready to run
// while waiting for a CPU: the run delay, the second field of Linux's
// /proc/self/task/*/schedstat. It keeps each thread's file open from one
// read to the next, so a read is a listing of the threads and a pread
// each, and it adds up what each thread's delay grew by, so its sum does
// not fall when a thread exits. Not safe for concurrent use; the zero
// value is ready, and close releases it.
type runDelay struct {
	root    string // the threads' directory; "" is /proc/self/task
	dir     int    // root, open while dirOpen
	dirOpen bool
	dents   []byte                  // the listing's buffer
	tids    []string                // the last listing
	threads map[string]*threadDelay // by thread ID
	total   time.Duration
	gen     uint64 // the reads so far
}

// threadDelay is a thread's schedstat, open, and its run delay when last
// read.
type threadDelay struct {
	fd    int
	delay time.Duration
	gen   uint64 // the read that last found the thread
}

// read is the run delay so far of the threads it has seen; false where
// schedstat cannot be read.
func (r *runDelay) read() (time.Duration, bool) {
	if r.root == "" {
		r.root = "/proc/self/task"
	}
	if !r.dirOpen {
		dir, err := openRead(r.root)
		if err != nil {
			return 0, false
		}
		r.dir, r.dirOpen, r.threads = dir, true, map[string]*threadDelay{}
		r.dents = make([]byte, 4096)
	}
	tids, err := dirNames(r.dir, r.root, r.dents, r.tids)
	if err != nil {
		return 0, false
	}
	r.tids = tids
	r.gen++
	read := false
	var buf [128]byte
	for _, tid := range tids {
		t := r.threads[tid]
		if t == nil {
			fd, err := openRead(r.root + "/" + tid + "/schedstat")
			if err != nil {
				continue // the thread has exited
			}
			t = &threadDelay{fd: fd}
			r.threads[tid] = t
		}
		n, err := preadAt0(t.fd, buf[:])
		if err != nil || n <= 0 {
			continue // exited since the listing, or its ID is a new thread's: closed below, opened anew next time
		}
		t.gen = r.gen
		// "<on-CPU ns> <run delay ns> <time slices>\n"
		f := strings.Fields(string(buf[:n]))
		if len(f) < 2 {
			continue
		}
		if d, err := strconv.ParseInt(f[1], 10, 64); err == nil {
			if d := time.Duration(d); d > t.delay {
				r.total += d - t.delay
				t.delay = d
			}
			read = true
		}
	}
	for tid, t := range r.threads {
		if t.gen != r.gen {
			closeFD(t.fd)
			delete(r.threads, tid)
		}
	}
	return r.total, read
}

// close releases the files read holds.
func (r *runDelay) close() {
	for tid, t := range r.threads {
		closeFD(t.fd)
		delete(r.threads, tid)
	}
	if r.dirOpen {
		closeFD(r.dir)
		r.dirOpen = false
	}
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
	g.delay.close()
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
