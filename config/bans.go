package config

import (
	"sort"
	"strconv"
	"time"
)

// Ban is a named policy of stepped bans (bans.NAME): a key that is
// refused, or connects, too often within a tier's window is banned for
// that tier's time; banned again, for longer.
type Ban struct {
	// Name is the policy's key under bans: (lower case; letters, digits,
	// '-' and '_').
	Name string
	// By is "source_ip" (default) or "cidr".
	By string
	// Prefix and Prefix6 are the prefix lengths of "cidr" for IPv4
	// (default 24) and IPv6 (default 64).
	Prefix, Prefix6 int
	// Count is what the tiers count: "refusals" (default: connections
	// the listener's limits refused; refusals by an active ban do not
	// count) or "connections" (every connection).
	Count string
	// Tiers, in order: more than Over within Per bans for Ban. At least
	// one.
	Tiers []BanTier
	// Repeat lengthens the ban of a key banned again.
	Repeat Repeat
	// Table is the most keys tracked (default 100000). A full table never
	// drops a live ban: new keys are then tracked by their /24 (/64).
	Table int
	// Cluster shares the policy's bans with the other instances of the
	// cluster: block: a ban started on one holds on all.
	Cluster bool
}

// BanTier is one step of a ban policy.
type BanTier struct {
	// Over is the count that must be exceeded within Per.
	Over int
	// Per is the sliding window the count is taken over.
	Per time.Duration
	// Ban is how long the key is banned.
	Ban time.Duration
}

// Repeat says how a repeated ban grows.
type Repeat struct {
	// Factor multiplies a key's ban each time it is banned again
	// (default 2; 1 keeps the tier's time).
	Factor float64
	// Max caps a ban's length (default 7d).
	Max time.Duration
}

// Ban defaults and bounds.
const (
	CountRefusals     = "refusals"
	CountConnections  = "connections"
	DefaultBanTable   = 100_000
	MaxBanTable       = 100_000_000
	DefaultBanRepeat  = 2.0
	DefaultBanMax     = 7 * 24 * time.Hour
	MaxBanTiers       = 16
	MaxBanTierOver    = 255
	maxBanDuration    = 366 * 24 * time.Hour
	maxBanRepeatRatio = 1000
)

// bans reads the bans: mapping.
func (d *decoder) bans(v any) []Ban {
	if v == nil {
		return nil
	}
	m, ok := asMap(v)
	if !ok {
		d.failf("bans", "want a mapping of named ban policies, like {scanners: {tiers: [{over: 5, per: 10s, ban: 10m}]}}, got %s", describe(v))
		return nil
	}
	names := make([]string, 0, len(m))
	for name := range m {
		names = append(names, name)
	}
	sort.Strings(names)
	out := make([]Ban, 0, len(m))
	for _, name := range names {
		path := "bans." + name
		if !linkName.MatchString(name) {
			d.failf(path, "a ban policy name is lower case letters, digits, '-' and '_', got %q", name)
			continue
		}
		bm := d.object(path, m[name], "by", "prefix", "prefix6", "count", "tiers", "repeat", "table", "cluster")
		b := Ban{Name: name}
		b.By = d.oneOf(path+".by", bm["by"], BySourceIP, BySourceIP, ByCIDR)
		b.Prefix, b.Prefix6 = d.prefixes(path, bm, b.By == ByCIDR)
		b.Count = d.oneOf(path+".count", bm["count"], CountRefusals, CountRefusals, CountConnections)
		b.Tiers = d.banTiers(path+".tiers", bm["tiers"])
		rm := d.object(path+".repeat", bm["repeat"], "factor", "max")
		b.Repeat.Factor = d.number(path+".repeat.factor", rm["factor"], DefaultBanRepeat, 1, maxBanRepeatRatio)
		b.Repeat.Max = d.duration(path+".repeat.max", rm["max"], DefaultBanMax, true)
		if b.Repeat.Max > maxBanDuration {
			d.failf(path+".repeat.max", "want at most a year, got %s", b.Repeat.Max)
		}
		for i, t := range b.Tiers {
			if t.Ban > b.Repeat.Max {
				d.failf(path+".tiers["+strconv.Itoa(i)+"].ban", "is longer than repeat.max (%s); raise repeat.max or shorten the ban", b.Repeat.Max)
			}
		}
		b.Table = d.integer(path+".table", bm["table"], DefaultBanTable, 64, MaxBanTable)
		b.Cluster = d.boolean(path+".cluster", bm["cluster"], false)
		out = append(out, b)
	}
	return out
}

// banTiers reads a list of {over, per, ban}.
func (d *decoder) banTiers(path string, v any) []BanTier {
	const form = `want a list of tiers like [{over: 5, per: 10s, ban: 10m}]`
	list, ok := v.([]any)
	if !ok || len(list) == 0 {
		d.failf(path, "%s, got %s", form, describe(v))
		return nil
	}
	if len(list) > MaxBanTiers {
		d.failf(path, "want at most %d tiers, got %d", MaxBanTiers, len(list))
		return nil
	}
	out := make([]BanTier, 0, len(list))
	for i, item := range list {
		p := path + "[" + strconv.Itoa(i) + "]"
		tm := d.object(p, item, "over", "per", "ban")
		if tm == nil {
			continue
		}
		for _, k := range []string{"over", "per", "ban"} {
			if tm[k] == nil {
				d.failf(p+"."+k, "is required: %s", form)
			}
		}
		t := BanTier{
			Over: d.integer(p+".over", tm["over"], 0, 0, MaxBanTierOver),
			Per:  d.duration(p+".per", tm["per"], 0, true),
			Ban:  d.duration(p+".ban", tm["ban"], 0, true),
		}
		if t.Per > maxBanDuration || t.Ban > maxBanDuration {
			d.failf(p, "per and ban want at most a year")
		}
		out = append(out, t)
	}
	return out
}
