package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/transport/v2/test"

	"github.com/sluiceproxy/sluice/proxy/upstream"
	"github.com/sluiceproxy/sluice/proxy/upstream/upstreamtest"
)

// lineServer is a loopback server that reads one line per connection and
// answers as its mode says: "ok" writes "NAME LINE\n" and closes; "reset"
// resets the connection without a byte; "429" and "503" answer an HTTP
// busy response with Retry-After: 5; "silent" reads and never answers.
type lineServer struct {
	name     string
	ln       *net.TCPListener
	mode     atomic.Value // string
	accepted atomic.Int64
	mu       sync.Mutex
	conns    map[net.Conn]bool
	wg       sync.WaitGroup
}

func newLineServer(t testing.TB, name, mode string) *lineServer {
	t.Helper()
	return newLineServerAt(t, name, mode, "127.0.0.1:0")
}

// newLineServerAt is newLineServer on addr: a server restarted on its
// address.
func newLineServerAt(t testing.TB, name, mode, addr string) *lineServer {
	t.Helper()
	la, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenTCP("tcp", la)
	if err != nil {
		t.Fatal(err)
	}
	s := &lineServer{name: name, ln: ln, conns: map[net.Conn]bool{}}
	s.mode.Store(mode)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			s.mu.Lock()
			s.conns[c] = true
			s.mu.Unlock()
			s.wg.Add(1)
			go s.serve(c)
		}
	}()
	t.Cleanup(s.kill)
	return s
}

func (s *lineServer) addr() string { return s.ln.Addr().String() }

func (s *lineServer) serve(c *net.TCPConn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return
	}
	switch mode := s.mode.Load().(string); mode {
	case "ok":
		// Answered under mu, and no longer kill's to reset: a killed
		// process's kernel closes a socket whose bytes it has read with
		// a FIN, so a client that has its answer does not fail.
		s.mu.Lock()
		if s.conns[c] {
			fmt.Fprintf(c, "%s %s", s.name, line)
			delete(s.conns, c)
		}
		s.mu.Unlock()
	case "reset":
		_ = c.SetLinger(0)
	case "429", "503":
		fmt.Fprintf(c, "HTTP/1.1 %s Busy\r\nRetry-After: 5\r\nContent-Length: 0\r\n\r\n", mode)
	case "silent":
		_, _ = io.Copy(io.Discard, c)
	}
}

// kill closes the listener and resets every open connection that has not
// been answered, as a killed process would.
func (s *lineServer) kill() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		_ = c.(*net.TCPConn).SetLinger(0)
		c.Close()
		delete(s.conns, c)
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// ask sends one line through addr and returns the answer.
func ask(addr, line string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return string(b), err
	}
	if len(b) == 0 {
		return "", io.ErrUnexpectedEOF
	}
	return string(b), nil
}

func poolOf(name string, servers ...*lineServer) upstream.PoolConfig {
	p := upstream.PoolConfig{Name: name, Balance: upstream.RoundRobin}
	for _, s := range servers {
		p.Servers = append(p.Servers, upstream.ServerConfig{Address: s.addr()})
	}
	return p
}

// TestPoolRetriesEarlyReset: a server that resets before its first byte
// is replaced by the next, the client's bytes replayed: the client gets
// the good answer to its own line.
func TestPoolRetriesEarlyReset(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)
	bad, good := newLineServer(t, "bad", "reset"), newLineServer(t, "good", "ok")
	p := poolOf("api", bad, good)
	p.Retry = 1
	srv, addr, _ := startProxyWith(t, Options{Upstreams: []upstream.PoolConfig{p}}, ListenerConfig{Upstream: "api"})
	for i := range 6 {
		got, err := ask(addr, fmt.Sprintf("hello %d", i))
		if want := fmt.Sprintf("good hello %d\n", i); err != nil || got != want {
			t.Fatalf("answer %d = %q, %v; want %q", i, got, err, want)
		}
	}
	st := srv.Pools()[0]
	if st.Retries == 0 || bad.accepted.Load() == 0 {
		t.Errorf("retries %d, bad server accepted %d: the test retried nothing", st.Retries, bad.accepted.Load())
	}
}

// TestPoolRetryAfter: a 429 with Retry-After: 5 cools its server, the
// client gets the next server's answer, and the cooled server gets no
// connection while it cools; when every server answers so, the client
// gets the last answer as is.
func TestPoolRetryAfter(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)
	busy, good := newLineServer(t, "busy", "429"), newLineServer(t, "good", "ok")
	p := poolOf("api", busy, good)
	p.Retry, p.HTTPRetryAfter = 1, true
	srv, addr, logs := startProxyWith(t, Options{Upstreams: []upstream.PoolConfig{p}}, ListenerConfig{Upstream: "api"})
	start := time.Now()
	for i := range 10 {
		got, err := ask(addr, fmt.Sprintf("GET /%d", i))
		if want := fmt.Sprintf("good GET /%d\n", i); err != nil || got != want {
			t.Fatalf("answer %d = %q, %v; want %q", i, got, err, want)
		}
	}
	if n := busy.accepted.Load(); n != 1 {
		t.Errorf("the busy server accepted %d connections within its Retry-After, want 1", n)
	}
	s, _ := srv.pool("api")
	st, _ := s.Server(busy.addr())
	if st.State != upstream.Cooling || st.CoolingUntil.Sub(start) < 4900*time.Millisecond || st.CoolingUntil.Sub(start) > 5100*time.Millisecond+time.Since(start) {
		t.Errorf("busy server: %s until %v after the first ask; want cooling 5 s ± 100 ms", st.State, st.CoolingUntil.Sub(start))
	}
	waitLog(t, logs, "upstream server state", "to=cooling", "reason=retry_after")

	// Every server busy: the last answer goes through.
	good.mode.Store("503")
	if err := srv.EnableServer("api", busy.addr()); err != nil {
		t.Fatal(err)
	}
	got, err := ask(addr, "GET /last")
	if err != nil || !strings.HasPrefix(got, "HTTP/1.1 503 Busy") {
		t.Errorf("all busy: %q, %v; want the 503 answer as is", got, err)
	}
}

// TestPoolQuotaExact: two primaries with 100 connections a minute each
// and a backup with as many take 250 connections as 100/100/50.
func TestPoolQuotaExact(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	checkRoutines(t)
	a, b, c := newLineServer(t, "a", "ok"), newLineServer(t, "b", "ok"), newLineServer(t, "c", "ok")
	p := poolOf("api", a, b, c)
	for i := range p.Servers {
		p.Servers[i].Quota = upstream.Quota{Conns: 100, Per: time.Minute}
	}
	p.Servers[2].Backup = true
	srv, addr, _ := startProxyWith(t, Options{Upstreams: []upstream.PoolConfig{p}}, ListenerConfig{Upstream: "api"})
	for i := range 250 {
		if _, err := ask(addr, fmt.Sprint(i)); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	if got := [3]int64{a.accepted.Load(), b.accepted.Load(), c.accepted.Load()}; got != [3]int64{100, 100, 50} {
		t.Errorf("servers took %v connections, want [100 100 50]", got)
	}
	for _, s := range srv.Pools()[0].Servers[:2] {
		if s.State != upstream.Cooling {
			t.Errorf("%s: %s, want cooling (quota spent)", s.Address, s.State)
		}
	}
}

// TestPoolOverflow: with every server down, a connection gets the
// listener's overflow response, or goes to its overflow upstream; the
// spell without a server is logged once, and its end too.
func TestPoolOverflow(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)
	a := newLineServer(t, "a", "ok")
	a.kill()
	page := "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 60\r\n\r\nBusy: try a mirror\n"
	p := poolOf("api", a)
	srv, addr, logs := startProxyWith(t, Options{Upstreams: []upstream.PoolConfig{p}},
		ListenerConfig{Upstream: "api", Admission: Admission{Overflow: Overflow{Respond: []byte(page)}}})
	for range 3 {
		if got, err := ask(addr, "GET /"); err != nil || got != page {
			t.Fatalf("no server: %q, %v; want the overflow page", got, err)
		}
	}
	if st := srv.Stats()[0].Admission; st.Overflowed != 3 {
		t.Errorf("overflowed = %d, want 3", st.Overflowed)
	}
	if n := strings.Count(logs.String(), "no server can take a connection"); n != 1 {
		t.Errorf("%d log lines for the spell without a server, want 1", n)
	}

	spill := newLineServer(t, "spill", "ok")
	srv2, addr2, _ := startProxyWith(t, Options{Upstreams: []upstream.PoolConfig{p}},
		ListenerConfig{Upstream: "api", Admission: Admission{Overflow: Overflow{Upstream: spill.addr()}}})
	if got, err := ask(addr2, "x"); err != nil || got != "spill x\n" {
		t.Errorf("no server, overflow upstream: %q, %v; want the spill server's answer", got, err)
	}
	if st := srv2.Stats()[0].Admission; st.Overflowed != 1 {
		t.Errorf("overflowed = %d, want 1", st.Overflowed)
	}
}

// TestPoolFailover: one of three servers is killed while clients keep
// connecting; with a retry, no client connection fails.
func TestPoolFailover(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	checkRoutines(t)
	ss := []*lineServer{newLineServer(t, "a", "ok"), newLineServer(t, "b", "ok"), newLineServer(t, "c", "ok")}
	p := poolOf("api", ss...)
	p.Retry = 2
	p.Passive = upstream.Passive{Failures: 1, Eject: time.Second}
	srv, addr, _ := startProxyWith(t, Options{Upstreams: []upstream.PoolConfig{p}}, ListenerConfig{Upstream: "api"})
	var failed atomic.Int64
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				if got, err := ask(addr, fmt.Sprintf("%d-%d", g, i)); err != nil || !strings.HasSuffix(got, fmt.Sprintf(" %d-%d\n", g, i)) {
					failed.Add(1)
					t.Errorf("client %d-%d: %q, %v", g, i, got, err)
				}
				if g == 0 && i == 30 {
					ss[1].kill()
				}
			}
		}()
	}
	wg.Wait()
	if failed.Load() != 0 {
		t.Errorf("%d client connections failed, want 0", failed.Load())
	}
	if st := srv.Pools()[0].Servers[1]; st.State != upstream.Ejected && st.Failures == 0 {
		t.Errorf("killed server: %+v; want failures counted", st)
	}
}

// TestPoolEmptyClientNoFailure: a client that connects and closes
// without a byte (a port probe), to which the server closes in turn,
// costs the servers nothing: with failures: 1 it used to eject every
// server of the pool, retrying the empty exchange on each.
func TestPoolEmptyClientNoFailure(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)
	ss := []*lineServer{newLineServer(t, "a", "ok"), newLineServer(t, "b", "ok"), newLineServer(t, "c", "ok")}
	p := poolOf("api", ss...)
	p.Retry = 2
	p.Passive = upstream.Passive{Failures: 1, Eject: time.Minute}
	srv, addr, _ := startProxyWith(t, Options{Upstreams: []upstream.PoolConfig{p}}, ListenerConfig{Upstream: "api"})
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_ = c.(*net.TCPConn).CloseWrite()
		if b, err := io.ReadAll(c); err != nil || len(b) > 0 {
			t.Errorf("empty exchange: read %q, %v; want a clean end", b, err)
		}
		c.Close()
	}
	// Each probe reached one server; all three are up with no failure.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var accepted int64
		for _, s := range ss {
			accepted += s.accepted.Load()
		}
		if accepted >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, st := range srv.Pools()[0].Servers {
		if st.State != upstream.Up || st.Failures != 0 {
			t.Errorf("server %s: %v with %d failures after empty exchanges; want up with none", st.Address, st.State, st.Failures)
		}
	}
	if got, err := ask(addr, "x"); err != nil || !strings.HasSuffix(got, " x\n") {
		t.Errorf("ask after probes: %q, %v", got, err)
	}
}

// TestPoolHalfCloseClient: a client that sends its request and
// half-closes gets the whole answer through a pool that retries, even
// when the server closes before the pumps take over (the relay's
// half-close is not an error when the pump repeats it).
func TestPoolHalfCloseClient(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)
	ss := []*lineServer{newLineServer(t, "a", "ok"), newLineServer(t, "b", "ok")}
	p := poolOf("api", ss...)
	p.Retry = 1
	srv, addr, logs := startProxyWith(t, Options{Upstreams: []upstream.PoolConfig{p}}, ListenerConfig{Upstream: "api"})
	for i := range 20 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = fmt.Fprintf(c, "%d\n", i)
		_ = c.(*net.TCPConn).CloseWrite()
		b, err := io.ReadAll(c)
		c.Close()
		if err != nil || !strings.HasSuffix(string(b), fmt.Sprintf(" %d\n", i)) {
			t.Errorf("half-closed request %d: %q, %v", i, b, err)
		}
	}
	if st := srv.Pools()[0]; st.Servers[0].Failures+st.Servers[1].Failures != 0 {
		t.Errorf("failures counted for half-closed clients: %+v", st.Servers)
	}
	if strings.Contains(logs.String(), "not connected") {
		t.Errorf("a repeated half-close logged as an error:\n%s", logs.String())
	}
}

// TestPoolReloadKeepsState: a reload that keeps a pool keeps its
// servers' state; one that removes a server drains it.
func TestPoolReloadKeepsState(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)
	a, b := newLineServer(t, "a", "ok"), newLineServer(t, "b", "ok")
	p := poolOf("api", a, b)
	srv, addr, _ := startProxyWith(t, Options{Upstreams: []upstream.PoolConfig{p}}, ListenerConfig{Upstream: "api"})
	if err := srv.DrainServer("api", a.addr()); err != nil {
		t.Fatal(err)
	}
	cfg := srv.opts.Listeners[0]
	if err := srv.Reload(Options{Listeners: []ListenerConfig{cfg}, Upstreams: []upstream.PoolConfig{p}}, time.Second); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if got, err := ask(addr, fmt.Sprint(i)); err != nil || got != fmt.Sprintf("b %d\n", i) {
			t.Fatalf("after reload: %q, %v; want b's answers only (a still drained)", got, err)
		}
	}
	if err := srv.DrainServer("nope", a.addr()); !errors.Is(err, ErrNoPool) {
		t.Errorf("DrainServer(nope) = %v, want ErrNoPool", err)
	}
	if err := srv.DrainServer("api", "127.0.0.1:1"); !errors.Is(err, upstream.ErrUnknownServer) {
		t.Errorf("DrainServer(unknown server) = %v, want ErrUnknownServer", err)
	}
}

// TestPoolBadOptions: a listener naming no pool and no host:port, and a
// bad pool, are refused with errors naming them.
func TestPoolBadOptions(t *testing.T) {
	for _, c := range []struct {
		name string
		opts Options
		want string
	}{
		{"unknown pool", Options{Listeners: []ListenerConfig{{Addr: "127.0.0.1:0", Upstream: "api"}}}, `upstream "api": want host:port or the name of a pool`},
		{"bad pool", Options{Listeners: []ListenerConfig{{Addr: "127.0.0.1:0", Upstream: "api"}},
			Upstreams: []upstream.PoolConfig{{Name: "api"}}}, `upstream pool "api": servers`},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := New(c.opts); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("New = %v, want an error containing %q", err, c.want)
			}
		})
	}
}

// TestPoolBlackhole: a server that accepts nothing (its dials hang) costs
// at most passive.failures clients a wait of the connect timeout before
// it is ejected; every client still gets an answer, from the others.
func TestPoolBlackhole(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	checkRoutines(t)
	a, b := newLineServer(t, "a", "ok"), newLineServer(t, "b", "ok")
	p := poolOf("api", a, b)
	p.Servers = append(p.Servers, upstream.ServerConfig{Address: upstreamtest.Blackhole(t)})
	p.Retry = 2
	p.Passive = upstream.Passive{Failures: 2, Eject: time.Minute}
	const timeout = 300 * time.Millisecond
	_, addr, _ := startProxyWith(t, Options{Upstreams: []upstream.PoolConfig{p}}, ListenerConfig{Upstream: "api", ConnectTimeout: timeout})
	slow := 0
	for i := range 30 {
		start := time.Now()
		got, err := ask(addr, fmt.Sprint(i))
		if err != nil || !strings.HasSuffix(got, fmt.Sprintf(" %d\n", i)) {
			t.Fatalf("client %d: %q, %v", i, got, err)
		}
		if time.Since(start) >= timeout {
			slow++
		}
	}
	if slow == 0 || slow > 2 {
		t.Errorf("%d clients waited out the connect timeout, want 1 or 2 (passive.failures)", slow)
	}
}

// TestPoolEveryTryFails: when every server tried resets before its first
// byte, the client is reset, each failure is counted, and the server
// connections are closed; a silent server leaves the connection to the
// idle timeout, which is no failure of the server.
func TestPoolEveryTryFails(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)
	a, b := newLineServer(t, "a", "reset"), newLineServer(t, "b", "reset")
	p := poolOf("api", a, b)
	p.Retry = 1
	srv, addr, logs := startProxyWith(t, Options{Upstreams: []upstream.PoolConfig{p}}, ListenerConfig{Upstream: "api", IdleTimeout: 300 * time.Millisecond})
	if got, err := ask(addr, "x"); err == nil {
		t.Fatalf("every server reset: got %q, want an error", got)
	}
	waitLog(t, logs, "result=upstream_error")
	st := srv.Pools()[0]
	if st.Servers[0].Failures+st.Servers[1].Failures != 2 {
		t.Errorf("failures %d + %d, want 2", st.Servers[0].Failures, st.Servers[1].Failures)
	}
	a.mode.Store("silent")
	b.mode.Store("silent")
	if got, err := ask(addr, "y"); err == nil && got != "" {
		t.Fatalf("silent servers: got %q, want nothing", got)
	}
	waitLog(t, logs, "result=idle_timeout")
	st2 := srv.Pools()[0]
	if st2.Servers[0].Failures+st2.Servers[1].Failures != 2 {
		t.Errorf("after an idle timeout: failures %d + %d, want still 2", st2.Servers[0].Failures, st2.Servers[1].Failures)
	}
	eventually(t, func() bool { return srv.Pools()[0].Servers[0].Active+srv.Pools()[0].Servers[1].Active == 0 })
}

// TestPoolRevived: a server killed, ejected by its failures and marked
// down by checks takes connections again once its checks pass rise times,
// however long its ejection was to last.
func TestPoolRevived(t *testing.T) {
	defer test.TimeOut(30 * time.Second).Stop()
	checkRoutines(t)
	a, b := newLineServer(t, "a", "ok"), newLineServer(t, "b", "ok")
	p := poolOf("api", a, b)
	p.Retry = 1
	p.Passive = upstream.Passive{Failures: 1, Eject: time.Minute}
	p.Check = upstream.Check{Type: upstream.TCPCheck, Interval: 100 * time.Millisecond, Timeout: 50 * time.Millisecond, Rise: 2, Fall: 2}
	srv, addr, _ := startProxyWith(t, Options{Upstreams: []upstream.PoolConfig{p}}, ListenerConfig{Upstream: "api"})
	a.kill()
	for i := range 4 { // a's failures eject it; b answers all
		if got, err := ask(addr, fmt.Sprint(i)); err != nil || got != fmt.Sprintf("b %d\n", i) {
			t.Fatalf("with a killed: %q, %v", got, err)
		}
	}
	eventually(t, func() bool { return srv.Pools()[0].Servers[0].State == upstream.Down })
	a2 := newLineServerAt(t, "a", "ok", a.addr())
	eventually(t, func() bool { return srv.Pools()[0].Servers[0].State == upstream.Up })
	for i := range 4 {
		if _, err := ask(addr, fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if a2.accepted.Load() < 2 {
		t.Errorf("the revived server took %d of 4 connections, want its share (round robin: 2)", a2.accepted.Load())
	}
}

// TestPoolBlackholeConcurrent: with clients arriving on schedule, one
// every 2 ms whatever the others do, a server whose dials hang takes no
// new connection once passive.failures dials to it are pending with none
// answered for 20 ms: a few clients wait out the connect timeout, not the
// third of all arrivals until its dials time out (about 80 here).
func TestPoolBlackholeConcurrent(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	checkRoutines(t)
	a, b := newLineServer(t, "a", "ok"), newLineServer(t, "b", "ok")
	p := poolOf("api", a, b)
	p.Servers = append(p.Servers, upstream.ServerConfig{Address: upstreamtest.Blackhole(t)})
	p.Retry = 2
	p.Passive = upstream.Passive{Failures: 2, Eject: time.Minute}
	const timeout = 500 * time.Millisecond
	_, addr, _ := startProxyWith(t, Options{Upstreams: []upstream.PoolConfig{p}}, ListenerConfig{Upstream: "api", ConnectTimeout: timeout})
	var slow, failed atomic.Int64
	var wg sync.WaitGroup
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	const clients = 240
	for i := range clients {
		<-tick.C
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			if _, err := ask(addr, fmt.Sprint(i)); err != nil {
				failed.Add(1)
			}
			if time.Since(start) >= timeout {
				slow.Add(1)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d of %d clients waited out the connect timeout (passive.failures 2)", slow.Load(), clients)
	if failed.Load() != 0 || slow.Load() > 20 {
		t.Errorf("%d failed, %d waited out the connect timeout; want 0 and at most 20", failed.Load(), slow.Load())
	}
}

// TestPoolNoAnswerOverflows: when every server tried fails in the first
// exchange, the client gets the overflow page, or the overflow upstream's
// answer to its own bytes, replayed.
func TestPoolNoAnswerOverflows(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)
	a, b := newLineServer(t, "a", "reset"), newLineServer(t, "b", "reset")
	p := poolOf("api", a, b)
	p.Retry = 1
	page := "HTTP/1.1 503 Service Unavailable\r\n\r\nbusy\n"
	_, addr, _ := startProxyWith(t, Options{Upstreams: []upstream.PoolConfig{p}},
		ListenerConfig{Upstream: "api", Admission: Admission{Overflow: Overflow{Respond: []byte(page)}}})
	if got, err := ask(addr, "x"); err != nil || got != page {
		t.Errorf("no server answered, overflow page: %q, %v", got, err)
	}
	spill := newLineServer(t, "spill", "ok")
	srv2, addr2, _ := startProxyWith(t, Options{Upstreams: []upstream.PoolConfig{p}},
		ListenerConfig{Upstream: "api", Admission: Admission{Overflow: Overflow{Upstream: spill.addr()}}})
	if got, err := ask(addr2, "replayed"); err != nil || got != "spill replayed\n" {
		t.Errorf("no server answered, overflow upstream: %q, %v; want its answer to the replayed line", got, err)
	}
	if st := srv2.Stats()[0].Admission; st.Overflowed != 1 {
		t.Errorf("overflowed = %d, want 1", st.Overflowed)
	}
}
