package admit

import (
	"fmt"
	"hash/maphash"
	"log/slog"
	"net/netip"
	"slices"
	"time"
)

func maphashPrefix(s *Set, p netip.Prefix) uint64 { return maphash.Comparable(s.seed, p) }

// PrefixSet is a set of networks to look addresses up in: one hash
// lookup per distinct prefix length in the set. The zero value is empty.
// It is immutable, so safe for concurrent use.
type PrefixSet struct {
	m    map[netip.Prefix]struct{}
	bits []int // distinct lengths, of IPv4 (as 0–32) and IPv6 (as 200+0–128)
}

// NewPrefixSet returns the set of ps; addresses in IPv4-mapped IPv6 form
// count as IPv4.
func NewPrefixSet(ps []netip.Prefix) PrefixSet {
	var s PrefixSet
	for _, p := range ps {
		if !p.IsValid() {
			continue
		}
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		p = p.Masked()
		if s.m == nil {
			s.m = map[netip.Prefix]struct{}{}
		}
		s.m[p] = struct{}{}
		b := p.Bits()
		if p.Addr().Is6() {
			b += 200
		}
		if !slices.Contains(s.bits, b) {
			s.bits = append(s.bits, b)
		}
	}
	slices.Sort(s.bits)
	return s
}

// Contains reports whether a network of the set holds addr.
func (s PrefixSet) Contains(addr netip.Addr) bool {
	if len(s.m) == 0 || !addr.IsValid() {
		return false
	}
	addr = addr.Unmap()
	v6 := addr.Is6()
	for _, b := range s.bits {
		if (b >= 200) != v6 {
			continue
		}
		if v6 {
			b -= 200
		}
		p, err := addr.Prefix(b)
		if err != nil {
			continue
		}
		if _, ok := s.m[p]; ok {
			return true
		}
	}
	return false
}

// Len returns the number of networks in the set.
func (s PrefixSet) Len() int { return len(s.m) }

// LimitStats are a limit's counters.
type LimitStats struct {
	Name string
	// Admitted, Delayed, Queued and Refused count the decisions this
	// limit took part in (a connection refused by another limit counts
	// for none).
	Admitted, Delayed, Queued, Refused uint64
	// Keys is the number of keys tracked now; Waiting the connections in
	// its queues.
	Keys, Waiting int
}

// BanStats are a ban policy's counters.
type BanStats struct {
	Name string
	// Active is the number of keys banned now; Keys those tracked.
	Active, Keys int
	// Started and Lifted count bans.
	Started, Lifted uint64
}

// Stats returns the counters of every limit and ban policy, by name.
func (s *Set) Stats() ([]LimitStats, []BanStats) {
	s.mu.Lock()
	limits, bans := s.states()
	s.mu.Unlock()
	ls := make([]LimitStats, 0, len(limits))
	for _, st := range limits {
		x := st.stats()
		ls = append(ls, x)
	}
	bs := make([]BanStats, 0, len(bans))
	for _, b := range bans {
		x := BanStats{Name: b.cfg.Load().Name, Keys: int(b.keys.Load()), Started: b.started.Load(), Lifted: b.lifted.Load()}
		for i := range b.shards {
			sh := &b.shards[i]
			sh.mu.Lock()
			for _, k := range sh.m {
				if k.until != 0 {
					x.Active++
				}
			}
			sh.mu.Unlock()
		}
		bs = append(bs, x)
	}
	return ls, bs
}

// states returns the limit and ban states sorted by name. Requires s.mu.
func (s *Set) states() ([]*limitState, []*banState) {
	ls := make([]*limitState, 0, len(s.limits))
	for _, st := range s.limits {
		ls = append(ls, st)
	}
	slices.SortFunc(ls, func(a, b *limitState) int { return cmpStr(a.cfg.Load().Name, b.cfg.Load().Name) })
	bs := make([]*banState, 0, len(s.bans))
	for _, b := range s.bans {
		bs = append(bs, b)
	}
	slices.SortFunc(bs, func(a, b *banState) int { return cmpStr(a.cfg.Load().Name, b.cfg.Load().Name) })
	return ls, bs
}

func cmpStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// BanInfo is a ban in force.
type BanInfo struct {
	Ban, Key     string
	Since, Until time.Time
	// Tier is the index of the tier that banned the key; Repeats how many
	// bans of the key counted before this one.
	Tier, Repeats int
	// Manual is true for a ban added by hand.
	Manual bool
}

// Bans returns the bans in force, in no particular order.
func (s *Set) Bans() []BanInfo {
	s.mu.Lock()
	_, bans := s.states()
	s.mu.Unlock()
	var out []BanInfo
	for _, b := range bans {
		name := b.cfg.Load().Name
		for i := range b.shards {
			sh := &b.shards[i]
			sh.mu.Lock()
			for p, k := range sh.m {
				if k.until != 0 {
					out = append(out, BanInfo{Ban: name, Key: p.String(), Since: time.Unix(0, k.since), Until: time.Unix(0, k.until),
						Tier: k.tier, Repeats: max(k.repeats-1, 0), Manual: k.manual})
				}
			}
			sh.mu.Unlock()
		}
	}
	return out
}

func (s *Set) ban(name string) (*banState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.bans[name]
	if b == nil {
		return nil, fmt.Errorf("%w %q", ErrNoBan, name)
	}
	return b, nil
}

// AddBan bans key (an address's /32 or /128, or a network, matched as
// the policy's keys are: a network key bans the connections whose own
// key or /24 (/64) aggregate it is) under the named policy for d from
// now. It is logged as any ban. It returns an error wrapping [ErrNoBan]
// for an unknown policy, and one for a d that is not positive.
func (s *Set) AddBan(name string, key netip.Prefix, d time.Duration, now time.Time) error {
	b, err := s.ban(name)
	if err != nil {
		return err
	}
	if d <= 0 || !key.IsValid() {
		return fmt.Errorf("ban %q: want a valid key and a positive time", name)
	}
	key = key.Masked()
	t := now.UnixNano()
	sh := b.shard(key)
	sh.mu.Lock()
	k := sh.m[key]
	if k == nil {
		k = &banKey{}
		sh.m[key] = k
		b.keys.Add(1)
	}
	k.since, k.until, k.manual, k.repeats = t, t+int64(d), true, k.repeats+1
	until := k.until
	sh.mu.Unlock()
	b.started.Add(1)
	b.set.log.Info("ban start", slog.String("ban", name), slog.String("key", key.String()), slog.Bool("manual", true),
		slog.Time("until", time.Unix(0, until)), slog.Duration("dur", d))
	if s.opts.OnBan != nil {
		s.opts.OnBan(name, key, time.Unix(0, until))
	}
	return nil
}

// LiftBan lifts key's ban under the named policy now and reports whether
// it had one. It returns an error wrapping [ErrNoBan] for an unknown
// policy.
func (s *Set) LiftBan(name string, key netip.Prefix, now time.Time) (bool, error) {
	return s.liftBan(name, key, now, true)
}

// liftBan lifts key's ban; with hook, it tells Options.OnLift.
func (s *Set) liftBan(name string, key netip.Prefix, now time.Time, hook bool) (bool, error) {
	b, err := s.ban(name)
	if err != nil {
		return false, err
	}
	key = key.Masked()
	sh := b.shard(key)
	sh.mu.Lock()
	k := sh.m[key]
	if k == nil || k.until == 0 {
		sh.mu.Unlock()
		return false, nil
	}
	k.until = min(k.until, now.UnixNano())
	b.liftIfOver(key, k, now.UnixNano())
	sh.mu.Unlock()
	if hook && s.opts.OnLift != nil {
		s.opts.OnLift(name, key)
	}
	return true, nil
}

// KeyState is an address's state in one limit or ban policy.
type KeyState struct {
	// Limit names the limit or ban policy.
	Limit string
	// Key is the address's key there.
	Key string
	// Conns are its open connections; Queued those waiting for a slot.
	Conns, Queued int
	// Excess is how many connections it is above the rate now.
	Excess float64
	// WindowCount is its count in the current window.
	WindowCount int64
	// Banned reports a ban in force, until BanUntil.
	Banned   bool
	BanUntil time.Time
}

// Key returns addr's state in every limit and ban policy, as a connection
// on the named listener would be keyed, at now.
func (s *Set) Key(addr netip.Addr, listener string, now time.Time) []KeyState {
	s.mu.Lock()
	limits, bans := s.states()
	s.mu.Unlock()
	addr = addr.Unmap()
	t := now.UnixNano()
	var out []KeyState
	s.mu.Lock()
	lid, named := s.listeners[listener]
	s.mu.Unlock()
	for _, ls := range limits {
		if ls.by == ByListener && !named {
			out = append(out, KeyState{Limit: ls.cfg.Load().Name, Key: listener})
			continue
		}
		out = append(out, ls.state(ls.ref(addr, lid), addr, listener, t))
	}
	for _, b := range bans {
		cfg := b.cfg.Load()
		for i, p := range b.candidates(addr) {
			if i == 1 && p == b.prefix(cfg, addr) {
				break
			}
			sh := b.shard(p)
			sh.mu.Lock()
			k := sh.m[p]
			if k != nil || i == 0 {
				ks := KeyState{Limit: cfg.Name, Key: p.String()}
				if k != nil && k.until > t {
					ks.Banned, ks.BanUntil = true, time.Unix(0, k.until)
				}
				out = append(out, ks)
			}
			sh.mu.Unlock()
		}
	}
	return out
}

// SweepStats say what a Sweep did.
type SweepStats struct {
	// Forgotten counts the keys dropped, of limits and bans.
	Forgotten int
}

// Sweep lifts the bans whose time is over (logging each) and forgets the
// keys with nothing left to count: a limit's keys with no connection, no
// waiter, no rate excess and no open window; a ban's with no ban and no
// recent event. Memory thus follows the active keys, not all keys ever
// seen. Call it periodically (sluice does once a second).
func (s *Set) Sweep(now time.Time) SweepStats {
	s.mu.Lock()
	limits, bans := s.states()
	s.mu.Unlock()
	t := now.UnixNano()
	var st SweepStats
	for _, ls := range limits {
		cfg := ls.cfg.Load()
		for i := range ls.shards {
			st.Forgotten += ls.shards[i].sweep(cfg, t)
		}
	}
	for _, b := range bans {
		st.Forgotten += b.sweep(t)
	}
	return st
}
