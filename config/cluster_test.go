package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

const clusterYAMLText = `
cluster:
  redis: {address: 127.0.0.1:6379, db: 2}
  lease: 200ms
  instances: 3
  instance: edge-1
links:
  hk-line:
    down: {rate: 30MB/s}
    cluster: true
limits:
  per-ip: {conns: 10, rate: 100/s, window: {max: 1000, per: 1m}, cluster: true}
bans:
  scanners: {tiers: [{over: 5, per: 10s, ban: 10m}], cluster: true}
listeners:
  - {name: web, listen: ':8080', upstream: 'a:80', links: [hk-line], limits: [per-ip], bans: scanners}
`

func TestCluster(t *testing.T) {
	cfg, err := Parse([]byte(clusterYAMLText))
	if err != nil {
		t.Fatal(err)
	}
	want := Cluster{Enabled: true, Redis: ClusterRedis{Address: "127.0.0.1:6379", DB: 2},
		Lease: 200 * time.Millisecond, Timeout: 50 * time.Millisecond, Instances: 3, Prefix: "sluice", Instance: "edge-1"}
	if !reflect.DeepEqual(cfg.Cluster, want) {
		t.Errorf("cluster =\n%+v\nwant\n%+v", cfg.Cluster, want)
	}
	if !cfg.Links[0].Cluster || !cfg.Limits[0].Cluster || !cfg.Bans[0].Cluster {
		t.Errorf("cluster flags: link %v limit %v ban %v, want all true", cfg.Links[0].Cluster, cfg.Limits[0].Cluster, cfg.Bans[0].Cluster)
	}
	out, err := cfg.YAML()
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"cluster:\n    redis:\n        address: 127.0.0.1:6379", "lease: 200ms", "timeout: 50ms", "instances: 3"} {
		if !strings.Contains(string(out), w) {
			t.Errorf("effective config lacks %q:\n%s", w, out)
		}
	}
	back, err := Parse(out)
	if err != nil || !reflect.DeepEqual(back, cfg) {
		t.Fatalf("round trip: %v\n%s", err, out)
	}

	next, err := Parse([]byte(strings.NewReplacer("lease: 200ms", "lease: 100ms", "    cluster: true\n", "").Replace(clusterYAMLText)))
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(Diff(cfg, next), "; ")
	if want := "cluster.lease 200ms → 100ms; link hk-line: cluster true → false"; got != want {
		t.Errorf("Diff = %q, want %q", got, want)
	}
	none, err := Parse([]byte("listeners: [{listen: ':1', upstream: 'a:1'}]"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(Diff(none, cfg), "; "); !strings.HasPrefix(got, "cluster added: redis 127.0.0.1:6379") {
		t.Errorf("Diff from no cluster = %q", got)
	}
}

func TestClusterSentinelTLSPassword(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "redis.pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, []byte("-"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse([]byte(`
cluster:
  redis:
    sentinel: {master: mymaster, addresses: ['10.0.0.1:26379', '10.0.0.2:26379'], password_file: ` + pw + `}
    password_file: ` + pw + `
    tls: {ca_file: ` + ca + `, server_name: redis.internal}
listeners: [{listen: ':1', upstream: 'a:1'}]
`))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Cluster.Redis
	want := ClusterRedis{
		Sentinel:     &ClusterSentinel{Master: "mymaster", Addresses: []string{"10.0.0.1:26379", "10.0.0.2:26379"}, PasswordFile: pw, Password: "s3cret"},
		PasswordFile: pw, Password: "s3cret",
		TLS: ClusterTLS{Enabled: true, CAFile: ca, ServerName: "redis.internal"},
	}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("redis =\n%+v\nwant\n%+v", r, want)
	}
	if cfg.Cluster.Lease != DefaultClusterLease || cfg.Cluster.Instances != 1 {
		t.Errorf("defaults: lease %s instances %d", cfg.Cluster.Lease, cfg.Cluster.Instances)
	}
	out, err := cfg.YAML()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "s3cret") {
		t.Errorf("effective config shows the password:\n%s", out)
	}
	back, err := Parse(out)
	if err != nil || !reflect.DeepEqual(back, cfg) {
		t.Fatalf("round trip: %v\n%s", err, out)
	}
	tls, err := Parse([]byte("cluster: {redis: {address: 'r:6379', tls: true}}\nlisteners: [{listen: ':1', upstream: 'a:1'}]"))
	if err != nil || !tls.Cluster.Redis.TLS.Enabled {
		t.Fatalf("tls: true: %v %+v", err, tls)
	}
	out, _ = tls.YAML()
	if back, err := Parse(out); err != nil || !reflect.DeepEqual(back, tls) {
		t.Fatalf("round trip of tls: true: %v\n%s", err, out)
	}
}

func TestClusterErrors(t *testing.T) {
	const lst = "listeners: [{listen: ':1', upstream: 'a:1'}]\n"
	const cl = "cluster: {redis: {address: 'r:6379'}}\n"
	for _, c := range []struct{ name, yaml, want string }{
		{"link without block", "links: {a: {down: {rate: 1Mbit}, cluster: true}}\n" + lst, "links.a.cluster: needs a cluster: block"},
		{"limit without block", "limits: {a: {conns: 1, cluster: true}}\n" + lst, "limits.a.cluster: needs a cluster: block"},
		{"ban without block", "bans: {s: {tiers: [{over: 5, per: 10s, ban: 1m}], cluster: true}}\n" + lst, "bans.s.cluster: needs a cluster: block"},
		{"link cluster not bool", cl + "links: {a: {down: {rate: 1Mbit}, cluster: yes please}}\n" + lst, `links.a.cluster: want true or false, got "yes please"`},
		{"no redis", "cluster: {lease: 100ms}\n" + lst, "cluster.redis: required"},
		{"redis empty", "cluster: {redis: {db: 1}}\n" + lst, "cluster.redis: want {address"},
		{"both", "cluster: {redis: {address: 'r:1', sentinel: {master: m, addresses: ['s:1']}}}\n" + lst, "cluster.redis: address and sentinel are exclusive"},
		{"bad address", "cluster: {redis: {address: nohost}}\n" + lst, `cluster.redis.address: want "host:port"`},
		{"bad lease", "cluster: {redis: {address: 'r:1'}, lease: soon}\n" + lst, `cluster.lease: want a duration like 100ms, got "soon"`},
		{"lease number", "cluster: {redis: {address: 'r:1'}, lease: 100}\n" + lst, "cluster.lease: want a duration like 100ms, got 100"},
		{"lease too short", "cluster: {redis: {address: 'r:1'}, lease: 5ms}\n" + lst, "cluster.lease: want a duration like 100ms within [10ms, 10s], got 5ms"},
		{"lease sub-ms", "cluster: {redis: {address: 'r:1'}, lease: 100500us}\n" + lst, "cluster.lease: want whole milliseconds"},
		{"timeout too long", "cluster: {redis: {address: 'r:1'}, timeout: 60ms}\n" + lst, "cluster.timeout: want a duration like 50ms, at most half of cluster.lease (50ms), got 60ms"},
		{"instances zero", "cluster: {redis: {address: 'r:1'}, instances: 0}\n" + lst, "cluster.instances: want a whole number from 1 to"},
		{"bad prefix", "cluster: {redis: {address: 'r:1'}, prefix: '{x}'}\n" + lst, "cluster.prefix: want letters"},
		{"bad instance", "cluster: {redis: {address: 'r:1'}, instance: 'a b'}\n" + lst, "cluster.instance: want a name without spaces"},
		{"unknown key", "cluster: {redis: {address: 'r:1'}, lease_ms: 5}\n" + lst, "cluster.lease_ms: unknown key"},
		{"sentinel no master", "cluster: {redis: {sentinel: {addresses: ['s:1']}}}\n" + lst, "cluster.redis.sentinel.master: required"},
		{"sentinel no addresses", "cluster: {redis: {sentinel: {master: m}}}\n" + lst, "cluster.redis.sentinel.addresses: want a list of sentinels"},
		{"missing password file", "cluster: {redis: {address: 'r:1', password_file: /nonexistent/pw}}\n" + lst, "cluster.redis.password_file: want a readable file"},
		{"tls cert without key", "cluster: {redis: {address: 'r:1', tls: {cert_file: /x}}}\n" + lst, "cluster.redis.tls: cert_file and key_file go together"},
		{"tls missing ca", "cluster: {redis: {address: 'r:1', tls: {ca_file: /nonexistent/ca.pem}}}\n" + lst, "cluster.redis.tls.ca_file: want a readable PEM file"},
		{"db negative", "cluster: {redis: {address: 'r:1', db: -1}}\n" + lst, "cluster.redis.db: want a whole number from 0"},
		{"window shorter than lease", cl + "limits: {a: {window: {max: 5, per: 50ms}, cluster: true}}\n" + lst, "limits.a.window.per: a cluster window wants whole milliseconds, at least cluster.lease (100ms), got 50ms"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.yaml))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Parse error = %v, want it to contain %q", err, c.want)
			}
		})
	}
}
