package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pion/transport/v2/test"
)

var sluiceBin string

// procsAtStart is GOMAXPROCS before any test ran.
var procsAtStart = runtime.GOMAXPROCS(0)

func TestMain(m *testing.M) {
	if name := os.Getenv(backendEnv); name != "" {
		serveBackend(name) // a backend process of a test; never returns
	}
	dir, err := os.MkdirTemp("", "sluice-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sluiceBin = filepath.Join(dir, "sluice")
	build := exec.Command("go", "build", "-race", "-o", sluiceBin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		// Without -race support (no cgo), build a plain binary.
		build = exec.Command("go", "build", "-o", sluiceBin, ".")
		build.Stderr = os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build sluice:", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sluice.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name     string
		config   string
		code     int
		inStdout []string
		inStderr []string
	}{
		{
			name:     "valid prints effective config",
			config:   "listeners: [{name: web, listen: '127.0.0.1:0', upstream: '127.0.0.1:9'}]",
			code:     exitOK,
			inStdout: []string{"is valid", "name: web", "connect: 5s", "idle: 5m0s", "drain: 30s"},
		},
		{
			name:     "invalid names the key",
			config:   "listeners: [{name: web, listen: '127.0.0.1:0', upstream: 'nohost', timeout: {idle: 1s}}]",
			code:     exitConfig,
			inStderr: []string{"is invalid", `listeners[0].upstream: want "host:port"`, "listeners[0].timeout: unknown key"},
		},
		{
			name: "admission values explained",
			config: "limits: {per-ip: {rate: 5, burst: 3, delay: 4}}\nbans: {b: {tiers: [{over: 5, per: 10s}]}}\n" +
				"listeners: [{name: web, listen: '127.0.0.1:0', upstream: '127.0.0.1:9', limits: [per-ip, nope], refuse: overflow}]",
			code: exitConfig,
			inStderr: []string{`limits.per-ip.rate: want a connection rate like "100/s" or "30/m"`, "limits.per-ip.delay: want at most burst (3)",
				"bans.b.tiers[0].ban: is required", `listeners[0].limits[1]: no limits entry "nope"`, "listeners[0].refuse: overflow needs a target"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := execute([]string{"check", "--config", writeConfig(t, tc.config)}, &stdout, &stderr)
			if code != tc.code {
				t.Fatalf("exit code %d, want %d; stderr: %s", code, tc.code, stderr.String())
			}
			for _, want := range tc.inStdout {
				if !strings.Contains(stdout.String(), want) {
					t.Errorf("stdout lacks %q:\n%s", want, stdout.String())
				}
			}
			for _, want := range tc.inStderr {
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
				}
			}
		})
	}
}

func TestCheckShippedExample(t *testing.T) {
	for _, f := range []string{"sluice.yaml", "links.yaml", "mp4.yaml", "protect.yaml", "upstreams.yaml"} {
		var stdout, stderr bytes.Buffer
		if code := execute([]string{"check", "--config", "../../examples/" + f}, &stdout, &stderr); code != exitOK {
			t.Fatalf("examples/%s: exit %d: %s", f, code, stderr.String())
		}
	}
}

func TestVersionAndUsage(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := execute([]string{"version"}, &stdout, &stderr); code != exitOK || !strings.HasPrefix(stdout.String(), "sluice ") {
		t.Errorf("version: exit %d, output %q", code, stdout.String())
	}
	stdout.Reset()
	if code := execute([]string{"run", "--nope"}, &stdout, &stderr); code != exitConfig {
		t.Errorf("unknown flag: exit %d, want %d", code, exitConfig)
	}
}

// proc is a running sluice binary whose JSON log lines a test reads.
type proc struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []map[string]any
	added chan struct{} // receives after each new line
	done  chan error
}

func startSluice(t *testing.T, config string) *proc {
	t.Helper()
	if !strings.Contains(config, "admin:") {
		config = "admin: {listen: '127.0.0.1:0'}\n" + config
	}
	return startCmd(t, exec.Command(sluiceBin, "run", "--config", writeConfig(t, config)))
}

// startCmd starts a sluice command and collects its JSON log lines.
func startCmd(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, added: make(chan struct{}, 1), done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				m = map[string]any{"msg": "unparsed: " + sc.Text()}
			}
			p.mu.Lock()
			p.lines = append(p.lines, m)
			p.mu.Unlock()
			select {
			case p.added <- struct{}{}:
			default:
			}
		}
		p.done <- cmd.Wait()
		close(p.added)
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
		}
	})
	return p
}

// waitLine returns the first log line with msg whose fields include want.
func (p *proc) waitLine(t *testing.T, msg string, want map[string]any) map[string]any {
	t.Helper()
	timeout := time.After(10 * time.Second)
	seen := 0
	for {
		p.mu.Lock()
		lines := p.lines
		p.mu.Unlock()
		for ; seen < len(lines); seen++ {
			l := lines[seen]
			if l["msg"] != msg {
				continue
			}
			ok := true
			for k, v := range want {
				ok = ok && fmt.Sprint(l[k]) == fmt.Sprint(v)
			}
			if ok {
				return l
			}
		}
		select {
		case _, open := <-p.added:
			if !open {
				p.mu.Lock()
				n := len(p.lines)
				p.mu.Unlock()
				if seen == n {
					t.Fatalf("sluice exited without logging %q %v; log: %v", msg, want, lines)
				}
			}
		case <-timeout:
			t.Fatalf("no %q %v log line within 10s; log: %v", msg, want, lines)
		}
	}
}

func (p *proc) wait(t *testing.T, within time.Duration) error {
	t.Helper()
	select {
	case err := <-p.done:
		return err
	case <-time.After(within):
		t.Fatalf("sluice still running %v after the signal", within)
		return nil
	}
}

func listenBackend(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// connectThrough waits for sluice's listener, connects a client through it
// and returns the listener's address, the client and the backend's side.
// Both connections close at the end of the test.
func connectThrough(t *testing.T, p *proc, ln net.Listener) (string, net.Conn, net.Conn) {
	t.Helper()
	addr := p.waitLine(t, "listening", map[string]any{"listener": "t"})["addr"].(string)
	client, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return addr, client, server
}

const runConfig = `
log: {format: json, level: info}
listeners:
  - name: t
    listen: 127.0.0.1:0
    upstream: %s
shutdown: {drain: %s}
`

// TestRunSIGTERMDrains runs the real binary: on SIGTERM it stops accepting,
// lets the live connection finish, then exits 0.
func TestRunSIGTERMDrains(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	ln := listenBackend(t)
	p := startSluice(t, fmt.Sprintf(runConfig, ln.Addr(), "30s"))
	addr, client, server := connectThrough(t, p, ln)
	// Probes below may slip in before the listener closes: end them.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	p.cmd.Process.Signal(syscall.SIGHUP) // an unchanged config: nothing changes
	p.waitLine(t, "reloaded", map[string]any{"changes": 0})

	p.cmd.Process.Signal(syscall.SIGTERM)
	p.waitLine(t, "shutting down", map[string]any{"signal": "terminated", "conns": 1})
	// The listener closes right after that line: within 5s, new
	// connections are refused.
	for refused, deadline := false, time.Now().Add(5*time.Second); !refused; {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if refused = err != nil; !refused {
			c.Close()
			if time.Now().After(deadline) {
				t.Fatal("sluice still accepts connections 5s into the drain")
			}
			time.Sleep(5 * time.Millisecond) // polling the kernel's listen state
		}
	}
	// The live connection still works both ways.
	if _, err := client.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, make([]byte, 4)); err != nil {
		t.Fatalf("live connection broken during drain: %v", err)
	}
	server.Write([]byte("pong"))
	server.(*net.TCPConn).CloseWrite()
	if got, err := io.ReadAll(client); err != nil || string(got) != "pong" {
		t.Fatalf("client read %q, %v; want pong", got, err)
	}
	client.(*net.TCPConn).CloseWrite()

	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatalf("sluice exited with %v, want 0", err)
	}
	p.waitLine(t, "conn done", map[string]any{"result": "ok", "bytes_up": 4, "bytes_down": 4})
	p.waitLine(t, "stopped", nil)
}

// TestRunDrainTimeout: a connection still open when the drain runs out is
// closed and sluice exits 0.
func TestRunDrainTimeout(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	ln := listenBackend(t)
	p := startSluice(t, fmt.Sprintf(runConfig, ln.Addr(), "300ms"))
	_, client, _ := connectThrough(t, p, ln)

	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatalf("sluice exited with %v, want 0", err)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("sluice exited after %v, before the 300ms drain", d)
	}
	p.waitLine(t, "drain timed out: closed connections still open", map[string]any{"conns": 1})
	p.waitLine(t, "conn done", map[string]any{"result": "shutdown"})
	client.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("client read err = %v, want the connection closed", err)
	}
}

// TestRunSecondSignal: a second SIGINT during a long drain closes at once.
func TestRunSecondSignal(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	ln := listenBackend(t)
	p := startSluice(t, fmt.Sprintf(runConfig, ln.Addr(), "1h"))
	connectThrough(t, p, ln) // a live connection to close
	p.cmd.Process.Signal(syscall.SIGINT)
	p.waitLine(t, "shutting down", nil)
	p.cmd.Process.Signal(syscall.SIGINT)
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatalf("sluice exited with %v, want 0", err)
	}
	p.waitLine(t, "second stop signal: closing every connection now", nil)
}

func TestRunBadConfigAndBusyPort(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := execute([]string{"run", "--config", writeConfig(t, "listeners: []")}, &stdout, &stderr); code != exitConfig {
		t.Errorf("empty listeners: exit %d, want %d", code, exitConfig)
	}
	if !strings.Contains(stderr.String(), "listeners: want at least one listener") {
		t.Errorf("stderr %q does not say what is wrong", stderr.String())
	}

	busy := listenBackend(t)
	stderr.Reset()
	cfg := fmt.Sprintf("log: {level: error}\nlisteners: [{name: b, listen: '%s', upstream: '127.0.0.1:9'}]", busy.Addr())
	if code := execute([]string{"run", "--config", writeConfig(t, cfg)}, &stdout, &stderr); code != exitFail {
		t.Errorf("busy port: exit %d, want %d", code, exitFail)
	}
	if !strings.Contains(stderr.String(), `listener "b"`) || !strings.Contains(stderr.String(), "address already in use") {
		t.Errorf("stderr %q does not name the listener and the cause", stderr.String())
	}
	// The cores setting took GOMAXPROCS at start (auto: one core) and
	// gave it back when the start failed.
	if n := runtime.GOMAXPROCS(0); n != procsAtStart {
		t.Errorf("GOMAXPROCS %d after a failed start, want %d as before it", n, procsAtStart)
	}
}

// TestRunLogsCores: at start, sluice logs the cores Go schedules on, as
// GOMAXPROCS sets them (docs/operating.md), and warns that it wins over
// the config's cores.
func TestRunLogsCores(t *testing.T) {
	defer test.TimeOut(30 * time.Second).Stop()
	ln := listenBackend(t)
	cmd := exec.Command(sluiceBin, "run", "--config", writeConfig(t,
		"cores: 2\nadmin: {listen: '127.0.0.1:0'}\n"+fmt.Sprintf(runConfig, ln.Addr(), "1s")))
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	p := startCmd(t, cmd)
	l := p.waitLine(t, "cores", map[string]any{"gomaxprocs": 1, "mode": "GOMAXPROCS"})
	p.waitLine(t, "cores: the GOMAXPROCS environment variable is set and wins over the config", map[string]any{"cores": "2"})
	if cpus, ok := l["cpus"].(float64); !ok || cpus < 1 {
		t.Errorf("cores line %v: want cpus >= 1", l)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Errorf("exit: %v", err)
	}
}
