package admin_test

import (
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluiceproxy/sluice/proxy"
	"github.com/sluiceproxy/sluice/proxy/admin"
	"github.com/sluiceproxy/sluice/shaper"
)

// fakeProxy serves fixed stats. It embeds a nil admin.Proxy, so a call the
// test does not expect panics.
type fakeProxy struct {
	admin.Proxy
	stats   []proxy.ListenerStats
	conns   []proxy.ConnInfo
	links   []proxy.LinkStats
	process proxy.ProcessStats
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
		process: proxy.ProcessStats{ReadAhead: 65536, Pipes: 3, LoopDirs: 2},
	}
}

// TestCollector: every metric, with its help, type and labels, from known
// stats (testdata/metrics.txt); a removed listener has no limit gauges;
// promlint finds nothing to say.
func TestCollector(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(admin.NewCollector(newFake()))
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
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", tc.path, nil))
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
