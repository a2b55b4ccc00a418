package config

import (
	"sort"
	"strconv"
	"strings"
	"time"
)

// Upstream is a named pool of servers (upstreams.NAME) a listener's
// upstream may name instead of one "host:port".
type Upstream struct {
	// Name is the pool's key under upstreams: (lower case; letters,
	// digits, '-' and '_').
	Name string
	// Balance chooses among the servers that can take a connection:
	// "least_conn" (default), "round_robin" or "source_hash".
	Balance string
	// Servers are the pool's servers, at least one not a backup.
	Servers []Server
	// Check configures active health checks; empty Type means none.
	Check Check
	// Passive ejects a server after Failures failures in a row; zero
	// Failures means never.
	Passive Passive
	// Retry is how many other servers a connection may try before any
	// byte reached its client.
	Retry int
	// HTTPRetryAfter sniffs an HTTP/1.x upstream's answer: a 429 or 503
	// cools the server for its Retry-After and the request goes to the
	// next server.
	HTTPRetryAfter bool
	// RetryAfter is how long a 429/503 without a Retry-After cools its
	// server; RetryAfterMax bounds any Retry-After.
	RetryAfter, RetryAfterMax time.Duration
}

// Server is one server of a pool.
type Server struct {
	// Address is "host:port"; a host name is resolved at every dial.
	Address string
	// Weight is the server's share, 1 to 1000.
	Weight int
	// Backup servers take connections only while no primary can.
	Backup bool
	// Quota limits what the server takes in a window of Per: Conns new
	// connections or Bytes (both directions). Spent, the server cools
	// until the window ends.
	Quota Quota
}

// Quota is a server's budget in a fixed window.
type Quota struct {
	Conns int64
	Bytes Size
	Per   time.Duration
}

// Check is a pool's active health check.
type Check struct {
	// Type is "tcp" (a connect) or "http" (Send, then a status Expect
	// matches); empty means no checks.
	Type string
	// Interval between rounds; Timeout of one check.
	Interval, Timeout time.Duration
	// Rise checks in a row bring a down server up; Fall take it down.
	Rise, Fall int
	// Send is what an http check writes; Expect the status it wants, a
	// code ("200") or a class ("2xx").
	Send, Expect string
}

// Passive is a pool's passive ejection.
type Passive struct {
	Failures        int
	Eject, MaxEject time.Duration
}

// Bounds and defaults of upstreams.
const (
	MaxServerWeight      = 1000
	MaxUpstreamRetry     = 10
	MaxUpstreamServers   = 1024
	DefaultCheckInterval = 2 * time.Second
	DefaultCheckTimeout  = time.Second
	DefaultCheckRise     = 2
	DefaultCheckFall     = 3
	DefaultCheckSend     = "GET / HTTP/1.0\r\n\r\n"
	DefaultEject         = 10 * time.Second
	DefaultMaxEject      = 5 * time.Minute
	DefaultRetryAfter    = 10 * time.Second
	DefaultRetryAfterMax = 5 * time.Minute
)

// upstreams reads the upstreams: mapping.
func (d *decoder) upstreams(v any) []Upstream {
	if v == nil {
		return nil
	}
	m, ok := asMap(v)
	if !ok {
		d.failf("upstreams", "want a mapping of named pools, like {api: {servers: [{address: \"10.0.0.1:443\"}]}}, got %s", describe(v))
		return nil
	}
	names := make([]string, 0, len(m))
	for name := range m {
		names = append(names, name)
	}
	sort.Strings(names)
	out := make([]Upstream, 0, len(m))
	for _, name := range names {
		path := "upstreams." + name
		if !linkName.MatchString(name) {
			d.failf(path, "a pool name is lower case letters, digits, '-' and '_', got %q", name)
			continue
		}
		um := d.object(path, m[name], "balance", "servers", "check", "passive", "retry", "http_retry_after", "retry_after", "retry_after_max")
		if um == nil {
			continue
		}
		u := Upstream{Name: name}
		u.Balance = d.oneOf(path+".balance", um["balance"], "least_conn", "least_conn", "round_robin", "source_hash")
		u.Servers = d.servers(path+".servers", um["servers"])
		u.Check = d.check(path+".check", um["check"])
		pm := d.object(path+".passive", um["passive"], "failures", "eject", "max_eject")
		u.Passive.Failures = d.integer(path+".passive.failures", pm["failures"], 0, 0, 1000)
		u.Passive.Eject = d.duration(path+".passive.eject", pm["eject"], DefaultEject, true)
		u.Passive.MaxEject = d.duration(path+".passive.max_eject", pm["max_eject"], max(DefaultMaxEject, u.Passive.Eject), true)
		if u.Passive.MaxEject < u.Passive.Eject {
			d.failf(path+".passive.max_eject", "want at least eject (%s), got %s", u.Passive.Eject, u.Passive.MaxEject)
		}
		if um["passive"] != nil && pm["failures"] == nil {
			d.failf(path+".passive.failures", "want how many failures in a row eject a server, like 3")
		}
		u.Retry = d.integer(path+".retry", um["retry"], 0, 0, MaxUpstreamRetry)
		u.HTTPRetryAfter = d.boolean(path+".http_retry_after", um["http_retry_after"], false)
		u.RetryAfter = d.duration(path+".retry_after", um["retry_after"], DefaultRetryAfter, true)
		u.RetryAfterMax = d.duration(path+".retry_after_max", um["retry_after_max"], max(DefaultRetryAfterMax, u.RetryAfter), true)
		if u.RetryAfterMax < u.RetryAfter {
			d.failf(path+".retry_after_max", "want at least retry_after (%s), got %s", u.RetryAfter, u.RetryAfterMax)
		}
		out = append(out, u)
	}
	return out
}

// servers reads a pool's list of servers.
func (d *decoder) servers(path string, v any) []Server {
	list, ok := v.([]any)
	if !ok || len(list) == 0 {
		d.failf(path, "want a list of servers, like [{address: \"10.0.0.1:443\", weight: 2}], got %s", describe(v))
		return nil
	}
	if len(list) > MaxUpstreamServers {
		d.failf(path, "want at most %d servers, got %d", MaxUpstreamServers, len(list))
		return nil
	}
	out := make([]Server, 0, len(list))
	seen := map[string]string{}
	primaries := 0
	for i, item := range list {
		p := path + "[" + strconv.Itoa(i) + "]"
		if s, ok := item.(string); ok { // a bare "host:port"
			item = map[string]any{"address": s}
		}
		sm := d.object(p, item, "address", "weight", "backup", "quota")
		if sm == nil {
			continue
		}
		s := Server{
			Address: d.hostPort(p+".address", sm["address"], false),
			Weight:  d.integer(p+".weight", sm["weight"], 1, 1, MaxServerWeight),
			Backup:  d.boolean(p+".backup", sm["backup"], false),
		}
		if sm["quota"] != nil {
			qm := d.object(p+".quota", sm["quota"], "conns", "bytes", "per")
			s.Quota.Conns = int64(d.integer(p+".quota.conns", qm["conns"], 0, 1, 1<<40))
			s.Quota.Bytes = d.size(p+".quota.bytes", qm["bytes"], 0, 1, 1<<60)
			s.Quota.Per = d.duration(p+".quota.per", qm["per"], 0, true)
			switch {
			case qm["conns"] == nil && qm["bytes"] == nil:
				d.failf(p+".quota", "want conns or bytes in a window, like {conns: 100, per: 1m} or {bytes: 10GB, per: 1d}")
			case qm["per"] == nil:
				d.failf(p+".quota.per", "required: want the window, like 1m or 1d")
			}
		}
		if prev, dup := seen[s.Address]; dup && s.Address != "" {
			d.failf(p+".address", "%q is already %s", s.Address, prev)
		}
		seen[s.Address] = p
		if !s.Backup {
			primaries++
		}
		out = append(out, s)
	}
	if primaries == 0 && len(out) > 0 {
		d.failf(path, "want at least one server that is not a backup")
	}
	return out
}

// check reads a pool's active health check.
func (d *decoder) check(path string, v any) Check {
	if v == nil {
		return Check{}
	}
	m := d.object(path, v, "type", "interval", "timeout", "rise", "fall", "send", "expect")
	c := Check{Type: d.oneOf(path+".type", m["type"], "", "tcp", "http")}
	if c.Type == "" {
		d.failf(path+".type", "required: want tcp or http")
	}
	c.Interval = d.duration(path+".interval", m["interval"], DefaultCheckInterval, true)
	c.Timeout = d.duration(path+".timeout", m["timeout"], min(DefaultCheckTimeout, c.Interval), true)
	if c.Timeout > c.Interval {
		d.failf(path+".timeout", "want at most the interval (%s): one check ends before the next, got %s", c.Interval, c.Timeout)
	}
	c.Rise = d.integer(path+".rise", m["rise"], DefaultCheckRise, 1, 100)
	c.Fall = d.integer(path+".fall", m["fall"], DefaultCheckFall, 1, 100)
	c.Send = d.str(path+".send", m["send"], "")
	c.Expect = d.str(path+".expect", m["expect"], "")
	if c.Type != "http" && (m["send"] != nil || m["expect"] != nil) {
		d.failf(path, "send and expect go with type: http")
	}
	if c.Type == "http" && c.Send == "" {
		c.Send = DefaultCheckSend
	}
	if e := c.Expect; e != "" && !validExpect(e) {
		d.failf(path+".expect", "want a status code like 200 or a class like 2xx, got %q", e)
	}
	return c
}

// validExpect reports whether e is a status code (100–599) or a class
// ("2xx").
func validExpect(e string) bool {
	if len(e) != 3 || e[0] < '1' || e[0] > '5' {
		return false
	}
	rest := strings.ToLower(e[1:])
	if rest == "xx" {
		return true
	}
	_, err := strconv.Atoi(rest)
	return err == nil && rest[0] != '-' && rest[0] != '+'
}

// upstreamRef reads a listener's upstream: a "host:port", or the name of
// a pool of upstreams:.
func (d *decoder) upstreamRef(path string, v any, pools []Upstream) string {
	if s, ok := v.(string); ok && !strings.Contains(s, ":") {
		for _, u := range pools {
			if u.Name == s {
				return s
			}
		}
		d.failf(path, "want \"host:port\" or the name of a pool under upstreams:, got %q", s)
		return ""
	}
	return d.hostPort(path, v, false)
}

// Pool returns the pool named name, or nil.
func (c *Config) Pool(name string) *Upstream {
	for i := range c.Upstreams {
		if c.Upstreams[i].Name == name {
			return &c.Upstreams[i]
		}
	}
	return nil
}

// upstreamsYAML renders the pools for [Config.YAML], defaults written out.
func (c *Config) upstreamsYAML() map[string]any {
	type quota struct {
		Conns int64  `yaml:"conns,omitempty"`
		Bytes string `yaml:"bytes,omitempty"`
		Per   string `yaml:"per"`
	}
	type server struct {
		Address string `yaml:"address"`
		Weight  int    `yaml:"weight"`
		Backup  bool   `yaml:"backup,omitempty"`
		Quota   *quota `yaml:"quota,omitempty,flow"`
	}
	type check struct {
		Type     string `yaml:"type"`
		Interval string `yaml:"interval"`
		Timeout  string `yaml:"timeout"`
		Rise     int    `yaml:"rise"`
		Fall     int    `yaml:"fall"`
		Send     string `yaml:"send,omitempty"`
		Expect   string `yaml:"expect,omitempty"`
	}
	type passive struct {
		Failures int    `yaml:"failures"`
		Eject    string `yaml:"eject"`
		MaxEject string `yaml:"max_eject"`
	}
	type pool struct {
		Balance        string   `yaml:"balance"`
		Servers        []server `yaml:"servers"`
		Check          *check   `yaml:"check,omitempty"`
		Passive        *passive `yaml:"passive,omitempty"`
		Retry          int      `yaml:"retry"`
		HTTPRetryAfter bool     `yaml:"http_retry_after"`
		RetryAfter     string   `yaml:"retry_after"`
		RetryAfterMax  string   `yaml:"retry_after_max"`
	}
	if len(c.Upstreams) == 0 {
		return nil
	}
	out := make(map[string]any, len(c.Upstreams))
	for _, u := range c.Upstreams {
		p := pool{Balance: u.Balance, Retry: u.Retry, HTTPRetryAfter: u.HTTPRetryAfter,
			RetryAfter: u.RetryAfter.String(), RetryAfterMax: u.RetryAfterMax.String()}
		for _, s := range u.Servers {
			os := server{Address: s.Address, Weight: s.Weight, Backup: s.Backup}
			if s.Quota.Per > 0 {
				os.Quota = &quota{Conns: s.Quota.Conns, Per: s.Quota.Per.String()}
				if s.Quota.Bytes > 0 {
					os.Quota.Bytes = s.Quota.Bytes.String()
				}
			}
			p.Servers = append(p.Servers, os)
		}
		if ch := u.Check; ch.Type != "" {
			p.Check = &check{Type: ch.Type, Interval: ch.Interval.String(), Timeout: ch.Timeout.String(),
				Rise: ch.Rise, Fall: ch.Fall, Send: ch.Send, Expect: ch.Expect}
		}
		if u.Passive.Failures > 0 {
			p.Passive = &passive{Failures: u.Passive.Failures, Eject: u.Passive.Eject.String(), MaxEject: u.Passive.MaxEject.String()}
		}
		out[u.Name] = p
	}
	return out
}
