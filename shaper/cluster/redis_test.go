package cluster_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// needRedis returns the path of redis-server, or ends the test: a skip
// locally, a failure under CI=true.
func needRedis(t testing.TB) string {
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

// freePort returns a loopback port nobody listens on now.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// redisServer is a redis-server (or sentinel) process a test started.
type redisServer struct {
	t    testing.TB
	bin  string
	port int
	args []string
	tls  *tls.Config // the readiness check's, for a TLS-only server

	mu  sync.Mutex
	cmd *exec.Cmd
}

// startRedis starts redis-server on a free loopback port, with no
// persistence, and waits until it answers PING. It is killed at cleanup.
func startRedis(t testing.TB, extra ...string) *redisServer {
	t.Helper()
	s := &redisServer{t: t, bin: needRedis(t), port: freePort(t)}
	s.args = append([]string{"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir()}, extra...)
	s.start()
	t.Cleanup(s.kill)
	return s
}

// startSentinel starts a sentinel watching master under name.
func startSentinel(t testing.TB, name string, master *redisServer) *redisServer {
	t.Helper()
	s := &redisServer{t: t, bin: needRedis(t), port: freePort(t)}
	dir := t.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor %s 127.0.0.1 %d 2\n"+
		"sentinel down-after-milliseconds %s 400\nsentinel failover-timeout %s 2000\nsentinel parallel-syncs %s 1\n",
		s.port, dir, name, master.port, name, name, name)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	s.args = []string{conf, "--sentinel"}
	s.start()
	t.Cleanup(s.kill)
	return s
}

func (s *redisServer) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

func (s *redisServer) start() {
	s.t.Helper()
	cmd := exec.Command(s.bin, s.args...)
	if os.Getenv("SLUICE_TEST_REDIS_LOG") != "" {
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start redis-server: %v", err)
	}
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1, DialTimeout: 100 * time.Millisecond, TLSConfig: s.tls})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil || strings.HasPrefix(err.Error(), "NOAUTH") {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server on %s does not answer: %v", s.Addr(), err)
		}
		time.Sleep(10 * time.Millisecond) // polling for the process to listen
	}
}

func (s *redisServer) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		_ = s.cmd.Process.Signal(sig)
	}
}

// kill SIGKILLs the process (even a stopped one) and reaps it.
func (s *redisServer) kill() {
	s.mu.Lock()
	cmd := s.cmd
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
}

func (s *redisServer) restart() { s.start() }
func (s *redisServer) pause()   { s.signal(syscall.SIGSTOP) }
func (s *redisServer) resume()  { s.signal(syscall.SIGCONT) }

// client returns a plain client for a test to look into the server.
func (s *redisServer) client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	s.t.Cleanup(func() { c.Close() })
	return c
}

// commandCalls returns the calls of each command so far (INFO
// commandstats), e.g. "evalsha".
func (s *redisServer) commandCalls() map[string]int64 {
	s.t.Helper()
	info, err := s.client().Info(context.Background(), "commandstats").Result()
	if err != nil {
		s.t.Fatalf("info commandstats: %v", err)
	}
	out := map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		name, rest, ok := strings.Cut(strings.TrimPrefix(line, "cmdstat_"), ":calls=")
		if !ok || !strings.HasPrefix(line, "cmdstat_") {
			continue
		}
		n, _ := strconv.ParseInt(strings.SplitN(rest, ",", 2)[0], 10, 64)
		out[name] = n
	}
	return out
}

// eventually polls cond every 5 ms until it holds or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(5 * time.Millisecond) // polling
	}
	return time.Since(start)
}
