package admin_test

import (
	"bytes"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/sluiceproxy/sluice/proxy/admin"
)

func clusterStatus() *admin.ClusterStatus {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return &admin.ClusterStatus{
		Instance: "edge-1", State: "fallback", Since: t0, LastOK: t0.Add(-time.Second), LastErr: "dial tcp 127.0.0.1:6379: connect: connection refused",
		Calls: 1200, Failures: 30, Late: 1, Fallbacks: 2, BansSent: 5, BansReceived: 7, BansPending: 1,
		Links: []admin.ClusterLink{
			{Link: "line", Dir: "down", Line: 30_000_000, Share: 18_750_000, Fair: 18_750_000, Leased: true, Instances: 3, Weight: 16, Conns: 10},
			{Link: "line", Dir: "up", Line: 1_000_000, Share: 333_333, Leased: false, Conns: 0, Want: 65536},
		},
	}
}

// TestClusterCollector: every cluster metric from known state
// (testdata/cluster_metrics.txt); promlint finds nothing to say.
func TestClusterCollector(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(admin.NewClusterCollector(clusterStatus))
	golden := "testdata/cluster_metrics.txt"
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
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.Open(golden)
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

// TestClusterCalls: GET /v1/cluster (testdata/cluster.json) and the
// cluster's line of /readyz; an instance in no cluster answers 404.
func TestClusterCalls(t *testing.T) {
	h := admin.New(newFake(), admin.Options{Cluster: clusterStatus})
	get := func(h *admin.Handler, path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec.Code, rec.Body.String()
	}
	code, body := get(h, "/v1/cluster")
	golden := filepath.Join("testdata", "cluster.json")
	if *update {
		if err := os.WriteFile(golden, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if code != 200 || body != string(want) {
		t.Errorf("GET /v1/cluster: %d\n%s\nwant 200 and %s:\n%s", code, body, golden, want)
	}
	// Fallback serves: ready, and says so.
	if code, body := get(h, "/readyz"); code != 200 || body != "ready\ncluster fallback instance edge-1: dial tcp 127.0.0.1:6379: connect: connection refused\n" {
		t.Errorf("GET /readyz: %d %q", code, body)
	}
	plain := admin.New(newFake(), admin.Options{})
	if code, body := get(plain, "/v1/cluster"); code != 404 || !strings.Contains(body, "not in a cluster") {
		t.Errorf("GET /v1/cluster in no cluster: %d %s, want 404", code, body)
	}
	if code, body := get(plain, "/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("GET /readyz in no cluster: %d %q", code, body)
	}
}
