package config

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Cluster is the cluster: block: the Redis that several sluice instances
// share link budgets, limits and bans through (docs/cluster.md). Without
// the block (Enabled false) everything is local, and any `cluster: true`
// under links, limits or bans is an error.
type Cluster struct {
	// Enabled is true when the config has a cluster: block.
	Enabled bool
	// Redis is where the shared state lives.
	Redis ClusterRedis
	// Lease is the lease period: how much of a link's budget an instance
	// takes at a time, and how often it renews its leases and flushes its
	// shared counters (one Redis call per period). Default 100ms, within
	// [10ms, 10s].
	Lease time.Duration
	// Timeout bounds each Redis call; default 50ms, at most Lease / 2.
	Timeout time.Duration
	// Instances is how many instances are expected to share the links:
	// before its first lease, an instance that cannot reach Redis runs
	// each cluster link at line ÷ Instances. Default 1.
	Instances int
	// Prefix names this cluster's keys in Redis, so several clusters may
	// share one server. Default "sluice".
	Prefix string
	// Instance is this instance's name among the cluster's; it must be
	// unique. Empty means "hostname-pid".
	Instance string
}

// ClusterRedis says how to reach Redis: one server (Address) or the
// master Sentinel names (Sentinel).
type ClusterRedis struct {
	// Address is one server's "host:port"; exclusive with Sentinel.
	Address string
	// Sentinel finds the master through Sentinel; nil when Address is set.
	Sentinel *ClusterSentinel
	// DB is the database number; default 0.
	DB int
	// Username is the Redis ACL user; empty for the default user.
	Username string
	// PasswordFile names the file holding the password (read at load,
	// trailing white space cut); Password is its content. Empty means
	// none.
	PasswordFile, Password string
	// TLS, if Enabled, connects with TLS.
	TLS ClusterTLS
}

// ClusterSentinel names a master watched by Sentinel.
type ClusterSentinel struct {
	// Master is the name the sentinels know the master by.
	Master string
	// Addresses are the sentinels' "host:port"; at least one.
	Addresses []string
	// PasswordFile names the file holding the sentinels' password (read
	// at load into Password); empty means none.
	PasswordFile, Password string
}

// ClusterTLS configures TLS to Redis. The files are PEM; they are read
// when sluice connects (and by `sluice check`).
type ClusterTLS struct {
	// Enabled turns TLS on: `tls: true`, or any tls: mapping.
	Enabled bool
	// CAFile holds the CAs that sign the server's certificate; empty means
	// the system's.
	CAFile string
	// CertFile and KeyFile are the client's certificate and key, for
	// servers that want one; both or neither.
	CertFile, KeyFile string
	// ServerName is the name the server's certificate must carry; empty
	// means the address's host.
	ServerName string
	// InsecureSkipVerify accepts any server certificate (tests only).
	InsecureSkipVerify bool
}

// Cluster defaults and bounds, as shaper/cluster takes them.
const (
	DefaultClusterLease   = 100 * time.Millisecond
	DefaultClusterTimeout = 50 * time.Millisecond
	DefaultClusterPrefix  = "sluice"
	MinClusterLease       = 10 * time.Millisecond
	MaxClusterLease       = 10 * time.Second
	MaxClusterInstances   = 10000
	MaxClusterDB          = 1 << 16
)

var clusterPrefix = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]*$`)

// cluster reads the cluster: block.
func (d *decoder) cluster(v any) Cluster {
	if v == nil {
		return Cluster{}
	}
	m := d.object("cluster", v, "redis", "lease", "timeout", "instances", "prefix", "instance")
	if m == nil {
		return Cluster{}
	}
	c := Cluster{Enabled: true}
	if m["redis"] == nil {
		d.failf("cluster.redis", `required: want {address: "host:port"} or {sentinel: {master: NAME, addresses: ["host:port", ...]}}`)
	} else {
		c.Redis = d.clusterRedis(m["redis"])
	}
	c.Lease = d.clusterDuration("cluster.lease", m["lease"], DefaultClusterLease, "100ms")
	if c.Lease < MinClusterLease || c.Lease > MaxClusterLease {
		d.failf("cluster.lease", "want a duration like 100ms within [%s, %s], got %s", MinClusterLease, MaxClusterLease, c.Lease)
		c.Lease = DefaultClusterLease
	}
	c.Timeout = d.clusterDuration("cluster.timeout", m["timeout"], min(DefaultClusterTimeout, c.Lease/2), "50ms")
	if c.Timeout <= 0 || c.Timeout > c.Lease/2 {
		d.failf("cluster.timeout", "want a duration like 50ms, at most half of cluster.lease (%s), got %s", c.Lease/2, c.Timeout)
	}
	c.Instances = d.integer("cluster.instances", m["instances"], 1, 1, MaxClusterInstances)
	c.Prefix = d.str("cluster.prefix", m["prefix"], DefaultClusterPrefix)
	if !clusterPrefix.MatchString(c.Prefix) {
		d.failf("cluster.prefix", "want letters, digits, '_', '.', ':' and '-', like sluice, got %q", c.Prefix)
	}
	c.Instance = d.str("cluster.instance", m["instance"], "")
	if c.Instance != "" && strings.ContainsAny(c.Instance, " \t\r\n{}") {
		d.failf("cluster.instance", "want a name without spaces or braces, like edge-1, got %q", c.Instance)
	}
	return c
}

// clusterDuration reads a duration whose error names the example form.
func (d *decoder) clusterDuration(path string, v any, def time.Duration, example string) time.Duration {
	if v == nil {
		return def
	}
	s, ok := v.(string)
	dur, err := parseDuration(strings.TrimSpace(s))
	if !ok || err != nil || dur <= 0 {
		d.failf(path, "want a duration like %s, got %s", example, describe(v))
		return def
	}
	if dur%time.Millisecond != 0 {
		d.failf(path, "want whole milliseconds, like %s, got %s", example, describe(v))
		return def
	}
	return dur
}

func (d *decoder) clusterRedis(v any) ClusterRedis {
	const path = "cluster.redis"
	m := d.object(path, v, "address", "sentinel", "db", "username", "password_file", "tls")
	if m == nil {
		return ClusterRedis{}
	}
	var r ClusterRedis
	switch {
	case m["address"] != nil && m["sentinel"] != nil:
		d.failf(path, "address and sentinel are exclusive: want one of them")
	case m["address"] != nil:
		r.Address = d.hostPort(path+".address", m["address"], false)
	case m["sentinel"] != nil:
		r.Sentinel = d.clusterSentinel(path+".sentinel", m["sentinel"])
	default:
		d.failf(path, `want {address: "host:port"} or {sentinel: {master: NAME, addresses: ["host:port", ...]}}`)
	}
	r.DB = d.integer(path+".db", m["db"], 0, 0, MaxClusterDB)
	r.Username = d.str(path+".username", m["username"], "")
	r.PasswordFile, r.Password = d.secretFile(path+".password_file", m["password_file"])
	r.TLS = d.clusterTLS(path+".tls", m["tls"])
	return r
}

func (d *decoder) clusterSentinel(path string, v any) *ClusterSentinel {
	m := d.object(path, v, "master", "addresses", "password_file")
	if m == nil {
		return nil
	}
	s := &ClusterSentinel{Master: d.str(path+".master", m["master"], "")}
	if s.Master == "" {
		d.failf(path+".master", "required: the name the sentinels know the master by, like mymaster")
	}
	list, ok := m["addresses"].([]any)
	if !ok || len(list) == 0 {
		d.failf(path+".addresses", `want a list of sentinels like ["10.0.0.1:26379", "10.0.0.2:26379"], got %s`, describe(m["addresses"]))
	}
	for i, a := range list {
		if hp := d.hostPort(path+".addresses["+strconv.Itoa(i)+"]", a, false); hp != "" {
			s.Addresses = append(s.Addresses, hp)
		}
	}
	s.PasswordFile, s.Password = d.secretFile(path+".password_file", m["password_file"])
	return s
}

// secretFile reads a password file named at path: its content, trailing
// white space cut. ${CREDENTIALS_DIRECTORY} expands as in admin.token_file.
func (d *decoder) secretFile(path string, v any) (file, secret string) {
	file = d.str(path, v, "")
	if file == "" {
		return "", ""
	}
	b, err := os.ReadFile(d.path(expandCredentials(file)))
	if err != nil {
		d.failf(path, "want a readable file holding the password: %v", err)
		return file, ""
	}
	secret = strings.TrimRight(string(b), " \t\r\n")
	if secret == "" {
		d.failf(path, "%s is empty: want the password", file)
	}
	return file, secret
}

func (d *decoder) clusterTLS(path string, v any) ClusterTLS {
	switch x := v.(type) {
	case nil:
		return ClusterTLS{}
	case bool:
		return ClusterTLS{Enabled: x}
	case string:
		return ClusterTLS{Enabled: d.boolean(path, x, false)}
	}
	m := d.object(path, v, "ca_file", "cert_file", "key_file", "server_name", "insecure_skip_verify")
	if m == nil {
		return ClusterTLS{}
	}
	t := ClusterTLS{
		Enabled:            true,
		CAFile:             d.path(d.str(path+".ca_file", m["ca_file"], "")),
		CertFile:           d.path(d.str(path+".cert_file", m["cert_file"], "")),
		KeyFile:            d.path(d.str(path+".key_file", m["key_file"], "")),
		ServerName:         d.str(path+".server_name", m["server_name"], ""),
		InsecureSkipVerify: d.boolean(path+".insecure_skip_verify", m["insecure_skip_verify"], false),
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		d.failf(path, "cert_file and key_file go together: set both or neither")
	}
	for _, f := range []struct{ key, file string }{{"ca_file", t.CAFile}, {"cert_file", t.CertFile}, {"key_file", t.KeyFile}} {
		if f.file == "" {
			continue
		}
		if _, err := os.Stat(f.file); err != nil {
			d.failf(path+"."+f.key, "want a readable PEM file: %v", err)
		}
	}
	return t
}

// checkCluster checks what names the cluster: every `cluster: true` needs
// the cluster: block, and a shared limit's window must span whole leases.
func (d *decoder) checkCluster(c *Config) {
	need := func(path string) {
		if !c.Cluster.Enabled {
			d.failf(path, "needs a cluster: block to share through, like cluster: {redis: {address: \"127.0.0.1:6379\"}}; add one or set false")
		}
	}
	for _, l := range c.Links {
		if l.Cluster {
			need("links." + l.Name + ".cluster")
		}
	}
	for _, l := range c.Limits {
		if !l.Cluster {
			continue
		}
		need("limits." + l.Name + ".cluster")
		if w := l.Window.Per; c.Cluster.Enabled && w > 0 && (w < c.Cluster.Lease || w%time.Millisecond != 0) {
			d.failf("limits."+l.Name+".window.per", "a cluster window wants whole milliseconds, at least cluster.lease (%s), got %s", c.Cluster.Lease, w)
		}
	}
	for _, b := range c.Bans {
		if b.Cluster {
			need("bans." + b.Name + ".cluster")
		}
	}
}

// String describes where Redis is, for logs: the address, or the
// sentinel master and its sentinels.
func (r ClusterRedis) String() string {
	if r.Sentinel != nil {
		return fmt.Sprintf("sentinel %s@%s", r.Sentinel.Master, strings.Join(r.Sentinel.Addresses, ","))
	}
	return r.Address
}

// clusterYAML is the cluster: block as [Config.YAML] writes it.
type clusterYAML struct {
	Redis struct {
		Address      string               `yaml:"address,omitempty"`
		Sentinel     *clusterSentinelYAML `yaml:"sentinel,omitempty"`
		DB           int                  `yaml:"db"`
		Username     string               `yaml:"username,omitempty"`
		PasswordFile string               `yaml:"password_file,omitempty"`
		TLS          any                  `yaml:"tls,omitempty"` // true, or a *clusterTLSYAML
	} `yaml:"redis"`
	Lease     string `yaml:"lease"`
	Timeout   string `yaml:"timeout"`
	Instances int    `yaml:"instances"`
	Prefix    string `yaml:"prefix"`
	Instance  string `yaml:"instance,omitempty"`
}

type clusterSentinelYAML struct {
	Master       string   `yaml:"master"`
	Addresses    []string `yaml:"addresses,flow"`
	PasswordFile string   `yaml:"password_file,omitempty"`
}

type clusterTLSYAML struct {
	CAFile             string `yaml:"ca_file,omitempty"`
	CertFile           string `yaml:"cert_file,omitempty"`
	KeyFile            string `yaml:"key_file,omitempty"`
	ServerName         string `yaml:"server_name,omitempty"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify,omitempty"`
}

// yaml returns c as the effective config writes it; nil without a
// cluster: block.
func (c Cluster) yaml() *clusterYAML {
	if !c.Enabled {
		return nil
	}
	o := &clusterYAML{Lease: c.Lease.String(), Timeout: c.Timeout.String(), Instances: c.Instances, Prefix: c.Prefix, Instance: c.Instance}
	r := c.Redis
	o.Redis.Address, o.Redis.DB, o.Redis.Username, o.Redis.PasswordFile = r.Address, r.DB, r.Username, r.PasswordFile
	if s := r.Sentinel; s != nil {
		o.Redis.Sentinel = &clusterSentinelYAML{s.Master, s.Addresses, s.PasswordFile}
	}
	if t := r.TLS; t.Enabled {
		ty := clusterTLSYAML{t.CAFile, t.CertFile, t.KeyFile, t.ServerName, t.InsecureSkipVerify}
		o.Redis.TLS = true
		if ty != (clusterTLSYAML{}) {
			o.Redis.TLS = &ty
		}
	}
	return o
}

// diffCluster lists the changes of the cluster: block, for [Diff].
func diffCluster(old, next Cluster) []string {
	var out []string
	field := func(path, a, b string) {
		if a != b {
			out = append(out, fmt.Sprintf("%s %s → %s", path, a, b))
		}
	}
	switch {
	case !old.Enabled && !next.Enabled:
		return nil
	case !old.Enabled:
		return []string{"cluster added: redis " + next.Redis.String()}
	case !next.Enabled:
		return []string{"cluster removed"}
	}
	field("cluster.redis", old.Redis.String(), next.Redis.String())
	field("cluster.redis.db", strconv.Itoa(old.Redis.DB), strconv.Itoa(next.Redis.DB))
	field("cluster.redis.username", old.Redis.Username, next.Redis.Username)
	field("cluster.redis.password_file", old.Redis.PasswordFile, next.Redis.PasswordFile)
	if old.Redis.Password != next.Redis.Password && old.Redis.PasswordFile == next.Redis.PasswordFile {
		out = append(out, "cluster.redis password changed")
	}
	field("cluster.redis.tls", fmt.Sprintf("%+v", old.Redis.TLS), fmt.Sprintf("%+v", next.Redis.TLS))
	field("cluster.lease", old.Lease.String(), next.Lease.String())
	field("cluster.timeout", old.Timeout.String(), next.Timeout.String())
	field("cluster.instances", strconv.Itoa(old.Instances), strconv.Itoa(next.Instances))
	field("cluster.prefix", old.Prefix, next.Prefix)
	field("cluster.instance", old.Instance, next.Instance)
	return out
}
