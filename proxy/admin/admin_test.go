package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/transport/v2/test"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/sluiceproxy/sluice/proxy"
	"github.com/sluiceproxy/sluice/proxy/admin"
	"github.com/sluiceproxy/sluice/shaper"
)

const adminToken = "t0ken"

// parseUnit is a tiny stand-in for config.ParseRate/ParseSize (admin must
// not import config): "<n>KB/s" or "<n>KiB".
func parseUnit(s string) (int64, error) {
	for suf, mul := range map[string]int64{"KB/s": 1000, "KiB": 1024} {
		if n, ok := strings.CutSuffix(s, suf); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			return v * mul, err
		}
	}
	return 0, errors.New("want a unit")
}

// fixture is a running proxy with listener "t" (4 MB/s down per
// connection) in front of a backend, and its admin API over HTTP.
type fixture struct {
	srv     *proxy.Server
	addr    string
	b       *backend
	http    *httptest.Server
	reg     *prometheus.Registry
	reloads int
}

func newFixture(t *testing.T, opts admin.Options) *fixture {
	t.Helper()
	f := &fixture{b: newBackend(t)}
	f.srv, f.addr = startProxy(t, nil, proxy.ListenerConfig{Upstream: f.b.addr(), Limits: proxy.ConnLimits{Down: shaper.Limit{Rate: 4_000_000, Burst: 8192}}})
	f.reg = prometheus.NewRegistry()
	f.reg.MustRegister(admin.NewCollector(f.srv))
	if opts.Token == "" {
		opts.Token = adminToken
	}
	opts.Gatherer = f.reg
	opts.ParseRate, opts.ParseSize = parseUnit, parseUnit
	if opts.Reload == nil {
		opts.Reload = func(context.Context) error {
			f.reloads++
			if f.reloads == 2 {
				return errors.New("listeners[0].listen: bad")
			}
			return nil
		}
	}
	f.http = httptest.NewServer(admin.New(f.srv, opts))
	t.Cleanup(f.http.Close)
	return f
}

// call returns the status and body of an admin request; token "" sends none.
func (f *fixture) call(t *testing.T, method, path, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, f.http.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAuth(t *testing.T) {
	f := newFixture(t, admin.Options{})
	body := `{"down": {"rate": 1000}}`
	for _, tc := range []struct {
		name, method, path, token string
		want                      int
	}{
		{"read needs no token on loopback", "GET", "/v1/listeners", "", 200},
		{"healthz", "GET", "/healthz", "", 200},
		{"no token", "PUT", "/v1/listeners/t/limits", "", 401},
		{"wrong token", "PUT", "/v1/listeners/t/limits", "nope", 401},
		{"prefix of the token", "PUT", "/v1/listeners/t/limits", "t0k", 401},
		{"right token", "PUT", "/v1/listeners/t/limits", adminToken, 200},
		{"reload without token", "POST", "/v1/reload", "", 401},
		{"close without token", "DELETE", "/v1/conns/1", "", 401},
		{"wrong method", "POST", "/v1/listeners", adminToken, 405},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, b := f.call(t, tc.method, tc.path, tc.token, body); got != tc.want {
				t.Errorf("%s %s: %d %s, want %d", tc.method, tc.path, got, b, tc.want)
			}
		})
	}
	// The unauthorized calls changed nothing; the authorized one did.
	if got := f.srv.Stats()[0].Limits.Down.Rate; got != 1000 {
		t.Errorf("down rate = %d, want 1000 (set once, by the call with the token)", got)
	}

	// No token configured: state-changing calls are refused outright.
	h := admin.New(f.srv, admin.Options{})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/v1/reload", nil))
	if rec.Code != 403 || !strings.Contains(rec.Body.String(), "none is configured") {
		t.Errorf("write with no token configured: %d %s, want 403 naming the missing token", rec.Code, rec.Body)
	}
	// A new token (a reload) applies at once; the old one stops working.
	h.SetToken("new")
	for tok, want := range map[string]int{"new": 400, adminToken: 401} {
		rec = httptest.NewRecorder()
		req := httptest.NewRequest("PUT", "/v1/listeners/t/limits", strings.NewReader("{}"))
		req.Header.Set("Authorization", "Bearer "+tok)
		h.ServeHTTP(rec, req)
		if rec.Code != want {
			t.Errorf("after SetToken(new), token %q: %d, want %d", tok, rec.Code, want)
		}
	}
	reads := admin.New(f.srv, admin.Options{Token: "x", AuthReads: true})
	rec = httptest.NewRecorder()
	reads.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/conns", nil))
	if rec.Code != 401 {
		t.Errorf("read with AuthReads and no token: %d, want 401", rec.Code)
	}
}

func TestBadInput(t *testing.T) {
	f := newFixture(t, admin.Options{})
	before := f.srv.Stats()[0].Limits
	for _, tc := range []struct {
		name, path, body, want string
		status                 int
	}{
		{"not json", "/v1/listeners/t/limits", "rate=5", "body: want JSON", 400},
		{"unknown field", "/v1/listeners/t/limits", `{"down": {"rate": 5, "ceil": 9}}`, "unknown field", 400},
		{"empty object", "/v1/listeners/t/limits", `{}`, "want at least one of", 400},
		{"two objects", "/v1/listeners/t/limits", `{"down": {"rate": 5}} {}`, "one JSON object", 400},
		{"negative rate", "/v1/listeners/t/limits", `{"down": {"rate": -5}}`, "down.rate", 400},
		{"rate without unit", "/v1/listeners/t/limits", `{"down": {"rate": "5"}}`, "down.rate", 400},
		{"missing rate", "/v1/listeners/t/limits", `{"up": {"burst": 100}}`, "up.rate: want bytes per second", 400},
		{"rate too high", "/v1/listeners/t/limits", `{"down": {"rate": 9000000000000000}}`, "down: shaper: invalid limit", 400},
		{"burst not a size", "/v1/listeners/t/limits", `{"down": {"rate": 5, "burst": true}}`, "down.burst", 400},
		{"unknown listener", "/v1/listeners/nope/limits", `{"down": {"rate": 5}}`, `no listener \"nope\"`, 404},
		{"bad conn id", "/v1/conns/x/limits", `{"down": {"rate": 5}}`, "connection id: want a number", 400},
		{"unknown conn", "/v1/conns/999/limits", `{"down": {"rate": 5}}`, "no live connection 999", 404},
		{"huge body", "/v1/listeners/t/limits", `{"down": {"rate": "` + strings.Repeat("9", admin.MaxBody) + `"}}`, "body", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := f.call(t, "PUT", tc.path, adminToken, tc.body)
			if status != tc.status || !strings.Contains(body, tc.want) {
				t.Errorf("%d %s; want %d containing %q", status, body, tc.status, tc.want)
			}
		})
	}
	if got := f.srv.Stats()[0].Limits; got != before {
		t.Errorf("bad calls changed the limits: %+v, want %+v", got, before)
	}
	for _, q := range []string{"?limit=-1", "?limit=x", "?sort=size"} {
		if status, body := f.call(t, "GET", "/v1/conns"+q, "", ""); status != 400 {
			t.Errorf("GET /v1/conns%s: %d %s, want 400", q, status, body)
		}
	}
	if status, body := f.call(t, "DELETE", "/v1/conns/12345", adminToken, ""); status != 404 {
		t.Errorf("DELETE unknown conn: %d %s, want 404", status, body)
	}
	// Reload: ok, then a rejected config (422, reason passed on).
	if status, body := f.call(t, "POST", "/v1/reload", adminToken, ""); status != 200 {
		t.Errorf("reload: %d %s", status, body)
	}
	if status, body := f.call(t, "POST", "/v1/reload", adminToken, ""); status != 422 || !strings.Contains(body, "listeners[0].listen: bad") {
		t.Errorf("rejected reload: %d %s, want 422 with the reason", status, body)
	}
}

// TestLiveChange: rates changed through the API are seen on a running
// transfer, for a listener and for one connection; a connection can be
// listed and closed.
func TestLiveChange(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	checkRoutines(t)
	f := newFixture(t, admin.Options{})
	client, server := connect(t, f.addr, f.b)
	defer client.Close()
	defer server.Close()
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := server.Write(buf); err != nil {
				return
			}
		}
	}()
	var a arrivals
	done := make(chan struct{})
	go func() { a.read(client); close(done) }()

	var list struct {
		Total int              `json:"total"`
		Conns []admin.ConnJSON `json:"conns"`
	}
	status, body := f.call(t, "GET", "/v1/conns", "", "")
	if err := json.Unmarshal([]byte(body), &list); status != 200 || err != nil || list.Total != 1 || len(list.Conns) != 1 {
		t.Fatalf("GET /v1/conns: %d %s", status, body)
	}
	id := list.Conns[0].ID
	if c := list.Conns[0]; c.Listener != "t" || c.Limits.Down.Rate != 4_000_000 || !strings.HasPrefix(c.Client, "127.0.0.1:") {
		t.Errorf("conn = %+v", c)
	}

	measure := func(name string, want float64) {
		t.Helper()
		change := time.Now()
		time.Sleep(1200 * time.Millisecond) // letting real time pass for a rate measurement
		got := a.rate(change.Add(200*time.Millisecond), time.Now())
		if r := got / want; r < 0.85 || r > 1.15 {
			t.Errorf("%s: %.0f B/s from 200 ms after the change, %.2f× the new limit; want ±15%%", name, got, r)
		}
	}
	if s, b := f.call(t, "PUT", "/v1/listeners/t/limits", adminToken, `{"down": {"rate": "1000KB/s", "burst": "16KiB"}}`); s != 200 {
		t.Fatalf("set listener limits: %d %s", s, b)
	}
	measure("listener down to 1 MB/s", 1e6)
	if s, b := f.call(t, "PUT", fmt.Sprintf("/v1/conns/%d/limits", id), adminToken, `{"down": {"rate": 2500000}}`); s != 200 {
		t.Fatalf("set conn limits: %d %s", s, b)
	}
	measure("conn up to 2.5 MB/s", 2.5e6)
	var one admin.ConnJSON
	if s, b := f.call(t, "GET", fmt.Sprintf("/v1/conns/%d", id), "", ""); s != 200 || json.Unmarshal([]byte(b), &one) != nil ||
		one.Limits.Down != (admin.LimitJSON{Rate: 2_500_000, Burst: 8192}) {
		t.Errorf("GET conn: %d %s, want down rate 2500000 with the chunk as burst", s, b)
	}
	if s, b := f.call(t, "DELETE", fmt.Sprintf("/v1/conns/%d", id), adminToken, ""); s != 200 {
		t.Fatalf("close conn: %d %s", s, b)
	}
	<-done // the client sees the close
	eventually(t, func() bool { return f.srv.Stats()[0].Ended["closed"] == 1 })
}

func TestMetrics(t *testing.T) {
	defer test.TimeOut(30 * time.Second).Stop()
	f := newFixture(t, admin.Options{})
	// Known traffic: 3000 bytes down, 1000 up, on one connection that ends.
	client, server := connect(t, f.addr, f.b)
	go func() {
		server.Write(make([]byte, 3000))
		server.CloseWrite()
		io.Copy(io.Discard, server)
		server.Close()
	}()
	client.Write(make([]byte, 1000))
	client.CloseWrite()
	if n, _ := io.Copy(io.Discard, client); n != 3000 {
		t.Fatalf("client got %d bytes", n)
	}
	client.Close()
	eventually(t, func() bool { return f.srv.ActiveConns() == 0 })

	expect := `
# HELP sluice_listener_bytes_total Bytes forwarded by a listener's connections, per direction (up: client to upstream).
# TYPE sluice_listener_bytes_total counter
sluice_listener_bytes_total{direction="down",listener="t"} 3000
sluice_listener_bytes_total{direction="up",listener="t"} 1000
# HELP sluice_listener_connections_active Live connections of a listener.
# TYPE sluice_listener_connections_active gauge
sluice_listener_connections_active{listener="t"} 0
# HELP sluice_listener_connections_accepted_total Connections accepted by a listener.
# TYPE sluice_listener_connections_accepted_total counter
sluice_listener_connections_accepted_total{listener="t"} 1
# HELP sluice_listener_conn_rate_limit_bytes_per_second Per-connection rate limit of a listener, per direction; absent when unlimited.
# TYPE sluice_listener_conn_rate_limit_bytes_per_second gauge
sluice_listener_conn_rate_limit_bytes_per_second{direction="down",listener="t"} 4e+06
`
	if err := testutil.GatherAndCompare(f.reg, strings.NewReader(expect),
		"sluice_listener_bytes_total", "sluice_listener_connections_active",
		"sluice_listener_connections_accepted_total", "sluice_listener_conn_rate_limit_bytes_per_second"); err != nil {
		t.Error(err)
	}
	if got := endedCount(t, f.reg, "ok"); got != 1 {
		t.Errorf("ended{result=ok} = %v, want 1", got)
	}
	problems, err := testutil.GatherAndLint(f.reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	// Over HTTP too, in the text format.
	status, body := f.call(t, "GET", "/metrics", "", "")
	if status != 200 || !strings.Contains(body, `sluice_listener_bytes_total{direction="down",listener="t"} 3000`) {
		t.Errorf("GET /metrics: %d\n%s", status, body)
	}
	if ps, err := promlint.New(strings.NewReader(body)).Lint(); err != nil || len(ps) > 0 {
		t.Errorf("promlint over HTTP: %v %v", ps, err)
	}
}

// endedCount reads one result's series of sluice_listener_connections_ended_total.
func endedCount(t *testing.T, g prometheus.Gatherer, result string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "sluice_listener_connections_ended_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no sluice_listener_connections_ended_total{result=%q}", result)
	return 0
}

func TestLinks(t *testing.T) {
	defer test.TimeOut(30 * time.Second).Stop()
	f := newFixture(t, admin.Options{})
	b := newBackend(t)
	err := f.srv.Reconfigure([]proxy.LinkConfig{{Name: "line", Up: shaper.LinkLimit{Limit: shaper.Limit{Rate: 1 << 20}}, KeyBy: proxy.KeyListener}},
		[]proxy.ListenerConfig{{Name: "t", Addr: "127.0.0.1:0", Upstream: b.addr(), Links: []string{"line"}}}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	client, server := connect(t, f.srv.Addr("t").String(), b)
	defer client.Close()
	defer server.Close()
	roundTrip(t, client, server, "through the link")

	status, body := f.call(t, "GET", "/v1/links/line", "", "")
	var l admin.LinkJSON
	if err := json.Unmarshal([]byte(body), &l); status != 200 || err != nil || l.Up == nil || l.Down != nil ||
		l.Up.Rate != 1<<20 || l.Up.Members != 1 || len(l.Up.KeyStats) != 1 || l.Up.KeyStats[0].Key != "t" || l.Up.Bytes < 16 {
		t.Fatalf("GET /v1/links/line: %d %s", status, body)
	}
	if s, b := f.call(t, "PUT", "/v1/links/line/limits", adminToken, `{"up": {"rate": "1000KB/s"}}`); s != 200 || !strings.Contains(b, `"rate": 1000000`) {
		t.Errorf("PUT link limits: %d %s", s, b)
	}
	for _, tc := range []struct {
		path, body string
		status     int
	}{
		{"/v1/links/nope/limits", `{"up": {"rate": 5}}`, 404},
		{"/v1/links/line/limits", `{"down": {"rate": 5}}`, 409},
		{"/v1/links/line/limits", `{"up": {"rate": 0}}`, 400},
		{"/v1/links/line/limits", `{"up": {"rate": 5}, "kernel_pacing": true}`, 400},
		{"/v1/links/line/limits", `{}`, 400},
	} {
		if s, b := f.call(t, "PUT", tc.path, adminToken, tc.body); s != tc.status {
			t.Errorf("PUT %s %s: %d %s, want %d", tc.path, tc.body, s, b, tc.status)
		}
	}
	if s, _ := f.call(t, "PUT", "/v1/links/line/limits", "", `{"up": {"rate": 5}}`); s != 401 {
		t.Errorf("PUT link limits without a token: %d, want 401", s)
	}
	_, metrics := f.call(t, "GET", "/metrics", "", "")
	for _, want := range []string{`sluice_link_rate_limit_bytes_per_second{direction="up",link="line"} 1e+06`, `sluice_link_connections{direction="up",link="line"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// FuzzLimits: any body to PUT .../limits gets an answer, never a panic; an
// accepted body sets valid limits; a rejected one changes none.
func FuzzLimits(f *testing.F) {
	for _, seed := range []string{
		`{"down": {"rate": "1000KB/s", "burst": "16KiB"}}`, `{"up": {"rate": 5}, "kernel_pacing": false}`,
		`{"down": {"rate": "none"}}`, `{}`, `[]`, `{"down": null}`, `{"down": {"rate": 1e30}}`, `{"down": {"rate": -1}}`,
	} {
		f.Add(seed)
	}
	b := newBackend(f)
	srv, _ := startProxy(f, nil, proxy.ListenerConfig{Upstream: b.addr()})
	h := admin.New(srv, admin.Options{Token: adminToken, ParseRate: parseUnit, ParseSize: parseUnit})
	f.Fuzz(func(t *testing.T, body string) {
		before := srv.Stats()[0].Limits
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("PUT", "/v1/listeners/t/limits", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+adminToken)
		h.ServeHTTP(rec, req)
		after := srv.Stats()[0].Limits
		switch rec.Code {
		case 200:
			if after.Up.Validate() != nil || after.Down.Validate() != nil {
				t.Fatalf("accepted %q and set invalid limits %+v", body, after)
			}
		case 400:
			if after != before {
				t.Fatalf("rejected %q but changed the limits: %+v → %+v", body, before, after)
			}
		default:
			t.Fatalf("%q: status %d %s", body, rec.Code, rec.Body)
		}
	})
}
