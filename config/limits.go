package config

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Limit is a named admission policy (limits.NAME): what a listener that
// lists it admits. Every part is optional; a Limit with none admits all.
type Limit struct {
	// Name is the limit's key under limits: (lower case; letters,
	// digits, '-' and '_').
	Name string
	// By is what the limit counts by: "source_ip" (default), "cidr",
	// "listener" or "global".
	By string
	// Prefix and Prefix6 are the prefix lengths of "cidr" for IPv4
	// (default 24) and IPv6 (default 64).
	Prefix, Prefix6 int
	// Table is the most keys a "source_ip" or "cidr" limit tracks
	// (default 1,048,576); a key finding no room counts under its /24
	// (/64) network. Other keys ignore it.
	Table int
	// Conns is the most open connections per key; zero means no limit.
	Conns int
	// Queue lets a connection wait for a free slot instead of being
	// refused; zero Size means refuse at once.
	Queue Queue
	// Rate is the most new connections per key, nginx limit_req style;
	// zero means none.
	Rate ConnRate
	// Burst is how many connections above Rate are accepted (nginx
	// burst); Delay of them pass at once, the rest wait their turn.
	Burst int
	// Delay is how many of the burst pass at once; the rest are held,
	// before their upstream is dialed, until the rate allows them.
	// Default Burst (nginx nodelay); 0 holds the whole burst.
	Delay int
	// Window is a fixed-window count: at most Max connections per key
	// in each window of Per; zero Max means none.
	Window Window
	// Borrow names another limit (usually a global one) that a key over
	// its own Rate may still be admitted by while that limit has room.
	Borrow string
	// Cluster shares the counts with the other instances of the cluster:
	// block: connections per key, new connections, windows (aligned on
	// Redis's clock), within the bound docs/cluster.md gives.
	Cluster bool
}

// Queue is a connection limit's waiting room.
type Queue struct {
	// Size is the most connections waiting per key; zero means none wait.
	Size int
	// Timeout is how long a connection waits before it is refused.
	// Default 1s when Size is set.
	Timeout time.Duration
}

// ConnRate is a number of new connections per period: "100/s" is
// {N: 100, Per: time.Second}. The zero value is no rate.
type ConnRate struct {
	N   int64
	Per time.Duration
}

// String is the config form, e.g. "100/s".
func (r ConnRate) String() string {
	if r.N == 0 {
		return "0"
	}
	unit := "s"
	switch r.Per {
	case time.Minute:
		unit = "m"
	case time.Hour:
		unit = "h"
	}
	return strconv.FormatInt(r.N, 10) + "/" + unit
}

// Window is a fixed-window count (OpenResty's resty.limit.count).
type Window struct {
	// Max is the most connections per key in one window; zero means no
	// window.
	Max int64
	// Per is the window's length.
	Per time.Duration
}

// Admission "by" modes.
const (
	BySourceIP = "source_ip"
	ByCIDR     = "cidr"
	ByListener = "listener"
	ByGlobal   = "global"
)

// Bounds of limits.
const (
	MaxConnsLimit      = 10_000_000
	MaxQueue           = 1_000_000
	MaxConnRate        = 1_000_000_000 // per period
	MaxConnBurst       = 1_000_000
	DefaultQueueWait   = time.Second
	DefaultPrefix      = 24
	DefaultPrefix6     = 64
	DefaultLimitTable  = 1 << 20
	MaxLimitTable      = 100_000_000
	maxWindowPer       = 366 * 24 * time.Hour
	maxAdmissionPeriod = 366 * 24 * time.Hour
)

// limits reads the limits: mapping.
func (d *decoder) limits(v any) []Limit {
	if v == nil {
		return nil
	}
	m, ok := asMap(v)
	if !ok {
		d.failf("limits", "want a mapping of named limits, like {per-ip: {by: source_ip, conns: 10}}, got %s", describe(v))
		return nil
	}
	names := make([]string, 0, len(m))
	for name := range m {
		names = append(names, name)
	}
	sort.Strings(names)
	out := make([]Limit, 0, len(m))
	for _, name := range names {
		path := "limits." + name
		if !linkName.MatchString(name) {
			d.failf(path, "a limit name is lower case letters, digits, '-' and '_', got %q", name)
			continue
		}
		lm := d.object(path, m[name], "by", "prefix", "prefix6", "table", "conns", "queue", "rate", "burst", "delay", "window", "borrow", "cluster")
		if lm == nil && m[name] != nil {
			continue
		}
		l := Limit{Name: name}
		l.By = d.oneOf(path+".by", lm["by"], BySourceIP, BySourceIP, ByCIDR, ByListener, ByGlobal)
		l.Prefix, l.Prefix6 = d.prefixes(path, lm, l.By == ByCIDR)
		l.Table = d.integer(path+".table", lm["table"], DefaultLimitTable, 64, MaxLimitTable)
		if lm["table"] != nil && (l.By == ByListener || l.By == ByGlobal) {
			d.failf(path+".table", "a %s limit tracks few keys; table bounds source_ip and cidr limits, remove it", l.By)
		}
		l.Conns = d.integer(path+".conns", lm["conns"], 0, 0, MaxConnsLimit)
		q := d.object(path+".queue", lm["queue"], "size", "timeout")
		l.Queue.Size = d.integer(path+".queue.size", q["size"], 0, 0, MaxQueue)
		l.Queue.Timeout = d.duration(path+".queue.timeout", q["timeout"], DefaultQueueWait, true)
		if lm["queue"] != nil && l.Conns == 0 {
			d.failf(path+".queue", "a queue waits for a connection slot; set %s.conns too", path)
		}
		if q["size"] == nil && lm["queue"] != nil {
			d.failf(path+".queue.size", "want how many connections may wait, like 20")
		}
		l.Rate = d.connRate(path+".rate", lm["rate"])
		l.Burst = d.integer(path+".burst", lm["burst"], 0, 0, MaxConnBurst)
		l.Delay = d.integer(path+".delay", lm["delay"], l.Burst, 0, MaxConnBurst)
		if l.Rate.N == 0 && (lm["burst"] != nil || lm["delay"] != nil) {
			d.failf(path+".burst", "burst and delay shape a rate; set %s.rate too, like \"100/s\"", path)
		}
		if l.Delay > l.Burst {
			d.failf(path+".delay", "want at most burst (%d): delay is how many of the burst pass at once, got %d", l.Burst, l.Delay)
		}
		w := d.object(path+".window", lm["window"], "max", "per")
		if lm["window"] != nil {
			l.Window.Max = int64(d.integer(path+".window.max", w["max"], 0, 1, MaxConnRate))
			l.Window.Per = d.duration(path+".window.per", w["per"], 0, true)
			if w["max"] == nil || w["per"] == nil {
				d.failf(path+".window", "want {max: N, per: DURATION}, like {max: 1000, per: 1m}")
			} else if l.Window.Per > maxWindowPer {
				d.failf(path+".window.per", "want at most a year, got %s", l.Window.Per)
			}
		}
		l.Borrow = strings.ToLower(d.str(path+".borrow", lm["borrow"], ""))
		if l.Borrow != "" && l.Rate.N == 0 {
			d.failf(path+".borrow", "borrowing lends room above this limit's own rate; set %s.rate too", path)
		}
		if l.Conns == 0 && l.Rate.N == 0 && l.Window.Max == 0 {
			d.failf(path, "want at least one of conns, rate and window, like {conns: 10} or {rate: \"100/s\"}")
		}
		l.Cluster = d.boolean(path+".cluster", lm["cluster"], false)
		out = append(out, l)
	}
	for _, l := range out {
		if l.Borrow == "" {
			continue
		}
		path := "limits." + l.Name + ".borrow"
		i := sort.Search(len(out), func(i int) bool { return out[i].Name >= l.Borrow })
		switch {
		case l.Borrow == l.Name:
			d.failf(path, "a limit cannot borrow from itself")
		case i == len(out) || out[i].Name != l.Borrow:
			d.failf(path, "no limit %q under limits:", l.Borrow)
		case out[i].Rate.N == 0:
			d.failf(path, "limit %q has no rate to lend from", l.Borrow)
		}
	}
	return out
}

// prefixes reads prefix and prefix6, which only "cidr" takes.
func (d *decoder) prefixes(path string, m map[string]any, cidr bool) (int, int) {
	if !cidr && (m["prefix"] != nil || m["prefix6"] != nil) {
		d.failf(path+".prefix", "prefix lengths go with by: cidr")
	}
	return d.integer(path+".prefix", m["prefix"], DefaultPrefix, 1, 32), d.integer(path+".prefix6", m["prefix6"], DefaultPrefix6, 1, 128)
}

// connRate reads a connection rate such as "100/s" or "30/m".
func (d *decoder) connRate(path string, v any) ConnRate {
	if v == nil {
		return ConnRate{}
	}
	s, ok := v.(string)
	if !ok {
		d.failf(path, "want a connection rate like \"100/s\" or \"30/m\" (connections per second or minute), got %s", describe(v))
		return ConnRate{}
	}
	r, err := ParseConnRate(s)
	if err != nil {
		d.failf(path, "%v", err)
	}
	return r
}

// ErrBadConnRate is wrapped by the errors of [ParseConnRate].
var ErrBadConnRate = errors.New("config: bad connection rate")

// connRateError says what form a connection rate takes; it unwraps to
// [ErrBadConnRate].
type connRateError struct{ input string }

func (e *connRateError) Error() string {
	return fmt.Sprintf(`want a connection rate like "100/s" or "30/m" (a whole number of connections per second, minute or hour, up to %d), got %q`, MaxConnRate, e.input)
}

func (e *connRateError) Unwrap() error { return ErrBadConnRate }

// ParseConnRate reads a rate of new connections: a whole number, a slash
// and a unit of s (second), m (minute) or h (hour), e.g. "100/s", "30/m";
// "0" is no rate. Otherwise it returns an error wrapping [ErrBadConnRate]
// that names the wanted form.
func ParseConnRate(s string) (ConnRate, error) {
	t := strings.TrimSpace(s)
	if t == "0" {
		return ConnRate{}, nil
	}
	num, unit, ok := strings.Cut(t, "/")
	if !ok {
		return ConnRate{}, &connRateError{s}
	}
	var per time.Duration
	switch strings.TrimSpace(unit) {
	case "s", "sec", "second":
		per = time.Second
	case "m", "min", "minute":
		per = time.Minute
	case "h", "hour":
		per = time.Hour
	default:
		return ConnRate{}, &connRateError{s}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	switch {
	case err != nil || n < 0 || n > MaxConnRate:
		return ConnRate{}, &connRateError{s}
	case n == 0:
		return ConnRate{}, nil
	}
	return ConnRate{N: n, Per: per}, nil
}
