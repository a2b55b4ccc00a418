package upstream

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Balance is how a [Pool] chooses among the servers that can take a
// connection. The zero value is [LeastConn].
type Balance uint8

const (
	// LeastConn chooses the server with the fewest active connections
	// for its weight (active/weight); ties go round robin, weighted.
	LeastConn Balance = iota
	// RoundRobin takes the servers in turn, weighted, smoothly: weights
	// 5, 1, 1 give a a b a c a a (nginx's smooth weighted round robin).
	RoundRobin
	// SourceHash maps a client address to a server by weighted
	// rendezvous hashing: a client keeps its server while that server
	// can take connections, and when one leaves, only its clients move.
	SourceHash
)

// ParseBalance parses "least_conn", "round_robin" or "source_hash"; ""
// is least_conn.
func ParseBalance(s string) (Balance, error) {
	switch s {
	case "", "least_conn":
		return LeastConn, nil
	case "round_robin":
		return RoundRobin, nil
	case "source_hash":
		return SourceHash, nil
	}
	return 0, &ConfigError{Field: "balance", Want: "least_conn, round_robin or source_hash", Got: strconv.Quote(s)}
}

func (b Balance) String() string {
	switch b {
	case LeastConn:
		return "least_conn"
	case RoundRobin:
		return "round_robin"
	case SourceHash:
		return "source_hash"
	}
	return "balance(" + strconv.Itoa(int(b)) + ")"
}

// Limits of a [PoolConfig].
const (
	MaxWeight  = 1000 // of a server
	MaxRetry   = 10   // other servers tried for one connection
	MaxServers = 1024 // in a pool
)

// Defaults a [PoolConfig] takes where it gives zero.
const (
	DefaultCheckInterval     = 2 * time.Second
	DefaultCheckTimeout      = time.Second // or the interval, when shorter
	DefaultRise              = 2
	DefaultFall              = 3
	DefaultCheckSend         = "GET / HTTP/1.0\r\n\r\n"
	DefaultEject             = 10 * time.Second
	DefaultMaxEject          = 5 * time.Minute // or Eject, when longer
	DefaultRetryAfter        = 10 * time.Second
	DefaultRetryAfterMax     = 5 * time.Minute
	DefaultReplayBytes       = 64 << 10
	maxCheckResponseHeadSize = 4 << 10
)

// PoolConfig is the configuration of a [Pool]: the `upstreams:` block of
// one pool, in base units. Zero values take the defaults documented on
// each field.
type PoolConfig struct {
	// Name names the pool in errors, [StateChange]s and [Pool.Addr].
	Name string
	// Balance chooses among the servers; zero is [LeastConn].
	Balance Balance
	// Servers are the pool's servers, at least one of them not a
	// backup, each address at most once.
	Servers []ServerConfig
	// Check configures active health checks; a zero Type means none.
	Check Check
	// Passive configures passive ejection; zero Failures means none.
	Passive Passive
	// Retry is how many other servers a connection may try, after its
	// first, before any byte reached its client: 0 to [MaxRetry].
	Retry int
	// HTTPRetryAfter makes [Lease.Busy] cool a server that answers 429 or
	// 503, for its Retry-After.
	HTTPRetryAfter bool
	// RetryAfterDefault is how long a 429/503 without a valid Retry-After
	// cools its server; zero means [DefaultRetryAfter].
	RetryAfterDefault time.Duration
	// RetryAfterMax bounds how long a Retry-After cools a server; zero
	// means [DefaultRetryAfterMax].
	RetryAfterMax time.Duration
}

// ServerConfig is one server of a pool.
type ServerConfig struct {
	// Address is "host:port". A host name is resolved at every dial.
	Address string
	// Weight is the server's share: 1 to [MaxWeight]; zero means 1.
	Weight int
	// Backup servers take connections only while no primary can.
	Backup bool
	// Quota limits what the server takes in a window; zero means none.
	Quota Quota
}

// Quota limits a server's connections or bytes in a fixed window of Per.
// A window starts at the first connection after the last one ended and
// lasts Per; while its Conns or Bytes are spent, the server is
// [Cooling] until the window ends.
type Quota struct {
	// Conns is how many new connections the server takes in a window;
	// zero means no limit.
	Conns int64
	// Bytes is how many bytes (both directions, as the proxy reports
	// them with [Lease.AddBytes]) the server moves in a window; zero
	// means no limit. A connection open when they are spent goes on.
	Bytes int64
	// Per is the window; required when Conns or Bytes is set.
	Per time.Duration
}

func (q Quota) enabled() bool { return q.Conns > 0 || q.Bytes > 0 }

// CheckType is the kind of active health check.
type CheckType uint8

const (
	// NoCheck: no active checks; servers are up unless ejected.
	NoCheck CheckType = iota
	// TCPCheck: a server is healthy when a TCP connect succeeds.
	TCPCheck
	// HTTPCheck: a server is healthy when it answers Send with an HTTP/1.x
	// status Expect matches.
	HTTPCheck
)

// ParseCheckType parses "tcp", "http", or "" (no checks).
func ParseCheckType(s string) (CheckType, error) {
	switch s {
	case "":
		return NoCheck, nil
	case "tcp":
		return TCPCheck, nil
	case "http":
		return HTTPCheck, nil
	}
	return 0, &ConfigError{Field: "check.type", Want: "tcp or http", Got: strconv.Quote(s)}
}

func (t CheckType) String() string {
	switch t {
	case NoCheck:
		return "none"
	case TCPCheck:
		return "tcp"
	case HTTPCheck:
		return "http"
	}
	return "check(" + strconv.Itoa(int(t)) + ")"
}

// Check configures active health checks. Every server (backups and
// drained ones too, but not those a reload removed) is checked once per
// round; one goroutine per pool schedules the rounds.
type Check struct {
	Type CheckType
	// Interval is the time between rounds; zero means
	// [DefaultCheckInterval]. Rounds are up to a tenth early (jitter),
	// never late.
	Interval time.Duration
	// Timeout bounds one check; zero means [DefaultCheckTimeout] or the
	// Interval, if shorter. It must not exceed Interval.
	Timeout time.Duration
	// Rise is how many checks in a row must pass to bring a down server
	// up; zero means [DefaultRise].
	Rise int
	// Fall is how many checks in a row must fail to take an up server
	// down; zero means [DefaultFall].
	Fall int
	// Send is what an http check writes; "" means [DefaultCheckSend].
	Send string
	// Expect is the status an http check wants: a code ("200") or a
	// class ("2xx"); "" means any 2xx or 3xx.
	Expect string
}

// Passive configures passive ejection: Failures failures in a row
// (failed dials, and connections the proxy reports failed before any
// byte reached the client) eject a server for Eject. A server that fails
// again right after an ejection ends is ejected again, for twice as long,
// up to MaxEject; a success forgets its failures and its backoff.
type Passive struct {
	// Failures in a row eject a server; zero means no passive ejection.
	Failures int
	// Eject is the first ejection; zero means [DefaultEject].
	Eject time.Duration
	// MaxEject caps the doubling; zero means [DefaultMaxEject], or Eject
	// if that is longer. It must not be less than Eject.
	MaxEject time.Duration
}

// ConfigError is a bad value in a [PoolConfig]. Field is its path inside
// the pool, in the YAML's names ("servers[1].weight"), so a caller can
// prefix the pool's own path.
type ConfigError struct {
	Field string // e.g. "servers[0].address"
	Want  string // the expected form
	Got   string // the value found, formatted for a reader
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("%s: want %s, got %s", e.Field, e.Want, e.Got)
}

func cfgErr(field, want string, got any) error {
	var g string
	switch v := got.(type) {
	case string:
		g = strconv.Quote(v)
	case time.Duration:
		g = v.String()
	default:
		g = fmt.Sprint(v)
	}
	return &ConfigError{Field: field, Want: want, Got: g}
}

// Validate checks c and returns the first bad value as a *[ConfigError].
func (c *PoolConfig) Validate() error {
	_, err := c.normalize()
	return err
}

// normalize returns c with defaults filled in, or the first bad value.
func (c PoolConfig) normalize() (PoolConfig, error) {
	if c.Balance > SourceHash {
		return c, cfgErr("balance", "least_conn, round_robin or source_hash", c.Balance.String())
	}
	if len(c.Servers) == 0 {
		return c, cfgErr("servers", "at least one server", "none")
	}
	if len(c.Servers) > MaxServers {
		return c, cfgErr("servers", fmt.Sprintf("at most %d servers", MaxServers), len(c.Servers))
	}
	servers := make([]ServerConfig, len(c.Servers))
	seen := make(map[string]int, len(c.Servers))
	primaries := 0
	for i, s := range c.Servers {
		f := fmt.Sprintf("servers[%d].", i)
		if err := checkAddress(s.Address); err != nil {
			return c, cfgErr(f+"address", "host:port with a port from 1 to 65535", s.Address)
		}
		if j, dup := seen[s.Address]; dup {
			return c, cfgErr(f+"address", fmt.Sprintf("an address not already in servers[%d]", j), s.Address)
		}
		seen[s.Address] = i
		if s.Weight == 0 {
			s.Weight = 1
		}
		if s.Weight < 1 || s.Weight > MaxWeight {
			return c, cfgErr(f+"weight", fmt.Sprintf("1 to %d", MaxWeight), s.Weight)
		}
		q := s.Quota
		if q.Conns < 0 {
			return c, cfgErr(f+"quota.conns", "a count of 0 (no limit) or more", q.Conns)
		}
		if q.Bytes < 0 {
			return c, cfgErr(f+"quota.bytes", "a size of 0 (no limit) or more", q.Bytes)
		}
		if q.enabled() && q.Per <= 0 {
			return c, cfgErr(f+"quota.per", `a positive duration like "1m"`, q.Per)
		}
		if !q.enabled() && q.Per < 0 {
			return c, cfgErr(f+"quota.per", `a positive duration like "1m"`, q.Per)
		}
		if !s.Backup {
			primaries++
		}
		servers[i] = s
	}
	if primaries == 0 {
		return c, cfgErr("servers", "at least one server that is not a backup", "only backups")
	}
	c.Servers = servers

	ck := &c.Check
	if ck.Type > HTTPCheck {
		return c, cfgErr("check.type", "tcp or http", ck.Type.String())
	}
	if ck.Type != NoCheck {
		if ck.Interval < 0 {
			return c, cfgErr("check.interval", `a positive duration like "2s"`, ck.Interval)
		}
		if ck.Interval == 0 {
			ck.Interval = DefaultCheckInterval
		}
		if ck.Timeout < 0 {
			return c, cfgErr("check.timeout", `a positive duration like "1s"`, ck.Timeout)
		}
		if ck.Timeout == 0 {
			ck.Timeout = min(DefaultCheckTimeout, ck.Interval)
		}
		if ck.Timeout > ck.Interval {
			return c, cfgErr("check.timeout", fmt.Sprintf("at most check.interval (%s)", ck.Interval), ck.Timeout)
		}
		if ck.Rise < 0 || ck.Rise > 100 {
			return c, cfgErr("check.rise", "a count from 1 to 100", ck.Rise)
		}
		if ck.Rise == 0 {
			ck.Rise = DefaultRise
		}
		if ck.Fall < 0 || ck.Fall > 100 {
			return c, cfgErr("check.fall", "a count from 1 to 100", ck.Fall)
		}
		if ck.Fall == 0 {
			ck.Fall = DefaultFall
		}
		if ck.Type == HTTPCheck {
			if ck.Send == "" {
				ck.Send = DefaultCheckSend
			}
			if _, err := parseExpect(ck.Expect); err != nil {
				return c, err
			}
		} else if ck.Send != "" || ck.Expect != "" {
			return c, cfgErr("check.type", "http when send or expect is set", ck.Type.String())
		}
	}

	ps := &c.Passive
	if ps.Failures < 0 || ps.Failures > 1000 {
		return c, cfgErr("passive.failures", "a count from 0 (no ejection) to 1000", ps.Failures)
	}
	if ps.Eject < 0 {
		return c, cfgErr("passive.eject", `a positive duration like "10s"`, ps.Eject)
	}
	if ps.MaxEject < 0 {
		return c, cfgErr("passive.max_eject", `a positive duration like "5m"`, ps.MaxEject)
	}
	if ps.Eject == 0 {
		ps.Eject = DefaultEject
	}
	if ps.MaxEject == 0 {
		ps.MaxEject = max(DefaultMaxEject, ps.Eject)
	}
	if ps.MaxEject < ps.Eject {
		return c, cfgErr("passive.max_eject", fmt.Sprintf("at least passive.eject (%s)", ps.Eject), ps.MaxEject)
	}

	if c.Retry < 0 || c.Retry > MaxRetry {
		return c, cfgErr("retry", fmt.Sprintf("a count from 0 to %d", MaxRetry), c.Retry)
	}
	if c.RetryAfterDefault < 0 {
		return c, cfgErr("retry_after_default", `a positive duration like "10s"`, c.RetryAfterDefault)
	}
	if c.RetryAfterMax < 0 {
		return c, cfgErr("retry_after_max", `a positive duration like "5m"`, c.RetryAfterMax)
	}
	if c.RetryAfterMax == 0 {
		c.RetryAfterMax = DefaultRetryAfterMax
	}
	if c.RetryAfterDefault == 0 {
		c.RetryAfterDefault = min(DefaultRetryAfter, c.RetryAfterMax)
	}
	return c, nil
}

// checkAddress reports whether addr is a host and a port from 1 to 65535.
func checkAddress(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "" || strings.ContainsAny(host, " \t\r\n") {
		return fmt.Errorf("bad host %q", host)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("bad port %q", port)
	}
	return nil
}

// expect matches HTTP status codes: one code, or a class (lo..hi).
type expect struct{ lo, hi int }

func (e expect) match(code int) bool { return code >= e.lo && code <= e.hi }

// parseExpect parses a status code ("200") or class ("2xx"); "" means
// 2xx or 3xx.
func parseExpect(s string) (expect, error) {
	bad := cfgErr("check.expect", `a status code like "200" or a class like "2xx"`, s)
	switch {
	case s == "":
		return expect{200, 399}, nil
	case len(s) == 3 && s[0] >= '1' && s[0] <= '5' && (s[1:] == "xx" || s[1:] == "XX"):
		lo := int(s[0]-'0') * 100
		return expect{lo, lo + 99}, nil
	case len(s) == 3:
		n, err := strconv.Atoi(s)
		if err != nil || n < 100 || n > 599 {
			return expect{}, bad
		}
		return expect{n, n}, nil
	}
	return expect{}, bad
}
