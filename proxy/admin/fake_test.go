package admin_test

import (
	"bytes"
	"flag"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/sluiceproxy/sluice/proxy"
	"github.com/sluiceproxy/sluice/proxy/admin"
	"github.com/sluiceproxy/sluice/proxy/admit"
	"github.com/sluiceproxy/sluice/proxy/upstream"
	"github.com/sluiceproxy/sluice/shaper"
)

// update rewrites the golden files: go test ./proxy/admin -update, then
// read the diff.
var update = flag.Bool("update", false, "rewrite testdata golden files from the output")

// fakeProxy serves fixed stats. It embeds a nil admin.Proxy, so a call the
// test does not expect panics.
type fakeProxy struct {
	admin.Proxy
	stats   []proxy.ListenerStats
	conns   []proxy.ConnInfo
	links   []proxy.LinkStats
	process proxy.ProcessStats
	limits  []admit.LimitStats
	banSets []admit.BanStats
	bans    []admit.BanInfo
	keys    []admit.KeyState
	pools   []upstream.Stats
	calls   []string // the state-changing calls, as "add ban key dur" / "lift ban key"
}

func (f *fakeProxy) Pools() []upstream.Stats { return f.pools }

func (f *fakeProxy) DrainServer(pool, addr string) error  { return f.serverOp("drain", pool, addr) }
func (f *fakeProxy) EnableServer(pool, addr string) error { return f.serverOp("enable", pool, addr) }

func (f *fakeProxy) serverOp(op, pool, addr string) error {
	if pool != "api" {
		return fmt.Errorf("%w %q", proxy.ErrNoPool, pool)
	}
	if addr != "10.0.0.1:443" && addr != "10.0.0.2:443" {
		return fmt.Errorf("%w: %s", upstream.ErrUnknownServer, addr)
	}
	f.calls = append(f.calls, op+" "+pool+" "+addr)
	return nil
}

func (f *fakeProxy) AdmissionSet() ([]admit.LimitStats, []admit.BanStats) { return f.limits, f.banSets }
func (f *fakeProxy) Bans() []admit.BanInfo                                { return append([]admit.BanInfo(nil), f.bans...) }
func (f *fakeProxy) Client(addr netip.Addr, listener string) []admit.KeyState {
	f.calls = append(f.calls, "client "+addr.String()+" "+listener)
	return f.keys
}

func (f *fakeProxy) AddBan(ban string, key netip.Prefix, d time.Duration) error {
	if ban != "scanners" {
		return fmt.Errorf("no ban policy %q", ban)
	}
	f.calls = append(f.calls, "add "+ban+" "+key.String()+" "+d.String())
	return nil
}

func (f *fakeProxy) LiftBan(ban string, key netip.Prefix) (bool, error) {
	if ban != "scanners" {
		return false, fmt.Errorf("no ban policy %q", ban)
	}
	f.calls = append(f.calls, "lift "+ban+" "+key.String())
	return key.String() == "198.51.100.7/32", nil
}

func (f *fakeProxy) Stats() []proxy.ListenerStats { return f.stats }
func (f *fakeProxy) Conns() []proxy.ConnInfo      { return append([]proxy.ConnInfo(nil), f.conns...) }
func (f *fakeProxy) Process() proxy.ProcessStats  { return f.process }

func (f *fakeProxy) Links(keys bool) []proxy.LinkStats {
	if keys {
		return f.links
	}
	out := make([]proxy.LinkStats, 0, len(f.links))
	for _, l := range f.links {
		for d, ds := range l.Dirs {
			if ds != nil {
				c := *ds
				c.Keys = nil
				l.Dirs[d] = &c
			}
		}
		out = append(out, l)
	}
	return out
}

// newFake is a proxy with a listener "video" that paces MP4, a removed
// listener "old", two connections and a link "line" that limits up.
func newFake() *fakeProxy {
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	video := proxy.ConnLimits{Down: shaper.Limit{Rate: 2_000_000, Burst: 65536}, KernelPacing: true}
	return &fakeProxy{
		stats: []proxy.ListenerStats{{
			Name: "video", Addr: "127.0.0.1:8080", Upstream: "127.0.0.1:9000", Limits: video, Chunk: 8192,
			Active: 2, Accepted: 5, Ended: map[string]uint64{"ok": 2, "closed": 1},
			Bytes: [2]int64{proxy.Up: 1000, proxy.Down: 3_000_000}, Waited: [2]time.Duration{proxy.Down: 1500 * time.Millisecond},
			Waiting: [2]int{proxy.Down: 1}, MP4Enabled: true,
			MP4: proxy.MP4Stats{Videos: 3, Plans: 2, BurstBytes: 300_000, PlannedRate: 1_200_000,
				Fallbacks: map[string]int64{"encrypted": 1}, Cached: 1, Waited: 250 * time.Millisecond, PacedBytes: 900_000},
			Admission: proxy.AdmissionStats{
				Decisions: map[[2]string]uint64{{"", "admit"}: 4, {"per-ip", "refuse"}: 2, {"per-ip", "delay"}: 1, {"", "refuse"}: 1},
				Refused:   map[string]uint64{"rate": 2, "deny": 1}, QueueTimeouts: 1, Tarpitted: 3, Overflowed: 2, AcceptPaused: 5,
			},
		}, {
			Name: "old", Limits: proxy.ConnLimits{Up: shaper.Limit{Rate: 1000, Burst: 8192}},
			Accepted: 1, Ended: map[string]uint64{"ok": 1}, Bytes: [2]int64{proxy.Up: 10, proxy.Down: 20},
		}},
		conns: []proxy.ConnInfo{
			{ID: 7, Listener: "video", Client: "127.0.0.1:50001", Upstream: "127.0.0.1:9000", Start: t0,
				Bytes: [2]int64{proxy.Up: 100, proxy.Down: 2_000_000}, Limits: video, Chunk: 8192, Waiting: [2]bool{proxy.Down: true}},
			{ID: 9, Listener: "video", Client: "127.0.0.1:50002", Upstream: "127.0.0.1:9000", Start: t0.Add(time.Second),
				Bytes: [2]int64{proxy.Up: 900, proxy.Down: 1_000_000}, Limits: video, Chunk: 8192},
		},
		links: []proxy.LinkStats{{Name: "line", KeyBy: proxy.KeyListener, Dirs: [2]*proxy.LinkDirStats{proxy.Up: {
			Limit:     shaper.LinkLimit{Limit: shaper.Limit{Rate: 1 << 20, Burst: 1 << 16}, Key: shaper.KeyLimit{Rate: 1000, Ceil: 5000, Weight: 1}},
			LinkStats: shaper.LinkStats{Bytes: 5000, Borrowed: 100, Grants: 10, Tokens: 4096, Waiting: 1, Keys: 2, Members: 3},
			Keys: []shaper.KeyStats{
				{Key: "old", Limit: shaper.KeyLimit{Rate: 1000, Ceil: 5000, Weight: 1}, Members: 1, Bytes: 1000},
				{Key: "video", Limit: shaper.KeyLimit{Rate: 1000, Ceil: 5000, Weight: 2}, Members: 2, Waiting: 1, Bytes: 4000, Borrowed: 100},
			},
		}}}},
		process: proxy.ProcessStats{ReadAhead: 65536, Pipes: 3, LoopDirs: 2, Parked: 6, Detached: 2},
		limits:  []admit.LimitStats{{Name: "per-ip", Admitted: 5, Delayed: 1, Refused: 2, Keys: 7, Waiting: 1}},
		banSets: []admit.BanStats{{Name: "scanners", Active: 1, Keys: 4, Started: 2, Lifted: 1}},
		bans: []admit.BanInfo{
			{Ban: "scanners", Key: "198.51.100.7/32", Since: t0, Until: t0.Add(10 * time.Minute), Tier: 0},
			{Ban: "scanners", Key: "203.0.113.0/24", Since: t0, Until: t0.Add(5 * time.Minute), Tier: 1, Repeats: 2, Manual: true},
		},
		keys: []admit.KeyState{{Limit: "per-ip", Key: "198.51.100.7", Conns: 2, Excess: 1.5}},
		pools: []upstream.Stats{{Name: "api", Balance: upstream.LeastConn, Picks: 260, Retries: 3, NoServer: 1, Servers: []upstream.ServerStats{
			{Address: "10.0.0.1:443", Weight: 2, State: upstream.Cooling, Active: 4, Total: 100, Failures: 1,
				Quota: upstream.QuotaStats{Conns: 100, ConnsLimit: 100, Reset: t0.Add(time.Minute)}, CoolingUntil: t0.Add(time.Minute), LastCheck: t0},
			{Address: "10.0.0.2:443", Weight: 1, State: upstream.Up, Active: 2, Total: 150, LastCheck: t0},
			{Address: "10.0.0.9:443", Weight: 1, Backup: true, State: upstream.Down, Failures: 3, ConsecutiveFailures: 3,
				LastCheck: t0, LastCheckErr: "connect: connection refused"},
		}}},
	}
}

// TestCollector: every metric, with its help, type and labels, from known
// stats (testdata/metrics.txt); a removed listener has no limit gauges;
// promlint finds nothing to say.
func TestCollector(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(admin.NewCollector(newFake()))
	if *update {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		for _, mf := range mfs {
			if _, err := expfmt.MetricFamilyToText(&buf, mf); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile("testdata/metrics.txt", buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.Open("testdata/metrics.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer want.Close()
	if err := testutil.GatherAndCompare(reg, want); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("promlint: %v %v", problems, err)
	}
}

// TestWireJSON: the JSON of the read calls, byte for byte
// (testdata/*.json): field names, units, sorting, ?limit.
func TestWireJSON(t *testing.T) {
	h := admin.New(newFake(), admin.Options{})
	for _, tc := range []struct{ name, path, golden string }{
		{"listeners", "/v1/listeners", "listeners.json"},
		{"conns sorted and cut", "/v1/conns?limit=1&sort=bytes_up", "conns.json"},
		{"one link, busiest key", "/v1/links/line?limit=1", "link.json"},
		{"links without keys", "/v1/links", "links.json"},
		{"bans, soonest first", "/v1/bans", "bans.json"},
		{"a client's keys", "/v1/clients/198.51.100.7?listener=video", "client.json"},
		{"upstream pools", "/v1/upstreams", "upstreams.json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", tc.path, nil))
			if *update {
				if err := os.WriteFile(filepath.Join("testdata", tc.golden), rec.Body.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(filepath.Join("testdata", tc.golden))
			if err != nil {
				t.Fatal(err)
			}
			if rec.Code != 200 || rec.Body.String() != string(want) {
				t.Errorf("GET %s: %d\n%s\nwant 200 and testdata/%s:\n%s", tc.path, rec.Code, rec.Body, tc.golden, want)
			}
		})
	}
}

// TestBanCalls: adding and lifting bans needs the token, checks its input
// and names what is wrong.
func TestBanCalls(t *testing.T) {
	f := newFake()
	h := admin.New(f, admin.Options{Token: "t0ken"})
	call := func(method, path, token, body string) (int, string) {
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code, rec.Body.String()
	}
	for _, tc := range []struct {
		name, method, path, token, body string
		status                          int
		want                            string
	}{
		{"add", "POST", "/v1/bans", "t0ken", `{"ban": "scanners", "key": "::ffff:198.51.100.9", "for": "1h"}`, 200, `"key": "198.51.100.9/32"`},
		{"add a network", "POST", "/v1/bans", "t0ken", `{"ban": "scanners", "key": "203.0.113.77/24", "for": "10m"}`, 200, `"key": "203.0.113.0/24"`},
		{"add without a token", "POST", "/v1/bans", "", `{"ban": "scanners", "key": "198.51.100.9", "for": "1h"}`, 401, "missing token"},
		{"add a bad key", "POST", "/v1/bans", "t0ken", `{"ban": "scanners", "key": "nobody", "for": "1h"}`, 400, `key: want an address or a prefix`},
		{"add a bad duration", "POST", "/v1/bans", "t0ken", `{"ban": "scanners", "key": "198.51.100.9", "for": "ever"}`, 400, `for: want a duration`},
		{"add to no policy", "POST", "/v1/bans", "t0ken", `{"ban": "nope", "key": "198.51.100.9", "for": "1h"}`, 404, `no ban policy`},
		{"add an unknown field", "POST", "/v1/bans", "t0ken", `{"ban": "scanners", "key": "198.51.100.9", "for": "1h", "x": 1}`, 400, "body: want JSON"},
		{"lift", "DELETE", "/v1/bans/scanners?key=198.51.100.7", "t0ken", "", 200, `"lifted": "198.51.100.7/32"`},
		{"lift one not banned", "DELETE", "/v1/bans/scanners?key=198.51.100.8", "t0ken", "", 404, "is not banned"},
		{"lift without a token", "DELETE", "/v1/bans/scanners?key=198.51.100.7", "", "", 401, "missing token"},
		{"a bad client address", "GET", "/v1/clients/nobody", "", "", 400, "address: want an IP address"},
		{"drain a server", "POST", "/v1/upstreams/api/servers/10.0.0.2:443/drain", "t0ken", "", 200, `"name": "api"`},
		{"enable a server", "POST", "/v1/upstreams/api/servers/10.0.0.2:443/enable", "t0ken", "", 200, `"name": "api"`},
		{"drain without a token", "POST", "/v1/upstreams/api/servers/10.0.0.2:443/drain", "", "", 401, "missing token"},
		{"drain in no pool", "POST", "/v1/upstreams/nope/servers/10.0.0.2:443/drain", "t0ken", "", 404, "no such upstream pool"},
		{"drain no server", "POST", "/v1/upstreams/api/servers/10.0.0.7:443/drain", "t0ken", "", 404, "no such server"},
		{"one pool", "GET", "/v1/upstreams/api", "", "", 200, `"state": "cooling"`},
		{"no pool", "GET", "/v1/upstreams/nope", "", "", 404, `no upstream pool`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := call(tc.method, tc.path, tc.token, tc.body)
			if status != tc.status || !strings.Contains(body, tc.want) {
				t.Errorf("%s %s: %d %s\nwant %d with %q", tc.method, tc.path, status, body, tc.status, tc.want)
			}
		})
	}
	want := []string{"add scanners 198.51.100.9/32 1h0m0s", "add scanners 203.0.113.0/24 10m0s", "lift scanners 198.51.100.7/32", "lift scanners 198.51.100.8/32",
		"drain api 10.0.0.2:443", "enable api 10.0.0.2:443"}
	if fmt.Sprint(f.calls) != fmt.Sprint(want) {
		t.Errorf("calls = %q, want %q", f.calls, want)
	}
}
