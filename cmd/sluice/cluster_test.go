package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pion/transport/v2/test"

	"github.com/sluiceproxy/sluice/config"
	"github.com/sluiceproxy/sluice/proxy"
)

// The cluster's end-to-end tests: real redis-server processes on random
// loopback ports, and sluice instances in this process wired as `sluice
// run` wires them (newClusterNode, proxyOptions, attach).

// needRedisServer returns the path of redis-server, or ends the test: a
// skip locally, a failure under CI=true.
func needRedisServer(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redis-server not found under CI=true: %v", err)
		}
		t.Skipf("redis-server not found: %v", err)
	}
	return p
}

// redisProc is a redis-server a test started, with no persistence.
type redisProc struct {
	t    testing.TB
	bin  string
	port int
	dir  string
	args []string // replace the default flags (a sentinel's), or nil

	mu  sync.Mutex
	cmd *exec.Cmd
}

func startRedisProc(t testing.TB) *redisProc {
	t.Helper()
	r := &redisProc{t: t, bin: needRedisServer(t), port: freeLoopbackPort(t), dir: t.TempDir()}
	r.start()
	t.Cleanup(r.kill)
	return r
}

func freeLoopbackPort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func (r *redisProc) addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

// start runs redis-server and waits until it answers PING.
func (r *redisProc) start() {
	r.t.Helper()
	args := r.args
	if args == nil {
		args = []string{"--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", r.dir}
	}
	cmd := exec.Command(r.bin, args...)
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("start redis-server: %v", err)
	}
	r.mu.Lock()
	r.cmd = cmd
	r.mu.Unlock()
	pollUntil(r.t, 10*time.Second, "redis-server answers PING", func() bool {
		reply, err := redisCommand(r.addr(), "PING")
		return err == nil && reply == "+PONG"
	})
}

// signal sends sig to redis-server (SIGSTOP, SIGCONT).
func (r *redisProc) signal(sig syscall.Signal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		_ = r.cmd.Process.Signal(sig)
	}
}

// kill SIGKILLs redis-server and reaps it.
func (r *redisProc) kill() {
	r.mu.Lock()
	cmd := r.cmd
	r.cmd = nil
	r.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	}
}

// redisCommand sends one inline command and returns the first line of
// the reply (no go-redis outside shaper/cluster).
func redisCommand(addr, cmd string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(c, cmd+"\r\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// pollUntil polls cond every 5 ms until it holds, or fails the test after
// d. It returns how long it took.
func pollUntil(t testing.TB, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(5 * time.Millisecond) // polling an outside process or another goroutine's state
	}
	return time.Since(start)
}

// stops are what a test started, stopped in reverse order by a deferred
// run, before test.CheckRoutines looks (t.Cleanup would come after it).
type stops []func()

func (s *stops) push(f func()) { *s = append(*s, f) }

func (s *stops) run() {
	for i := len(*s) - 1; i >= 0; i-- {
		(*s)[i]()
	}
}

// streamBackend accepts connections and writes zeros to each until it
// closes.
func streamBackend(t *testing.T, st *stops) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	st.push(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 64<<10)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln
}

// instance is a sluice wired as `sluice run` wires it, in this process.
type instance struct {
	d    *sluiced
	addr string // the listener's
}

func startInstance(t *testing.T, st *stops, yaml string) *instance {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	d := &sluiced{cfg: cfg, log: log}
	if d.cluster, err = newClusterNode(cfg, log); err != nil {
		t.Fatal(err)
	}
	opts := d.proxyOptions(cfg)
	opts.Logger = log
	if d.srv, err = proxy.New(opts); err != nil {
		t.Fatal(err)
	}
	d.cluster.attach(d.srv, cfg)
	if err := d.srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	in := &instance{d: d, addr: d.srv.Stats()[0].Addr}
	st.push(in.stop)
	return in
}

func (in *instance) stop() {
	_ = in.d.srv.Close()
	in.d.cluster.close()
}

func clusterYAML(redis, instance, upstream, extra string) string {
	return fmt.Sprintf(`
cluster: {redis: {address: %q}, lease: 100ms, instances: 2, instance: %s}
links:
  line: {down: {rate: 4MB/s}, cluster: true}
%s
listeners:
  - {name: web, listen: '127.0.0.1:0', upstream: %q, links: [line], limits: [per-ip], bans: scanners}
`, redis, instance, extra, upstream)
}

const clusterAdmission = `
limits:
  per-ip: {conns: 3, cluster: true}
bans:
  scanners: {count: refusals, tiers: [{over: 100, per: 10s, ban: 1m}], cluster: true}
`

// reader reads a connection until it fails, counting bytes.
type reader struct {
	c     net.Conn
	n     atomic.Int64
	err   error
	done  chan struct{}
	close sync.Once
}

func startReader(t *testing.T, st *stops, addr string) *reader {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	r := &reader{c: c, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			r.n.Add(int64(n))
			if err != nil {
				r.err = err
				return
			}
		}
	}()
	st.push(r.stop)
	return r
}

func (r *reader) stop() {
	r.close.Do(func() { r.c.Close() })
	<-r.done
}

// broken reports whether the connection ended before the test closed it.
func (r *reader) broken() error {
	select {
	case <-r.done:
		return fmt.Errorf("connection ended: %w", r.err)
	default:
		return nil
	}
}

func sum(rs []*reader) int64 {
	var n int64
	for _, r := range rs {
		n += r.n.Load()
	}
	return n
}

// TestClusterLinkShared: two instances share a 4 MB/s line through Redis,
// three connections on one and one on the other: together they stay at
// the line, split per connection; Redis SIGKILLed mid-transfer breaks no
// connection and lets no more through; leases resume on its return.
func TestClusterLinkShared(t *testing.T) {
	defer test.TimeOut(40 * time.Second).Stop()
	defer test.CheckRoutines(t)()
	var st stops
	defer st.run()
	const line = 4_000_000
	redis := startRedisProc(t)
	backend := streamBackend(t, &st)
	a := startInstance(t, &st, clusterYAML(redis.addr(), "a", backend.Addr().String(), clusterAdmission))
	b := startInstance(t, &st, clusterYAML(redis.addr(), "b", backend.Addr().String(), clusterAdmission))
	var onA, all []*reader
	for range 3 {
		onA = append(onA, startReader(t, &st, a.addr))
	}
	onB := startReader(t, &st, b.addr)
	all = append(onA, onB)

	measure := func(d time.Duration) (total, bBytes int64) {
		t0, b0 := sum(all), onB.n.Load()
		start := time.Now()
		time.Sleep(d) // the measure's window, in real time
		el := time.Since(start).Seconds()
		return int64(float64(sum(all)-t0) / el), int64(float64(onB.n.Load()-b0) / el)
	}
	time.Sleep(700 * time.Millisecond) // let the leases settle (first period, holds)
	rate, bRate := measure(1500 * time.Millisecond)
	t.Logf("leased: aggregate %d B/s (line %d), instance b %d B/s", rate, line, bRate)
	if rate > line*115/100 || rate < line*70/100 {
		t.Errorf("aggregate %d B/s, want the line %d B/s (±15%%, -30%%)", rate, line)
	}
	// One connection of four on b: a quarter of the line.
	if frac := float64(bRate) / float64(rate); frac < 0.15 || frac > 0.40 {
		t.Errorf("instance b (1 of 4 connections) took %.2f of the aggregate, want about 0.25", frac)
	}
	for _, in := range []*instance{a, b} {
		if st := in.d.cluster.status(); st.State != "leased" {
			t.Errorf("instance %s: state %s, want leased", st.Instance, st.State)
		}
	}

	redis.kill()
	pollUntil(t, 2*time.Second, "instance a falls back", func() bool { return a.d.cluster.status().State == "fallback" })
	rate, _ = measure(1500 * time.Millisecond)
	t.Logf("redis down: aggregate %d B/s", rate)
	if rate > line*115/100 {
		t.Errorf("aggregate with redis down %d B/s, want at most the line %d B/s (+15%%)", rate, line)
	}
	for i, r := range all {
		if err := r.broken(); err != nil {
			t.Fatalf("connection %d broke while redis was down: %v", i, err)
		}
	}
	redis.start()
	for _, in := range []*instance{a, b} {
		pollUntil(t, 3*time.Second, "leases resume", func() bool { return in.d.cluster.status().State == "leased" })
	}
	for i, r := range all {
		if err := r.broken(); err != nil {
			t.Fatalf("connection %d broke: %v", i, err)
		}
		r.stop()
	}
}

// refused reports whether a new connection to addr is refused (closed
// before any byte of the backend arrives) rather than served.
func refused(t *testing.T, addr string) bool {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	var b [1]byte
	n, err := c.Read(b[:])
	switch {
	case n > 0:
		return false
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
		return true
	}
	t.Fatalf("read: %d, %v: neither served nor refused", n, err)
	return false
}

// TestClusterAdmission: a connection limit counts the connections of
// every instance, and a ban made on one instance refuses the client on
// the other within about a lease period.
func TestClusterAdmission(t *testing.T) {
	defer test.TimeOut(30 * time.Second).Stop()
	defer test.CheckRoutines(t)()
	var st stops
	defer st.run()
	redis := startRedisProc(t)
	backend := streamBackend(t, &st)
	a := startInstance(t, &st, clusterYAML(redis.addr(), "a", backend.Addr().String(), clusterAdmission))
	b := startInstance(t, &st, clusterYAML(redis.addr(), "b", backend.Addr().String(), clusterAdmission))
	counterOf := func(in *instance) *sharedCounter {
		in.d.cluster.mu.Lock()
		defer in.d.cluster.mu.Unlock()
		return in.d.cluster.counters["limit/per-ip/1s"]
	}

	// per-ip: 3 connections over the cluster. Three on a, then b refuses.
	var held []*reader
	for range 3 {
		held = append(held, startReader(t, &st, a.addr))
	}
	// b has not seen the client yet: its first reading of the key (a
	// connection attempt, or here a look) fetches the others' counts at
	// the next renewal.
	pollUntil(t, 2*time.Second, "b sees a's connections", func() bool {
		return counterOf(b).Get("127.0.0.1").RemoteConns == 3
	})
	if !refused(t, b.addr) {
		t.Errorf("b served a 4th connection of the client: want refused (per-ip conns: 3 over the cluster)")
	}
	held[0].stop()
	pollUntil(t, 2*time.Second, "b sees a connection closed on a", func() bool {
		return counterOf(b).Get("127.0.0.1").RemoteConns == 2
	})
	if refused(t, b.addr) {
		t.Errorf("b refused the client with 2 connections open in the cluster: want served")
	}
	for _, r := range held[1:] {
		r.stop()
	}

	// A ban on a holds on b.
	key := netip.MustParsePrefix("127.0.0.1/32")
	if err := a.d.srv.AddBan("scanners", key, time.Minute); err != nil {
		t.Fatal(err)
	}
	took := pollUntil(t, 2*time.Second, "the ban reaches b", func() bool {
		for _, bi := range b.d.srv.Bans() {
			if bi.Ban == "scanners" && bi.Key == "127.0.0.1/32" {
				return true
			}
		}
		return false
	})
	t.Logf("ban visible on b after %s", took)
	if took > 500*time.Millisecond {
		t.Errorf("ban reached b after %s, want within about 100 ms (500 ms on a busy machine)", took)
	}
	if !refused(t, b.addr) {
		t.Errorf("b served a client banned on a")
	}
	// Lifted on b (the admin API's call): lifted on a too.
	if ok, err := b.d.srv.LiftBan("scanners", key); !ok || err != nil {
		t.Fatalf("LiftBan on b = %v, %v", ok, err)
	}
	pollUntil(t, 2*time.Second, "the lift reaches a", func() bool { return len(a.d.srv.Bans()) == 0 })
	if st := a.d.cluster.status(); st.BansSent < 1 || st.BansReceived < 1 {
		t.Errorf("a: bans sent %d, received %d, want at least 1 each", st.BansSent, st.BansReceived)
	}
}

// TestClusterReload: a reload that changes a cluster link's rate takes a
// new lease at the new line; one that turns cluster off gives the link
// back its configured rate; adding the cluster: block is refused.
func TestClusterReload(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	defer test.CheckRoutines(t)()
	var st stops
	defer st.run()
	redis := startRedisProc(t)
	backend := streamBackend(t, &st)
	in := startInstance(t, &st, clusterYAML(redis.addr(), "a", backend.Addr().String(), clusterAdmission))
	d := in.d
	reload := func(yaml string) {
		t.Helper()
		cfg, err := config.Parse([]byte(yaml))
		if err != nil {
			t.Fatal(err)
		}
		if err := d.checkClusterReload(cfg); err != nil {
			t.Fatal(err)
		}
		if err := d.srv.Reload(d.proxyOptions(cfg), 0); err != nil {
			t.Fatal(err)
		}
		d.cluster.sync(cfg)
		d.cfg = cfg
	}
	linkRate := func() int64 { return d.srv.Links(false)[0].Dirs[proxy.Down].Limit.Rate }
	// The only instance of the cluster: the whole line.
	pollUntil(t, 2*time.Second, "leased at 4 MB/s", func() bool { return linkRate() == 4_000_000 })

	reload(strings.Replace(clusterYAML(redis.addr(), "a", backend.Addr().String(), clusterAdmission), "4MB/s", "2MB/s", 1))
	pollUntil(t, 2*time.Second, "leased at the new line", func() bool {
		st := d.cluster.status()
		return len(st.Links) == 1 && st.Links[0].Line == 2_000_000 && linkRate() == 2_000_000
	})

	off := strings.Replace(clusterYAML(redis.addr(), "a", backend.Addr().String(), clusterAdmission), "rate: 4MB/s}, cluster: true", "rate: 3MB/s}", 1)
	reload(off)
	if got := linkRate(); got != 3_000_000 {
		t.Errorf("link rate after cluster: false = %d, want its configured 3000000", got)
	}
	pollUntil(t, 2*time.Second, "the lease is given back", func() bool { return len(d.cluster.status().Links) == 0 })

	none, err := config.Parse([]byte("listeners: [{listen: '127.0.0.1:0', upstream: 'a:1'}]"))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.checkClusterReload(none); err == nil || !strings.Contains(err.Error(), "takes a restart") {
		t.Errorf("reload without the cluster: block: %v, want refused", err)
	}
}

// TestClusterCheck: sluice check validates the cluster: block's TLS
// files without connecting to Redis.
func TestClusterCheck(t *testing.T) {
	dir := t.TempDir()
	ca := dir + "/ca.pem"
	if err := os.WriteFile(ca, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := writeConfig(t, "cluster: {redis: {address: '127.0.0.1:1', tls: {ca_file: "+ca+"}}}\n"+
		"links: {line: {down: {rate: 1MB/s}, cluster: true}}\nlisteners: [{listen: '127.0.0.1:0', upstream: 'a:1', links: [line]}]\n")
	var out, errb strings.Builder
	if code := execute([]string{"check", "--config", path}, &out, &errb); code != exitConfig || !strings.Contains(errb.String(), "cluster.redis.tls.ca_file: want PEM certificates") {
		t.Errorf("check = %d, %s, want exit %d naming the ca_file", code, errb.String(), exitConfig)
	}
	path = writeConfig(t, "cluster: {redis: {address: '127.0.0.1:1'}}\n"+
		"links: {line: {down: {rate: 1MB/s}, cluster: true}}\nlisteners: [{listen: '127.0.0.1:0', upstream: 'a:1', links: [line]}]\n")
	out.Reset()
	if code := execute([]string{"check", "--config", path}, &out, &errb); code != exitOK || !strings.Contains(out.String(), "cluster: true") {
		t.Errorf("check of a cluster config with Redis down = %d, %s", code, out.String())
	}
}

// TestClusterRedisStopped: Redis SIGSTOPped for 3 s (it accepts, never
// answers): the instance falls back, and a ping-pong through a cluster
// link keeps its round trip, since no pump waits on Redis.
func TestClusterRedisStopped(t *testing.T) {
	defer test.TimeOut(40 * time.Second).Stop()
	var st stops
	defer st.run()
	redis := startRedisProc(t)
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	st.push(func() { echo.Close() })
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	a := startInstance(t, &st, clusterYAML(redis.addr(), "a", echo.Addr().String(), clusterAdmission))
	c, err := net.Dial("tcp", a.addr)
	if err != nil {
		t.Fatal(err)
	}
	st.push(func() { c.Close() })
	// pings ping-pongs 64 bytes for span and returns the p50 and p99.
	pings := func(span time.Duration) (p50, p99 time.Duration) {
		t.Helper()
		var d []time.Duration
		buf := make([]byte, 64)
		for end := time.Now().Add(span); time.Now().Before(end); {
			start := time.Now()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(buf); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				t.Fatal(err)
			}
			d = append(d, time.Since(start))
		}
		slices.Sort(d)
		return d[len(d)/2], d[len(d)*99/100]
	}
	pollUntil(t, 3*time.Second, "leased", func() bool { return a.d.cluster.status().State == "leased" })
	b50, b99 := pings(time.Second)
	redis.signal(syscall.SIGSTOP)
	st.push(func() { redis.signal(syscall.SIGCONT) })
	s50, s99 := pings(3 * time.Second)
	if state := a.d.cluster.status().State; state != "fallback" {
		t.Errorf("after 3 s of a stopped redis: state %s, want fallback", state)
	}
	t.Logf("ping-pong p50/p99 %v/%v leased, %v/%v over 3 s with redis stopped", b50, b99, s50, s99)
	if s99 > b99+20*time.Millisecond {
		t.Errorf("p99 with redis stopped %v, leased %v: a pump waited on redis", s99, b99)
	}
	redis.signal(syscall.SIGCONT)
	pollUntil(t, 5*time.Second, "leased again", func() bool { return a.d.cluster.status().State == "leased" })
}

// startReplica starts a redis-server replicating master.
func startReplica(t testing.TB, master *redisProc) *redisProc {
	t.Helper()
	r := &redisProc{t: t, bin: needRedisServer(t), port: freeLoopbackPort(t), dir: t.TempDir()}
	r.args = []string{"--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", r.dir,
		"--replicaof", "127.0.0.1", strconv.Itoa(master.port)}
	r.start()
	t.Cleanup(r.kill)
	return r
}

// startSentinelProc starts a sentinel watching master as "sluice-master",
// quick to act (down after 400 ms).
func startSentinelProc(t testing.TB, master *redisProc) *redisProc {
	t.Helper()
	r := &redisProc{t: t, bin: needRedisServer(t), port: freeLoopbackPort(t), dir: t.TempDir()}
	conf := filepath.Join(r.dir, "sentinel.conf")
	body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor sluice-master 127.0.0.1 %d 2\n"+
		"sentinel down-after-milliseconds sluice-master 400\nsentinel failover-timeout sluice-master 2000\n",
		r.port, r.dir, master.port)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	r.args = []string{conf, "--sentinel"}
	r.start()
	t.Cleanup(r.kill)
	return r
}

// redisReply sends one inline command and returns the whole reply, read
// until the server is quiet for 100 ms.
func redisReply(addr, cmd string) string {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return ""
	}
	defer c.Close()
	if _, err := io.WriteString(c, cmd+"\r\n"); err != nil {
		return ""
	}
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := c.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}

// TestClusterSentinelFailover: an instance joins the cluster through three
// sentinels; the master is SIGKILLed during a transfer: the transfer goes
// on, and leases resume from the promoted replica.
func TestClusterSentinelFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("a failover takes seconds")
	}
	defer test.TimeOut(60 * time.Second).Stop()
	var st stops
	defer st.run()
	master := startRedisProc(t)
	replica := startReplica(t, master)
	var sentinels []string
	for range 3 {
		sentinels = append(sentinels, fmt.Sprintf("%q", startSentinelProc(t, master).addr()))
	}
	backend := streamBackend(t, &st)
	conf := fmt.Sprintf(`
cluster: {redis: {sentinel: {master: sluice-master, addresses: [%s]}}, lease: 100ms, instances: 1, instance: a}
links:
  line: {down: {rate: 4MB/s}, cluster: true}
listeners:
  - {name: web, listen: '127.0.0.1:0', upstream: %q, links: [line]}
`, strings.Join(sentinels, ", "), backend.Addr().String())
	a := startInstance(t, &st, conf)
	r := startReader(t, &st, a.addr)
	pollUntil(t, 5*time.Second, "leased through the sentinels", func() bool { return a.d.cluster.status().State == "leased" })
	pollUntil(t, 10*time.Second, "the replica in sync", func() bool {
		return strings.Contains(redisReply(replica.addr(), "INFO replication"), "master_link_status:up")
	})
	before := r.n.Load()
	killed := time.Now()
	master.kill()
	pollUntil(t, 5*time.Second, "the instance notices", func() bool { return a.d.cluster.status().State != "leased" })
	pollUntil(t, 30*time.Second, "leased after the failover", func() bool { return a.d.cluster.status().State == "leased" })
	t.Logf("leased again %v after the master was killed", time.Since(killed).Round(time.Millisecond))
	if err := r.broken(); err != nil {
		t.Fatalf("the transfer broke in the failover: %v", err)
	}
	if r.n.Load() <= before {
		t.Errorf("the transfer moved nothing during the failover")
	}
	r.stop()
}
