package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pion/transport/v2/test"

	"github.com/sluiceproxy/sluice/proxy/admin"
)

// waitCount waits until sluice has logged at least n lines with msg.
func (p *proc) waitCount(t *testing.T, msg string, n int) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		p.mu.Lock()
		got := 0
		for _, l := range p.lines {
			if l["msg"] == msg {
				got++
			}
		}
		p.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case _, open := <-p.added:
			if !open {
				t.Fatalf("sluice exited with %d %q lines, want %d", got, msg, n)
			}
		case <-timeout:
			t.Fatalf("%d %q lines within 20s, want %d", got, msg, n)
		}
	}
}

// adminURL is the admin API's address, from sluice's log.
func (p *proc) adminURL(t *testing.T) string {
	t.Helper()
	return "http://" + p.waitLine(t, "admin api listening", nil)["addr"].(string)
}

// TestSdNotify: under systemd (NOTIFY_SOCKET), sluice reports READY=1 when
// serving, RELOADING=1 (with MONOTONIC_USEC) then READY=1 around each
// reload, valid or not, STOPPING=1 on SIGTERM, and pings the watchdog.
func TestSdNotify(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make(chan string, 256)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	watchdogs := 0
	next := func(want string) string {
		t.Helper()
		for {
			select {
			case m := <-msgs:
				if m == "WATCHDOG=1" {
					watchdogs++
					continue
				}
				if !strings.HasPrefix(m, want) {
					t.Fatalf("sd_notify %q, want %q next", m, want)
				}
				return m
			case <-time.After(10 * time.Second):
				t.Fatalf("no sd_notify %q within 10s", want)
			}
		}
	}

	ln := listenBackend(t)
	path := writeConfig(t, "admin: {listen: '127.0.0.1:0'}\n"+fmt.Sprintf(runConfig, ln.Addr(), "5s"))
	cmd := exec.Command(sluiceBin, "run", "--config", path)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=100000")
	p := startCmd(t, cmd)
	next("READY=1")

	p.cmd.Process.Signal(syscall.SIGHUP)
	if m := next("RELOADING=1"); !strings.Contains(m, "\nMONOTONIC_USEC=") {
		t.Errorf("RELOADING without MONOTONIC_USEC: %q", m)
	}
	next("READY=1")
	p.waitLine(t, "reloaded", nil)

	if err := os.WriteFile(path, []byte("listeners: [{listen: nope}]"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.cmd.Process.Signal(syscall.SIGHUP)
	next("RELOADING=1")
	next("READY=1") // rejected, but serving on
	p.waitLine(t, "reload rejected: the running config stays", nil)

	time.Sleep(300 * time.Millisecond) // letting watchdog pings (every 50 ms) accumulate
	p.cmd.Process.Signal(syscall.SIGTERM)
	next("STOPPING=1")
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatalf("exit: %v", err)
	}
	if watchdogs < 2 {
		t.Errorf("%d watchdog pings in over 300 ms at WATCHDOG_USEC=100ms, want several", watchdogs)
	}
}

// TestSocketActivation: sluice serves a socket passed as systemd does
// (LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES), and a restart drops nothing: a
// client that connects while no sluice runs waits in the socket's backlog
// and is served by the next one.
func TestSocketActivation(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	backend := listenBackend(t)
	held, err := net.Listen("tcp", "127.0.0.1:0") // what systemd holds
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	f, err := held.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	path := writeConfig(t, fmt.Sprintf(`log: {format: json}
admin: {listen: off}
listeners: [{name: web, listen: '%s', upstream: '%s'}]
shutdown: {drain: 2s}`, held.Addr(), backend.Addr()))
	start := func(fdName string) *proc {
		cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`, sluiceBin, "run", "--config", path)
		cmd.Env = append(os.Environ(), "LISTEN_FDS=1", "LISTEN_FDNAMES="+fdName)
		cmd.ExtraFiles = []*os.File{f} // fd 3
		return startCmd(t, cmd)
	}
	ping := func(c net.Conn, msg string) {
		t.Helper()
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		backend.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
		s, err := backend.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(s, buf); err != nil || string(buf) != msg {
			t.Fatalf("backend read %q, %v; want %q", buf, err, msg)
		}
	}

	p := start("web")
	p.waitLine(t, "listening", map[string]any{"listener": "web", "addr": held.Addr().String()})
	c, err := net.Dial("tcp", held.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ping(c, "first")
	c.Close()
	// A reload keeps serving the passed socket (it is not closed and rebound).
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitLine(t, "reloaded", nil)
	c, err = net.Dial("tcp", held.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ping(c, "after reload")
	c.Close()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatalf("first sluice: %v", err)
	}

	// No sluice runs now; the socket stays open and queues this client.
	c, err = net.Dial("tcp", held.Addr().String())
	if err != nil {
		t.Fatalf("connect between restarts: %v", err)
	}
	defer c.Close()
	// The second sluice matches the socket by address (no name given).
	p = start("LISTEN_FD_3")
	ping(c, "queued")
	p.cmd.Process.Signal(syscall.SIGTERM)
	c.Close()
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatalf("second sluice: %v", err)
	}

	// A socket that matches no listener is a config error.
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	of, _ := other.(*net.TCPListener).File()
	defer of.Close()
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`, sluiceBin, "run", "--config", path)
	cmd.Env = append(os.Environ(), "LISTEN_FDS=1", "LISTEN_FDNAMES=api")
	cmd.ExtraFiles = []*os.File{of}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitConfig || !bytes.Contains(out, []byte("matches no listener")) {
		t.Fatalf("unmatched socket: %v\n%s\nwant exit %d naming the socket", err, out, exitConfig)
	}
}

// stream writes size bytes of a pseudo-random stream chosen by seed.
func stream(w io.Writer, seed uint64, size int) error {
	r := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}))
	buf := make([]byte, 64<<10)
	for size > 0 {
		for i := 0; i < len(buf); i += 8 {
			binary.LittleEndian.PutUint64(buf[i:], r.Uint64())
		}
		n := min(size, len(buf))
		if _, err := w.Write(buf[:n]); err != nil {
			return err
		}
		size -= n
	}
	return nil
}

// holdLast writes through to w but holds the stream's last byte until hold
// is closed.
type holdLast struct {
	w    io.Writer
	left int64 // bytes of the stream still to write
	hold <-chan struct{}
}

func (h *holdLast) Write(p []byte) (int, error) {
	if int64(len(p)) < h.left {
		n, err := h.w.Write(p)
		h.left -= int64(n)
		return n, err
	}
	n, err := h.w.Write(p[:len(p)-1])
	h.left -= int64(n)
	if err != nil {
		return n, err
	}
	<-h.hold
	m, err := h.w.Write(p[len(p)-1:])
	h.left -= int64(m)
	return n + m, err
}

// TestReloadUnderLoad: 100 reloads (by SIGHUP and by the admin API, some
// changing rates and listeners, some invalid) during 200 live shaped
// transfers: every transfer completes byte-exact, none is dropped, and the
// live connections carry the rate of the config last applied.
func TestReloadUnderLoad(t *testing.T) {
	defer test.TimeOut(240 * time.Second).Stop()
	const (
		transfers = 200
		reloads   = 100
		size      = 3 << 20 // 6–12 s at the configured rates, and the last byte waits for the reloads
	)
	origin := listenBackend(t)
	// Each transfer's last byte waits for the reloads to be done, so every
	// transfer is live through all of them however slow the machine.
	reloadsDone := make(chan struct{})
	var closeOnce sync.Once
	endReloads := func() { closeOnce.Do(func() { close(reloadsDone) }) }
	t.Cleanup(endReloads)
	go func() {
		for {
			c, err := origin.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var seed [8]byte
				if _, err := io.ReadFull(c, seed[:]); err != nil {
					return
				}
				_ = stream(&holdLast{w: c, left: size, hold: reloadsDone}, binary.LittleEndian.Uint64(seed[:]), size)
			}()
		}
	}()
	rates := []struct {
		text  string
		bytes int64
	}{{"2Mbit", 250_000}, {"4Mbit", 500_000}}
	configText := func(i int) string {
		extra := ""
		if i%3 == 1 {
			extra = fmt.Sprintf("\n  - {name: extra, listen: '127.0.0.1:0', upstream: '%s'}", origin.Addr())
		}
		return fmt.Sprintf(`log: {format: json, level: info}
admin: {listen: '127.0.0.1:0'}
listeners:
  - name: t
    listen: 127.0.0.1:0
    upstream: %s
    conn: {down: {rate: %s}}%s
shutdown: {drain: 30s}
`, origin.Addr(), rates[i%2].text, extra)
	}
	path := writeConfig(t, configText(0))
	cmd := exec.Command(sluiceBin, "run", "--config", path)
	cmd.Env = append(os.Environ(), "SLUICE_ADMIN_TOKEN=tok")
	p := startCmd(t, cmd)
	addr := p.waitLine(t, "listening", map[string]any{"listener": "t"})["addr"].(string)
	api := &adminClient{base: p.adminURL(t), token: "tok", http: &http.Client{Timeout: 10 * time.Second}}

	var wg sync.WaitGroup
	errs := make(chan error, transfers)
	for i := range transfers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			var seed [8]byte
			binary.LittleEndian.PutUint64(seed[:], uint64(i))
			if _, err := c.Write(seed[:]); err != nil {
				errs <- err
				return
			}
			h := sha256.New()
			n, err := io.Copy(h, c)
			if err != nil || n != size {
				errs <- fmt.Errorf("transfer %d: %d bytes, want %d: %w", i, n, size, err)
				return
			}
			want := sha256.New()
			_ = stream(want, uint64(i), size)
			if !bytes.Equal(h.Sum(nil), want.Sum(nil)) {
				errs <- fmt.Errorf("transfer %d: bytes differ", i)
			}
		}()
	}
	var ls []admin.ListenerJSON
	for deadline := time.Now().Add(20 * time.Second); ; {
		if err := api.do(context.Background(), "GET", "/v1/listeners", nil, &ls); err != nil {
			t.Fatal(err)
		}
		if ls[0].Active == transfers {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d transfers running after 20s", ls[0].Active, transfers)
		}
		time.Sleep(20 * time.Millisecond) // polling the admin API
	}

	valid, invalid, signals := 0, 0, 0
	for i := 1; i <= reloads; i++ {
		text := configText(i)
		bad := i%7 == 0
		if bad {
			text = strings.Replace(text, rates[i%2].text, "fast", 1)
		}
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if i%5 == 0 { // through the admin API, which answers with the result
			err := api.do(context.Background(), "POST", "/v1/reload", nil, nil)
			if bad != (err != nil) {
				t.Fatalf("reload %d (invalid %v) through the API: %v", i, bad, err)
			}
		} else {
			signals++
			p.cmd.Process.Signal(syscall.SIGHUP)
			p.waitCount(t, "sighup: reloading", signals)
		}
		if bad {
			invalid++
			p.waitCount(t, "reload rejected: the running config stays", invalid)
			continue
		}
		valid++
		p.waitCount(t, "reloaded", valid)
		if i%10 == 1 || i%10 == 2 { // the live conns carry the new rate
			var cs struct{ Conns []admin.ConnJSON }
			if err := api.do(context.Background(), "GET", "/v1/conns?limit=0&listener=t", nil, &cs); err != nil {
				t.Fatal(err)
			}
			for _, c := range cs.Conns {
				if c.Limits.Down.Rate != rates[i%2].bytes {
					t.Fatalf("after reload %d: conn %d has down rate %d, want %d", i, c.ID, c.Limits.Down.Rate, rates[i%2].bytes)
				}
			}
		}
	}
	if err := api.do(context.Background(), "GET", "/v1/listeners", nil, &ls); err != nil {
		t.Fatal(err)
	}
	if ls[0].Active != transfers {
		t.Fatalf("%d of %d transfers live after the reloads, want all (each holds its last byte until now)", ls[0].Active, transfers)
	}
	t.Logf("%d reloads (%d invalid) done with %d transfers still running", reloads, invalid, ls[0].Active)
	endReloads()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// A client has all its bytes a moment before sluice records the
	// connection's end: wait for the last ones to be counted.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if err := api.do(context.Background(), "GET", "/v1/listeners", nil, &ls); err != nil {
			t.Fatal(err)
		}
		if ls[0].Active == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling the admin API
	}
	if ls[0].Name != "t" || ls[0].Ended["ok"] != transfers || ls[0].Accepted != transfers {
		t.Errorf("listener t: accepted %d, ended %v; want %d, all ok", ls[0].Accepted, ls[0].Ended, transfers)
	}
	resp, err := http.Get(api.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		fmt.Sprintf(`sluice_config_reloads_total{result="ok"} %d`, valid),
		fmt.Sprintf(`sluice_config_reloads_total{result="invalid"} %d`, invalid),
		"sluice_config_last_reload_successful 1",
		`sluice_build_info{goversion="go`,
	} {
		if !bytes.Contains(metrics, []byte(want)) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.wait(t, 30*time.Second); err != nil {
		t.Fatalf("exit: %v", err)
	}
}

// TestReloadAndTopCommands drives a running sluice with `sluice reload`
// and `sluice top`, as an operator would.
func TestReloadAndTopCommands(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	ln := listenBackend(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := writeConfig(t, fmt.Sprintf("admin: {listen: '127.0.0.1:0', token_file: '%s'}\n", tokenFile)+
		fmt.Sprintf(runConfig, ln.Addr(), "5s"))
	p := startCmd(t, exec.Command(sluiceBin, "run", "--config", path))
	base := p.adminURL(t)
	_, client, server := connectThrough(t, p, ln)
	go io.Copy(io.Discard, client)
	go func() {
		buf := make([]byte, 32<<10)
		for {
			if _, err := server.Write(buf); err != nil {
				return
			}
		}
	}()

	var stdout, stderr bytes.Buffer
	if code := execute([]string{"reload", "--admin", base, "--config", path}, &stdout, &stderr); code != exitOK || stdout.String() != "reloaded\n" {
		t.Errorf("sluice reload: exit %d, %q %q", code, stdout.String(), stderr.String())
	}
	p.waitLine(t, "reloaded", nil)
	wrong := filepath.Join(t.TempDir(), "wrong")
	os.WriteFile(wrong, []byte("nope"), 0o600)
	stderr.Reset()
	if code := execute([]string{"reload", "--admin", base, "--token-file", wrong}, &stdout, &stderr); code != exitFail || !strings.Contains(stderr.String(), "401") {
		t.Errorf("sluice reload, wrong token: exit %d, %q; want %d and a 401", code, stderr.String(), exitFail)
	}
	// The admin address changes on restart only: a reload that moves it is
	// rejected, and says so.
	good, _ := os.ReadFile(path)
	os.WriteFile(path, bytes.Replace(good, []byte("listen: '127.0.0.1:0', token_file"), []byte("listen: '127.0.0.1:1', token_file"), 1), 0o600)
	stderr.Reset()
	if code := execute([]string{"reload", "--admin", base, "--token-file", tokenFile}, &stdout, &stderr); code != exitFail ||
		!strings.Contains(stderr.String(), "admin.listen: changed") {
		t.Errorf("sluice reload, admin.listen moved: exit %d, %q", code, stderr.String())
	}
	// A rejected config: the command says why, and fails.
	os.WriteFile(path, []byte("listeners: 5"), 0o600)
	stderr.Reset()
	if code := execute([]string{"reload", "--admin", base, "--token-file", tokenFile}, &stdout, &stderr); code != exitFail ||
		!strings.Contains(stderr.String(), "want a list of listeners") {
		t.Errorf("sluice reload, bad config: exit %d, %q", code, stderr.String())
	}

	stdout.Reset()
	stderr.Reset()
	if code := execute([]string{"top", "--admin", base, "--count", "1", "--interval", "200ms"}, &stdout, &stderr); code != exitOK {
		t.Fatalf("sluice top: exit %d: %s", code, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"LISTENER", "\nt ", "CONN", "bit/s"} {
		if !strings.Contains(out, want) {
			t.Errorf("sluice top output lacks %q:\n%s", want, out)
		}
	}
	if code := execute([]string{"top", "--admin", "127.0.0.1:1", "--count", "1"}, &stdout, &stderr); code != exitFail {
		t.Errorf("sluice top with nothing listening: exit %d, want %d", code, exitFail)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	client.Close()
	server.Close()
	p.wait(t, 10*time.Second)
}

func TestDemo(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	var stdout, stderr bytes.Buffer
	if code := execute([]string{"demo", "--duration", "4s"}, &stdout, &stderr); code != exitOK {
		t.Fatalf("demo: exit %d: %s\n%s", code, stderr.String(), stdout.String())
	}
	out := stdout.String()
	for _, want := range []string{"PUT /v1/links/line/limits", "DELETE /v1/conns/", "LINK", "MP4    VIDEOS", "viewer 1: the metadata", "2 paced from their metadata", "demo done: every byte"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if code := execute([]string{"demo", "--duration", "1s"}, &stdout, &stderr); code != exitConfig {
		t.Errorf("demo --duration 1s: exit %d, want %d", code, exitConfig)
	}
}

// TestSystemdUnit verifies deploy/sluice.service and sluice.socket with
// systemd-analyze, where systemd is installed.
func TestSystemdUnit(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze missing under CI: .ci/run installs systemd")
		}
		t.Skip("no systemd-analyze")
	}
	dir := t.TempDir()
	unit, err := os.ReadFile("../../deploy/sluice.service")
	if err != nil {
		t.Fatal(err)
	}
	unit = bytes.ReplaceAll(unit, []byte("/usr/local/bin/sluice"), []byte(sluiceBin))
	if err := os.WriteFile(filepath.Join(dir, "sluice.service"), unit, 0o644); err != nil {
		t.Fatal(err)
	}
	sock, err := os.ReadFile("../../deploy/sluice.socket")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sluice.socket"), sock, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", filepath.Join(dir, "sluice.service"), filepath.Join(dir, "sluice.socket")).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	for _, want := range []string{"Type=notify", "ExecReload=", "WatchdogSec=", "LimitNOFILE=", "NoNewPrivileges=yes",
		"ProtectSystem=strict", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "DynamicUser=yes"} {
		if !bytes.Contains(unit, []byte(want)) {
			t.Errorf("sluice.service lacks %s", want)
		}
	}
}

// TestLinksThroughConfig: a link from the config shapes the listener's
// connections, shows in the admin API, and takes a reload's new rate live.
func TestLinksThroughConfig(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	ln := listenBackend(t)
	cfg := func(rate string) string {
		return fmt.Sprintf(`log: {format: json}
admin: {listen: '127.0.0.1:0'}
links:
  line: {down: {rate: %s}, keys: {by: source_ip, rate: 1Mbit, overrides: [{key: 127.0.0.1, weight: 2}]}}
listeners:
  - {name: t, listen: '127.0.0.1:0', upstream: '%s', links: [line], conn: {down: {rate: 80Mbit}}, mp4: {enabled: true}}
shutdown: {drain: 1s}
`, rate, ln.Addr())
	}
	path := writeConfig(t, cfg("8Mbit"))
	p := startCmd(t, exec.Command(sluiceBin, "run", "--config", path))
	api := &adminClient{base: p.adminURL(t), http: &http.Client{Timeout: 10 * time.Second}}
	_, client, server := connectThrough(t, p, ln)
	roundTrip := func() {
		if _, err := server.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(client, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
	}
	roundTrip()
	var links []admin.LinkJSON
	if err := api.do(context.Background(), "GET", "/v1/links", nil, &links); err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || links[0].Down == nil || links[0].Down.Rate != 1_000_000 || links[0].Down.Members != 1 || links[0].KeyBy != "source_ip" {
		t.Fatalf("GET /v1/links = %+v", links)
	}
	var one admin.LinkJSON
	if err := api.do(context.Background(), "GET", "/v1/links/line", nil, &one); err != nil {
		t.Fatal(err)
	}
	if ks := one.Down.KeyStats; len(ks) != 1 || ks[0].Key != "127.0.0.1" || ks[0].Limit.Weight != 2 || ks[0].Limit.Rate != 125_000 {
		t.Fatalf("keys = %+v, want 127.0.0.1 with its override", ks)
	}
	os.WriteFile(path, []byte(cfg("16Mbit")), 0o600)
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitLine(t, "reloaded", map[string]any{"diff": "link line: down.rate 8Mbit → 16Mbit"})
	if err := api.do(context.Background(), "GET", "/v1/links", nil, &links); err != nil {
		t.Fatal(err)
	}
	if links[0].Down.Rate != 2_000_000 || links[0].Down.Members != 1 {
		t.Fatalf("after reload: %+v, want the live conn on a 16 Mbit/s link", links[0].Down)
	}
	roundTrip()

	// Every sluice metric the Grafana dashboard queries exists.
	resp, err := http.Get(api.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	dash, err := os.ReadFile("../../deploy/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(dash, &d); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	names := regexp.MustCompile(`\b(sluice|go|process)_[a-z0-9_]+`)
	for _, pn := range d.Panels {
		for _, tg := range pn.Targets {
			for _, name := range names.FindAllString(tg.Expr, -1) {
				if !bytes.Contains(metrics, []byte("\n"+name)) {
					t.Errorf("dashboard panel %q queries %s, which sluice does not export", pn.Title, name)
				}
			}
		}
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	client.Close()
	server.Close()
	p.wait(t, 10*time.Second)
}

// TestMP4ThroughConfig runs the real binary with an mp4 block in front of
// an HTTP origin: the video arrives byte-exact, its burst at once and the
// rest paced by the plan, and the metrics and the conn's log line say so.
func TestMP4ThroughConfig(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	movie := demoMovie(8, 250_000, 25)
	ln := listenBackend(t)
	hs := serveMovie(ln, movie)
	defer hs.Close()
	path := writeConfig(t, fmt.Sprintf(`log: {format: json}
admin: {listen: '127.0.0.1:0'}
listeners:
  - {name: v, listen: '127.0.0.1:0', upstream: '%s', mp4: {enabled: true, factor: 4, burst_seconds: 2, floor: 100KB/s}}
`, ln.Addr()))
	p := startCmd(t, exec.Command(sluiceBin, "run", "--config", path))
	addr := p.waitLine(t, "listening", map[string]any{"listener": "v"})["addr"].(string)

	start := time.Now()
	v := &viewer{}
	v.watch(context.Background(), addr, movie, 1)
	took := time.Since(start)
	if v.err != nil || v.got.Load() != int64(len(movie)) {
		t.Fatalf("got %d of %d bytes: %v", v.got.Load(), len(movie), v.err)
	}
	// The plan: 2 s of media at once (the curve counts whole 1-s chunks:
	// 3 s), then the other 5 s at 4×: about 1.25 s.
	if took < time.Second || took > 3*time.Second {
		t.Errorf("the 8-s video took %v, want about 1.25 s", took)
	}
	resp, err := http.Get(p.adminURL(t) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`sluice_mp4_videos_total{listener="v"} 1`, `sluice_mp4_plans_total{listener="v"} 1`,
		`sluice_mp4_fallbacks_total{listener="v",reason="malformed"} 0`} {
		if !bytes.Contains(metrics, []byte(want)) {
			t.Errorf("metrics lack %s", want)
		}
	}
	p.waitLine(t, "conn done", map[string]any{"listener": "v", "mp4_plans": 1.0, "mp4_rate_bytes_per_second": 250000.0})
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.wait(t, 10*time.Second)
}
