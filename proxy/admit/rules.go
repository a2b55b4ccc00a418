package admit

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// By says what a limit or a ban counts separately: its key.
type By uint8

const (
	// BySourceIP keys by the client's address (the zero value).
	BySourceIP By = iota
	// ByCIDR keys by the client's network: its address masked to Prefix
	// bits (IPv4) or Prefix6 bits (IPv6).
	ByCIDR
	// ByListener keys by the listener that accepted the connection.
	ByListener
	// ByGlobal has one key: every connection of every policy applying the
	// limit counts together.
	ByGlobal
)

var byNames = [...]string{"source_ip", "cidr", "listener", "global"}

// String returns b's configuration form: "source_ip", "cidr", "listener"
// or "global".
func (b By) String() string {
	if int(b) < len(byNames) {
		return byNames[b]
	}
	return fmt.Sprintf("By(%d)", uint8(b))
}

// ParseBy parses the configuration form of a [By]. It returns an error
// naming the text unless s is one of "source_ip", "cidr", "listener",
// "global".
func ParseBy(s string) (By, error) {
	for i, n := range byNames {
		if s == n {
			return By(i), nil
		}
	}
	return 0, fmt.Errorf("want one of source_ip, cidr, listener, global, got %q", s)
}

// Every is a count per period: N per Per. The zero value means none (no
// such limit). Validate wants N > 0 and Per > 0, or both zero.
type Every struct {
	N   int64
	Per time.Duration
}

// IsZero reports whether e is the zero value, meaning none.
func (e Every) IsZero() bool { return e == Every{} }

// String returns e as "N/Per", or "none" for the zero value.
func (e Every) String() string {
	if e.IsZero() {
		return "none"
	}
	return fmt.Sprintf("%d/%s", e.N, e.Per)
}

// Limit is one named admission limit. Every limit a policy applies must
// admit a connection; a connection refused by one takes nothing from the
// others. A limit has at least one of Conns, Rate and Window.
type Limit struct {
	// Name names the limit in policies, decisions, stats and errors. It is
	// unique in a [Rules].
	Name string
	// By is the key the limit counts by.
	By By
	// Prefix and Prefix6 are the network sizes of a ByCIDR limit, in bits:
	// 1 to 32 and 1 to 128; 0 means 24 and 64. Other keys ignore them.
	Prefix, Prefix6 int
	// Table bounds the keys a BySourceIP or ByCIDR limit tracks; 0 means
	// 1,048,576. It is split evenly over the limit's 64 shards, so it is at
	// least 64. A new key finding its shard full goes to its /24 (/64)
	// network's key instead, and when the shard's networks are as many,
	// the connection is refused with "table_full" (see the package doc).
	Table int

	// Conns is how many connections a key may hold open at once (nginx
	// limit_conn); 0 means no limit. A slot is taken at admission and given
	// back by the Decision's Hold.
	Conns int
	// QueueSize is how many connections a key may have waiting for a slot
	// of Conns, oldest first; 0 means none wait: refused at once. It needs
	// Conns.
	QueueSize int
	// QueueTimeout is how long a connection waits in the queue at most; the
	// caller runs the timer and calls [Waiter.Cancel]. Positive when
	// QueueSize is.
	QueueTimeout time.Duration

	// Rate is the rate of new connections per key, with nginx limit_req
	// semantics (see the package doc); the zero value means no rate limit.
	Rate Every
	// Burst is how many connections a key may run ahead of Rate, as
	// nginx's burst; at least 0. It needs Rate.
	Burst int
	// Delay is how many of the Burst pass at once; the rest are admitted
	// with a delay that brings them back to Rate (nginx delay=N). Delay ==
	// Burst is nginx's nodelay; 0 delays the whole burst. 0 ≤ Delay ≤ Burst.
	Delay int

	// Window is a fixed-window count per key (resty.limit.count): the
	// window opens at the key's first connection and lasts Per; the
	// connections beyond N in it are refused. The zero value means none.
	Window Every

	// Borrow names another limit of the same policy, usually a ByGlobal
	// one: a connection this limit would refuse on Rate is admitted anyway
	// when that limit admits it at once (see the package doc). Empty means
	// no borrowing. It needs Rate.
	Borrow string

	// Shared, if set, shares the limit's counts with other processes (the
	// instances of a cluster): see [Shared]. Nil counts on this process
	// alone.
	Shared Shared
}

// Counted says what a ban's tiers count.
type Counted uint8

const (
	// CountRefusals counts the connections the policy's limits refuse (the
	// zero value). Refusals by the ban itself, by deny lists, and allowed
	// clients are never counted.
	CountRefusals Counted = iota
	// CountConnections counts every connection the ban sees: all but those
	// it refuses itself, those denied and those allowed.
	CountConnections
)

// String returns c's configuration form: "refusals" or "connections".
func (c Counted) String() string {
	switch c {
	case CountRefusals:
		return "refusals"
	case CountConnections:
		return "connections"
	}
	return fmt.Sprintf("Counted(%d)", uint8(c))
}

// ParseCounted parses the configuration form of a [Counted]. It returns an
// error naming the text unless s is "refusals" or "connections".
func ParseCounted(s string) (Counted, error) {
	switch s {
	case "refusals":
		return CountRefusals, nil
	case "connections":
		return CountConnections, nil
	}
	return 0, fmt.Errorf("want refusals or connections, got %q", s)
}

// Tier is one step of a [Ban]: more than Over counted events within Per
// (a sliding window, ending at the event) ban the key for Ban.
type Tier struct {
	Over int           // at least 0
	Per  time.Duration // positive
	Ban  time.Duration // positive, at most the Ban's RepeatMax
}

// Ban is a named stepped ban policy (Upyun's stepped IP limits): per key,
// it counts events (refusals or connections) in sliding windows, one per
// tier, and bans a key whose count goes over a tier's bound.
type Ban struct {
	// Name names the ban in policies, decisions, stats and errors. It is
	// unique among the bans of a [Rules].
	Name string
	// By is BySourceIP or ByCIDR.
	By By
	// Prefix and Prefix6 are the network sizes of a ByCIDR ban, in bits;
	// 0 means 24 and 64.
	Prefix, Prefix6 int
	// Count says what the tiers count.
	Count Counted
	// Tiers are the ban's steps; at least one. When an event puts a key
	// over several tiers, the last of them (the last in this order) bans
	// it.
	Tiers []Tier
	// RepeatFactor multiplies the ban of a key banned before: its n-th
	// repeat serves Tier.Ban × RepeatFactor^n, up to RepeatMax; 0 means 2,
	// otherwise at least 1.
	RepeatFactor float64
	// RepeatMax caps a ban's length; 0 means 7 days.
	RepeatMax time.Duration
	// Forget is how long a key's past bans count for RepeatFactor after its
	// last ban lifted; 0 means RepeatMax.
	Forget time.Duration
	// Table bounds the keys tracked; 0 means 100,000, otherwise at least
	// 64. Live bans are never evicted; a new key finding its shard full is
	// counted under its /24 (/64) network (see the package doc).
	Table int
}

// Rules are the limits and bans of a [Set].
type Rules struct {
	Limits []Limit
	Bans   []Ban
}

// Defaults of the zero values.
const (
	defaultPrefix       = 24
	defaultPrefix6      = 64
	defaultLimitTable   = 1 << 20
	defaultBanTable     = 100000
	defaultRepeatFactor = 2
	defaultRepeatMax    = 7 * 24 * time.Hour
	nShards             = 64  // shards of a by-address table
	maxOver             = 255 // events a ban key remembers: tiers count exactly
)

// Validate reports the first problem of r, if any. The error names the
// limit or ban and the field as in the configuration, with what was
// wanted and what was got: `limits.per-ip.burst: want at least 0, got -1`.
func (r Rules) Validate() error {
	names := make(map[string]bool, len(r.Limits))
	for i, l := range r.Limits {
		if l.Name == "" {
			return fmt.Errorf("limits[%d]: want a name, got \"\"", i)
		}
		if names[l.Name] {
			return fmt.Errorf("limits.%s: want a unique name, got it twice", l.Name)
		}
		names[l.Name] = true
	}
	for _, l := range r.Limits {
		if err := l.validate(names); err != nil {
			return err
		}
	}
	bans := make(map[string]bool, len(r.Bans))
	for i, b := range r.Bans {
		if b.Name == "" {
			return fmt.Errorf("bans[%d]: want a name, got \"\"", i)
		}
		if bans[b.Name] {
			return fmt.Errorf("bans.%s: want a unique name, got it twice", b.Name)
		}
		bans[b.Name] = true
		if err := b.validate(); err != nil {
			return err
		}
	}
	return nil
}

func (l *Limit) validate(names map[string]bool) error {
	bad := func(field, want string, got any) error {
		return fmt.Errorf("limits.%s.%s: want %s, got %v", l.Name, field, want, got)
	}
	if l.By > ByGlobal {
		return bad("by", "one of source_ip, cidr, listener, global", l.By)
	}
	if l.Prefix < 0 || l.Prefix > 32 {
		return bad("prefix", "0 to 32 bits", l.Prefix)
	}
	if l.Prefix6 < 0 || l.Prefix6 > 128 {
		return bad("prefix6", "0 to 128 bits", l.Prefix6)
	}
	if l.Table != 0 && (l.Table < nShards || l.Table > math.MaxInt32) {
		return bad("table", fmt.Sprintf("0 (default) or %d to %d keys", nShards, math.MaxInt32), l.Table)
	}
	if l.Conns < 0 || l.Conns > math.MaxInt32 {
		return bad("conns", "0 to 2147483647", l.Conns)
	}
	if l.QueueSize < 0 || l.QueueSize > math.MaxInt32 {
		return bad("queue.size", "0 to 2147483647", l.QueueSize)
	}
	if l.QueueSize > 0 && l.Conns == 0 {
		return bad("queue.size", "conns with a queue", l.QueueSize)
	}
	if l.QueueTimeout < 0 || (l.QueueSize > 0) != (l.QueueTimeout > 0) {
		return bad("queue.timeout", "a positive timeout with a queue, none without", l.QueueTimeout)
	}
	if err := l.Rate.validate(); err != nil {
		return bad("rate", err.Error(), l.Rate)
	}
	if !l.Rate.IsZero() && int64(l.Rate.Per)/l.Rate.N < 1 {
		return bad("rate", "at most one connection a nanosecond", l.Rate)
	}
	if l.Burst < 0 {
		return bad("burst", "at least 0", l.Burst)
	}
	if l.Burst > 0 && l.Rate.IsZero() {
		return bad("burst", "a rate with a burst", l.Burst)
	}
	if !l.Rate.IsZero() && int64(l.Burst) > math.MaxInt64/4/int64(l.Rate.Per)-2 {
		return bad("burst", "a burst × rate period that fits in 2^61 ns", l.Burst)
	}
	if l.Delay < 0 || l.Delay > l.Burst {
		return bad("delay", fmt.Sprintf("0 to burst (%d)", l.Burst), l.Delay)
	}
	if err := l.Window.validate(); err != nil {
		return bad("window", err.Error(), l.Window)
	}
	if l.Window.N > math.MaxInt32 {
		return bad("window", "at most 2147483647 per window", l.Window)
	}
	if l.Borrow != "" {
		switch {
		case l.Borrow == l.Name:
			return bad("borrow", "another limit", fmt.Sprintf("%q", l.Borrow))
		case !names[l.Borrow]:
			return bad("borrow", "the name of a limit", fmt.Sprintf("%q", l.Borrow))
		case l.Rate.IsZero():
			return bad("borrow", "a rate to borrow for", fmt.Sprintf("%q", l.Borrow))
		}
	}
	if l.Conns == 0 && l.Rate.IsZero() && l.Window.IsZero() {
		return fmt.Errorf("limits.%s: want at least one of conns, rate, window, got none", l.Name)
	}
	return nil
}

func (e Every) validate() error {
	if e.IsZero() {
		return nil
	}
	if e.N <= 0 || e.Per <= 0 {
		return errors.New("a count and a period both positive, or none")
	}
	if e.N > 1e12 {
		return errors.New("at most 1e12 per period")
	}
	return nil
}

func (b *Ban) validate() error {
	bad := func(field, want string, got any) error {
		return fmt.Errorf("bans.%s.%s: want %s, got %v", b.Name, field, want, got)
	}
	if b.By != BySourceIP && b.By != ByCIDR {
		return bad("by", "source_ip or cidr", b.By)
	}
	if b.Prefix < 0 || b.Prefix > 32 {
		return bad("prefix", "0 to 32 bits", b.Prefix)
	}
	if b.Prefix6 < 0 || b.Prefix6 > 128 {
		return bad("prefix6", "0 to 128 bits", b.Prefix6)
	}
	if b.Count > CountConnections {
		return bad("count", "refusals or connections", b.Count)
	}
	if len(b.Tiers) == 0 {
		return bad("tiers", "at least one tier", "none")
	}
	f := b.RepeatFactor
	if f != 0 && (f < 1 || math.IsInf(f, 0) || math.IsNaN(f)) {
		return bad("repeat.factor", "0 (default 2) or at least 1", f)
	}
	if b.RepeatMax < 0 {
		return bad("repeat.max", "0 (default 7 days) or positive", b.RepeatMax)
	}
	if b.Forget < 0 {
		return bad("forget", "0 (default repeat.max) or positive", b.Forget)
	}
	if b.Table != 0 && (b.Table < nShards || b.Table > math.MaxInt32) {
		return bad("table", fmt.Sprintf("0 (default) or %d to %d keys", nShards, math.MaxInt32), b.Table)
	}
	max := b.repeatMax()
	for i, t := range b.Tiers {
		field := func(f string) string { return fmt.Sprintf("tiers[%d].%s", i, f) }
		if t.Over < 0 || t.Over > maxOver {
			return bad(field("over"), fmt.Sprintf("0 to %d", maxOver), t.Over)
		}
		if t.Per <= 0 {
			return bad(field("per"), "a positive duration", t.Per)
		}
		if t.Ban <= 0 || t.Ban > max {
			return bad(field("ban"), fmt.Sprintf("a positive duration up to repeat.max (%s)", max), t.Ban)
		}
	}
	return nil
}

func (b *Ban) repeatMax() time.Duration {
	if b.RepeatMax == 0 {
		return defaultRepeatMax
	}
	return b.RepeatMax
}
