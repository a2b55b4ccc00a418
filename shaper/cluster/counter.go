package cluster

import (
	"fmt"
	"time"
)

// DefaultMaxKeys bounds the keys a [Counter] shares per period.
const DefaultMaxKeys = 10000

// CounterOptions describe a shared counter.
type CounterOptions struct {
	// Window is the length of the fixed windows hits are counted in,
	// aligned on Redis's clock (multiples of Window since the Unix
	// epoch). Zero means one second. It must be at least the period.
	Window time.Duration
	// MaxKeys bounds the keys shared per period; keys beyond it stay
	// local until room is made (counted in [CounterStats].Untracked).
	// Zero means [DefaultMaxKeys]. The cost of a period's call grows with
	// keys × instances.
	MaxKeys int
}

// A Counter shares, per key, counts of new connections (hits, in fixed
// windows) and of open connections across the cluster, for admission
// limits whose counters are shared (limits.NAME.cluster). Updates are
// local and batched: they reach Redis at the next renewal, with the
// leases, and the others' counts come back in the same call. So a
// reading lags the other instances by at most one period plus a round
// trip; see the package doc for the error bound. Its methods never wait
// on Redis and are safe for concurrent use.
type Counter struct {
	c       *Cluster
	name    string
	winMs   int64
	maxKeys int

	// Guarded by c.mu.
	keys      map[string]*ctrKey
	closing   bool
	untracked int64
}

type ctrKey struct {
	pending     int64 // local hits not yet sent
	flushing    int64 // local hits in the call under way
	conns       int64 // local open connections
	sentConns   int64 // conns as Redis last recorded them
	wid         int64 // window of total, mine and drained; -1: none yet
	total       int64 // hits in wid, all instances, at the last call
	mine        int64 // our hits recorded in wid
	drained     int64 // others' hits in wid already taken by TakeRemoteHits
	remoteConns int64 // others' open connections, at the last call
	watch       bool  // read by Get with nothing local yet: shared at the next call, to learn the others' counts
}

// Counter returns the shared counter name (unique in the cluster; every
// instance must use the same name and options). It returns an error
// wrapping [ErrBadOptions] if o is invalid, [ErrExists] if name is taken,
// or [ErrClosed].
func (c *Cluster) Counter(name string, o CounterOptions) (*Counter, error) {
	if o.Window == 0 {
		o.Window = time.Second
	}
	if o.MaxKeys == 0 {
		o.MaxKeys = DefaultMaxKeys
	}
	switch {
	case name == "":
		return nil, fmt.Errorf("%w: counter: want a name", ErrBadOptions)
	case o.Window < c.o.Period || o.Window%time.Millisecond != 0:
		return nil, fmt.Errorf("%w: counter %q: want a window of whole milliseconds, at least the period %s, got %s", ErrBadOptions, name, c.o.Period, o.Window)
	case o.MaxKeys < 0:
		return nil, fmt.Errorf("%w: counter %q: want max keys of 0 or more, got %d", ErrBadOptions, name, o.MaxKeys)
	}
	k := &Counter{c: c, name: name, winMs: o.Window.Milliseconds(), maxKeys: o.MaxKeys, keys: map[string]*ctrKey{}}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.state == Closed || c.ctx.Err() != nil:
		return nil, ErrClosed
	case c.ctrs[name] != nil:
		return nil, fmt.Errorf("%w: counter %q", ErrExists, name)
	}
	c.ctrs[name] = k
	return k, nil
}

// keyLocked returns the state of key, made if need be. Requires c.mu held.
func (k *Counter) keyLocked(key string) *ctrKey {
	e := k.keys[key]
	if e == nil {
		e = &ctrKey{wid: -1}
		k.keys[key] = e
	}
	return e
}

// Hit records n new connections of key on this instance.
func (k *Counter) Hit(key string, n int64) {
	k.c.mu.Lock()
	defer k.c.mu.Unlock()
	if !k.closing && n > 0 {
		k.keyLocked(key).pending += n
	}
}

// AddConns adds delta (+1 on open, -1 on close) to the open connections
// of key on this instance. The count never goes below zero.
func (k *Counter) AddConns(key string, delta int64) {
	k.c.mu.Lock()
	defer k.c.mu.Unlock()
	if k.closing {
		return
	}
	e := k.keyLocked(key)
	e.conns = max(0, e.conns+delta)
}

// Count is a key's counts across the cluster.
type Count struct {
	// Hits is the new connections of the current window, all instances;
	// RemoteHits the part of them other instances recorded, as of the
	// last renewal.
	Hits, RemoteHits int64
	// Conns is the open connections, all instances; RemoteConns the
	// part of them on other instances, as of the last renewal.
	Conns, RemoteConns int64
}

// Get returns key's counts: this instance's exactly, the others' as of
// the last renewal. The window is the current one by Redis's clock as
// this instance estimates it. A key this instance holds nothing of (no
// hit, no connection, not read within its window) is zero until the
// next renewal, which fetches the others' counts of it: the first
// reading of a key misses them.
func (k *Counter) Get(key string) Count {
	now := k.c.o.Clock.Now()
	k.c.mu.Lock()
	defer k.c.mu.Unlock()
	e := k.keys[key]
	if e == nil {
		if !k.closing {
			k.keyLocked(key).watch = true
		}
		return Count{}
	}
	cnt := Count{Hits: e.pending + e.flushing, Conns: e.conns + e.remoteConns, RemoteConns: e.remoteConns}
	if e.wid == (now.UnixMilli()+k.c.offsetMs)/k.winMs {
		cnt.RemoteHits = e.total - e.mine
		cnt.Hits += e.total
	}
	return cnt
}

// TakeRemoteHits returns the hits of key other instances recorded in
// the current window since the last TakeRemoteHits, for a local rate
// limiter to charge them as if they had happened here. Hits that other
// instances record in the last period of a window may be missed (at
// most one period's worth per window).
func (k *Counter) TakeRemoteHits(key string) int64 {
	k.c.mu.Lock()
	defer k.c.mu.Unlock()
	e := k.keys[key]
	if e == nil || e.wid < 0 {
		return 0
	}
	r := e.total - e.mine - e.drained
	if r <= 0 {
		return 0
	}
	e.drained += r
	return r
}

// CounterStats describe a Counter.
type CounterStats struct {
	// Keys is the number of keys the counter holds; Untracked counts
	// keys left out of a period's call for lack of room (MaxKeys).
	Keys      int
	Untracked int64
}

// Stats returns the counter's figures.
func (k *Counter) Stats() CounterStats {
	k.c.mu.Lock()
	defer k.c.mu.Unlock()
	return CounterStats{Keys: len(k.keys), Untracked: k.untracked}
}

// Close stops sharing the counter: the next renewal zeroes this
// instance's open connections in Redis (or, if Redis is unreachable,
// they expire), and later updates are ignored. Close does not wait.
func (k *Counter) Close() {
	k.c.mu.Lock()
	defer k.c.mu.Unlock()
	k.closeLocked()
}

// closeLocked requires c.mu held.
func (k *Counter) closeLocked() {
	k.closing = true
	for _, e := range k.keys {
		e.conns, e.pending = 0, 0
	}
}

// ctrSnap is what one call carried for a counter.
type ctrSnap struct {
	ctr   *Counter
	keys  []*ctrKey
	conns []int64
}

// flushLocked moves pending hits into the call under way and lists the
// keys to share: those with hits to send, open connections, a count to
// clear in Redis, or a window still current. Keys with nothing left are
// dropped. Requires c.mu held.
func (k *Counter) flushLocked(nowMs int64) (ctrRequest, ctrSnap) {
	cr := ctrRequest{Name: k.name, Win: k.winMs, Keys: []ctrKeyItem{}}
	cs := ctrSnap{ctr: k}
	wid := nowMs / k.winMs
	for key, e := range k.keys {
		live := e.pending > 0 || e.conns > 0 || e.conns != e.sentConns || e.wid >= wid || e.watch
		if !live {
			delete(k.keys, key)
			continue
		}
		if len(cr.Keys) >= k.maxKeys {
			k.untracked++
			continue
		}
		e.flushing, e.pending = e.pending, 0
		cr.Keys = append(cr.Keys, ctrKeyItem{Key: key, Hits: e.flushing, Conns: e.conns})
		cs.keys = append(cs.keys, e)
		cs.conns = append(cs.conns, e.conns)
	}
	return cr, cs
}

// failedLocked puts a failed call's hits back. Requires c.mu held.
func (k *Counter) failedLocked(cs ctrSnap) {
	for _, e := range cs.keys {
		e.pending += e.flushing
		e.flushing = 0
	}
}

// succeededLocked records a call's answer. Requires c.mu held.
func (k *Counter) succeededLocked(cs ctrSnap, cr ctrReply) {
	wid := int64(cr.WID)
	for i, e := range cs.keys {
		if e.wid != wid {
			e.wid, e.mine, e.drained = wid, 0, 0
		}
		e.mine += e.flushing
		e.flushing = 0
		e.watch = false
		e.sentConns = cs.conns[i]
		if i < len(cr.V) {
			e.total, e.remoteConns = int64(cr.V[i][0]), int64(cr.V[i][1])
		}
	}
	if k.closing {
		delete(k.c.ctrs, k.name)
	}
}
