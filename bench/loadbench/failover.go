package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
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
)

var (
	failover       = flag.Bool("failover", false, "measure failover: one of three backends killed (and blackholed) under new connections, sluice vs HAProxy vs nginx")
	failoverRate   = flag.Int("failover-rate", 200, "-failover: new client connections a second")
	failoverLength = flag.Duration("failover-length", 6*time.Second, "-failover: length of each scenario; a backend dies at a third and comes back at two thirds")
	failoverWork   = flag.Duration("failover-work", 20*time.Millisecond, "-failover: how long a backend takes to answer, so that a kill meets requests in flight")
)

// The failover case's timeouts, the same for every proxy.
const (
	failoverConnectTimeout = time.Second
	failoverBody           = 1024 // bytes of an answer's body
)

// failoverRun is one scenario's figures for one target.
type failoverRun struct {
	Attempted int     `json:"attempted"`
	Failed    int     `json:"failed"`
	Waited    int     `json:"waited_connect_timeout"` // answered or not, took at least the connect timeout
	P50ms     float64 `json:"p50_ms"`
	P99ms     float64 `json:"p99_ms"`
	MaxMs     float64 `json:"max_ms"`
	Back      int     `json:"back"`             // requests the victim answered after it came back
	BackShare float64 `json:"back_share"`       // ÷ a third of the requests started after it came back
	Errors    string  `json:"errors,omitempty"` // the failures, by kind, with when they started
}

// runFailover runs the kill scenario for direct, sluice, HAProxy and
// nginx, then the blackhole scenario for the proxies, -runs times each,
// and prints the medians.
func runFailover(dir string) error {
	targets := []string{"direct", "sluice"}
	if *haproxyBin != "" {
		targets = append(targets, "haproxy")
	}
	if *nginxBin != "" {
		targets = append(targets, "nginx")
	}
	variants := []string{"kill", "blackhole"}
	all := map[string]map[string][]failoverRun{}
	for _, v := range variants {
		all[v] = map[string][]failoverRun{}
	}
	for run := 1; run <= *runs; run++ {
		for _, v := range variants {
			for _, name := range targets {
				if name == "direct" && v != "kill" {
					continue
				}
				res, err := failoverScenario(dir, name, v)
				if err != nil {
					return fmt.Errorf("run %d, %s, %s: %w", run, v, name, err)
				}
				all[v][name] = append(all[v][name], res)
				fmt.Fprintf(os.Stderr, "run %d %-9s %-7s %5d conns %4d failed %4d waited  p50 %6.2f ms  p99 %7.2f ms  max %7.1f ms  back %4d (%.2f)  %s\n",
					run, v, name, res.Attempted, res.Failed, res.Waited, res.P50ms, res.P99ms, res.MaxMs, res.Back, res.BackShare, res.Errors)
			}
		}
	}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(all, "", "  ")
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	med := func(rs []failoverRun, f func(failoverRun) float64) float64 { return median(rs, f) }
	direct := all["kill"]["direct"]
	d50 := med(direct, func(r failoverRun) float64 { return r.P50ms })
	d99 := med(direct, func(r failoverRun) float64 { return r.P99ms })
	for _, v := range variants {
		what := "killed (listener closed, its connections reset)"
		if v == "blackhole" {
			what = "blackholed (accept queue full: dials hang)"
		}
		fmt.Printf("\nfailover, %s: median of %d runs; %d conns/s for %v to 3 backends answering in %v; one %s at %v, back at %v\n",
			v, *runs, *failoverRate, *failoverLength, *failoverWork, what, *failoverLength/3, 2**failoverLength/3)
		fmt.Printf("%-8s %9s %7s %7s %8s %8s %8s %8s %8s %6s\n", "target", "attempted", "failed", "waited", "p50 ms", "p99 ms", "+p50 ms", "+p99 ms", "max ms", "back")
		for _, name := range targets {
			rs := all[v][name]
			if len(rs) == 0 {
				continue
			}
			p50, p99 := med(rs, func(r failoverRun) float64 { return r.P50ms }), med(rs, func(r failoverRun) float64 { return r.P99ms })
			fmt.Printf("%-8s %9.0f %7.0f %7.0f %8.2f %8.2f %8.2f %8.2f %8.1f %6.2f\n", name,
				med(rs, func(r failoverRun) float64 { return float64(r.Attempted) }),
				med(rs, func(r failoverRun) float64 { return float64(r.Failed) }),
				med(rs, func(r failoverRun) float64 { return float64(r.Waited) }),
				p50, p99, p50-d50, p99-d99, med(rs, func(r failoverRun) float64 { return r.MaxMs }),
				med(rs, func(r failoverRun) float64 { return r.BackShare }))
		}
	}
	fmt.Printf("\nwaited: connections that took at least the connect timeout (%v), answered or not\n", failoverConnectTimeout)
	fmt.Printf("back: requests the victim answered after it came back ÷ its third of those started then (1 = its full share)\n")
	return nil
}

// failoverScenario starts three backends and the target in front of
// them, runs the load, and kills (or blackholes) the third backend for
// the middle third. direct goes to the first backend, which lives.
func failoverScenario(dir, name, variant string) (failoverRun, error) {
	var bs []*failBackend
	defer func() {
		for _, b := range bs {
			b.close()
		}
	}()
	var addrs []string
	for range 3 {
		b, err := newFailBackend()
		if err != nil {
			return failoverRun{}, err
		}
		bs = append(bs, b)
		addrs = append(addrs, b.addr)
	}
	addr := addrs[0]
	var p *proxyProc
	var err error
	switch name {
	case "sluice":
		top := fmt.Sprintf(`upstreams:
  three:
    balance: round_robin
    servers: ["%s"]
    check: {type: tcp, interval: 200ms, timeout: 100ms, rise: 2, fall: 2}
    passive: {failures: 1, eject: 5s}
    retry: 2
`, strings.Join(addrs, `", "`))
		p, err = startSluiceTop(dir, "three", addrs[0], fmt.Sprintf("timeouts: {connect: %v}", failoverConnectTimeout), top)
	case "haproxy":
		p, err = startHAProxy(dir, addrs)
	case "nginx":
		var ups strings.Builder
		for _, a := range addrs {
			fmt.Fprintf(&ups, "server %s max_fails=1 fail_timeout=5s; ", a)
		}
		p, err = startNginxTop(dir, "three", addrs[0],
			fmt.Sprintf("proxy_next_upstream on; proxy_next_upstream_tries 3; proxy_connect_timeout %dms;", failoverConnectTimeout.Milliseconds()),
			"upstream three { "+ups.String()+"}")
	}
	if err != nil {
		return failoverRun{}, err
	}
	if p != nil {
		defer p.stop()
		addr = p.sourceAddr
	}
	// Let active checks see every backend up before the load starts.
	time.Sleep(500 * time.Millisecond)
	victim := bs[2]
	var atRevival int64
	timeline := func(el time.Duration, state *int) {
		switch {
		case *state == 0 && el >= *failoverLength/3:
			*state = 1
			if variant == "blackhole" {
				if err := victim.blackhole(); err != nil {
					fmt.Fprintln(os.Stderr, "blackhole:", err)
				}
			} else {
				victim.kill()
			}
		case *state == 1 && el >= 2**failoverLength/3:
			*state = 2
			atRevival = victim.answered.Load()
			if err := victim.revive(); err != nil {
				fmt.Fprintln(os.Stderr, "revive:", err)
			}
		}
	}
	res := failoverLoad(addr, timeline)
	if name != "direct" {
		res.Back = int(victim.answered.Load() - atRevival)
		res.BackShare = float64(res.Back) / (float64(res.Attempted) / 3 / 3)
	}
	return res, nil
}

// failoverLoad opens -failover-rate connections a second to addr for
// -failover-length, open loop (each on its own goroutine, started on
// schedule whatever the others do), and calls timeline as it goes.
func failoverLoad(addr string, timeline func(time.Duration, *int)) failoverRun {
	n := int(float64(*failoverRate) * failoverLength.Seconds())
	every := time.Second / time.Duration(*failoverRate)
	type outcome struct {
		at  time.Duration // since the start, when it began
		lat time.Duration
		err error
	}
	out := make([]outcome, n)
	var wg sync.WaitGroup
	start := time.Now()
	state := 0
	for i := range n {
		at := time.Duration(i) * every
		if d := time.Until(start.Add(at)); d > 0 {
			time.Sleep(d)
		}
		timeline(time.Since(start), &state)
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			err := failoverExchange(addr, i)
			out[i] = outcome{at: t0.Sub(start), lat: time.Since(t0), err: err}
		}()
	}
	for time.Since(start) < *failoverLength {
		timeline(time.Since(start), &state)
		time.Sleep(10 * time.Millisecond)
	}
	timeline(*failoverLength, &state)
	wg.Wait()

	res := failoverRun{Attempted: n}
	var lats []time.Duration
	type kind struct {
		n           int
		first, last time.Duration
	}
	kinds := map[string]*kind{}
	for _, o := range out {
		if o.lat >= failoverConnectTimeout {
			res.Waited++
		}
		if o.err == nil {
			lats = append(lats, o.lat)
			continue
		}
		res.Failed++
		k := kinds[errKind(o.err)]
		if k == nil {
			k = &kind{first: o.at}
			kinds[errKind(o.err)] = k
		}
		k.n++
		k.last = o.at
	}
	if len(lats) > 0 {
		slices.Sort(lats)
		ms := func(q float64) float64 { return float64(lats[int(q*float64(len(lats)-1))]) / 1e6 }
		res.P50ms, res.P99ms, res.MaxMs = ms(0.50), ms(0.99), ms(1)
	}
	var es []string
	for e, k := range kinds {
		es = append(es, fmt.Sprintf("%d× %s (started %.2f-%.2f s)", k.n, e, k.first.Seconds(), k.last.Seconds()))
	}
	slices.Sort(es)
	res.Errors = strings.Join(es, "; ")
	return res
}

// errKind is err without its addresses, so that failures group.
func errKind(err error) string {
	var op *net.OpError
	if errors.As(err, &op) {
		return op.Op + ": " + op.Err.Error()
	}
	return err.Error()
}

// failoverExchange is one client: connect, send request i, read the whole
// answer, check it, close.
func failoverExchange(addr string, i int) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "GET /%d HTTP/1.0\r\n\r\n", i); err != nil {
		return err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if want := failoverAnswer(i); string(b) != want {
		return fmt.Errorf("incomplete answer: %d of %d bytes", len(b), len(want))
	}
	return nil
}

// failoverAnswer is a backend's whole answer to request i.
func failoverAnswer(i int) string {
	id := strconv.Itoa(i)
	body := id + strings.Repeat(".", failoverBody-len(id)-1) + "\n"
	return fmt.Sprintf("HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// failBackend is a loopback HTTP/1.0 responder that can be killed (its
// listener closed and its connections reset, as a killed process's),
// blackholed (its port's accept queue full: dials hang) and revived on
// the same port.
type failBackend struct {
	addr  string
	mu    sync.Mutex
	ln    net.Listener
	conns map[*net.TCPConn]bool
	hole  []io.Closer // the blackhole's socket and the dials filling its queue
	wg    sync.WaitGroup
	// answered counts the requests it answered.
	answered atomic.Int64
}

func newFailBackend() (*failBackend, error) {
	b := &failBackend{addr: "127.0.0.1:0", conns: map[*net.TCPConn]bool{}}
	if err := b.revive(); err != nil {
		return nil, err
	}
	return b, nil
}

// revive listens again, on the same port after the first time.
func (b *failBackend) revive() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, h := range b.hole {
		h.Close()
	}
	b.hole = nil
	ln, err := net.Listen("tcp", b.addr)
	if err != nil {
		return err
	}
	b.ln, b.addr = ln, ln.Addr().String()
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*net.TCPConn)
			b.mu.Lock()
			b.conns[tc] = true
			b.mu.Unlock()
			b.wg.Add(1)
			go b.serve(tc)
		}
	}()
	return nil
}

// serve reads a request's head, takes -failover-work, and answers.
func (b *failBackend) serve(c *net.TCPConn) {
	defer b.wg.Done()
	defer func() {
		b.mu.Lock()
		delete(b.conns, c)
		b.mu.Unlock()
		c.Close()
	}()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return // a health check, or a probe
	}
	for {
		h, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if h == "\r\n" {
			break
		}
	}
	f := strings.Fields(line)
	if len(f) < 2 {
		return
	}
	i, err := strconv.Atoi(strings.TrimPrefix(f[1], "/"))
	if err != nil {
		return
	}
	time.Sleep(*failoverWork)
	if _, err := io.WriteString(c, failoverAnswer(i)); err == nil {
		b.answered.Add(1)
	}
}

// close kills b and waits for its goroutines.
func (b *failBackend) close() {
	b.kill()
	b.wg.Wait()
}

// kill closes the listener and resets every open connection.
func (b *failBackend) kill() {
	b.mu.Lock()
	if b.ln != nil {
		b.ln.Close()
		b.ln = nil
	}
	for c := range b.conns {
		_ = c.SetLinger(0)
		c.Close()
	}
	for _, h := range b.hole {
		h.Close()
	}
	b.hole = nil
	b.mu.Unlock()
}

// blackhole closes the listener and puts in its place a socket whose
// accept queue is full and never drained: the kernel drops further SYNs,
// so a dial hangs, as to a host that is gone. Open connections go on.
func (b *failBackend) blackhole() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ln.Close()
	b.ln = nil
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), "blackhole")
	b.hole = append(b.hole, f)
	_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	ap, err := net.ResolveTCPAddr("tcp", b.addr)
	if err != nil {
		return err
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: ap.Port}); err != nil {
		return err
	}
	if err := syscall.Listen(fd, 0); err != nil {
		return err
	}
	for range 16 {
		c, err := net.DialTimeout("tcp", b.addr, 100*time.Millisecond)
		if err != nil {
			return nil // full
		}
		b.hole = append(b.hole, c)
	}
	return errors.New("the blackhole's queue never filled")
}

// startHAProxy runs HAProxy in front of servers in TCP mode with the
// failover case's checks, retries and timeouts.
func startHAProxy(dir string, servers []string) (*proxyProc, error) {
	a, _, err := freePorts()
	if err != nil {
		return nil, err
	}
	var ss strings.Builder
	for i, s := range servers {
		fmt.Fprintf(&ss, "  server s%d %s check inter 200ms fall 2 rise 2\n", i+1, s)
	}
	ct := failoverConnectTimeout.Milliseconds()
	cfg := fmt.Sprintf(`global
  maxconn 9000
defaults
  mode tcp
  timeout connect %dms
  timeout check 100ms
  timeout client 30s
  timeout server 30s
  retries 2
  option redispatch
listen three
  bind %s
  balance roundrobin
%s`, ct, a, ss.String())
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(*haproxyBin, "-f", path, "-db")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%w (install haproxy, or pass -haproxy '')", err)
	}
	p := &proxyProc{cmd: cmd, target: &target{name: "haproxy", sourceAddr: a,
		pids: func() []int { return []int{cmd.Process.Pid} }}}
	if err := waitListening(a); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}
