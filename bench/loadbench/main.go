// Command loadbench measures sluice against direct loopback and against
// nginx's stream proxy, in one run, on this machine's loopback:
//
//   - throughput of 1 and 16 download streams,
//   - proxy CPU seconds per GB moved,
//   - round-trip latency of 64-byte ping-pong (p50, p99),
//   - RSS per idle proxied connection.
//
// It starts its own backends, a sluice and an nginx with configs of its own
// on free loopback ports, stops them by PID when done, and prints the median
// of -runs runs. See bench/README.md.
package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

var (
	sluiceBin   = flag.String("sluice", "./sluice", "sluice binary")
	nginxBin    = flag.String("nginx", "/usr/sbin/nginx", "nginx binary; empty skips nginx")
	nginxMod    = flag.String("nginx-stream-module", "/usr/lib/nginx/modules/ngx_stream_module.so", "nginx stream module")
	haproxyBin  = flag.String("haproxy", "", "HAProxy binary, for the core and -failover measurements (e.g. /usr/sbin/haproxy); empty skips HAProxy")
	runs        = flag.Int("runs", 3, "runs; figures are medians")
	duration    = flag.Duration("duration", 3*time.Second, "length of each throughput measurement")
	pings       = flag.Int("pings", 20000, "ping-pong round trips per latency measurement")
	idleConns   = flag.Int("idle", 9000, "idle connections for the RSS measurement; 0 skips it")
	jsonOut     = flag.String("json", "", "also write the raw results to this file")
	shape       = flag.Bool("shape", false, "measure per-connection shaping instead of the proxy core")
	links       = flag.Bool("links", false, "measure shared link budgets instead of the proxy core")
	mp4         = flag.Bool("mp4", false, "measure MP4 pacing against nginx limit_rate_after + limit_rate (needs ffmpeg)")
	linkScale   = flag.Int("link-scale", 9000, "-links: connections in the scale case; 0 skips it")
	shapeRate   = flag.Int64("shape-rate", 0, "-shape: measure only -shape-conns connections at this rate each, bytes/s")
	shapeConns  = flag.Int("shape-conns", 1, "-shape: connections of the -shape-rate case")
	sluiceCores = flag.String("cores", "", "sluice's cores setting (auto, all or a count); empty leaves sluice's default (auto). -proxy-procs, when set, wins over it")
	only        = flag.String("only", "", "-shape, -links: run only the cases (and proxies) whose names contain this; -rows: only the rows whose names contain this, in any case")
	windows     = flag.Bool("windows", false, "-shape, -links, -rows: also print every 100 ms window after the first second ÷ rate×0.1 s (stderr)")
	clientMSS   = flag.Int("client-mss", 1448, "-shape: MSS the clients advertise (TCP_MAXSEG), as on an Ethernet path; 0 keeps loopback's 64 KB")
	proxyProcs  = flag.Int("proxy-procs", 0, "GOMAXPROCS for sluice and the ideal loop; 0 leaves the Go default (every core)")
	coreRelays  = flag.Bool("relays", false, "core measurement: also measure the floor relay and the kernel relay (BPF; left out with a line on stderr where it is not allowed), references for what a relay costs on this machine")
	rowsMode    = flag.Bool("rows", false, "print the goals table (latency, idle memory, CPU, windows, errors, kernel pacing on a veth pair, cores) against nginx and HAProxy")
)

// procsEnv returns the environment for a Go proxy process: this one's,
// with GOMAXPROCS set to -proxy-procs when that is set.
func procsEnv() []string {
	if *proxyProcs > 0 {
		return envProcs(*proxyProcs)
	}
	return os.Environ()
}

// envProcs is this process's environment with GOMAXPROCS set to n.
func envProcs(n int) []string {
	env := slices.DeleteFunc(os.Environ(), func(v string) bool { return strings.HasPrefix(v, "GOMAXPROCS=") })
	return append(env, "GOMAXPROCS="+strconv.Itoa(n))
}

// target is a way to reach the backends: directly or through a proxy.
type target struct {
	name       string
	sourceAddr string // download streams
	echoAddr   string // ping-pong and idle connections
	adminAddr  string // sluice's admin API; empty for others
	pids       func() []int
	// dial connects a client to addr; nil dials from this network
	// namespace (dialClient for shaped downloads, net.Dial otherwise).
	dial func(addr string) (net.Conn, error)
}

// result is one run's figures for one target.
type result struct {
	Target      string  `json:"target"`
	Stream1MBps float64 `json:"stream1_MBps"`
	Stream16MBs float64 `json:"stream16_MBps"`
	CPUsPerGB1  float64 `json:"cpu_s_per_GB_1"`
	CPUsPerGB16 float64 `json:"cpu_s_per_GB_16"`
	P50us       float64 `json:"p50_us"`
	P99us       float64 `json:"p99_us"`
	IdleRSSKiB  float64 `json:"idle_rss_KiB_per_conn"`
	IdleFDs     float64 `json:"idle_fds_per_conn"`
	IdleFailed  int     `json:"idle_failed"`           // idle connections that failed to open or echo
	Moves       string  `json:"cores_moves,omitempty"` // what sluice's cores setting did
}

func main() {
	flag.Parse()
	if *floorRelay != "" || *goRelay != "" || *kernelRelay != "" {
		var err error
		switch {
		case *kernelRelay != "":
			err = runKernelRelay(*kernelRelay)
		case *goRelay != "":
			err = runGoRelay(*goRelay)
		case *floorWait == "epoll" || *floorWait == "poller":
			err = runFloorRelay(*floorRelay, *floorWait == "poller")
		default:
			err = fmt.Errorf("-floor-wait: want epoll or poller, got %q", *floorWait)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadbench:", err)
			os.Exit(1)
		}
		return
	}
	if *idealProxy != "" {
		if err := runIdealProxy(*idealProxy); err != nil {
			fmt.Fprintln(os.Stderr, "loadbench:", err)
			os.Exit(1)
		}
		return
	}
	run := run
	if *pacingProbe {
		run = runPacingProbe
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "loadbench:", err)
		os.Exit(1)
	}
}

func run() error {
	dir, err := os.MkdirTemp("", "loadbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	src, err := listenBackend(serveSource)
	if err != nil {
		return err
	}
	defer src.Close()
	echo, err := listenBackend(serveEcho)
	if err != nil {
		return err
	}
	defer echo.Close()
	if *shape {
		return runShape(dir, src.Addr().String(), echo.Addr().String())
	}
	if *links {
		return runLinks(dir, src.Addr().String(), echo.Addr().String())
	}
	if *mp4 {
		return runMP4(dir)
	}
	if *admission {
		return runAdmission(dir, echo.Addr().String())
	}
	if *failover {
		return runFailover(dir)
	}
	if *clusterMode {
		return runCluster(dir, src.Addr().String(), echo.Addr().String())
	}
	if *rowsMode {
		return runRows(dir, src.Addr().String(), echo.Addr().String())
	}
	if *waitProbe {
		return runWaitProbe(echo.Addr().String())
	}
	return runCore(dir, src.Addr().String(), echo.Addr().String())
}

// median returns the median of f over rs.
func median[R any](rs []R, f func(R) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func runCore(dir, srcAddr, echoAddr string) error {
	direct := &target{name: "direct", sourceAddr: srcAddr, echoAddr: echoAddr, pids: func() []int { return nil }}
	starters := coreStarters(dir, srcAddr, echoAddr)
	if *coreRelays {
		starters = append(starters,
			func() (*proxyProc, error) { return startFloorRelay(srcAddr, echoAddr) },
			kernelRelayStarter(srcAddr, echoAddr))
	}
	all := map[string][]result{}
	var targets []*target
	for r := 1; r <= *runs; r++ {
		var err error
		if targets, err = coreRun(r, direct, starters, *idleConns, all); err != nil {
			return err
		}
	}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(all, "", "  ")
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	report(targets, all)
	return nil
}

// errSkipped marks a starter's failure that leaves its target out of the
// run, with a line on stderr, instead of ending it.
var errSkipped = errors.New("left out")

// coreStarters returns a starter for each proxy the core measurement
// compares: sluice, nginx (unless -nginx is empty), HAProxy (if -haproxy is
// set).
func coreStarters(dir, srcAddr, echoAddr string) []func() (*proxyProc, error) {
	starters := []func() (*proxyProc, error){
		func() (*proxyProc, error) { return startSluice(dir, srcAddr, echoAddr, "") },
	}
	if *nginxBin != "" {
		starters = append(starters, func() (*proxyProc, error) {
			p, err := startNginx(dir, srcAddr, echoAddr, "")
			if err != nil {
				err = fmt.Errorf("%w (install nginx and libnginx-mod-stream, or pass -nginx '')", err)
			}
			return p, err
		})
	}
	if *haproxyBin != "" {
		starters = append(starters, func() (*proxyProc, error) { return startHAProxyCore(dir, srcAddr, echoAddr) })
	}
	return starters
}

// coreRun is run r of the core measurement: direct, then each proxy on a
// fresh process (so the idle RSS figure is not flattered by memory an
// earlier run freed), with idleN idle connections. It appends each
// target's figures to all and returns the targets measured.
func coreRun(r int, direct *target, starters []func() (*proxyProc, error), idleN int, all map[string][]result) ([]*target, error) {
	targets := []*target{direct}
	record := func(t *target, res result) {
		failed := ""
		if res.IdleFailed > 0 {
			failed = fmt.Sprintf(" (%d failed)", res.IdleFailed)
		}
		fmt.Fprintf(os.Stderr, "run %d %-7s 1x %7.0f MB/s  16x %7.0f MB/s  cpu %.3f/%.3f s/GB  p50 %5.1f us  p99 %5.1f us  idle %.2f KiB %.2f fds/conn%s%s\n",
			r, t.name, res.Stream1MBps, res.Stream16MBs, res.CPUsPerGB1, res.CPUsPerGB16, res.P50us, res.P99us, res.IdleRSSKiB, res.IdleFDs, failed, res.Moves)
		all[t.name] = append(all[t.name], res)
	}
	res, err := measure(direct, idleN)
	if err != nil {
		return nil, fmt.Errorf("run %d, direct: %w", r, err)
	}
	record(direct, res)
	for _, start := range starters {
		p, err := start()
		if errors.Is(err, errSkipped) {
			fmt.Fprintf(os.Stderr, "loadbench: run %d: %v\n", r, err)
			continue
		}
		if err != nil {
			return nil, err
		}
		res, err := measure(p.target, idleN)
		res.Moves = coreMoves(p.target)
		p.stop()
		if err != nil {
			return nil, fmt.Errorf("run %d, %s: %w", r, p.name, err)
		}
		targets = append(targets, p.target)
		record(p.target, res)
	}
	return targets, nil
}

func report(targets []*target, all map[string][]result) {
	med := map[string]result{}
	for _, t := range targets {
		rs := all[t.name]
		m := func(f func(result) float64) float64 { return median(rs, f) }
		med[t.name] = result{
			Target:      t.name,
			Stream1MBps: m(func(r result) float64 { return r.Stream1MBps }),
			Stream16MBs: m(func(r result) float64 { return r.Stream16MBs }),
			CPUsPerGB1:  m(func(r result) float64 { return r.CPUsPerGB1 }),
			CPUsPerGB16: m(func(r result) float64 { return r.CPUsPerGB16 }),
			P50us:       m(func(r result) float64 { return r.P50us }),
			P99us:       m(func(r result) float64 { return r.P99us }),
			IdleRSSKiB:  m(func(r result) float64 { return r.IdleRSSKiB }),
			IdleFDs:     m(func(r result) float64 { return r.IdleFDs }),
		}
	}
	d := med["direct"]
	fmt.Printf("\nmedian of %d runs (%s per throughput measurement, %d pings, %d idle conns)\n", *runs, *duration, *pings, *idleConns)
	w := 7
	for _, t := range targets {
		w = max(w, len(t.name))
	}
	fmt.Printf("%-*s %10s %6s %10s %6s %9s %9s %8s %8s %8s %8s %9s %8s\n", w,
		"target", "1x MB/s", "ratio", "16x MB/s", "ratio", "cpu1 s/GB", "cpu16s/GB", "p50 us", "p99 us", "+p50 us", "+p99 us", "idle KiB", "idle fd")
	for _, t := range targets {
		r := med[t.name]
		fmt.Printf("%-*s %10.0f %6.2f %10.0f %6.2f %9.3f %9.3f %8.1f %8.1f %8.1f %8.1f %9.2f %8.2f\n",
			w, r.Target, r.Stream1MBps, r.Stream1MBps/d.Stream1MBps, r.Stream16MBs, r.Stream16MBs/d.Stream16MBs,
			r.CPUsPerGB1, r.CPUsPerGB16, r.P50us, r.P99us, r.P50us-d.P50us, r.P99us-d.P99us, r.IdleRSSKiB, r.IdleFDs)
	}
}

// measure takes every figure for one target, with idleN idle
// connections (0 skips them). The idle measurement comes first, while a
// proxy process is fresh.
func measure(t *target, idleN int) (result, error) {
	res := result{Target: t.name}
	var err error
	if idleN > 0 {
		if res.IdleRSSKiB, res.IdleFDs, res.IdleFailed, err = idle(t, idleN); err != nil {
			return res, err
		}
	}
	if res.Stream1MBps, res.CPUsPerGB1, err = throughput(t, 1); err != nil {
		return res, err
	}
	if res.Stream16MBs, res.CPUsPerGB16, err = throughput(t, 16); err != nil {
		return res, err
	}
	if res.P50us, res.P99us, err = latency(t); err != nil {
		return res, err
	}
	return res, nil
}

// throughput downloads from the source backend over n streams for
// -duration and returns MB/s (10^6 bytes) and the proxy's CPU s per GB.
func throughput(t *target, n int) (mbps, cpuPerGB float64, err error) {
	conns := make([]net.Conn, n)
	for i := range conns {
		if conns[i], err = net.Dial("tcp", t.sourceAddr); err != nil {
			return 0, 0, err
		}
	}
	var total atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	// Warm up for a quarter of a second, then measure.
	for _, c := range conns {
		wg.Add(1)
		go func(c net.Conn) {
			defer wg.Done()
			buf := make([]byte, 256<<10)
			for {
				k, err := c.Read(buf)
				total.Add(int64(k))
				if err != nil {
					return
				}
				select {
				case <-stop:
					return
				default:
				}
			}
		}(c)
	}
	time.Sleep(250 * time.Millisecond)
	cpu0 := cpuSeconds(t.pids())
	b0, t0 := total.Load(), time.Now()
	time.Sleep(*duration)
	b1, el := total.Load(), time.Since(t0)
	cpu1 := cpuSeconds(t.pids())
	close(stop)
	for _, c := range conns {
		c.Close()
	}
	wg.Wait()
	moved := float64(b1 - b0)
	if moved == 0 {
		return 0, 0, errors.New("no bytes moved")
	}
	return moved / el.Seconds() / 1e6, (cpu1 - cpu0) / (moved / 1e9), nil
}

// latency measures 64-byte ping-pong round trips through t.
func latency(t *target) (p50, p99 float64, err error) {
	c, err := net.Dial("tcp", t.echoAddr)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	msg, back := make([]byte, 64), make([]byte, 64)
	rtts := make([]time.Duration, 0, *pings)
	for i := 0; i < *pings+1000; i++ {
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			return 0, 0, err
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return 0, 0, err
		}
		if i >= 1000 { // warm-up
			rtts = append(rtts, time.Since(start))
		}
	}
	slices.Sort(rtts)
	us := func(q float64) float64 { return float64(rtts[int(q*float64(len(rtts)-1))]) / 1e3 }
	return us(0.50), us(0.99), nil
}

// idle opens n connections through t, moves one byte each way on each so
// every pump has run, and returns the proxy's RSS and descriptor growth per
// connection that opened and echoed, and how many did not (each gets 5 s
// to echo). It fails only if none did.
func idle(t *target, n int) (kibPerConn, fdsPerConn float64, failed int, err error) {
	pids := t.pids()
	if len(pids) == 0 {
		return 0, 0, 0, nil
	}
	settle()
	rss0, fd0 := rssKiB(pids), fdCount(pids)
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	one := make([]byte, 1)
	var first error
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", t.echoAddr)
		if err != nil {
			failed++
			first = cmp.Or(first, fmt.Errorf("idle conn %d: %w", i, err))
			continue
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(one); err != nil {
			failed++
			first = cmp.Or(first, fmt.Errorf("idle conn %d: %w", i, err))
			continue
		}
		if _, err := io.ReadFull(c, one); err != nil {
			failed++
			first = cmp.Or(first, fmt.Errorf("idle conn %d echo: %w", i, err))
			continue
		}
		c.SetDeadline(time.Time{})
	}
	if failed > 0 {
		fmt.Fprintf(os.Stderr, "%s: %d of %d idle connections failed, the first: %v\n", t.name, failed, n, first)
	}
	if failed == n {
		return 0, 0, failed, first
	}
	settle()
	rss1, fd1 := rssKiB(t.pids()), fdCount(t.pids())
	ok := float64(n - failed)
	return float64(rss1-rss0) / ok, float64(fd1-fd0) / ok, failed, nil
}

// settle gives the proxies a moment to finish what they were doing (Go's
// scavenger, nginx's lingering closes) before memory is read.
func settle() { time.Sleep(1500 * time.Millisecond) }

// --- backends ---------------------------------------------------------------

func listenBackend(serve func(net.Conn)) (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
	return ln, nil
}

// serveSource writes an endless stream until the client goes away.
func serveSource(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 256<<10)
	for {
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

// serveEcho echoes every byte back.
func serveEcho(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// --- proxies ----------------------------------------------------------------

type proxyProc struct {
	*target
	cmd *exec.Cmd
}

func (p *proxyProc) stop() {
	if p.cmd.Process != nil {
		p.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			p.cmd.Process.Kill()
			<-done
		}
	}
}

// freePorts returns two free loopback addresses for a proxy's listeners.
func freePorts() (a, b string, err error) {
	var addrs [2]string
	for i := range addrs {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", "", err
		}
		addrs[i] = ln.Addr().String()
		ln.Close()
	}
	return addrs[0], addrs[1], nil
}

// startSluice runs sluice with two listeners; srcOpts is extra YAML (a flow
// mapping's inner keys, e.g. `conn: {down: {rate: "10MB/s"}}`) for the
// source listener.
func startSluice(dir, srcAddr, echoAddr, srcOpts string) (*proxyProc, error) {
	return startSluiceTop(dir, srcAddr, echoAddr, srcOpts, "")
}

// coreMoves is what sluice's cores setting did while t was measured:
// ", cores now N (to every core X times, to one Y)"; empty for others.
func coreMoves(t *target) string {
	if t.adminAddr == "" {
		return ""
	}
	resp, err := http.Get("http://" + t.adminAddr + "/metrics")
	if err != nil {
		return ", cores: " + err.Error()
	}
	defer resp.Body.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && strings.HasPrefix(f[0], "sluice_cores") {
			m[f[0]] = f[1]
		}
	}
	return fmt.Sprintf(", cores now %s (to every core %s times, to one %s)", m["sluice_cores"],
		m[`sluice_cores_changes_total{reason="busy"}`], m[`sluice_cores_changes_total{reason="idle"}`])
}

// startSluiceTop is startSluice with extra top-level YAML (e.g. links:).
func startSluiceTop(dir, srcAddr, echoAddr, srcOpts, top string) (*proxyProc, error) {
	return startSluiceSpec(dir, srcAddr, echoAddr, sluiceSpec{srcOpts: srcOpts, top: top})
}

// sluiceSpec is how to run one sluice; the zero value is startSluice's:
// on free loopback ports here, logging warnings to stderr.
type sluiceSpec struct {
	srcOpts string // extra YAML for the source listener (a flow mapping's inner keys)
	top     string // extra top-level YAML
	// cores is the cores setting; empty takes -cores, and -proxy-procs in
	// the environment. Set, it wins over both.
	cores    string
	logLevel string    // empty: warn
	stderr   io.Writer // nil: os.Stderr
	// netns runs sluice in that network namespace ("ip netns exec"), on
	// the listen addresses, which dial reaches. Empty: this namespace, on
	// free loopback ports.
	netns  string
	listen [2]string // source and echo listen addresses
	dial   func(addr string) (net.Conn, error)
}

// startSluiceSpec runs sluice as s says, with two listeners, source and
// echo, in front of srcAddr and echoAddr.
func startSluiceSpec(dir, srcAddr, echoAddr string, s sluiceSpec) (*proxyProc, error) {
	a, b := s.listen[0], s.listen[1]
	adm := "127.0.0.1:9901" // a namespace of its own is empty
	if s.netns == "" {
		var err error
		if a, b, err = freePorts(); err != nil {
			return nil, err
		}
		if adm, _, err = freePorts(); err != nil {
			return nil, err
		}
	}
	top, env := s.top, procsEnv()
	switch {
	case s.cores != "":
		top = "cores: " + s.cores + "\n" + top
		env = slices.DeleteFunc(os.Environ(), func(v string) bool { return strings.HasPrefix(v, "GOMAXPROCS=") })
	case *sluiceCores != "":
		top = "cores: " + *sluiceCores + "\n" + top
	}
	cfg := fmt.Sprintf(`log: {level: %s}
admin: {listen: "%s"}
%s
listeners:
  - {name: source, listen: "%s", upstream: "%s", %s}
  - {name: echo, listen: "%s", upstream: "%s"}
`, cmp.Or(s.logLevel, "warn"), adm, top, a, srcAddr, s.srcOpts, b, echoAddr)
	path := filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	cmd := inNetnsCmd(s.netns, *sluiceBin, "run", "--config", path)
	cmd.Env = env
	cmd.Stderr = cmp.Or[io.Writer](s.stderr, os.Stderr)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // no orphan if loadbench dies
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	t := &target{name: "sluice", sourceAddr: a, echoAddr: b, dial: s.dial,
		pids: func() []int { return []int{cmd.Process.Pid} }}
	if s.netns == "" {
		t.adminAddr = adm
	}
	p := &proxyProc{cmd: cmd, target: t}
	if err := waitListeningVia(s.dial, a, b); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// inNetnsCmd is exec.Command(name, args...), run in network namespace ns
// unless ns is empty. "ip netns exec" execs in place: the process keeps
// its PID.
func inNetnsCmd(ns, name string, args ...string) *exec.Cmd {
	if ns == "" {
		return exec.Command(name, args...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// startNginx runs nginx's stream proxy with two servers; srcDirectives go
// into the source server block (e.g. "proxy_download_rate 10000000;").
func startNginx(dir, srcAddr, echoAddr, srcDirectives string) (*proxyProc, error) {
	return startNginxTop(dir, srcAddr, echoAddr, srcDirectives, "")
}

// startNginxTop is startNginx with streamTop in the stream block (e.g.
// limit_conn_zone).
func startNginxTop(dir, srcAddr, echoAddr, srcDirectives, streamTop string) (*proxyProc, error) {
	return startNginxSpec(dir, srcAddr, echoAddr, nginxSpec{srcDirectives: srcDirectives, streamTop: streamTop})
}

// nginxSpec is how to run one nginx; the zero value is startNginx's.
type nginxSpec struct {
	srcDirectives string // into the source server block
	streamTop     string // into the stream block
	// netns, listen and dial are as in sluiceSpec.
	netns  string
	listen [2]string
	dial   func(addr string) (net.Conn, error)
}

// startNginxSpec runs nginx as s says, with two stream servers, source
// and echo, in front of srcAddr and echoAddr.
func startNginxSpec(dir, srcAddr, echoAddr string, s nginxSpec) (*proxyProc, error) {
	a, b := s.listen[0], s.listen[1]
	if s.netns == "" {
		var err error
		if a, b, err = freePorts(); err != nil {
			return nil, err
		}
	}
	conf := fmt.Sprintf(`load_module %s;
daemon off;
master_process on;
worker_processes auto;
worker_rlimit_nofile 20000;
pid %s/nginx.pid;
error_log %s/nginx-error.log warn;
events { worker_connections 20000; }
stream {
  %s
  server { listen %s; proxy_pass %s; %s }
  server { listen %s; proxy_pass %s; }
}
`, *nginxMod, dir, dir, s.streamTop, a, srcAddr, s.srcDirectives, b, echoAddr)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	cmd := inNetnsCmd(s.netns, *nginxBin, "-c", path, "-p", dir)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // nginx's workers follow their master
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	master := cmd.Process.Pid
	p := &proxyProc{cmd: cmd, target: &target{name: "nginx", sourceAddr: a, echoAddr: b, dial: s.dial,
		pids: func() []int { return append([]int{master}, children(master)...) }}}
	if err := waitListeningVia(s.dial, a, b); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// startHAProxyCore runs HAProxy in TCP mode with two frontends, in the
// foreground, with room for 9,950 connections in 20,000 descriptors.
func startHAProxyCore(dir, srcAddr, echoAddr string) (*proxyProc, error) {
	a, b, err := freePorts()
	if err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`global
  maxconn 9950
  ulimit-n 20000
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen source
  bind %s
  server s %s
listen echo
  bind %s
  server e %s
`, a, srcAddr, b, echoAddr)
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(*haproxyBin, "-db", "-f", path)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proxyProc{cmd: cmd, target: &target{name: "haproxy", sourceAddr: a, echoAddr: b,
		pids: func() []int { return []int{cmd.Process.Pid} }}}
	if err := waitListening(a, b); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

func waitListening(addrs ...string) error { return waitListeningVia(nil, addrs...) }

// waitListeningVia waits until every address accepts a connection made by
// dial (nil: net.Dial here), for up to 10 s.
func waitListeningVia(dial func(addr string) (net.Conn, error), addrs ...string) error {
	if dial == nil {
		dial = func(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, a := range addrs {
		for {
			c, err := dial(a)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s not listening after 10s", a)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return nil
}

// --- /proc readers ----------------------------------------------------------

func children(pid int) []int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// cpuSeconds sums user and system CPU time of pids.
func cpuSeconds(pids []int) float64 {
	user, sys := cpuTimes(pids)
	return user + sys
}

// cpuTimes sums the user and the system CPU time of pids, in seconds. The
// sum of the two is each process's CPU clock (every thread's, to the
// nanosecond); the system part is /proc/PID/stat's, in 10 ms ticks, and
// the user part the rest. At 1 MB/s a proxy spends a few ticks in a
// measurement, so ticks alone would put its CPU per GB ±30% off; its
// system part stays that coarse.
func cpuTimes(pids []int) (user, sys float64) {
	const ticks = 100 // USER_HZ
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		ut, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		ut, st = ut/ticks, st/ticks
		if total, ok := processCPU(pid); ok {
			ut = total - st
		}
		user += ut
		sys += st
	}
	return user, sys
}

// processCPU reads the CPU clock of process pid (CLOCK_PROCESS_CPUTIME_ID
// of another process: MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED) in the
// kernel's posix-timers.h), in seconds.
func processCPU(pid int) (float64, bool) {
	var ts unix.Timespec
	if unix.ClockGettime(int32(^pid<<3|2), &ts) != nil {
		return 0, false
	}
	return float64(ts.Nano()) / 1e9, true
}

func rssKiB(pids []int) int64 {
	var total int64
	for _, pid := range pids {
		f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				total += n
			}
		}
		f.Close()
	}
	return total
}

func fdCount(pids []int) int {
	n := 0
	for _, pid := range pids {
		ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		n += len(ents)
	}
	return n
}
