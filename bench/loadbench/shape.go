package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// A shapeCase is one shaping scenario: conns connections, each limited to
// rate bytes per second downstream.
type shapeCase struct {
	name  string
	conns int
	rate  int64
}

var shapeCases = []shapeCase{
	{"1 conn @ 1 MB/s", 1, 1_000_000},
	{"1 conn @ 10 MB/s", 1, 10_000_000},
	{"1 conn @ 100 MB/s", 1, 100_000_000},
	{"50 conns @ 1 MB/s", 50, 1_000_000},
}

// shapeResult holds one case's figures, over the aggregate of its conns.
type shapeResult struct {
	ErrPct float64 // steady rate after the first second vs the limit, %
	FitErr float64 // the same, from the slope of a least-squares fit of bytes received over time, %
	First  float64 // bytes in the first second ÷ rate
	MinWin float64 // lowest 100 ms window after the first second ÷ rate×0.1 s
	MaxWin float64 // highest
	// KMinWin and KMaxWin are MinWin and MaxWin with each read's bytes
	// counted when the client's kernel received the last of them
	// (SO_TIMESTAMPNS), not when the read returned, so that a client
	// scheduled late does not move bytes from one window to the next;
	// 0 where the stamps are not available.
	KMinWin  float64 `json:",omitempty"`
	KMaxWin  float64 `json:",omitempty"`
	CPUPerGB float64
	SysPerGB float64 // the system-time part of CPUPerGB
}

// shaper is a proxy set up for a rate.
type shaperTarget struct {
	name  string
	start func(dir, src, echo string, rate int64) (*proxyProc, error)
}

// idealLoop names the ideal loop as a proxy.
const idealLoop = "ideal loop"

// chunk is the default chunk and burst, as sluice's.
const chunk = 8192

var shapeChunk = flag.Int("shape-chunk", chunk, "-shape: sluice's chunk and burst, bytes (a grant is at least one chunk)")

// sluiceShapeOpts is the source listener's YAML that limits each
// connection to rate bytes/s down, with -shape-chunk as chunk and burst.
func sluiceShapeOpts(rate int64, pacing bool) string {
	return fmt.Sprintf(`chunk: %d, conn: {down: {rate: "%dB/s", burst: %d, kernel_pacing: %t}}`, *shapeChunk, rate, *shapeChunk, pacing)
}

// nginxShapeDirectives limits each connection to rate bytes/s down.
func nginxShapeDirectives(rate int64) string { return fmt.Sprintf("proxy_download_rate %d;", rate) }

var shaperTargets = []shaperTarget{
	{"sluice pacing on", func(dir, src, echo string, rate int64) (*proxyProc, error) {
		return startSluice(dir, src, echo, sluiceShapeOpts(rate, true))
	}},
	{"sluice pacing off", func(dir, src, echo string, rate int64) (*proxyProc, error) {
		return startSluice(dir, src, echo, sluiceShapeOpts(rate, false))
	}},
	{"nginx", func(dir, src, echo string, rate int64) (*proxyProc, error) {
		return startNginx(dir, src, echo, nginxShapeDirectives(rate))
	}},
	{idealLoop, func(_, src, echo string, rate int64) (*proxyProc, error) {
		return startIdeal(src, echo, rate, procsEnv())
	}},
}

func runShape(dir, srcAddr, echoAddr string) error {
	if *shapeRate > 0 {
		shapeCases = []shapeCase{{fmt.Sprintf("%d conns @ %g MB/s", *shapeConns, float64(*shapeRate)/1e6), *shapeConns, *shapeRate}}
	}
	var targets []shaperTarget
	for _, t := range shaperTargets {
		if t.name != "nginx" || *nginxBin != "" {
			targets = append(targets, t)
		}
	}
	all := map[string][]shapeResult{}
	key := func(t, c string) string { return t + "|" + c }
	for r := 1; r <= *runs; r++ {
		for _, c := range shapeCases {
			for _, t := range targets {
				if *only != "" && !strings.Contains(c.name+" "+t.name, *only) {
					continue
				}
				res, err := shapeOnce(dir, srcAddr, echoAddr, t, c, r)
				if err != nil {
					return err
				}
				all[key(t.name, c.name)] = append(all[key(t.name, c.name)], res)
			}
		}
	}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(all, "", "  ")
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	fmt.Printf("\nmedian of %d runs, %v per case, sluice's chunk and burst %d B; windows after the first second\n", *runs, *duration+time.Second, *shapeChunk)
	fmt.Printf("%-18s %-18s %9s %9s %8s %8s %9s %9s\n", "case", "proxy", "err %", "first/r", "minwin", "maxwin", "cpu s/GB", "sys s/GB")
	for _, c := range shapeCases {
		for _, t := range targets {
			rs := all[key(t.name, c.name)]
			if len(rs) == 0 {
				continue
			}
			m := func(f func(shapeResult) float64) float64 { return median(rs, f) }
			fmt.Printf("%-18s %-18s %+9.3f %9.3f %8.3f %8.3f %9.3f %9.3f\n", c.name, t.name,
				m(func(r shapeResult) float64 { return r.ErrPct }), m(func(r shapeResult) float64 { return r.First }),
				m(func(r shapeResult) float64 { return r.MinWin }), m(func(r shapeResult) float64 { return r.MaxWin }),
				m(func(r shapeResult) float64 { return r.CPUPerGB }), m(func(r shapeResult) float64 { return r.SysPerGB }))
		}
	}
	return nil
}

// shapeOnce is run r of case c with t on a fresh proxy process.
func shapeOnce(dir, srcAddr, echoAddr string, t shaperTarget, c shapeCase, r int) (shapeResult, error) {
	p, err := t.start(dir, srcAddr, echoAddr, c.rate)
	if err != nil {
		return shapeResult{}, fmt.Errorf("%s: %w", t.name, err)
	}
	res, err := measureShape(p.target, c)
	moves := coreMoves(p.target)
	p.stop()
	if err != nil {
		return res, fmt.Errorf("run %d, %s, %s: %w", r, c.name, t.name, err)
	}
	printShapeRun(r, c.name, t.name, res, moves)
	return res, nil
}

// printShapeRun prints one run's figures of a shaping case to stderr.
func printShapeRun(r int, caseName, proxy string, res shapeResult, moves string) {
	kwin := ""
	if res.KMinWin > 0 {
		kwin = fmt.Sprintf(" (kernel arrival %.3f..%.3f)", res.KMinWin, res.KMaxWin)
	}
	fmt.Fprintf(os.Stderr, "run %d %-18s %-18s err %+7.3f%% (fit %+.4f%%)  first %.3f  win %.3f..%.3f%s  cpu %.3f s/GB (sys %.3f)%s\n",
		r, caseName, proxy, res.ErrPct, res.FitErr, res.First, res.MinWin, res.MaxWin, kwin, res.CPUPerGB, res.SysPerGB, moves)
}

// shaperNamed returns the shaperTarget called name.
func shaperNamed(name string) shaperTarget {
	for _, t := range shaperTargets {
		if t.name == name {
			return t
		}
	}
	panic("no shaper target " + name)
}

// binWidth is the resolution of the arrival record.
const binWidth = 10 * time.Millisecond

// measureShape downloads through t on c.conns connections for 1 s plus
// -duration, binning arrivals per 10 ms from each connection's own dial:
// bytes that arrive while later connections are still being dialed count
// in their connection's first second.
func measureShape(t *target, c shapeCase) (shapeResult, error) {
	total := time.Second + *duration
	nbins := int(total/binWidth) + 1
	bins := make([][]int64, c.conns)
	kbins := make([][]int64, c.conns) // by the client kernel's arrival stamp (-stamps); nil: none
	reads := make([][]arrival, c.conns)
	conns := make([]net.Conn, c.conns)
	starts := make([]time.Time, c.conns) // each conn's clock starts at its own dial
	dial := t.dial
	if dial == nil {
		dial = dialClient
	}
	for i := range conns {
		var err error
		if conns[i], err = dial(t.sourceAddr); err != nil {
			return shapeResult{}, err
		}
		starts[i] = time.Now()
		bins[i] = make([]int64, nbins)
	}
	user0, sys0 := cpuTimes(t.pids())
	var wg sync.WaitGroup
	for i, conn := range conns {
		wg.Add(1)
		go func(b []int64, kb *[]int64, rs *[]arrival, conn net.Conn, start time.Time) {
			defer wg.Done()
			defer conn.Close()
			read, stamped := plainReader(conn), false
			if *arrivalStamps {
				read, stamped = stampedReader(conn)
			}
			buf := make([]byte, 256<<10)
			if stamped {
				buf = buf[:stampedRead]
				*kb = make([]int64, len(b))
			}
			conn.SetReadDeadline(start.Add(total))
			for {
				n, at, err := read(buf)
				now := time.Now()
				if k := int(now.Sub(start) / binWidth); k < len(b) {
					b[k] += int64(n)
				}
				if k := int(at.Sub(start) / binWidth); n > 0 && k >= 0 && k < len(*kb) {
					(*kb)[k] += int64(n)
				}
				if n > 0 {
					*rs = append(*rs, arrival{now, n})
				}
				if err != nil {
					return // the read deadline ends the case
				}
			}
		}(bins[i], &kbins[i], &reads[i], conn, starts[i])
	}
	wg.Wait()
	user1, sys1 := cpuTimes(t.pids())

	agg := make([]int64, nbins)
	var moved int64
	for _, b := range bins {
		for k, v := range b {
			agg[k] += v
			moved += v
		}
	}
	var res shapeResult
	rate := float64(c.rate) * float64(c.conns)
	res.First, res.ErrPct, res.MinWin, res.MaxWin = arrivalFigures(agg, rate, "windows")
	if kagg, ok := sumBins(kbins, nbins); ok {
		_, _, res.KMinWin, res.KMaxWin = arrivalFigures(kagg, rate, "windows (kernel arrival)")
	}
	// Steady from the last conn's first second to the first conn's end.
	res.FitErr = (fitRate(slices.Concat(reads...), starts[len(starts)-1].Add(time.Second), starts[0].Add(total))/rate - 1) * 100
	if moved > 0 {
		res.CPUPerGB = (user1 - user0 + sys1 - sys0) / (float64(moved) / 1e9)
		res.SysPerGB = (sys1 - sys0) / (float64(moved) / 1e9)
	}
	return res, nil
}

// An arrival is one read's bytes and when the read returned.
type arrival struct {
	at time.Time
	n  int
}

// fitRate is the slope, in bytes/s, of a least-squares line through the
// bytes received so far at each read in [from, to), rs in any order; 0
// with fewer than two reads. Shaped bytes arrive in grants, steps of 10 ms
// of the rate, so whole-window counts resolve a rate to one grant in the
// window (0.33% in 3 s at 10 MB/s); the slope through the steps does not
// depend on where a window cuts one, and resolves it to the jitter of
// their arrival times.
func fitRate(rs []arrival, from, to time.Time) float64 {
	slices.SortFunc(rs, func(a, b arrival) int { return a.at.Compare(b.at) })
	var n, sx, sy, sxx, sxy, y float64
	for _, r := range rs {
		if r.at.Before(from) || !r.at.Before(to) {
			continue
		}
		y += float64(r.n)
		x := r.at.Sub(from).Seconds()
		n++
		sx += x
		sy += y
		sxx += x * x
		sxy += x * y
	}
	if n < 2 {
		return 0
	}
	return (n*sxy - sx*sy) / (n*sxx - sx*sx)
}

// dialClient connects like a client on an Ethernet path: it advertises
// -client-mss, so the proxy sends it segments of at most that size. On
// loopback the MSS is otherwise about 64 KB, and a paced sender then sends
// each write as one segment, which no real client sees.
func dialClient(addr string) (net.Conn, error) {
	d := net.Dialer{}
	if mss := *clientMSS; mss > 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG, mss)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	return d.Dial("tcp", addr)
}

// arrivalFigures reads aggregate arrivals binned per binWidth from the
// start of a case (1 s warm-up, then -duration steady) against rate: bytes
// in the first second ÷ rate, the steady error in %, and the lowest and
// highest 100 ms window after the first second ÷ rate × 0.1 s.
func arrivalFigures(agg []int64, rate float64, label string) (first, errPct, minWin, maxWin float64) {
	perSec := int(time.Second / binWidth)
	sum := func(from, to int) (s int64) {
		for _, v := range agg[min(from, len(agg)):min(to, len(agg))] {
			s += v
		}
		return s
	}
	first = float64(sum(0, perSec)) / rate
	steadyBins := int(*duration / binWidth)
	errPct = (float64(sum(perSec, perSec+steadyBins))/(rate*duration.Seconds()) - 1) * 100
	per := int(100 * time.Millisecond / binWidth)
	minWin, maxWin = 1e9, 0
	var ws []string
	for k := perSec; k+per <= perSec+steadyBins; k += per {
		w := float64(sum(k, k+per)) / (rate * 0.1)
		minWin, maxWin = min(minWin, w), max(maxWin, w)
		ws = append(ws, fmt.Sprintf("%.3f", w))
	}
	if *windows {
		fmt.Fprintf(os.Stderr, "%s: %s\n", label, strings.Join(ws, " "))
	}
	return first, errPct, minWin, maxWin
}

// stampedRead is the most a read asks for when it is stamped with the
// kernel's arrival time: about one Ethernet segment, so that one read's
// bytes arrived together.
const stampedRead = 1448

// sumBins adds per-connection bins; ok is false if any connection has
// none (no arrival stamps).
func sumBins(bins [][]int64, n int) (agg []int64, ok bool) {
	agg = make([]int64, n)
	for _, b := range bins {
		if b == nil {
			return nil, false
		}
		for k, v := range b {
			agg[k] += v
		}
	}
	return agg, true
}
