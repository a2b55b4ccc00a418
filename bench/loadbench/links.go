package main

import (
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A linkCase is connections from one or more source addresses sharing one
// link's download budget.
type linkCase struct {
	name   string
	groups []linkGroup
	rate   int64  // the link's rate, bytes/s
	keyBy  string // keys.by
	chunk  int    // the listener's chunk; 0 = default (8 KiB)
}

type linkGroup struct {
	local string // source address
	conns int
}

// linkResult holds one case's figures.
type linkResult struct {
	ErrPct   float64   // aggregate steady rate vs the link, %
	FitErr   float64   // the same from a least-squares fit of bytes over time (fitRate), %
	Jain     float64   // Jain's fairness index over connections (steady phase)
	First    float64   // bytes in the first second ÷ rate
	MinWin   float64   // lowest 100 ms window after the first second ÷ rate×0.1 s
	MaxWin   float64   // highest
	CPUPerGB float64   // proxy CPU seconds per GB
	SysPerGB float64   // the system-time part of CPUPerGB
	Groups   []float64 // each group's share of the steady bytes
	RSSKiB   float64   // proxy RSS per connection, KiB
	GrantErr float64   // bytes sluice's link granted in the steady phase vs the rate, %
	Cores    float64   // cores the proxy used during the measurement
	GenCores float64   // cores this load generator (clients and backends) used
}

func linkCases() []linkCase {
	cs := []linkCase{
		{"50 conns share 50 MB/s", []linkGroup{{"127.0.0.1", 50}}, 50_000_000, "none", 0},
		{"50 conns, chunk 32KiB", []linkGroup{{"127.0.0.1", 50}}, 50_000_000, "none", 32 << 10},
		{"keys: 1 vs 10 conns", []linkGroup{{"127.0.0.2", 1}, {"127.0.0.3", 10}}, 20_000_000, "source_ip", 0},
	}
	if *linkScale > 0 {
		cs = append(cs, linkCase{fmt.Sprintf("%d conns share 100 MB/s", *linkScale), []linkGroup{{"127.0.0.1", *linkScale}}, 100_000_000, "none", 0})
	}
	return cs
}

func runLinks(dir, srcAddr, echoAddr string) error {
	all := map[string][]linkResult{}
	// Every run of the small cases first, then the scale case's, so that
	// no small case follows 9,000 connections winding down (in one
	// -runs 3, 50 connections measured 1.31 s/GB before the first scale
	// case and 1.76 and 1.78 after one, with 100 ms windows down to 0.78).
	type job struct {
		r int
		c linkCase
	}
	var jobs, scale []job
	for r := 1; r <= *runs; r++ {
		for _, c := range linkCases() {
			if *only != "" && !strings.Contains(c.name, *only) {
				continue
			}
			if c.groups[0].conns > 1000 {
				scale = append(scale, job{r, c})
			} else {
				jobs = append(jobs, job{r, c})
			}
		}
	}
	for _, j := range append(jobs, scale...) {
		r, c := j.r, j.c
		res, err := linkOnce(dir, srcAddr, echoAddr, c, r)
		if err != nil {
			return err
		}
		all[c.name] = append(all[c.name], res)
	}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(all, "", "  ")
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	fmt.Printf("\nsluice links, median of %d runs, 1 s warm-up + %v steady per case; windows after the first second\n", *runs, *duration)
	fmt.Printf("%-26s %8s %9s %8s %8s %8s %9s %9s %9s  %s\n", "case", "err %", "jain", "first/r", "minwin", "maxwin", "cpu s/GB", "sys s/GB", "KiB/conn", "group shares")
	for _, c := range linkCases() {
		rs := all[c.name]
		if len(rs) == 0 {
			continue
		}
		m := func(f func(linkResult) float64) float64 { return median(rs, f) }
		var shares []float64
		for g := range c.groups {
			shares = append(shares, m(func(r linkResult) float64 { return r.Groups[g] }))
		}
		fmt.Printf("%-26s %+8.3f %9.5f %8.3f %8.3f %8.3f %9.3f %9.3f %9.2f  %.3f\n", c.name,
			m(func(r linkResult) float64 { return r.ErrPct }), m(func(r linkResult) float64 { return r.Jain }),
			m(func(r linkResult) float64 { return r.First }), m(func(r linkResult) float64 { return r.MinWin }),
			m(func(r linkResult) float64 { return r.MaxWin }), m(func(r linkResult) float64 { return r.CPUPerGB }),
			m(func(r linkResult) float64 { return r.SysPerGB }), m(func(r linkResult) float64 { return r.RSSKiB }), shares)
	}
	return nil
}

// linkOnce is run r of case c on a fresh sluice.
func linkOnce(dir, srcAddr, echoAddr string, c linkCase, r int) (linkResult, error) {
	// The last case's garbage (9,000 connections' buffers) is not
	// collected during this one, and its connections wind down.
	runtime.GC()
	time.Sleep(3 * time.Second)
	top := fmt.Sprintf(`links: {line: {down: {rate: "%dB/s"}, keys: {by: %s}}}`, c.rate, c.keyBy)
	opts := "links: [line]"
	if c.chunk > 0 {
		opts += fmt.Sprintf(", chunk: %d", c.chunk)
	}
	p, err := startSluiceTop(dir, srcAddr, echoAddr, opts, top)
	if err != nil {
		return linkResult{}, err
	}
	res, err := measureLink(p.target, c)
	moves := coreMoves(p.target)
	p.stop()
	if err != nil {
		return res, fmt.Errorf("run %d, %s: %w", r, c.name, err)
	}
	fmt.Fprintf(os.Stderr, "run %d %-26s err %+7.3f%% (fit %+.4f%%)  jain %.5f  first %.3f  win %.3f..%.3f  cpu %.3f s/GB (sys %.3f)  groups %.3f  rss %.2f KiB/conn  granted %+.3f%%  cores: sluice %.2f, generator %.2f%s\n",
		r, c.name, res.ErrPct, res.FitErr, res.Jain, res.First, res.MinWin, res.MaxWin, res.CPUPerGB, res.SysPerGB, res.Groups, res.RSSKiB, res.GrantErr, res.Cores, res.GenCores, moves)
	return res, nil
}

// linkCaseNamed returns the link case whose name starts with prefix.
func linkCaseNamed(prefix string) linkCase {
	for _, c := range linkCases() {
		if strings.HasPrefix(c.name, prefix) {
			return c
		}
	}
	panic("no link case " + prefix)
}

// measureLink opens the case's connections, each read from the moment it
// is open, and measures for 1 s plus -duration from the moment all are
// open; bytes read before that are not counted.
func measureLink(t *target, c linkCase) (linkResult, error) {
	rss0 := rssKiB(t.pids())
	total := time.Second + *duration
	nbins := int(total/binWidth) + 1
	bins := make([]atomic.Int64, nbins)
	var startNs atomic.Int64 // 0 until every conn is open
	var conns []net.Conn
	var group []int
	var perConn []*atomic.Int64 // steady-phase bytes
	var reads []*[]arrival      // each conn's reads in the measurement
	var wg sync.WaitGroup
	defer func() {
		for _, cn := range conns {
			cn.Close()
		}
		wg.Wait()
	}()
	for g, gr := range c.groups {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(gr.local)}}
		for range gr.conns {
			cn, err := d.Dial("tcp", t.sourceAddr)
			if err != nil {
				return linkResult{}, fmt.Errorf("dial %d: %w", len(conns), err)
			}
			conns = append(conns, cn)
			group = append(group, g)
			mine := new(atomic.Int64)
			perConn = append(perConn, mine)
			rs := new([]arrival)
			reads = append(reads, rs)
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 16<<10)
				for {
					n, err := cn.Read(buf)
					if s := startNs.Load(); s != 0 {
						now := time.Now()
						el := time.Duration(now.UnixNano() - s)
						if el >= total {
							return
						}
						if n > 0 {
							*rs = append(*rs, arrival{now, n})
						}
						if k := int(el / binWidth); k < nbins {
							bins[k].Add(int64(n))
						}
						if el >= time.Second {
							mine.Add(int64(n))
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}
	user0, sys0 := cpuTimes(t.pids())
	gen0 := cpuSeconds([]int{os.Getpid()})
	start := time.Now()
	startNs.Store(start.UnixNano())
	time.Sleep(time.Second)
	g0 := linkGranted(t.adminAddr)
	time.Sleep(total/2 - time.Second)
	rss1 := rssKiB(t.pids()) // every connection open and moving
	time.Sleep(time.Until(start.Add(total)))
	g1 := linkGranted(t.adminAddr)
	user1, sys1 := cpuTimes(t.pids())
	gen1 := cpuSeconds([]int{os.Getpid()})
	cpu0, cpu1 := user0+sys0, user1+sys1
	for _, cn := range conns {
		cn.SetReadDeadline(time.Now()) // end the readers
	}
	wg.Wait()

	agg := make([]int64, nbins)
	var moved int64
	for k := range bins {
		agg[k] = bins[k].Load()
		moved += agg[k]
	}
	var res linkResult
	res.First, res.ErrPct, res.MinWin, res.MaxWin = arrivalFigures(agg, float64(c.rate), "windows")
	var all []arrival
	for _, rs := range reads {
		all = append(all, *rs...)
	}
	res.FitErr = (fitRate(all, start.Add(time.Second), start.Add(total))/float64(c.rate) - 1) * 100
	var s, s2, steady float64
	groups := make([]float64, len(c.groups))
	for i, pc := range perConn {
		x := float64(pc.Load())
		s += x
		s2 += x * x
		groups[group[i]] += x
		steady += x
	}
	if s2 > 0 {
		res.Jain = s * s / (float64(len(perConn)) * s2)
	}
	for g := range groups {
		groups[g] /= math.Max(steady, 1)
	}
	res.Groups = groups
	if moved > 0 {
		res.CPUPerGB = (cpu1 - cpu0) / (float64(moved) / 1e9)
		res.SysPerGB = (sys1 - sys0) / (float64(moved) / 1e9)
	}
	res.RSSKiB = float64(rss1-rss0) / float64(len(conns))
	res.Cores = (cpu1 - cpu0) / total.Seconds()
	if g0 >= 0 && g1 >= 0 {
		res.GrantErr = (float64(g1-g0)/(float64(c.rate)*duration.Seconds()) - 1) * 100
	}
	res.GenCores = (gen1 - gen0) / total.Seconds()
	return res, nil
}

// linkGranted returns the bytes sluice's link "line" has granted down, from
// its admin API, or -1.
func linkGranted(admin string) int64 {
	if admin == "" {
		return -1
	}
	resp, err := http.Get("http://" + admin + "/v1/links/line?limit=1")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var l struct {
		Down struct {
			Bytes int64 `json:"bytes"`
		} `json:"down"`
	}
	if json.NewDecoder(resp.Body).Decode(&l) != nil {
		return -1
	}
	return l.Down.Bytes
}
