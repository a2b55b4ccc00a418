package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pion/transport/v2/test"

	"github.com/sluiceproxy/sluice/proxy/admin"
)

// TestAdmissionThroughConfig runs the real binary with limits, a deny
// file and a ban policy: a client over its connection limit gets the
// overflow page, a denied one is closed, a ban added through the admin
// API (with the token) refuses its client until it is lifted; a reload
// that edits the deny file applies it; the metrics and top show it.
func TestAdmissionThroughConfig(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	ln := listenBackend(t)
	go func() { // echo every connection
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	dir := t.TempDir()
	deny := filepath.Join(dir, "deny.txt")
	page := "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\n\r\n"
	for name, body := range map[string]string{"deny.txt": "# denied\n127.0.0.9\n", "busy.http": page, "token": "tok\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	conf := fmt.Sprintf(`log: {format: json}
admin: {listen: '127.0.0.1:0', token_file: '%s'}
limits:
  per-ip: {by: source_ip, conns: 1}
bans:
  manual: {tiers: [{over: 100, per: 1s, ban: 1m}]}
listeners:
  - {name: t, listen: '127.0.0.1:0', upstream: '%s', limits: [per-ip], bans: manual,
     deny: ["file:deny.txt"], refuse: overflow, overflow: {respond_file: busy.http}}
shutdown: {drain: 1s}
`, filepath.Join(dir, "token"), ln.Addr())
	path := filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startCmd(t, exec.Command(sluiceBin, "run", "--config", path))
	api := &adminClient{base: p.adminURL(t), token: "tok", http: &http.Client{Timeout: 10 * time.Second}}
	addr := p.waitLine(t, "listening", map[string]any{"listener": "t"})["addr"].(string)
	from := func(src string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	echoes := func(c net.Conn) bool {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("x")); err != nil {
			return false
		}
		_, err := io.ReadFull(c, make([]byte, 1))
		return err == nil
	}
	gets := func(c net.Conn) string {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("reading a refused connection: %v", err)
		}
		return string(b)
	}
	first := from("127.0.0.2")
	if !echoes(first) {
		t.Fatal("the first connection is not served")
	}
	if got := gets(from("127.0.0.2")); got != page {
		t.Fatalf("over the limit: got %q, want the overflow page", got)
	}
	if got := gets(from("127.0.0.9")); got != page {
		t.Fatalf("denied: got %q, want the overflow page", got)
	}
	if err := api.do(context.Background(), "POST", "/v1/bans", strings.NewReader(`{"ban": "manual", "key": "127.0.0.3", "for": "1h"}`), nil); err != nil {
		t.Fatal(err)
	}
	if got := gets(from("127.0.0.3")); got != page {
		t.Fatalf("banned: got %q, want the overflow page", got)
	}
	var bans struct {
		Total int             `json:"total"`
		Bans  []admin.BanJSON `json:"bans"`
	}
	if err := api.do(context.Background(), "GET", "/v1/bans", nil, &bans); err != nil || bans.Total != 1 || bans.Bans[0].Key != "127.0.0.3/32" {
		t.Fatalf("GET /v1/bans = %+v, %v", bans, err)
	}
	if err := api.do(context.Background(), "DELETE", "/v1/bans/manual?key=127.0.0.3", nil, nil); err != nil {
		t.Fatal(err)
	}
	if c := from("127.0.0.3"); !echoes(c) {
		t.Fatal("served no more after the lift")
	}
	// A reload that empties the deny file lets 127.0.0.9 in.
	if err := os.WriteFile(deny, []byte("# nobody\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.waitLine(t, "reloaded", nil)
	if c := from("127.0.0.9"); !echoes(c) {
		t.Fatal("a client removed from the deny file is still refused")
	}
	resp, err := http.Get(api.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`sluice_admission_refusals_total{listener="t",reason="conns"} 1`,
		`sluice_admission_refusals_total{listener="t",reason="deny"} 1`, `sluice_admission_refusals_total{listener="t",reason="ban"} 1`,
		`sluice_admission_overflowed_total{listener="t"} 3`, `sluice_bans_lifted_total{ban="manual"} 1`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	var out strings.Builder
	if err := runTop(context.Background(), api, &out, time.Millisecond, 1, 5); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "ADMISSION") || !strings.Contains(out.String(), "conns 1") {
		t.Errorf("sluice top lacks the admission table:\n%s", out.String())
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	first.Close()
	p.wait(t, 10*time.Second)
}
