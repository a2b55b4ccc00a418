package cluster

import (
	"errors"
	"fmt"
	"time"
)

// ErrExists is returned when a link, counter or ban policy is registered
// twice on one Cluster.
var ErrExists = errors.New("cluster: already registered")

// Demand is what an instance wants of a link for the next period.
type Demand struct {
	// Conns is the instance's weight in the split: the number of its
	// connections that want bytes on the link now (backlogged, or that
	// moved bytes in the last period). Instances split the line in
	// proportion to Conns, as those connections would on one machine.
	// Zero means idle: the instance keeps only the floor
	// ([Options.Floor]).
	Conns int
	// Want bounds what the instance can use, in bytes per second: e.g.
	// the sum of its connections' own limits, or 1.25 × what it moved
	// in the last period when its link was not the bottleneck. Zero
	// means no bound. What one instance cannot use goes to the others.
	Want int64
}

// LinkOptions describe one link shared by the cluster.
type LinkOptions struct {
	// Line is the whole line's rate, shared by every instance, in bytes
	// per second. It must be positive. Instances should agree; while
	// they do not (a reload rolling out), Redis uses the smallest Line
	// any live instance reports.
	Line int64
	// Fallback is the share, in bytes per second, applied while Redis
	// has never answered for this link. Zero means Line ÷
	// [Options.Instances]. It must not be negative nor above Line.
	Fallback int64
	// Demand is called once per period, from the renewal goroutine, for
	// the demand this instance reports. It must not block. Required.
	Demand func() Demand
	// Apply sets this instance's share of the line, in bytes per second
	// (at least 1), e.g. with [shaper.Link.SetLimit]. It is called from
	// [Cluster.Link] and then from the renewal goroutine, never
	// concurrently, only when the share changes. It must not block.
	// Required.
	Apply func(share int64)
}

// A Lease is this instance's share of one link, renewed every period.
// Its methods are safe for concurrent use.
type Lease struct {
	c    *Cluster
	name string
	o    LinkOptions

	// Guarded by c.mu.
	share      int64
	fair       int64
	line       int64
	instances  int
	weight     int64
	lastDemand Demand
	leased     bool // share came from Redis
	static     bool // share is the static fallback
	closed     bool
	renewed    time.Time
}

// Link shares the link name (unique in the cluster; it names the Redis
// key, so every instance must use the same name) with the cluster. It
// calls o.Apply once before returning: with the floor of the line if
// Redis has not failed yet (the first lease follows within a round
// trip: Link asks for a renewal at once), or with the static fallback
// share if it has. It returns an error wrapping [ErrBadOptions] if o is
// invalid, [ErrExists] if name is taken, or [ErrClosed].
func (c *Cluster) Link(name string, o LinkOptions) (*Lease, error) {
	switch {
	case name == "":
		return nil, fmt.Errorf("%w: link: want a name", ErrBadOptions)
	case o.Line <= 0:
		return nil, fmt.Errorf("%w: link %q: want a positive line rate, got %d", ErrBadOptions, name, o.Line)
	case o.Fallback < 0 || o.Fallback > o.Line:
		return nil, fmt.Errorf("%w: link %q: fallback %d outside [0, line %d]", ErrBadOptions, name, o.Fallback, o.Line)
	case o.Demand == nil || o.Apply == nil:
		return nil, fmt.Errorf("%w: link %q: want Demand and Apply funcs", ErrBadOptions, name)
	}
	l := &Lease{c: c, name: name, o: o, line: o.Line}
	c.mu.Lock()
	switch {
	case c.state == Closed || c.ctx.Err() != nil:
		c.mu.Unlock()
		return nil, ErrClosed
	case c.links[name] != nil && !c.links[name].closed:
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: link %q", ErrExists, name)
	}
	if c.state == Fallback || c.state == Starting && c.lastErr != nil {
		l.static = true
		l.share = l.fallbackShare(c.o.Instances)
	} else {
		l.share = max(1, int64(float64(o.Line)*c.o.Floor))
	}
	c.links[name] = l
	share := l.share
	c.mu.Unlock()
	o.Apply(share)
	c.kickRenew()
	return l, nil
}

// fallbackShare is the static share of a link that never had a lease.
func (l *Lease) fallbackShare(instances int) int64 {
	if l.o.Fallback > 0 {
		return l.o.Fallback
	}
	return max(1, l.o.Line/int64(instances))
}

// Name returns the link's name.
func (l *Lease) Name() string { return l.name }

// Share returns the share applied now, in bytes per second.
func (l *Lease) Share() int64 {
	l.c.mu.Lock()
	defer l.c.mu.Unlock()
	return l.share
}

// Close stops sharing the link: the next renewal gives its share back
// to the others at once (or, if Redis is unreachable, it expires), and
// Apply is not called again. Close does not wait.
func (l *Lease) Close() {
	l.c.mu.Lock()
	defer l.c.mu.Unlock()
	l.closed = true
}
