package config

import (
	"regexp"
	"sort"
	"strconv"
)

// Link is a shared budget: one costly line that connections of several
// listeners cross. Each direction has its own budget.
type Link struct {
	// Name is the link's key under links: (lower case; letters, digits,
	// '-' and '_').
	Name string
	// Up (client → upstream) and Down (upstream → client) budgets; a
	// zero Rate leaves that direction unshaped by this link.
	Up, Down LinkDir
	// Keys splits the link between tenants.
	Keys Keys
	// Cluster shares the link's budget with the other instances of the
	// cluster: (docs/cluster.md): each runs at its leased share of Up and
	// Down.
	Cluster bool
}

// LinkDir is one direction's budget.
type LinkDir struct {
	// Rate is the line's rate; zero means this direction is not limited.
	Rate Rate
	// Burst is the most the line may carry at once after a pause. Default
	// 5 ms of Rate, at least 8 KiB.
	Burst Size
}

// Keys say how a link's connections are grouped into keys (tenants), and
// each key's share.
type Keys struct {
	// By is "none" (default: one key for all connections, which then share
	// equally), "source_ip", "cidr", "listener" or "upstream".
	By string
	// Prefix and Prefix6 are the prefix lengths of "cidr" for IPv4
	// (default 24) and IPv6 (default 64).
	Prefix, Prefix6 int
	// Rate is each key's assured rate; zero means none (keys only share
	// the spare).
	Rate Rate
	// Ceil is the most a key may take, borrowing included; zero means the
	// link's rate.
	Ceil Rate
	// Weight is a key's share of spare capacity; default 1.
	Weight int
	// Overrides give some keys their own rate, ceil and weight.
	Overrides []KeyOverride
}

// KeyOverride is one key's own share; what it leaves out it takes from
// the keys' defaults.
type KeyOverride struct {
	// Key is the key's value: an IP for source_ip, a prefix like
	// "10.1.2.0/24" for cidr, a listener name, an upstream address.
	Key    string
	Rate   Rate
	Ceil   Rate
	Weight int
}

// Key grouping modes.
const (
	KeysNone     = "none"
	KeysSourceIP = "source_ip"
	KeysCIDR     = "cidr"
	KeysListener = "listener"
	KeysUpstream = "upstream"
)

// MaxWeight bounds keys.weight.
const MaxWeight = 1000

var linkName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// links reads the links: mapping.
func (d *decoder) links(v any) []Link {
	if v == nil {
		return nil
	}
	raw, ok := asMap(v)
	if !ok {
		d.failf("links", "want a mapping of link names to links, like {hk-line: {down: {rate: 1Gbit}}}, got %s", describe(v))
		return nil
	}
	names := make([]string, 0, len(raw))
	for k := range raw {
		names = append(names, k)
	}
	sort.Strings(names)
	out := make([]Link, 0, len(names))
	for _, name := range names {
		path := "links." + name
		if !linkName.MatchString(name) {
			d.failf(path, "a link name takes lower-case letters, digits, '-' and '_', like hk-line")
			continue
		}
		lm := d.object(path, raw[name], "up", "down", "keys", "cluster")
		if lm == nil {
			continue
		}
		l := Link{Name: name}
		l.Up = d.linkDir(path+".up", lm["up"])
		l.Down = d.linkDir(path+".down", lm["down"])
		if l.Up.Rate == 0 && l.Down.Rate == 0 {
			d.failf(path, "want a rate in up, down or both, like {down: {rate: 1Gbit}}")
		}
		l.Keys = d.keys(path+".keys", lm["keys"], max(l.Up.Rate, l.Down.Rate))
		l.Cluster = d.boolean(path+".cluster", lm["cluster"], false)
		out = append(out, l)
	}
	return out
}

func (d *decoder) linkDir(path string, v any) LinkDir {
	m := d.object(path, v, "rate", "burst")
	ld := LinkDir{Rate: d.rate(path+".rate", m["rate"])}
	ld.Burst = d.size(path+".burst", m["burst"], 0, 1, MaxBurst)
	if m["burst"] != nil && ld.Rate == 0 {
		d.failf(path+".burst", "has no effect without a rate; set %s.rate too", path)
	}
	return ld
}

func (d *decoder) keys(path string, v any, linkRate Rate) Keys {
	m := d.object(path, v, "by", "prefix", "prefix6", "rate", "ceil", "weight", "overrides")
	k := Keys{
		By:      d.oneOf(path+".by", m["by"], KeysNone, KeysNone, KeysSourceIP, KeysCIDR, KeysListener, KeysUpstream),
		Prefix:  d.integer(path+".prefix", m["prefix"], 24, 1, 32),
		Prefix6: d.integer(path+".prefix6", m["prefix6"], 64, 1, 128),
	}
	if (m["prefix"] != nil || m["prefix6"] != nil) && k.By != KeysCIDR {
		d.failf(path+".prefix", "only applies with by: cidr")
	}
	k.Rate, k.Ceil, k.Weight = d.share(path, m)
	if k.By == KeysNone && (k.Rate != 0 || k.Ceil != 0 || m["overrides"] != nil) {
		d.failf(path+".by", "rate, ceil and overrides need keys: set by to source_ip, cidr, listener or upstream")
	}
	list, ok := m["overrides"].([]any)
	if m["overrides"] != nil && !ok {
		d.failf(path+".overrides", "want a list like [{key: 10.0.0.7, rate: 50Mbit, ceil: 200Mbit}], got %s", describe(m["overrides"]))
	}
	seen := map[string]bool{}
	for i, item := range list {
		p := path + ".overrides[" + strconv.Itoa(i) + "]"
		om := d.object(p, item, "key", "rate", "ceil", "weight")
		if om == nil {
			continue
		}
		o := KeyOverride{Key: d.str(p+".key", om["key"], "")}
		if o.Key == "" {
			d.failf(p+".key", "required: the key's value, like an IP for by: source_ip")
		}
		if seen[o.Key] {
			d.failf(p+".key", "%q is overridden twice", o.Key)
		}
		seen[o.Key] = true
		// What an override leaves out, it takes from the keys' defaults.
		o.Rate, o.Ceil, o.Weight = d.share(p, om)
		if om["rate"] == nil {
			o.Rate = k.Rate
		}
		if om["ceil"] == nil {
			o.Ceil = k.Ceil
		}
		if om["weight"] == nil {
			o.Weight = k.Weight
		}
		if o.Ceil != 0 && o.Rate > o.Ceil {
			d.failf(p, "rate %v is above ceil %v (with the keys' defaults filled in)", o.Rate, o.Ceil)
		}
		k.Overrides = append(k.Overrides, o)
	}
	return k
}

// share reads rate, ceil and weight, checking rate <= ceil.
func (d *decoder) share(path string, m map[string]any) (rate, ceil Rate, weight int) {
	rate = d.rate(path+".rate", m["rate"])
	ceil = d.rate(path+".ceil", m["ceil"])
	weight = d.integer(path+".weight", m["weight"], 1, 1, MaxWeight)
	if ceil != 0 && rate > ceil {
		d.failf(path+".rate", "%v is above ceil %v", rate, ceil)
	}
	return rate, ceil, weight
}
