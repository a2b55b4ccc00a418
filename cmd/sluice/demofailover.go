package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluiceproxy/sluice/config"
	"github.com/sluiceproxy/sluice/proxy"
	"github.com/sluiceproxy/sluice/proxy/upstream"
)

// The failover demo's shape: three servers in one pool, clients asking
// steadily, one server killed, then all of them, then all back.
const (
	demoFailClients = 3                     // clients, each asking every demoFailEvery
	demoFailEvery   = 15 * time.Millisecond // so about 200 requests a second in all
	demoFailPhase   = time.Second           // how long each phase runs once it has begun
)

// demoNotice is the notice page the pool's overflow answers with while no
// server can take a connection.
const demoNotice = "HTTP/1.1 503 Service Unavailable\r\n" +
	"Retry-After: 30\r\n" +
	"Content-Type: text/html; charset=utf-8\r\n" +
	"Connection: close\r\n" +
	"\r\n" +
	"<!doctype html><title>Busy</title>\n" +
	"<p>Our servers are busy. Try again in a minute, or use the mirror:\n" +
	"<a href=\"https://mirror.example.org/\">mirror.example.org</a>\n"

const demoFailConfig = `upstreams:
  api:
    balance: round_robin
    servers: [%q, %q, %q]
    check: {type: tcp, interval: 200ms, timeout: 100ms, rise: 2, fall: 2}
    passive: {failures: 1, eject: 1s}
    retry: 2
listeners:
  - name: api
    listen: "127.0.0.1:0"
    upstream: api
    overflow: {respond_file: %q}
`

func newDemoFailoverCmd(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "failover",
		Short: "Show an upstream pool failing over: a server killed, then all (the notice page), then all back",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemoFailover(ctxOrBackground(cmd.Context()), stdout)
		},
	}
}

// runDemoFailover starts three servers, a sluice with a pool of them and
// a notice page as its overflow, and clients, all on loopback in this
// process, and narrates what the clients get as servers die and return.
func runDemoFailover(ctx context.Context, w io.Writer) error {
	dir, err := os.MkdirTemp("", "sluice-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	names := []string{"a", "b", "c"}
	servers := make([]*demoServer, len(names))
	for i, n := range names {
		if servers[i], err = newDemoServer(n); err != nil {
			return err
		}
		defer servers[i].close()
	}
	notice := filepath.Join(dir, "notice.http")
	if err := os.WriteFile(notice, []byte(demoNotice), 0o644); err != nil {
		return err
	}
	cfgPath := filepath.Join(dir, "sluice.yaml")
	yaml := fmt.Sprintf(demoFailConfig, servers[0].addr, servers[1].addr, servers[2].addr, notice)
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o644); err != nil {
		return err
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	var ls []proxy.ListenerConfig
	for _, l := range cfg.Listeners {
		ls = append(ls, proxy.ListenerConfig{Name: l.Name, Addr: l.Listen, Upstream: l.Upstream,
			ConnectTimeout: l.Timeouts.Connect, IdleTimeout: l.Timeouts.Idle, Admission: admission(l)})
	}
	srv, err := proxy.New(proxy.Options{Listeners: ls, Upstreams: upstreamPools(cfg)})
	if err != nil {
		return err
	}
	if err := srv.Start(ctx); err != nil {
		return err
	}
	defer srv.Close()
	byAddr := map[string]string{}
	for _, s := range servers {
		byAddr[s.addr] = s.name
	}

	fmt.Fprintf(w, "sluice demo failover: servers a, b and c in pool \"api\" behind one sluice listener (%s),\n", srv.Addr("api"))
	fmt.Fprintf(w, "  %d clients each asking every %v (about %d requests a second), all on loopback in this process. The config:\n\n",
		demoFailClients, demoFailEvery, int(time.Second/demoFailEvery)*demoFailClients)
	for _, l := range strings.Split(strings.TrimSpace(strings.ReplaceAll(yaml, dir, "$TMP")), "\n") {
		fmt.Fprintf(w, "    %s\n", l)
	}
	fmt.Fprintf(w, "\n  $TMP/notice.http is an HTTP 503 page with Retry-After: 30 and a link to a mirror.\n\n")

	tally := &demoTally{}
	cctx, stop := context.WithCancel(ctx)
	var clients sync.WaitGroup
	for range demoFailClients {
		clients.Add(1)
		go func() {
			defer clients.Done()
			demoAsk(cctx, srv.Addr("api").String(), tally)
		}()
	}
	defer func() {
		stop()
		clients.Wait()
	}()

	// watch prints the pool's state changes, until the returned func is
	// called.
	var wmu sync.Mutex
	printf := func(format string, a ...any) {
		wmu.Lock()
		defer wmu.Unlock()
		fmt.Fprintf(w, format, a...)
	}
	var since atomic.Int64 // the last event's time, in ns since the Unix epoch
	since.Store(time.Now().UnixNano())
	watchDone := make(chan struct{})
	watchStop := make(chan struct{})
	go func() {
		defer close(watchDone)
		last := map[string]upstream.State{}
		for _, st := range srv.Pools()[0].Servers {
			last[st.Address] = st.State
		}
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-watchStop:
				return
			case <-tick.C:
			}
			for _, st := range srv.Pools()[0].Servers {
				if st.State != last[st.Address] {
					el := time.Since(time.Unix(0, since.Load()))
					printf("    sluice: %s %v → %v, %v after\n", byAddr[st.Address], last[st.Address], st.State, el.Round(time.Millisecond))
					last[st.Address] = st.State
				}
			}
		}
	}()
	defer func() {
		close(watchStop)
		<-watchDone
	}()
	event := func(format string, a ...any) {
		printf(">>> "+format+"\n", a...)
		since.Store(time.Now().UnixNano())
	}
	phase := func(name string, until func() bool) (demoCounts, error) {
		tally.reset()
		start := time.Now()
		for until != nil && !until() {
			if time.Since(start) > 5*time.Second {
				return demoCounts{}, fmt.Errorf("%s: the pool did not change as expected within 5s", name)
			}
			select {
			case <-ctx.Done():
				return demoCounts{}, ctx.Err()
			case <-time.After(10 * time.Millisecond):
			}
		}
		waited := tally.take()
		if until != nil && name != "all up" {
			printf("    meanwhile (%v): %s\n", time.Since(start).Round(time.Millisecond), waited.String(names))
		}
		start = time.Now()
		select {
		case <-ctx.Done():
			return demoCounts{}, ctx.Err()
		case <-time.After(demoFailPhase):
		}
		c := tally.take()
		if c.errs == nil {
			c.errs = map[string]int{}
		}
		printf("── %s (%v): %s\n", name, time.Since(start).Round(100*time.Millisecond), c.String(names))
		c.add(waited)
		return c, nil
	}
	upCount := func() int {
		n := 0
		for _, st := range srv.Pools()[0].Servers {
			if st.State == upstream.Up {
				n++
			}
		}
		return n
	}

	allUp, err := phase("all up", func() bool { return upCount() == 3 })
	if err != nil {
		return err
	}
	event("kill b: its listener closed, its open connections reset")
	servers[1].kill()
	oneDown, err := phase("b down", func() bool { return upCount() == 2 })
	if err != nil {
		return err
	}
	event("kill a and c too")
	servers[0].kill()
	servers[2].kill()
	allDown, err := phase("all down", func() bool { return upCount() == 0 })
	if err != nil {
		return err
	}
	if head := tally.notice.Load(); head != nil {
		printf("    the notice page, as a client got it: %q …\n", *head)
	}
	event("restart a, b and c")
	for _, s := range servers {
		if err := s.revive(); err != nil {
			return err
		}
	}
	back, err := phase("back", func() bool { return upCount() == 3 })
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "\n%d requests in all; with one server of three down, %d failed; with none up, %d got the notice page and %d failed;\n",
		allUp.total()+oneDown.total()+allDown.total()+back.total(), oneDown.failed, allDown.notices, allDown.failed)
	fmt.Fprintf(w, "once the servers were back, a answered %d, b %d, c %d.\n", back.ok["a"], back.ok["b"], back.ok["c"])
	if oneDown.failed > 0 {
		return fmt.Errorf("%d requests failed while one server was down", oneDown.failed)
	}
	fmt.Fprintln(w, "demo done.")
	return nil
}

// demoCounts is what the clients got during one phase.
type demoCounts struct {
	ok      map[string]int // answers by server name
	notices int
	failed  int
	errs    map[string]int
}

// add adds o's counts to c's.
func (c *demoCounts) add(o demoCounts) {
	for k, v := range o.ok {
		c.ok[k] += v
	}
	for k, v := range o.errs {
		c.errs[k] += v
	}
	c.notices += o.notices
	c.failed += o.failed
}

func (c demoCounts) total() int {
	n := c.notices + c.failed
	for _, v := range c.ok {
		n += v
	}
	return n
}

func (c demoCounts) String(names []string) string {
	var b strings.Builder
	n := 0
	for _, v := range c.ok {
		n += v
	}
	fmt.Fprintf(&b, "%d answers", n)
	if n > 0 {
		var parts []string
		for _, name := range names {
			if c.ok[name] > 0 {
				parts = append(parts, fmt.Sprintf("%s %d", name, c.ok[name]))
			}
		}
		fmt.Fprintf(&b, " (%s)", strings.Join(parts, ", "))
	}
	fmt.Fprintf(&b, ", %d notice pages, %d failed", c.notices, c.failed)
	var es []string
	for e, k := range c.errs {
		es = append(es, fmt.Sprintf("%d× %s", k, e))
	}
	slices.Sort(es)
	if len(es) > 0 {
		fmt.Fprintf(&b, ": %s", strings.Join(es, "; "))
	}
	return b.String()
}

// demoTally counts the clients' results.
type demoTally struct {
	mu     sync.Mutex
	c      demoCounts
	notice atomic.Pointer[string] // the first lines of a notice page received
}

func (t *demoTally) reset() { t.take() }

func (t *demoTally) take() demoCounts {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.c
	t.c = demoCounts{ok: map[string]int{}, errs: map[string]int{}}
	if c.ok == nil {
		c = demoCounts{ok: map[string]int{}, errs: map[string]int{}}
	}
	return c
}

func (t *demoTally) add(server string, notice bool, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.c.ok == nil {
		t.c = demoCounts{ok: map[string]int{}, errs: map[string]int{}}
	}
	switch {
	case err != nil:
		t.c.failed++
		var op *net.OpError
		if errors.As(err, &op) {
			t.c.errs[op.Op+": "+op.Err.Error()]++
		} else {
			t.c.errs[err.Error()]++
		}
	case notice:
		t.c.notices++
	default:
		t.c.ok[server]++
	}
}

// demoAsk sends requests to addr every demoFailEvery until ctx ends, and
// tallies the answers: a server's, the notice page, or a failure.
func demoAsk(ctx context.Context, addr string, t *demoTally) {
	tick := time.NewTicker(demoFailEvery)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		b, err := demoRequest(addr, i)
		if ctx.Err() != nil {
			return
		}
		switch {
		case err != nil:
			t.add("", false, err)
		case strings.HasPrefix(string(b), "HTTP/1.1 503 "):
			head, _, _ := strings.Cut(string(b), "\r\n\r\n")
			t.notice.CompareAndSwap(nil, &head)
			t.add("", true, nil)
		case strings.HasPrefix(string(b), "HTTP/1.0 200 OK\r\n"):
			_, body, _ := strings.Cut(string(b), "\r\n\r\n")
			name, id, _ := strings.Cut(strings.TrimSpace(body), " ")
			if id != strconv.Itoa(i) {
				t.add("", false, fmt.Errorf("answer to another request: %q", body))
				continue
			}
			t.add(name, false, nil)
		default:
			t.add("", false, fmt.Errorf("unexpected answer %q", b))
		}
	}
}

// demoRequest sends request i and reads the whole answer.
func demoRequest(addr string, i int) ([]byte, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "GET /%d HTTP/1.0\r\n\r\n", i); err != nil {
		return nil, err
	}
	return io.ReadAll(c)
}

// demoServer is a loopback HTTP/1.0 server that answers "NAME ID" to
// GET /ID; it can be killed (its listener closed and its connections
// reset, as a killed process's) and revived on the same port.
type demoServer struct {
	name  string
	addr  string
	mu    sync.Mutex
	ln    net.Listener
	conns map[*net.TCPConn]bool
	wg    sync.WaitGroup
}

func newDemoServer(name string) (*demoServer, error) {
	s := &demoServer{name: name, addr: "127.0.0.1:0", conns: map[*net.TCPConn]bool{}}
	return s, s.revive()
}

// revive listens again, on the same port after the first time.
func (s *demoServer) revive() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return err
	}
	s.ln, s.addr = ln, ln.Addr().String()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*net.TCPConn)
			s.mu.Lock()
			s.conns[tc] = true
			s.mu.Unlock()
			s.wg.Add(1)
			go s.serve(tc)
		}
	}()
	return nil
}

func (s *demoServer) serve(c *net.TCPConn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return // a health check
	}
	for {
		h, err := r.ReadString('\n')
		if err != nil || h == "\r\n" {
			break
		}
	}
	f := strings.Fields(line)
	if len(f) < 2 {
		return
	}
	body := s.name + " " + strings.TrimPrefix(f[1], "/") + "\n"
	fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// kill closes the listener and resets every open connection.
func (s *demoServer) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		s.ln.Close()
		s.ln = nil
	}
	for c := range s.conns {
		_ = c.SetLinger(0)
		c.Close()
	}
}

// close kills s and waits for its goroutines.
func (s *demoServer) close() {
	s.kill()
	s.wg.Wait()
}
