package admit

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// limitCfg is a limit's rules with the numbers admission derives from
// them.
type limitCfg struct {
	Limit
	iv       int64 // rate: ns a connection adds to the key's excess (Per / N); 0 means no rate
	burstIV  int64 // rate: the excess above which a connection is refused
	delayIV  int64 // rate: the excess above which it is delayed
	shardCap int   // keys a shard tracks, own and aggregates apart
}

func newLimitCfg(l Limit) *limitCfg {
	c := &limitCfg{Limit: l, shardCap: defaultLimitTable / nShards}
	if l.Table > 0 {
		c.shardCap = l.Table / nShards
	}
	if !l.Rate.IsZero() {
		c.iv = max((int64(l.Rate.Per)+l.Rate.N/2)/l.Rate.N, 1)
		c.burstIV, c.delayIV = int64(l.Burst)*c.iv, int64(l.Delay)*c.iv
	}
	return c
}

// limitState is one named limit's state: per key a cell, in shards with
// a lock each; a ByGlobal limit's one key lives in atomics instead.
type limitState struct {
	id    int // lock order
	seed  uint64
	by    By  // the key; with the prefixes, fixed for the state's life
	bits  int // ByCIDR: network sizes, defaults applied
	bits6 int
	cfg   atomic.Pointer[limitCfg]

	shards [nShards]limitShard
	g      global

	n [nOutcomes]atomic.Uint64 // a ByGlobal limit's decisions; keyed limits count in their shards
}

func newLimitState(id int, seed uint64, l Limit) *limitState {
	ls := &limitState{id: id, seed: seed, by: l.By}
	ls.bits, ls.bits6 = keyBits(l)
	ls.cfg.Store(newLimitCfg(l))
	return ls
}

// keyBits returns l's network sizes with the defaults applied.
func keyBits(l Limit) (bits, bits6 int) {
	bits, bits6 = l.Prefix, l.Prefix6
	if bits == 0 {
		bits = defaultPrefix
	}
	if bits6 == 0 {
		bits6 = defaultPrefix6
	}
	return bits, bits6
}

// sameKey reports whether l keys connections as ls does, so that ls may
// carry on with l's numbers.
func (ls *limitState) sameKey(l Limit) bool {
	bits, bits6 := keyBits(l)
	return l.By == ls.by && (ls.by != ByCIDR || bits == ls.bits && bits6 == ls.bits6)
}

// cell is one key's state in a limit: 24 bytes. Guarded by its shard's
// mu.
type cell struct {
	tat    int64  // rate: unix ns at which the key's excess is back to 0
	wstart int64  // window: unix ns it opened
	conns  int32  // connections open
	wcount uint32 // window: connections in it
}

// akey is a key that is not an IPv4 address: an IPv6 address or network
// (its 16 bytes), an aggregate network, or a listener's id.
type akey struct{ hi, lo uint64 }

// ref is a connection's key in a limit, and the shard it lives in.
type ref struct {
	sh *limitShard
	k6 akey
	k4 uint32
	v4 bool
}

// limitShard holds the cells of the keys that hash to it. A key and its
// /24 (/64) network always share a shard, so that a key may be counted
// under its network when the shard is full.
type limitShard struct {
	mu     sync.Mutex
	v4     map[uint32]int32 // IPv4 keys → index in cells
	v6     map[akey]int32   // other keys → index in cells
	agg    map[akey]int32   // networks of keys that found the shard full
	cells  []cell
	free   []int32             // indexes of cells no key uses
	queues map[int32][]*Waiter // per cell, connections waiting for a slot, oldest first
	n      [nOutcomes]uint64   // decisions by outcome
	_      [64]byte            // keep shards' locks on their own cache lines
}

// mix spreads x over 64 bits (a multiplicative hash), for shard choice.
func mix(x uint64) uint64 {
	hi, lo := bits.Mul64(x, 0x9e3779b97f4a7c15)
	return hi ^ lo
}

// ref returns the key of a connection from addr on listener lid.
func (ls *limitState) ref(addr netip.Addr, lid uint64) ref {
	var r ref
	switch ls.by {
	case ByListener:
		r.k6 = akey{lo: lid}
		r.sh = &ls.shards[mix(lid^ls.seed)%nShards]
		return r
	case ByCIDR:
		addr = masked(addr, ls.bits, ls.bits6)
	}
	switch {
	case addr.Is4():
		b := addr.As4()
		r.v4, r.k4 = true, binary.BigEndian.Uint32(b[:])
		r.sh = &ls.shards[mix(uint64(r.k4>>8)^ls.seed)%nShards]
	case addr.IsValid():
		b := addr.As16()
		r.k6 = akey{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
		r.sh = &ls.shards[mix(r.k6.hi^ls.seed)%nShards]
	default: // unknown client: one key for all of them
		r.k6 = akey{^uint64(0), ^uint64(0)}
		r.sh = &ls.shards[0]
	}
	return r
}

// aggregate returns r's /24 (/64) network as an aggregate key, and false
// when r is no finer than that (a listener, or a network as coarse).
func (ls *limitState) aggregate(r *ref) (akey, bool) {
	switch {
	case ls.by == ByListener || r.k6 == akey{^uint64(0), ^uint64(0)}:
		return akey{}, false
	case r.v4:
		return akey{lo: uint64(r.k4 &^ 0xff)}, ls.by != ByCIDR || ls.bits > defaultPrefix
	}
	return akey{hi: r.k6.hi}, ls.by != ByCIDR || ls.bits6 > defaultPrefix6
}

// find returns r's cell index, if r is tracked under its own key.
// Requires sh.mu.
func (sh *limitShard) find(r *ref) (int32, bool) {
	if r.v4 {
		i, ok := sh.v4[r.k4]
		return i, ok
	}
	i, ok := sh.v6[r.k6]
	return i, ok
}

// own returns the number of keys tracked under their own key. Requires
// sh.mu.
func (sh *limitShard) own() int { return len(sh.v4) + len(sh.v6) }

// cell returns r's cell, tracking r if new: under its own key while the
// shard has room, else under its network's; false when even that finds
// no room. Requires sh.mu.
func (ls *limitState) cell(r *ref, capacity int) (int32, bool) {
	sh := r.sh
	if i, ok := sh.find(r); ok {
		return i, true
	}
	if sh.own() < capacity {
		i := sh.alloc()
		if r.v4 {
			if sh.v4 == nil {
				sh.v4 = map[uint32]int32{}
			}
			sh.v4[r.k4] = i
		} else {
			if sh.v6 == nil {
				sh.v6 = map[akey]int32{}
			}
			sh.v6[r.k6] = i
		}
		return i, true
	}
	a, ok := ls.aggregate(r)
	if !ok {
		return -1, false
	}
	if i, ok := sh.agg[a]; ok {
		return i, true
	}
	if len(sh.agg) >= capacity {
		return -1, false
	}
	if sh.agg == nil {
		sh.agg = map[akey]int32{}
	}
	i := sh.alloc()
	sh.agg[a] = i
	return i, true
}

func (sh *limitShard) alloc() int32 {
	if n := len(sh.free); n > 0 {
		i := sh.free[n-1]
		sh.free = sh.free[:n-1]
		sh.cells[i] = cell{}
		return i
	}
	sh.cells = append(sh.cells, cell{})
	return int32(len(sh.cells) - 1)
}

// idle reports whether c has nothing left to count at t: no connection,
// no waiter, no rate excess, no open window. Requires sh.mu.
func (sh *limitShard) idle(cfg *limitCfg, i int32, t int64) bool {
	c := &sh.cells[i]
	return c.conns == 0 && len(sh.queues[i]) == 0 && c.tat <= t &&
		(c.wcount == 0 || t-c.wstart >= int64(cfg.Window.Per))
}

// sweep forgets the idle keys of sh; it returns how many.
func (sh *limitShard) sweep(cfg *limitCfg, t int64) int {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	n := 0
	for k, i := range sh.v4 {
		if sh.idle(cfg, i, t) {
			delete(sh.v4, k)
			sh.free = append(sh.free, i)
			n++
		}
	}
	for _, m := range []map[akey]int32{sh.v6, sh.agg} {
		for k, i := range m {
			if sh.idle(cfg, i, t) {
				delete(m, k)
				sh.free = append(sh.free, i)
				n++
			}
		}
	}
	if len(sh.free) > 0 && len(sh.free) == len(sh.cells) { // empty: give the memory back
		sh.cells, sh.free = nil, nil
		sh.v4, sh.v6, sh.agg = nil, nil, nil
	}
	return n
}

// global is the one key of a ByGlobal limit. Its count of connections and
// its rate are atomics, so that no decision waits on another for them;
// its queue and window take mu, as does handing a slot to a waiter.
type global struct {
	conns   atomic.Int32
	tat     atomic.Int64
	waiting atomic.Int32 // places in the queue, taken before a waiter is in it
	watched atomic.Bool  // someone waits on freed

	mu     sync.Mutex
	queue  []*Waiter
	freed  chan struct{} // closed at the next slot given back; made by Full
	wstart int64
	wcount uint32
}

// tryTake takes a slot if fewer than max are taken.
func (g *global) tryTake(max int) bool { return below(&g.conns, max) }

// below adds one to n if n is below max, and reports whether it did.
func below(n *atomic.Int32, max int) bool {
	for {
		v := n.Load()
		if int(v) >= max {
			return false
		}
		if n.CompareAndSwap(v, v+1) {
			return true
		}
	}
}

// give gives back a slot, handing it to the first waiter if any.
func (g *global) give(cfg *limitCfg) {
	g.conns.Add(-1)
	if g.waiting.Load() > 0 {
		g.mu.Lock()
		for len(g.queue) > 0 && g.tryTake(cfg.Conns) {
			w := g.queue[0]
			g.queue = g.queue[1:]
			g.waiting.Add(-1)
			w.grant()
		}
		g.mu.Unlock()
	}
	if g.watched.Load() {
		g.mu.Lock()
		if g.freed != nil {
			close(g.freed)
			g.freed = nil
		}
		g.watched.Store(false)
		g.mu.Unlock()
	}
}

// release gives back the slot tk took.
func (ls *limitState) release(tk taken) {
	cfg := ls.cfg.Load()
	if tk.sh == nil {
		ls.g.give(cfg)
		return
	}
	sh := tk.sh
	sh.mu.Lock()
	defer sh.mu.Unlock()
	c := &sh.cells[tk.idx]
	if q := sh.queues[tk.idx]; len(q) > 0 && (cfg.Conns == 0 || int(c.conns) <= cfg.Conns) {
		w := q[0]
		sh.dequeue(tk.idx, q[1:])
		w.grant() // the slot passes on: conns unchanged
		return
	}
	c.conns--
}

// dequeue stores q as cell i's queue.
func (sh *limitShard) dequeue(i int32, q []*Waiter) {
	if len(q) == 0 {
		delete(sh.queues, i)
		return
	}
	sh.queues[i] = q
}

// queueLock returns the lock of the queue of the key tk took.
func (ls *limitState) queueLock(tk taken) *sync.Mutex {
	if tk.sh == nil {
		return &ls.g.mu
	}
	return &tk.sh.mu
}

// unqueue takes w out of the queue of the key tk took. Requires
// queueLock(tk).
func (ls *limitState) unqueue(tk taken, w *Waiter) {
	is := func(x *Waiter) bool { return x == w }
	if tk.sh == nil {
		ls.g.queue = slices.DeleteFunc(ls.g.queue, is)
		ls.g.waiting.Add(-1)
		return
	}
	tk.sh.dequeue(tk.idx, slices.DeleteFunc(tk.sh.queues[tk.idx], is))
}

// undo gives back the rate and window counts a connection that gave up
// waiting took from key r, when r still has the cell it took.
func (ls *limitState) undo(tk taken, r ref) {
	cfg := ls.cfg.Load()
	if tk.sh == nil {
		if tk.rate && cfg.iv > 0 {
			ls.g.tat.Add(-cfg.iv)
		}
		if tk.window {
			ls.g.mu.Lock()
			ls.g.wcount -= min(ls.g.wcount, 1)
			ls.g.mu.Unlock()
		}
		return
	}
	sh := tk.sh
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if i, ok := sh.find(&r); !ok || i != tk.idx {
		return // its key was forgotten, or it counted under its network's
	}
	c := &sh.cells[tk.idx]
	if tk.rate && cfg.iv > 0 {
		c.tat -= cfg.iv
	}
	if tk.window {
		c.wcount -= min(c.wcount, 1)
	}
}

// window reports whether a window of per holding count connections, open
// since start, admits one more at t, and the window's new start and
// count if it does.
func window(start int64, count uint32, n int64, per time.Duration, t int64) (int64, uint32, bool) {
	if count == 0 || t-start >= int64(per) {
		return t, 1, true
	}
	if int64(count) >= n {
		return start, count, false
	}
	return start, count + 1, true
}

// outcome is what a limit made of a decision it took part in.
type outcome uint8

const (
	outAdmitted outcome = iota
	outDelayed
	outQueued
	outRefused
	nOutcomes
)

// count counts an outcome of ch. Requires its shard's mu, for a keyed
// limit.
func (ch *check) count(o outcome) {
	if ch.r.sh != nil {
		ch.r.sh.n[o]++
		return
	}
	ch.ls.n[o].Add(1)
}

// stats returns ls's counters.
func (ls *limitState) stats() LimitStats {
	x := LimitStats{Name: ls.cfg.Load().Name}
	if ls.by == ByGlobal {
		x.Admitted, x.Delayed = ls.n[outAdmitted].Load(), ls.n[outDelayed].Load()
		x.Queued, x.Refused = ls.n[outQueued].Load(), ls.n[outRefused].Load()
		x.Keys, x.Waiting = 1, int(ls.g.waiting.Load())
		return x
	}
	for i := range ls.shards {
		sh := &ls.shards[i]
		sh.mu.Lock()
		x.Admitted += sh.n[outAdmitted]
		x.Delayed += sh.n[outDelayed]
		x.Queued += sh.n[outQueued]
		x.Refused += sh.n[outRefused]
		x.Keys += sh.own() + len(sh.agg)
		for _, q := range sh.queues {
			x.Waiting += len(q)
		}
		sh.mu.Unlock()
	}
	return x
}

// state returns the state of key r (of addr, on listener) at t.
func (ls *limitState) state(r ref, addr netip.Addr, listener string, t int64) KeyState {
	cfg := ls.cfg.Load()
	ks := KeyState{Limit: cfg.Name}
	var c cell
	switch ls.by {
	case ByGlobal:
		g := &ls.g
		ks.Key, ks.Queued = "global", int(g.waiting.Load())
		g.mu.Lock()
		c = cell{tat: g.tat.Load(), conns: g.conns.Load(), wstart: g.wstart, wcount: g.wcount}
		g.mu.Unlock()
	default:
		switch ls.by {
		case ByListener:
			ks.Key = listener
		case ByCIDR:
			ks.Key = masked(addr, ls.bits, ls.bits6).String()
		default:
			ks.Key = addr.String()
		}
		sh := r.sh
		sh.mu.Lock()
		i, ok := sh.find(&r)
		if a, agg := ls.aggregate(&r); !ok && agg {
			if i, ok = sh.agg[a]; ok {
				bits := defaultPrefix
				if !r.v4 {
					bits = defaultPrefix6
				}
				ks.Key = netip.PrefixFrom(masked(addr, bits, bits), bits).String()
			}
		}
		if ok {
			c, ks.Queued = sh.cells[i], len(sh.queues[i])
		}
		sh.mu.Unlock()
	}
	ks.Conns = int(c.conns)
	if cfg.iv > 0 {
		ks.Excess = float64(max(c.tat-t, 0)) / float64(cfg.iv)
	}
	if !cfg.Window.IsZero() && c.wcount > 0 && t-c.wstart < int64(cfg.Window.Per) {
		ks.WindowCount = int64(c.wcount)
	}
	return ks
}
