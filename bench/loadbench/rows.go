package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// The rows mode prints the goals table: sluice against nginx's
// stream proxy and HAProxy 2.6, one row a goal, from the measurements of
// the other modes (core, -shape, -links) and two of its own: kernel
// pacing on a veth pair between network namespaces, and how fast
// cores: auto reaches every core. The shaped loopback rows also show the
// ideal loop on one core ("Go floor"): what a minimal Go shaper pays for
// the same grants here, beside the goal, which stays sluice against nginx.
// The latency rows show the floor relay there (floorrelay.go): what one
// thread that only reads and writes adds to a round trip here.

// rowIdleConns is the idle measurement's size in -rows unless -idle is set.
const rowIdleConns = 9900

var steadyDuration = flag.Duration("steady", 20*time.Second, "-rows: steady phase of the rows that state an error (1 conn @ 10 MB/s, the shared link), after 1 s: a shaped rate wanders by a part of a grant, so 0.01% needs tens of seconds")

// rowsRaw holds every run's figures, by measurement, and the table.
type rowsRaw struct {
	Setup map[string]string        `json:"setup"`
	Core  map[string][]result      `json:"core"`  // by target
	Shape map[string][]shapeResult `json:"shape"` // by "proxy|case"
	Link  []linkResult             `json:"link"`  // 50 conns share 50 MB/s, for -steady
	// Steady is 1 conn @ 10 MB/s for -steady, by proxy.
	Steady map[string][]shapeResult `json:"steady"`
	Veth   map[string][]shapeResult `json:"veth"`  // by proxy
	Cores  map[string][]coresResult `json:"cores"` // by "cores 16", "cores 1"
	// Latency is the latency rows' runs, by target (latency.go).
	Latency map[string][]latResult `json:"latency"`
	Rows    []rowLine              `json:"rows"`
	Took    map[string]float64     `json:"took_s"` // each measurement's wall time over all runs, s
}

// rowLine is one printed row.
type rowLine struct {
	Row     string `json:"row"`
	Nginx   string `json:"nginx"`
	HAProxy string `json:"haproxy"`
	Sluice  string `json:"sluice"`
	Floor   string `json:"go_floor"` // the ideal loop's, GOMAXPROCS=1; n/a where not measured
	Ratio   string `json:"ratio"`
	Goal    string `json:"goal"`
	Met     string `json:"met"`
}

// A row is one line of the table: what it needs measured (groups: "core",
// "shape:<case>", "link", "veth", "cores 16", "cores 1") and how to read it.
type row struct {
	name  string
	goal  string
	needs []string
	eval  func(d *rowsRaw) rowLine
}

// Shaping measurements, as in -shape.
const (
	shape1   = "1 conn @ 1 MB/s"
	shape10  = "1 conn @ 10 MB/s"
	shape100 = "1 conn @ 100 MB/s"
	shape50  = "50 conns @ 1 MB/s"
)

const (
	na      = "n/a" // the proxy cannot do it
	notRun  = "-"   // not measured
	vethRow = "veth"
)

func goalRows(idleN int) []row {
	lat := func(q string, f func(latResult) float64) row {
		return row{
			name:  "added round trip " + q + ", 64 B ping-pong (µs over direct)",
			goal:  "≤ 0.8 × nginx",
			needs: []string{"latency"},
			eval: func(d *rowsRaw) rowLine {
				added := func(name string) float64 {
					return medianPaired(d.Latency[name], d.Latency["direct"], func(t, dr latResult) float64 { return f(t) - f(dr) })
				}
				n, h, s, fl := added("nginx"), added("haproxy"), added("sluice"), added(floorRelayName)
				return rowLine{Nginx: fnum(n, 1), HAProxy: fnum(h, 1), Sluice: fnum(s, 1), Floor: fnum(fl, 1), Ratio: fratio(s / n), Met: met(s <= 0.8*n, n, s)}
			},
		}
	}
	cpu := func(c string, k float64) row {
		return row{
			name:  "CPU per GB, " + c + " shaped (s/GB)",
			goal:  fmt.Sprintf("≤ %.1f × nginx", k),
			needs: []string{"shape:" + c},
			eval: func(d *rowsRaw) rowLine {
				f := func(r shapeResult) float64 { return r.CPUPerGB }
				n, s := medianOf(d.Shape["nginx|"+c], f), medianOf(d.Shape["sluice pacing on|"+c], f)
				fl := medianOf(d.Shape[idealLoop+"|"+c], f)
				return rowLine{Nginx: fnum(n, 3), HAProxy: na, Sluice: fnum(s, 3), Floor: fnum(fl, 3), Ratio: fratio(s / n), Met: met(s <= k*n, n, s)}
			},
		}
	}
	win := func(c string, lo, hi float64) row {
		return row{
			name:  "100 ms windows, " + c + " (÷ rate, min–max)",
			goal:  fmt.Sprintf("%.2f–%.2f", lo, hi),
			needs: []string{"shape:" + c},
			eval: func(d *rowsRaw) rowLine {
				nlo, nhi := windowsOf(d.Shape["nginx|"+c])
				slo, shi := windowsOf(d.Shape["sluice pacing on|"+c])
				return rowLine{Nginx: fwin(nlo, nhi), HAProxy: na, Sluice: fwin(slo, shi), Floor: fwin(windowsOf(d.Shape[idealLoop+"|"+c])),
					Ratio: fwin(slo, shi), Met: met(slo >= lo && shi <= hi, slo, shi)}
			},
		}
	}
	reach := func(streams int) row {
		key := fmt.Sprintf("cores %d", streams)
		return row{
			name:  fmt.Sprintf("cores: auto reaches every core, %d unshaped stream%s (s)", streams, plural(streams)),
			goal:  "≤ 0.3 s",
			needs: []string{key},
			eval: func(d *rowsRaw) rowLine {
				rs := d.Cores[key]
				s := medianOf(rs, func(r coresResult) float64 {
					if r.ReachS < 0 || r.Cores < r.CPUs {
						return math.Inf(1)
					}
					return r.ReachS
				})
				cell := fnum(s, 3)
				if math.IsInf(s, 1) {
					cell = "not in " + coresWait.String()
				}
				return rowLine{Nginx: na, HAProxy: na, Sluice: cell, Ratio: cell, Met: met(s <= 0.3, s)}
			},
		}
	}
	unshaped := func(streams int, k float64, f func(result) float64) row {
		return row{
			name:  fmt.Sprintf("unshaped throughput, %d stream%s (MB/s, × direct)", streams, plural(streams)),
			goal:  fmt.Sprintf("≥ %.2f × direct", k),
			needs: []string{"core"},
			eval: func(d *rowsRaw) rowLine {
				x := func(name string) float64 {
					return medianPaired(d.Core[name], d.Core["direct"], func(t, dr result) float64 { return f(t) / f(dr) })
				}
				cell := func(name string) string {
					v := medianOf(d.Core[name], f)
					if math.IsNaN(v) {
						return notRun
					}
					return fmt.Sprintf("%.0f (%.2f×)", v, x(name))
				}
				s := x("sluice")
				return rowLine{Nginx: cell("nginx"), HAProxy: cell("haproxy"), Sluice: cell("sluice"),
					Ratio: fratio(s), Met: met(s >= k, s)}
			},
		}
	}
	return []row{
		lat("p50", func(r latResult) float64 { return r.P50us }),
		lat("p99", func(r latResult) float64 { return r.P99us }),
		{
			name:  fmt.Sprintf("memory per idle connection (KiB RSS, %d idle)", idleN),
			goal:  "≤ 0.9 × HAProxy, 0 failures",
			needs: []string{"core"},
			eval: func(d *rowsRaw) rowLine {
				f := func(r result) float64 { return r.IdleRSSKiB }
				failed := func(name string) int {
					n := 0
					for _, r := range d.Core[name] {
						n += r.IdleFailed
					}
					return n
				}
				cell := func(name string) string {
					v := medianOf(d.Core[name], f)
					if math.IsNaN(v) {
						return notRun
					}
					return fmt.Sprintf("%.2f, %d failed", v, failed(name))
				}
				h, s := medianOf(d.Core["haproxy"], f), medianOf(d.Core["sluice"], f)
				return rowLine{Nginx: cell("nginx"), HAProxy: cell("haproxy"), Sluice: cell("sluice"),
					Ratio: fratio(s / h), Met: met(s <= 0.9*h && failed("sluice") == 0, h, s)}
			},
		},
		cpu(shape1, 1),
		cpu(shape50, 0.8),
		cpu(shape10, 0.7),
		cpu(shape100, 0.7),
		win(shape1, 0.95, 1.05),
		win(shape10, 0.95, 1.05),
		win(shape50, 0.90, 1.10),
		{
			name:  "steady rate error, " + shape10 + " (%, fit)",
			goal:  "≤ 0.01 %",
			needs: []string{"steady"},
			eval: func(d *rowsRaw) rowLine {
				f := func(r shapeResult) float64 { return r.FitErr }
				n, s := medianOf(d.Steady["nginx"], f), medianOf(d.Steady["sluice pacing on"], f)
				return rowLine{Nginx: fsigned(n), HAProxy: na, Sluice: fsigned(s), Ratio: fsigned(s), Met: met(math.Abs(s) <= 0.01, s)}
			},
		},
		{
			name:  "shared 50 MB/s link, 50 conns, aggregate error (%, fit)",
			goal:  "≤ 0.015 %",
			needs: []string{"link"},
			eval: func(d *rowsRaw) rowLine {
				s := medianOf(d.Link, func(r linkResult) float64 { return r.FitErr })
				return rowLine{Nginx: na, HAProxy: na, Sluice: fsigned(s), Ratio: fsigned(s), Met: met(math.Abs(s) <= 0.015, s)}
			},
		},
		{
			name:  "veth kernel pacing, 1 conn @ 1 MB/s: 100 ms windows (÷ rate, min–max)",
			goal:  "0.98–1.02",
			needs: []string{vethRow},
			eval: func(d *rowsRaw) rowLine {
				nlo, nhi := windowsOf(d.Veth["nginx"])
				slo, shi := windowsOf(d.Veth["sluice"])
				return rowLine{Nginx: fwin(nlo, nhi), HAProxy: na, Sluice: fwin(slo, shi), Ratio: fwin(slo, shi), Met: met(slo >= 0.98 && shi <= 1.02, slo, shi)}
			},
		},
		{
			name:  "veth kernel pacing, 1 conn @ 1 MB/s: CPU per GB (s/GB)",
			goal:  "≤ 1.0 × nginx",
			needs: []string{vethRow},
			eval: func(d *rowsRaw) rowLine {
				f := func(r shapeResult) float64 { return r.CPUPerGB }
				n, s := medianOf(d.Veth["nginx"], f), medianOf(d.Veth["sluice"], f)
				return rowLine{Nginx: fnum(n, 3), HAProxy: na, Sluice: fnum(s, 3), Ratio: fratio(s / n), Met: met(s <= n, n, s)}
			},
		},
		{
			name:  "veth kernel pacing, 1 conn @ 1 MB/s: steady error (%, fit)",
			goal:  "report",
			needs: []string{vethRow},
			eval: func(d *rowsRaw) rowLine {
				f := func(r shapeResult) float64 { return r.FitErr }
				n, s := medianOf(d.Veth["nginx"], f), medianOf(d.Veth["sluice"], f)
				return rowLine{Nginx: fsigned(n), HAProxy: na, Sluice: fsigned(s), Ratio: fsigned(s), Met: notRun}
			},
		},
		reach(16),
		reach(1),
		unshaped(1, 0.69, func(r result) float64 { return r.Stream1MBps }),
		unshaped(16, 0.61, func(r result) float64 { return r.Stream16MBs }),
	}
}

func runRows(dir, srcAddr, echoAddr string) error {
	idleN := rowIdleConns
	flag.Visit(func(f *flag.Flag) {
		if f.Name == "idle" {
			idleN = *idleConns
		}
	})
	var rows []row
	needs := map[string]bool{}
	for _, r := range goalRows(idleN) {
		if *only != "" && !strings.Contains(strings.ToLower(r.name), strings.ToLower(*only)) {
			continue
		}
		rows = append(rows, r)
		for _, n := range r.needs {
			needs[n] = true
		}
	}
	if len(rows) == 0 {
		return fmt.Errorf("-only %q matches no row", *only)
	}
	d := &rowsRaw{
		Setup: map[string]string{"cpus": fmt.Sprint(runtime.NumCPU()), "kernel": kernelRelease(),
			"nginx": versionOf(*nginxBin, "-v"), "haproxy": versionOf(*haproxyBin, "-v"),
			"duration": duration.String(), "steady": steadyDuration.String(), "runs": fmt.Sprint(*runs),
			"go_floor": idealLoop + ", GOMAXPROCS=1; latency rows: " + floorRelayName + ", one thread, its own epoll"},
		Core: map[string][]result{}, Shape: map[string][]shapeResult{}, Steady: map[string][]shapeResult{},
		Veth: map[string][]shapeResult{}, Cores: map[string][]coresResult{},
		Latency: map[string][]latResult{}, Took: map[string]float64{},
	}
	began := time.Now()

	var veth *vethPath
	var vethSrc, vethEcho net.Listener
	vethSkip := ""
	if needs[vethRow] {
		err := canNetns()
		if err == nil {
			veth, err = newVethPath()
		}
		if err == nil {
			defer veth.close()
			d.Setup["veth"] = veth.setup
			if vethSrc, err = veth.listenBackend(serveSource); err == nil {
				defer vethSrc.Close()
				if vethEcho, err = veth.listenBackend(serveEcho); err == nil {
					defer vethEcho.Close()
				}
			}
		}
		if err != nil {
			vethSkip = "skipped: " + err.Error()
			d.Setup["veth"] = vethSkip
			fmt.Fprintln(os.Stderr, "loadbench: the veth rows are", vethSkip)
		}
	}

	timed := func(what string, f func() error) error {
		t0 := time.Now()
		err := f()
		d.Took[what] += time.Since(t0).Seconds()
		return err
	}
	direct := &target{name: "direct", sourceAddr: srcAddr, echoAddr: echoAddr, pids: func() []int { return nil }}
	var shapers []shaperTarget
	if *nginxBin != "" {
		shapers = append(shapers, shaperNamed("nginx"))
	}
	shapers = append(shapers, shaperNamed("sluice pacing on"))
	// The shaped cases also run the ideal loop, on one core as sluice's
	// cores: auto keeps them; -proxy-procs still sets sluice's GOMAXPROCS.
	shaped := append(slices.Clone(shapers), shaperTarget{idealLoop, func(_, src, echo string, rate int64) (*proxyProc, error) {
		return startIdeal(src, echo, rate, envProcs(1))
	}})
	for r := 1; r <= *runs; r++ {
		for _, streams := range []int{16, 1} {
			key := fmt.Sprintf("cores %d", streams)
			if !needs[key] {
				continue
			}
			if err := timed(key, func() error {
				res, err := coresOnce(dir, srcAddr, echoAddr, streams, r)
				if err == nil {
					d.Cores[key] = append(d.Cores[key], res)
				}
				return err
			}); err != nil {
				return err
			}
		}
		if needs["core"] {
			if err := timed("core", func() error {
				_, err := coreRun(r, direct, coreStarters(dir, srcAddr, echoAddr), idleN, d.Core)
				return err
			}); err != nil {
				return err
			}
		}
		if needs["latency"] {
			if err := timed("latency", func() error {
				res, err := latencyOnce(dir, srcAddr, echoAddr, r)
				for name, l := range res {
					d.Latency[name] = append(d.Latency[name], l)
				}
				return err
			}); err != nil {
				return err
			}
		}
		for _, c := range shapeCases {
			if !needs["shape:"+c.name] {
				continue
			}
			for _, t := range shaped {
				if err := timed("shape:"+c.name, func() error {
					res, err := shapeOnce(dir, srcAddr, echoAddr, t, c, r)
					if err == nil {
						d.Shape[t.name+"|"+c.name] = append(d.Shape[t.name+"|"+c.name], res)
					}
					return err
				}); err != nil {
					return err
				}
			}
		}
		if needs["steady"] {
			for _, t := range shapers {
				if err := timed("steady", func() error {
					return withDuration(*steadyDuration, func() error {
						res, err := shapeOnce(dir, srcAddr, echoAddr, t, shapeCase{shape10 + " steady", 1, 10_000_000}, r)
						if err == nil {
							d.Steady[t.name] = append(d.Steady[t.name], res)
						}
						return err
					})
				}); err != nil {
					return err
				}
			}
		}
		if needs["link"] {
			if err := timed("link", func() error {
				return withDuration(*steadyDuration, func() error {
					res, err := linkOnce(dir, srcAddr, echoAddr, linkCaseNamed("50 conns share 50 MB/s"), r)
					if err == nil {
						d.Link = append(d.Link, res)
					}
					return err
				})
			}); err != nil {
				return err
			}
		}
		if veth != nil {
			for _, proxy := range []string{"nginx", "sluice"} {
				if proxy == "nginx" && *nginxBin == "" {
					continue
				}
				if err := timed(vethRow, func() error {
					res, err := vethOnce(dir, veth, vethSrc.Addr().String(), vethEcho.Addr().String(), proxy, r)
					if err == nil {
						d.Veth[proxy] = append(d.Veth[proxy], res)
					}
					return err
				}); err != nil {
					return err
				}
			}
		}
	}

	for _, r := range rows {
		var l rowLine
		if slices.Contains(r.needs, vethRow) && vethSkip != "" {
			l = rowLine{Nginx: notRun, HAProxy: notRun, Sluice: vethSkip, Ratio: notRun, Met: "skipped"}
		} else {
			l = r.eval(d)
		}
		l.Row, l.Goal = r.name, r.goal
		if l.Floor == "" {
			l.Floor = na
		}
		d.Rows = append(d.Rows, l)
	}
	if *jsonOut != "" {
		b, err := json.MarshalIndent(d, "", "  ")
		if err != nil {
			return fmt.Errorf("rows json: %w", err)
		}
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	fmt.Printf("\ngoal rows: median of %d runs, on %d cores (kernel %s); nginx %s, HAProxy %s\n",
		*runs, runtime.NumCPU(), d.Setup["kernel"], d.Setup["nginx"], d.Setup["haproxy"])
	fmt.Printf("unshaped: %v per figure after 0.25 s, %d pings, %d idle conns; shaped: 1 s + %v per case (the error rows 1 s + %v), windows after the first second\n",
		*duration, *pings, idleN, *duration, *steadyDuration)
	for k := range d.Shape {
		if strings.HasPrefix(k, idealLoop+"|") {
			fmt.Println("Go floor: the ideal loop (one goroutine, one ticker, sluice's grants) with GOMAXPROCS=1, on the shaped loopback cases")
			break
		}
	}
	if len(d.Latency) > 0 {
		fmt.Printf("latency: every target at once, %d pings each in %d interleaved rounds; Go floor: the floor relay (one thread, its own epoll, a read and a write a message)\n", *pings, *latRounds)
		for _, ref := range []struct{ name, what string }{
			{pollerRelayName, "the floor relay waiting in Go's poller instead"},
			{goRelayName, "a Go relay (two goroutines a connection, Go's poller)"},
			{kernelRelayName, "the kernel relay (BPF sockhash, stream verdict; CPU: the relay's and every kworker's)"},
		} {
			g := d.Latency[ref.name]
			if len(g) == 0 {
				continue
			}
			added := func(f func(latResult) float64) float64 {
				return medianPaired(g, d.Latency["direct"], func(t, dr latResult) float64 { return f(t) - f(dr) })
			}
			fmt.Printf("latency: %s added p50 %.1f µs, p99 %.1f µs; CPU %.1f µs a round trip\n", ref.what,
				added(func(r latResult) float64 { return r.P50us }), added(func(r latResult) float64 { return r.P99us }),
				medianOf(g, func(r latResult) float64 { return r.CPUus }))
		}
	}
	if v := d.Setup["veth"]; v != "" {
		fmt.Printf("veth: %s\n", v)
	}
	printRows(d.Rows)
	fmt.Printf("took %v\n", time.Since(began).Round(time.Second))
	return nil
}

// withDuration runs f with -duration set to d: the measurements read it
// for their steady phase.
func withDuration(d time.Duration, f func() error) error {
	defer func(old time.Duration) { *duration = old }(*duration)
	*duration = d
	return f()
}

// vethOnce is run r of one connection at 1 MB/s through proxy ("sluice",
// kernel pacing on, or "nginx") on the veth path: the proxy and the
// backends on the server's end, the client on the other.
func vethOnce(dir string, v *vethPath, srcAddr, echoAddr, proxy string, r int) (shapeResult, error) {
	c := shapeCase{"veth 1 conn @ 1 MB/s", 1, 1_000_000}
	var p *proxyProc
	var err error
	if proxy == "sluice" {
		p, err = startSluiceSpec(dir, srcAddr, echoAddr, sluiceSpec{srcOpts: sluiceShapeOpts(c.rate, true),
			netns: v.server, listen: v.addrs(), dial: v.dial})
	} else {
		p, err = startNginxSpec(dir, srcAddr, echoAddr, nginxSpec{srcDirectives: nginxShapeDirectives(c.rate),
			netns: v.server, listen: v.addrs(), dial: v.dial})
	}
	if err != nil {
		return shapeResult{}, fmt.Errorf("veth, %s: %w", proxy, err)
	}
	res, err := measureShape(p.target, c)
	p.stop()
	if err != nil {
		return res, fmt.Errorf("run %d, veth, %s: %w", r, proxy, err)
	}
	printShapeRun(r, c.name, proxy, res, "")
	return res, nil
}

// printRows prints the table with columns as wide as their widest cell.
func printRows(rows []rowLine) {
	head := rowLine{"row", "nginx", "HAProxy 2.6", "sluice", "Go floor", "ratio", "goal", "met"}
	cells := func(l rowLine) []string {
		return []string{l.Row, l.Nginx, l.HAProxy, l.Sluice, l.Floor, l.Ratio, l.Goal, l.Met}
	}
	width := make([]int, len(cells(head)))
	for _, l := range append([]rowLine{head}, rows...) {
		for i, c := range cells(l) {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	for _, l := range append([]rowLine{head}, rows...) {
		var b strings.Builder
		for i, c := range cells(l) {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if i == 0 {
				b.WriteString(c + pad)
			} else {
				b.WriteString("  " + pad + c)
			}
		}
		fmt.Println(b.String())
	}
}

// medianOf is median, NaN for no runs.
func medianOf[R any](rs []R, f func(R) float64) float64 {
	if len(rs) == 0 {
		return math.NaN()
	}
	return median(rs, f)
}

// medianPaired is the median over runs of f(a[i], b[i]): a figure against
// another measured in the same run (direct).
func medianPaired[R any](a, b []R, f func(R, R) float64) float64 {
	if len(a) == 0 || len(a) != len(b) {
		return math.NaN()
	}
	v := make([]float64, len(a))
	for i := range a {
		v[i] = f(a[i], b[i])
	}
	return median(v, func(x float64) float64 { return x })
}

// windowsOf is the median of the runs' lowest and of their highest windows.
func windowsOf(rs []shapeResult) (lo, hi float64) {
	return medianOf(rs, func(r shapeResult) float64 { return r.MinWin }), medianOf(rs, func(r shapeResult) float64 { return r.MaxWin })
}

// met says whether a goal is met, or "-" if a figure it needs is missing.
func met(ok bool, figures ...float64) string {
	for _, f := range figures {
		if math.IsNaN(f) {
			return notRun
		}
	}
	if ok {
		return "yes"
	}
	return "NO"
}

func fnum(v float64, prec int) string {
	if math.IsNaN(v) {
		return notRun
	}
	return fmt.Sprintf("%.*f", prec, v)
}

func fsigned(v float64) string {
	if math.IsNaN(v) {
		return notRun
	}
	return fmt.Sprintf("%+.4f", v)
}

func fratio(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return notRun
	}
	return fmt.Sprintf("%.2f×", v)
}

func fwin(lo, hi float64) string {
	if math.IsNaN(lo) || math.IsNaN(hi) {
		return notRun
	}
	return fmt.Sprintf("%.3f–%.3f", lo, hi)
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// versionOf is the first line bin prints for arg (nginx -v prints on
// stderr), "-" if there is no bin.
func versionOf(bin, arg string) string {
	if bin == "" {
		return notRun
	}
	out, err := exec.Command(bin, arg).CombinedOutput()
	if err != nil && len(out) == 0 {
		return notRun
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	line = strings.TrimPrefix(line, "nginx version: nginx/")
	line = strings.TrimPrefix(line, "HAProxy version ")
	v, _, _ := strings.Cut(line, " ")
	return v
}

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}
