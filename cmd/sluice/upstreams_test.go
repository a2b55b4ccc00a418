package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pion/transport/v2/test"

	"github.com/sluiceproxy/sluice/proxy/admin"
)

// backendEnv names the backend a re-run of the test binary serves as (see
// TestMain): a process the tests can kill and stop.
const backendEnv = "SLUICE_TEST_BACKEND"

// serveBackend serves, on a free loopback port it prints on stdout, one
// line per connection: an HTTP request ("GET ...") gets "200 OK" and the
// backend's name, any other line is answered "NAME LINE". It never
// returns.
func serveBackend(name string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			os.Exit(1)
		}
		go func() {
			defer c.Close()
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return
			}
			if strings.HasPrefix(line, "GET ") {
				fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s\n", len(name)+1, name)
				return
			}
			fmt.Fprintf(c, "%s %s", name, line)
		}()
	}
}

// backendProc is a backend process.
type backendProc struct {
	cmd  *exec.Cmd
	addr string
}

func startBackend(t *testing.T, name string) *backendProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), backendEnv+"="+name)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("backend %s: %v", name, err)
	}
	return &backendProc{cmd: cmd, addr: strings.TrimSpace(addr)}
}

// TestUpstreamProcesses: a pool of three backend processes behind `sluice
// run`. One is SIGKILLed while clients open 200 connections a second: no
// client connection fails. Another is SIGSTOPped: its http checks mark it
// down within two intervals and the timeout; SIGCONT brings it back after
// rise checks. `sluice top` shows the pool.
func TestUpstreamProcesses(t *testing.T) {
	defer test.TimeOut(90 * time.Second).Stop()
	bs := []*backendProc{startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")}
	dir := t.TempDir()
	page := "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 30\r\n\r\nBusy: see https://mirror.example/\n"
	for name, body := range map[string]string{"token": "tok\n", "busy.http": page} {
		if err := os.WriteFile(dir+"/"+name, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	const interval, timeout = 300 * time.Millisecond, 100 * time.Millisecond
	conf := fmt.Sprintf(`log: {format: json}
admin: {listen: '127.0.0.1:0', token_file: '%s/token'}
upstreams:
  api:
    balance: round_robin
    servers: ['%s', '%s', '%s']
    check: {type: http, interval: %s, timeout: %s, rise: 2, fall: 2}
    passive: {failures: 1, eject: 5s}
    retry: 2
listeners:
  - {name: api, listen: '127.0.0.1:0', upstream: api, timeouts: {connect: 1s}, overflow: {respond_file: '%s/busy.http'}}
`, dir, bs[0].addr, bs[1].addr, bs[2].addr, interval, timeout, dir)
	p := startSluice(t, conf)
	api := &adminClient{base: p.adminURL(t), token: "tok", http: &http.Client{Timeout: 10 * time.Second}}
	addr := p.waitLine(t, "listening", map[string]any{"listener": "api"})["addr"].(string)
	ask := func(line string) error {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, line+"\n"); err != nil {
			return err
		}
		b, err := io.ReadAll(c)
		if err == nil && !strings.HasSuffix(string(b), " "+line+"\n") {
			err = fmt.Errorf("answer %q", b)
		}
		return err
	}

	// 200 connections a second for 2 s; b is killed after 0.5 s.
	var failed, done atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for i := 0; i < 100; i++ {
				<-tick.C
				if err := ask(fmt.Sprintf("%d-%d", w, i)); err != nil {
					failed.Add(1)
					t.Errorf("client %d-%d: %v", w, i, err)
				}
				done.Add(1)
			}
		}()
	}
	killAt := time.NewTimer(500 * time.Millisecond)
	<-killAt.C
	if err := bs[1].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	rate := float64(done.Load()) / time.Since(start).Seconds()
	t.Logf("%d connections at %.0f/s, %d failed, one of three servers killed", done.Load(), rate, failed.Load())
	if failed.Load() != 0 {
		t.Errorf("%d client connections failed, want 0", failed.Load())
	}

	state := func(server string) string {
		var pool admin.PoolJSON
		if err := api.do(context.Background(), "GET", "/v1/upstreams/api", nil, &pool); err != nil {
			t.Fatal(err)
		}
		for _, s := range pool.Servers {
			if s.Address == server {
				return s.State
			}
		}
		t.Fatalf("no server %s in %+v", server, pool)
		return ""
	}
	waitState := func(server, want string, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for state(server) != want {
			if time.Since(start) > within {
				t.Fatalf("%s: %s after %s, want %s", server, state(server), within, want)
			}
			time.Sleep(10 * time.Millisecond) // polling another process's state
		}
		return time.Since(start)
	}
	if s := state(bs[1].addr); s != "down" && s != "ejected" {
		t.Errorf("the killed server is %s, want down or ejected", s)
	}

	// c stops: its checks time out; down within 2 intervals + timeout.
	if err := bs[2].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	took := waitState(bs[2].addr, "down", 10*time.Second)
	t.Logf("a stopped server is down after %s (interval %s, timeout %s, fall 2)", took, interval, timeout)
	if limit := 2*interval + timeout + 200*time.Millisecond; took > limit { // the target is 2 intervals + timeout; polling and a busy machine add some
		t.Errorf("a stopped server took %s to be marked down, want at most %s", took, limit)
	}
	if err := bs[2].cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	took = waitState(bs[2].addr, "up", 10*time.Second)
	t.Logf("back up %s after SIGCONT (rise 2)", took)

	var stdout, stderr strings.Builder
	if code := execute([]string{"top", "--admin", api.base, "--count", "1", "--interval", "100ms"}, &stdout, &stderr); code != exitOK {
		t.Fatalf("sluice top: exit %d: %s", code, stderr.String())
	}
	for _, want := range []string{"UPSTREAM", bs[0].addr, "up"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("sluice top lacks %q:\n%s", want, stdout.String())
		}
	}
	p.waitLine(t, "upstream server state", map[string]any{"server": bs[2].addr, "to": "down"})

	// Every server gone: clients get the notice page, and the spell is
	// logged once.
	for _, b := range bs {
		_ = b.cmd.Process.Kill()
	}
	for _, b := range bs {
		waitState(b.addr, "down", 10*time.Second)
	}
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(got) != page {
			t.Fatalf("no server: %q, %v; want the notice page", got, err)
		}
	}
	p.waitLine(t, "upstream pool: no server can take a connection", map[string]any{"pool": "api"})
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	_ = p.wait(t, 10*time.Second)
}
