package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

var (
	clusterMode   = flag.Bool("cluster", false, "measure three sluice instances sharing one link through Redis (needs redis-server)")
	redisBin      = flag.String("redis", "redis-server", "-cluster: redis-server binary")
	clusterOutage = flag.Duration("cluster-outage", 10*time.Second, "-cluster: how long Redis is down (SIGKILL, then a restart) mid-transfer")
)

// The cluster case: three instances, one 30 MB/s line, 10 + 5 + 1
// connections.
const clusterLine = 30_000_000

var clusterConns = []int{10, 5, 1}

// clusterResult holds one run's figures.
type clusterResult struct {
	ErrPct      float64   // steady aggregate vs the line, %
	MinWin      float64   // lowest 100 ms window of the aggregate ÷ line×0.1 s (steady)
	MaxWin      float64   // highest
	Jain        float64   // over the 16 connections (steady)
	Instances   []float64 // each instance's part of the steady bytes
	CallsPerSec float64   // Redis commands per second per instance (INFO commandstats, steady)
	OutageRatio float64   // aggregate over the outage ÷ line
	OutageMax   float64   // highest 100 ms window during the outage ÷ line×0.1 s
	Broken      int       // connections that ended before the measurement did
	ResumeSec   float64   // from Redis's restart to every instance leased again
	AfterPct    float64   // aggregate in the 3 s after the restart vs the line, %
}

// runCluster measures the cluster case -runs times, then, once, the same
// load through three sluice instances without a cluster and through
// three nginx instances, which have no shared budget.
func runCluster(dir, srcAddr, echoAddr string) error {
	if _, err := exec.LookPath(*redisBin); err != nil {
		return fmt.Errorf("-cluster needs redis-server (apt-get install redis-server): %w", err)
	}
	var all []clusterResult
	for r := 1; r <= *runs; r++ {
		res, err := clusterRun(dir, srcAddr, echoAddr)
		if err != nil {
			return fmt.Errorf("run %d: %w", r, err)
		}
		fmt.Fprintf(os.Stderr, "run %d cluster: err %+.3f%%  win %.3f..%.3f  jain %.5f  instances %.3f  redis %.1f calls/s/instance  outage %.4f (max win %.3f)  broken %d  resumed %.2fs  after %+.3f%%\n",
			r, res.ErrPct, res.MinWin, res.MaxWin, res.Jain, res.Instances, res.CallsPerSec, res.OutageRatio, res.OutageMax, res.Broken, res.ResumeSec, res.AfterPct)
		all = append(all, res)
	}
	others := map[string]float64{}
	for _, name := range []string{"direct", "sluice, no cluster", "nginx"} {
		if name == "nginx" && *nginxBin == "" {
			continue
		}
		agg, err := clusterCompare(dir, srcAddr, echoAddr, name)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		others[name] = agg
		fmt.Fprintf(os.Stderr, "%s: aggregate %.1f MB/s = %.2f × the line\n", name, agg/1e6, agg/clusterLine)
	}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(map[string]any{"cluster": all, "others_Bps": others}, "", "  ")
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	m := func(f func(clusterResult) float64) float64 { return median(all, f) }
	fmt.Printf("\nsluice cluster: 3 instances, one %d MB/s line, %v connections; median of %d runs, 1 s warm-up + %v steady, then Redis SIGKILLed for %v\n",
		clusterLine/1_000_000, clusterConns, *runs, *duration, *clusterOutage)
	fmt.Printf("%-10s %8s %8s %8s %9s %11s %10s %10s %7s %9s %8s\n", "", "err %", "minwin", "maxwin", "jain", "redis/s/in", "outage", "outage max", "broken", "resumed", "after %")
	fmt.Printf("%-10s %+8.3f %8.3f %8.3f %9.5f %11.1f %10.4f %10.3f %7.0f %8.2fs %+8.3f\n", "cluster",
		m(func(r clusterResult) float64 { return r.ErrPct }), m(func(r clusterResult) float64 { return r.MinWin }),
		m(func(r clusterResult) float64 { return r.MaxWin }), m(func(r clusterResult) float64 { return r.Jain }),
		m(func(r clusterResult) float64 { return r.CallsPerSec }), m(func(r clusterResult) float64 { return r.OutageRatio }),
		m(func(r clusterResult) float64 { return r.OutageMax }), m(func(r clusterResult) float64 { return float64(r.Broken) }),
		m(func(r clusterResult) float64 { return r.ResumeSec }), m(func(r clusterResult) float64 { return r.AfterPct }))
	for _, name := range []string{"direct", "sluice, no cluster", "nginx"} {
		if agg, ok := others[name]; ok {
			fmt.Printf("%-20s aggregate %7.1f MB/s = %5.2f × the line (one run)\n", name, agg/1e6, agg/clusterLine)
		}
	}
	return nil
}

// redisProc is a redis-server the bench started.
type redisProc struct {
	addr, dir string
	cmd       *exec.Cmd
}

func startRedis(dir, addr string) (*redisProc, error) {
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(*redisBin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	r := &redisProc{addr: addr, dir: dir, cmd: cmd}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if reply, err := redisCall(addr, "PING"); err == nil && strings.HasPrefix(reply, "+PONG") {
			return r, nil
		}
		if time.Now().After(deadline) {
			r.kill()
			return nil, fmt.Errorf("redis-server on %s does not answer", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill SIGKILLs redis-server and reaps it.
func (r *redisProc) kill() {
	if r.cmd != nil && r.cmd.Process != nil {
		r.cmd.Process.Signal(syscall.SIGKILL)
		r.cmd.Wait()
		r.cmd = nil
	}
}

// redisCall sends one inline command and returns the whole reply of a
// bulk string, or the first line of any other.
func redisCall(addr, cmd string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\r\n", cmd); err != nil {
		return "", err
	}
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "$") {
		return line, err
	}
	n, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
	buf := make([]byte, n+2)
	_, err = io.ReadFull(br, buf)
	return string(buf[:n]), err
}

// clientCommands are the commands a sluice instance sends Redis itself:
// the renewal script and connection set-up, pub/sub. INFO commandstats
// also counts the commands a script runs, which are no calls.
var clientCommands = map[string]bool{"evalsha": true, "eval": true, "hello": true, "auth": true, "select": true,
	"ping": true, "subscribe": true, "unsubscribe": true, "publish": true, "script|load": true, "client|setinfo": true}

// redisCommands returns the calls instances made to Redis, from INFO
// commandstats.
func redisCommands(addr string) (int64, error) {
	info, err := redisCall(addr, "INFO commandstats")
	if err != nil {
		return 0, err
	}
	var n int64
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimPrefix(strings.TrimSpace(line), "cmdstat_"), ":calls=")
		if !ok || !clientCommands[name] {
			continue
		}
		c, _ := strconv.ParseInt(strings.SplitN(rest, ",", 2)[0], 10, 64)
		n += c
	}
	return n, nil
}

// clusterState returns an instance's cluster state from its admin API.
func clusterState(admin string) string {
	resp, err := http.Get("http://" + admin + "/v1/cluster")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	var st struct {
		State string `json:"state"`
	}
	json.NewDecoder(resp.Body).Decode(&st)
	return st.State
}

// startInstances starts three sluice instances on the line, sharing it
// through Redis at redisAddr, or each with the whole line when redisAddr
// is empty.
func startInstances(dir, srcAddr, echoAddr, redisAddr string) ([]*proxyProc, error) {
	var ps []*proxyProc
	for i := range clusterConns {
		sub := filepath.Join(dir, fmt.Sprintf("sluice-%d", i+1))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			return ps, err
		}
		top := fmt.Sprintf("links: {line: {down: {rate: \"%dB/s\"}}}", clusterLine)
		if redisAddr != "" {
			top = fmt.Sprintf("cluster: {redis: {address: %q}, lease: 100ms, instances: %d, instance: bench-%d}\nlinks: {line: {down: {rate: \"%dB/s\"}, cluster: true}}",
				redisAddr, len(clusterConns), i+1, clusterLine)
		}
		p, err := startSluiceTop(sub, srcAddr, echoAddr, "links: [line]", top)
		if err != nil {
			return ps, err
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// flows are the 16 connections of the case, read from the moment they
// open, their arrivals binned per binWidth from start.
type flows struct {
	conns  []net.Conn
	inst   []int
	bins   []atomic.Int64
	per    []*atomic.Int64 // bytes from steadyFrom to steadyTo
	broken atomic.Int32
	start  time.Time
	wg     sync.WaitGroup

	steadyFrom, steadyTo time.Duration
}

func openFlows(addrs []string, total, steadyFrom, steadyTo time.Duration) (*flows, error) {
	f := &flows{bins: make([]atomic.Int64, int(total/binWidth)+1), steadyFrom: steadyFrom, steadyTo: steadyTo}
	for i, n := range clusterConns {
		for range n {
			c, err := net.Dial("tcp", addrs[i])
			if err != nil {
				f.close()
				return nil, err
			}
			f.conns = append(f.conns, c)
			f.inst = append(f.inst, i)
			f.per = append(f.per, new(atomic.Int64))
		}
	}
	f.start = time.Now()
	for k, c := range f.conns {
		mine := f.per[k]
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			buf := make([]byte, 16<<10)
			for {
				n, err := c.Read(buf)
				el := time.Since(f.start)
				if el >= total {
					return
				}
				if b := int(el / binWidth); b < len(f.bins) {
					f.bins[b].Add(int64(n))
				}
				if el >= f.steadyFrom && el < f.steadyTo {
					mine.Add(int64(n))
				}
				if err != nil {
					f.broken.Add(1)
					return
				}
			}
		}()
	}
	return f, nil
}

func (f *flows) close() {
	for _, c := range f.conns {
		c.SetReadDeadline(time.Now())
	}
	f.wg.Wait()
	for _, c := range f.conns {
		c.Close()
	}
}

// window returns the aggregate over [from, to) ÷ (line × its length), and
// its lowest and highest 100 ms windows likewise.
func (f *flows) window(from, to time.Duration) (ratio, minWin, maxWin float64) {
	a, b := int(from/binWidth), int(to/binWidth)
	var sum int64
	for k := a; k < b && k < len(f.bins); k++ {
		sum += f.bins[k].Load()
	}
	per := int(100 * time.Millisecond / binWidth)
	minWin, maxWin = 1e9, 0
	for k := a; k+per <= b && k+per <= len(f.bins); k += per {
		var w int64
		for j := k; j < k+per; j++ {
			w += f.bins[j].Load()
		}
		r := float64(w) / (clusterLine * 0.1)
		minWin, maxWin = min(minWin, r), max(maxWin, r)
	}
	return float64(sum) / (clusterLine * (to - from).Seconds()), minWin, maxWin
}

// clusterRun is one run: Redis, three instances, the 16 connections: 1 s
// warm-up, -duration steady, -cluster-outage with Redis killed, then 3 s
// after its restart.
func clusterRun(dir, srcAddr, echoAddr string) (res clusterResult, err error) {
	raddr, _, err := freePorts()
	if err != nil {
		return res, err
	}
	redis, err := startRedis(dir, raddr)
	if err != nil {
		return res, err
	}
	defer func() { redis.kill() }()
	ps, err := startInstances(dir, srcAddr, echoAddr, raddr)
	defer func() {
		for _, p := range ps {
			p.stop()
		}
	}()
	if err != nil {
		return res, err
	}
	var addrs []string
	for _, p := range ps {
		addrs = append(addrs, p.sourceAddr)
		deadline := time.Now().Add(5 * time.Second)
		for clusterState(p.adminAddr) != "leased" {
			if time.Now().After(deadline) {
				return res, fmt.Errorf("instance %s: not leased 5 s after start", p.adminAddr)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	warm, steady, outage, after := time.Second, *duration, *clusterOutage, 3*time.Second
	total := warm + steady + outage + 5*time.Second + after
	f, err := openFlows(addrs, total, warm, warm+steady)
	if err != nil {
		return res, err
	}
	defer f.close()
	at := func(d time.Duration) { time.Sleep(time.Until(f.start.Add(d))) }

	at(warm)
	c0, err := redisCommands(raddr)
	if err != nil {
		return res, err
	}
	at(warm + steady)
	c1, err := redisCommands(raddr)
	if err != nil {
		return res, err
	}
	res.CallsPerSec = float64(c1-c0) / steady.Seconds() / float64(len(ps))
	redis.kill()
	killedAt := warm + steady
	at(killedAt + outage)
	restartAt := time.Since(f.start)
	if redis, err = startRedis(dir, raddr); err != nil {
		return res, err
	}
	for _, p := range ps {
		deadline := time.Now().Add(5 * time.Second)
		for clusterState(p.adminAddr) != "leased" {
			if time.Now().After(deadline) {
				return res, fmt.Errorf("instance %s: not leased again 5 s after Redis restarted", p.adminAddr)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	resumed := time.Since(f.start)
	res.ResumeSec = (resumed - restartAt).Seconds()
	at(resumed + after)
	res.Broken = int(f.broken.Load())

	var r float64
	r, res.MinWin, res.MaxWin = f.window(warm, warm+steady)
	res.ErrPct = (r - 1) * 100
	res.OutageRatio, _, res.OutageMax = f.window(killedAt, restartAt)
	r, _, _ = f.window(resumed, resumed+after)
	res.AfterPct = (r - 1) * 100
	var s, s2, sum float64
	res.Instances = make([]float64, len(ps))
	for k, pc := range f.per {
		x := float64(pc.Load())
		s, s2 = s+x, s2+x*x
		res.Instances[f.inst[k]] += x
		sum += x
	}
	if s2 > 0 {
		res.Jain = s * s / (float64(len(f.per)) * s2)
	}
	for i := range res.Instances {
		res.Instances[i] /= max(sum, 1)
	}
	return res, nil
}

// clusterCompare measures the aggregate of the 16 connections for
// -duration after a 1 s warm-up: directly to the source, through three
// sluice instances each with the whole line and no cluster, or through
// three nginx instances with proxy_download_rate at the line (nginx's
// stream proxy has no budget shared by connections, let alone by
// instances).
func clusterCompare(dir, srcAddr, echoAddr, name string) (float64, error) {
	var ps []*proxyProc
	defer func() {
		for _, p := range ps {
			p.stop()
		}
	}()
	addrs := []string{srcAddr, srcAddr, srcAddr}
	var err error
	switch name {
	case "sluice, no cluster":
		ps, err = startInstances(dir, srcAddr, echoAddr, "")
	case "nginx":
		for i := range clusterConns {
			sub := filepath.Join(dir, fmt.Sprintf("nginx-%d", i+1))
			if err = os.MkdirAll(sub, 0o755); err != nil {
				break
			}
			var p *proxyProc
			if p, err = startNginx(sub, srcAddr, echoAddr, fmt.Sprintf("proxy_download_rate %d;", clusterLine)); err != nil {
				break
			}
			ps = append(ps, p)
		}
	}
	if err != nil {
		return 0, err
	}
	for i, p := range ps {
		addrs[i] = p.sourceAddr
	}
	warm := time.Second
	f, err := openFlows(addrs, warm+*duration, warm, warm+*duration)
	if err != nil {
		return 0, err
	}
	time.Sleep(time.Until(f.start.Add(warm + *duration)))
	f.close()
	r, _, _ := f.window(warm, warm+*duration)
	return r * clusterLine, nil
}
