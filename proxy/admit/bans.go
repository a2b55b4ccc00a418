package admit

import (
	"log/slog"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// banState is a ban policy's table: per key, its recent events and its
// ban. Keys are spread over shards by hash, each with its own lock.
type banState struct {
	set    *Set
	cfg    atomic.Pointer[Ban]
	shards [nShards]banShard
	keys   atomic.Int64 // keys tracked, over all shards

	started, lifted atomic.Uint64
}

type banShard struct {
	mu sync.Mutex
	m  map[netip.Prefix]*banKey
}

// banKey is one key's state. Guarded by its shard's mu.
type banKey struct {
	events   []int64 // unix ns of its last events, oldest first, at most maxOver+1
	until    int64   // banned until (unix ns); 0 when not banned
	since    int64
	tier     int
	repeats  int   // bans before this one that still count
	lastLift int64 // when its last ban lifted
	manual   bool
}

// prefix is addr's key in the ban policy.
func (b *banState) prefix(cfg *Ban, addr netip.Addr) netip.Prefix {
	if cfg.By == ByCIDR {
		a := masked(addr, cfg.Prefix, cfg.Prefix6)
		bits := cfg.Prefix
		if bits == 0 {
			bits = defaultPrefix
		}
		if a.Is6() {
			bits = cfg.Prefix6
			if bits == 0 {
				bits = defaultPrefix6
			}
		}
		return netip.PrefixFrom(a, bits)
	}
	return netip.PrefixFrom(addr, addr.BitLen())
}

func (b *banState) shard(p netip.Prefix) *banShard {
	return &b.shards[maphashPrefix(b.set, p)%nShards]
}

// banned reports whether addr is banned at t (unix ns), lifting a ban
// whose time is over. Its own key and, when the table aggregated it, its
// network's key count.
func (b *banState) banned(addr netip.Addr, t int64) bool {
	if b.keys.Load() == 0 {
		return false // nothing tracked, nothing banned
	}
	for _, p := range b.candidates(addr) {
		sh := b.shard(p)
		sh.mu.Lock()
		k := sh.m[p]
		ban := k != nil && k.until != 0 && b.liftIfOver(p, k, t)
		sh.mu.Unlock()
		if ban {
			return true
		}
	}
	return false
}

// candidates are the keys addr may be tracked under: its own, and its
// /24 (/64) aggregate.
func (b *banState) candidates(addr netip.Addr) [2]netip.Prefix {
	cfg := b.cfg.Load()
	own := b.prefix(cfg, addr)
	agg := netip.PrefixFrom(masked(addr, defaultPrefix, defaultPrefix6), defaultPrefix)
	if addr.Is6() {
		agg = netip.PrefixFrom(agg.Addr(), defaultPrefix6)
	}
	if agg.Bits() >= own.Bits() {
		agg = own
	}
	return [2]netip.Prefix{own, agg}
}

// liftIfOver lifts k's ban if its time is over at t, and reports whether
// it is still banned. Requires its shard's mu.
func (b *banState) liftIfOver(p netip.Prefix, k *banKey, t int64) bool {
	if k.until == 0 {
		return false
	}
	if t < k.until {
		return true
	}
	b.set.log.Info("ban lift", slog.String("ban", b.cfg.Load().Name), slog.String("key", p.String()),
		slog.Duration("dur", time.Duration(k.until-k.since)))
	k.lastLift, k.until, k.manual = k.until, 0, false
	b.lifted.Add(1)
	return false
}

// record counts an event of addr at t and bans its key if a tier is
// crossed, telling Options.OnBan. A full table tracks a new key under
// its aggregate; a live ban is never dropped to make room.
func (b *banState) record(addr netip.Addr, t int64) {
	if p, until, ok := b.count(addr, t); ok && b.set.opts.OnBan != nil {
		b.set.opts.OnBan(b.cfg.Load().Name, p, time.Unix(0, until))
	}
}

// count counts an event for record, and returns the key it banned and
// until when, if it did.
func (b *banState) count(addr netip.Addr, t int64) (netip.Prefix, int64, bool) {
	cfg := b.cfg.Load()
	cands := b.candidates(addr)
	p := cands[0]
	sh := b.shard(p)
	sh.mu.Lock()
	k := sh.m[p]
	if k == nil && int(b.keys.Load()) >= b.table(cfg) {
		sh.mu.Unlock()
		p = cands[1]
		sh = b.shard(p)
		sh.mu.Lock()
		k = sh.m[p]
		if k == nil && int(b.keys.Load()) >= b.table(cfg)+nShards {
			sh.mu.Unlock()
			return p, 0, false // even the aggregates fill the table: nothing to count on
		}
	}
	if k == nil {
		k = &banKey{}
		sh.m[p] = k
		b.keys.Add(1)
	}
	defer sh.mu.Unlock()
	if b.liftIfOver(p, k, t) {
		return p, 0, false // banned: its refusals count for nothing
	}
	most := 0
	for _, tr := range cfg.Tiers {
		most = max(most, tr.Over+1)
	}
	if len(k.events) >= most {
		copy(k.events, k.events[len(k.events)-most+1:])
		k.events = k.events[:most-1]
	}
	k.events = append(k.events, t)
	hit := -1
	for i, tr := range cfg.Tiers {
		if n := len(k.events); n > tr.Over && t-k.events[n-1-tr.Over] < int64(tr.Per) {
			hit = i
		}
	}
	if hit < 0 {
		return p, 0, false
	}
	if k.lastLift != 0 && t-k.lastLift > int64(b.forget(cfg)) {
		k.repeats = 0
	}
	d := float64(cfg.Tiers[hit].Ban) * math.Pow(b.factor(cfg), float64(k.repeats))
	d = min(d, float64(cfg.repeatMax()))
	d += d * 0.01 * b.set.opts.Rand() // so that many bans do not lift together
	k.since, k.until, k.tier, k.events = t, t+int64(d), hit, k.events[:0]
	k.repeats++
	b.started.Add(1)
	b.set.log.Info("ban start", slog.String("ban", cfg.Name), slog.String("key", p.String()), slog.Int("tier", hit),
		slog.Time("until", time.Unix(0, k.until)), slog.Duration("dur", time.Duration(k.until-t)))
	return p, k.until, true
}

func (b *banState) table(cfg *Ban) int {
	if cfg.Table == 0 {
		return defaultBanTable
	}
	return cfg.Table
}

func (b *banState) factor(cfg *Ban) float64 {
	if cfg.RepeatFactor == 0 {
		return defaultRepeatFactor
	}
	return cfg.RepeatFactor
}

func (b *banState) forget(cfg *Ban) time.Duration {
	if cfg.Forget == 0 {
		return cfg.repeatMax()
	}
	return cfg.Forget
}

// sweep lifts bans whose time is over and forgets keys with nothing left
// to count: no ban, and no event within the longest tier (nor a past ban
// that still counts for repeats). It returns how many keys it forgot.
func (b *banState) sweep(t int64) int {
	cfg := b.cfg.Load()
	var longest time.Duration
	for _, tr := range cfg.Tiers {
		longest = max(longest, tr.Per)
	}
	forgot := 0
	for i := range b.shards {
		sh := &b.shards[i]
		sh.mu.Lock()
		for p, k := range sh.m {
			if b.liftIfOver(p, k, t) {
				continue
			}
			recent := len(k.events) > 0 && t-k.events[len(k.events)-1] < int64(longest)
			counts := k.lastLift != 0 && t-k.lastLift <= int64(b.forget(cfg))
			if !recent && !counts {
				delete(sh.m, p)
				b.keys.Add(-1)
				forgot++
			}
		}
		sh.mu.Unlock()
	}
	return forgot
}
