package admit

import (
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Options configure a [Set].
type Options struct {
	// Logger receives one line when a ban starts ("ban start") and one
	// when it lifts ("ban lift"); nil means no logging.
	Logger *slog.Logger
	// Rand returns numbers in [0, 1) for the jitter of ban lengths; nil
	// means math/rand/v2.
	Rand func() float64
	// OnBan, if set, is called when a ban starts here: by a tier, or by
	// [Set.AddBan]; not by [Set.ImportBan]. It may be called from any
	// goroutine that decides, with no lock of the Set held; it must not
	// block. A cluster hands the ban on to the other instances from it.
	OnBan func(ban string, key netip.Prefix, until time.Time)
	// OnLift, if set, is called when [Set.LiftBan] lifts a ban; not on
	// expiry, nor by [Set.ImportLift]. It must not block.
	OnLift func(ban string, key netip.Prefix)
}

// Set holds the state of named limits and ban policies: per key,
// connection counts and queues, rate excess, window counts, ban tables.
// Policies made from it decide admissions against that state. It is safe
// for concurrent use.
type Set struct {
	opts Options
	log  *slog.Logger
	seed maphash.Seed

	mix uint64 // seed of limits' shard choice

	mu        sync.Mutex // guards the maps and ids; each state locks its own shards
	limits    map[string]*limitState
	bans      map[string]*banState
	nextID    int
	listeners map[string]uint64 // ids of the listeners named by policies, for ByListener keys
}

// NewSet returns a Set holding r's limits and bans. It returns an error
// naming the limit or ban and the field if r is invalid.
func NewSet(r Rules, opts Options) (*Set, error) {
	s := &Set{opts: opts, log: opts.Logger, seed: maphash.MakeSeed(), mix: rand.Uint64(),
		limits: map[string]*limitState{}, bans: map[string]*banState{}, listeners: map[string]uint64{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.opts.Rand == nil {
		s.opts.Rand = rand.Float64
	}
	if err := s.Update(r); err != nil {
		return nil, err
	}
	return s, nil
}

// Update replaces the rules. A limit or ban policy that keeps its name
// keeps its state (counts, queues, excess, bans) and applies its new
// numbers from now on, unless it changes its key (By or the prefixes):
// it then starts afresh. Lowering a connection limit closes nothing, it
// admits no one until the count falls below it. An invalid r changes
// nothing and returns the error. Policies made before keep working, with
// the new numbers of the limits they name; a removed limit stops
// counting for them once they are remade.
func (s *Set) Update(r Rules) error {
	if err := r.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	limits := make(map[string]*limitState, len(r.Limits))
	for _, l := range r.Limits {
		st := s.limits[l.Name]
		if st != nil && st.sameKey(l) {
			st.cfg.Store(newLimitCfg(l))
		} else {
			s.nextID++
			st = newLimitState(s.nextID, s.mix, l)
		}
		limits[l.Name] = st
	}
	bans := make(map[string]*banState, len(r.Bans))
	for _, b := range r.Bans {
		st := s.bans[b.Name]
		if st == nil {
			st = &banState{set: s}
			for i := range st.shards {
				st.shards[i].m = map[netip.Prefix]*banKey{}
			}
		}
		b := b
		st.cfg.Store(&b)
		bans[b.Name] = st
	}
	s.limits, s.bans = limits, bans
	return nil
}

// PolicyConfig is what a listener applies.
type PolicyConfig struct {
	// Listener names the listener, the key of ByListener limits.
	Listener string
	// Allow are clients admitted at once, never limited or banned; Deny
	// are clients refused at once.
	Allow, Deny []netip.Prefix
	// Limits are the names of the limits a connection must pass, all of
	// them.
	Limits []string
	// Ban names the ban policy applied; empty means none.
	Ban string
}

// Policy decides on a listener's connections against its Set's state. It
// implements [Admitter] and is safe for concurrent use.
type Policy struct {
	set      *Set
	listener string
	lid      uint64 // the listener's id, its key in ByListener limits
	allow    PrefixSet
	deny     PrefixSet
	limits   []*limitState // in the config's order
	keyed    []int         // indexes of the limits keyed by address or listener, in lock order (by id)
	global   []int         // indexes of the ByGlobal limits, those lent from first
	ban      *banState
	borrow   []int // per limit, the index of the limit it borrows from, or -1
}

// Interface guard.
var _ Admitter = (*Policy)(nil)

// Policy returns the policy pc describes. It returns an error for a name
// that is not in the Set, or a limit listed twice, or a limit borrowing
// from one the policy does not apply, or more than eight limits.
func (s *Set) Policy(pc PolicyConfig) (*Policy, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(pc.Limits) > maxChecks {
		return nil, fmt.Errorf("%d limits: want at most %d", len(pc.Limits), maxChecks)
	}
	p := &Policy{set: s, listener: pc.Listener, lid: s.listenerID(pc.Listener),
		allow: NewPrefixSet(pc.Allow), deny: NewPrefixSet(pc.Deny)}
	for _, name := range pc.Limits {
		st := s.limits[name]
		if st == nil {
			return nil, fmt.Errorf("no limit %q", name)
		}
		if slices.Contains(p.limits, st) {
			return nil, fmt.Errorf("limit %q listed twice", name)
		}
		p.limits = append(p.limits, st)
	}
	for i, st := range p.limits {
		j := -1
		if b := st.cfg.Load().Borrow; b != "" {
			j = slices.IndexFunc(p.limits, func(x *limitState) bool { return x.cfg.Load().Name == b })
			if j < 0 {
				return nil, fmt.Errorf("limit %q borrows from %q, which the listener does not apply", st.cfg.Load().Name, b)
			}
		}
		p.borrow = append(p.borrow, j)
		if st.by == ByGlobal {
			p.global = append(p.global, i)
		} else {
			p.keyed = append(p.keyed, i)
		}
	}
	slices.SortFunc(p.keyed, func(a, b int) int { return p.limits[a].id - p.limits[b].id })
	lends := func(i int) bool { return slices.Contains(p.borrow, i) }
	slices.SortStableFunc(p.global, func(a, b int) int {
		switch {
		case lends(a) && !lends(b):
			return -1
		case lends(b) && !lends(a):
			return 1
		}
		return 0
	})
	if pc.Ban != "" {
		if p.ban = s.bans[pc.Ban]; p.ban == nil {
			return nil, fmt.Errorf("no ban policy %q", pc.Ban)
		}
	}
	return p, nil
}

// listenerID returns the id of the named listener. Requires s.mu.
func (s *Set) listenerID(name string) uint64 {
	id, ok := s.listeners[name]
	if !ok {
		id = uint64(len(s.listeners) + 1)
		s.listeners[name] = id
	}
	return id
}

// reason is why a limit refuses, as a small number while deciding.
type reason uint8

const (
	admits reason = iota
	rConns
	rQueueFull
	rRate
	rWindow
	rTableFull
)

var reasons = [...]string{"", "conns", "queue_full", "rate", "window", "table_full"}

// check is one limit's part in a decision.
type check struct {
	ls      *limitState
	cfg     *limitCfg
	r       ref   // keyed limits: the key
	idx     int32 // keyed limits: its cell
	refuse  reason
	full    bool  // conns full, with room in the queue
	borrows bool  // admitted on its borrow target's room, not its own rate
	tat     int64 // keyed limits: the rate's new tat
	delay   int64
	// What a ByGlobal limit took, to give back if another limit refuses.
	slot, rate, window bool
	// A shared limit's (shared.go): the key there, the others' open
	// connections, and whether the cluster's window is full.
	wfull  bool
	rconns int32
	sref   *sharedRef
}

// atOnce reports whether ch admits without delay or queue.
func (ch *check) atOnce() bool { return ch.refuse == admits && ch.delay == 0 && !ch.full }

const (
	maxChecks   = 8 // bounds the limits a policy applies
	stackChecks = 4 // policies of up to this many limits decide with no allocation
)

// Admit decides on c at now. Allowed clients are admitted at once,
// denied ones refused; a banned key is refused (that refusal counts for
// no tier); then every limit must admit. Limits keyed by address or
// listener are checked first, then ByGlobal ones; the first that refuses,
// in the policy's order, names the refusal, and the others keep nothing.
// An admitted connection may be delayed (the longest delay of its limits)
// or queued (when one connection limit is full and has room in its
// queue).
func (p *Policy) Admit(c Conn, now time.Time) Decision {
	addr := c.Client.Addr().Unmap()
	if p.allow.Contains(addr) {
		return Decision{}
	}
	if p.deny.Contains(addr) {
		return Decision{Verdict: Refuse, Reason: "deny"}
	}
	t := now.UnixNano()
	if p.ban != nil && addr.IsValid() && p.ban.banned(addr, t) {
		return Decision{Verdict: Refuse, Reason: "ban"}
	}
	var d Decision
	if len(p.limits) > 0 {
		d = p.decide(addr, t)
	}
	if p.ban != nil && addr.IsValid() {
		if cfg := p.ban.cfg.Load(); cfg.Count == CountConnections || d.Verdict == Refuse {
			p.ban.record(addr, t)
		}
	}
	return d
}

// decide checks every limit and commits to all or none.
func (p *Policy) decide(addr netip.Addr, t int64) Decision {
	var buf [stackChecks]check
	cs := buf[:0]
	if len(p.limits) > stackChecks {
		cs = make([]check, 0, len(p.limits))
	}
	cs = cs[:len(p.limits)]
	for i, ls := range p.limits {
		cs[i].ls, cs[i].cfg = ls, ls.cfg.Load()
	}
	for _, i := range p.keyed { // in lock order
		ch := &cs[i]
		ch.r = ch.ls.ref(addr, p.lid)
		ch.r.sh.mu.Lock()
	}
	var d Decision
	queued := p.decideLocked(cs, addr, t, &d)
	if queued >= 0 {
		p.enqueue(cs, queued, &d)
	}
	if d.Verdict != Refuse {
		for i := range cs {
			switch ch := &cs[i]; {
			case i == queued:
				ch.count(outQueued)
			case ch.delay > 0:
				ch.count(outDelayed)
			default:
				ch.count(outAdmitted)
			}
		}
	}
	for _, i := range p.keyed {
		cs[i].r.sh.mu.Unlock()
	}
	return d
}

// decideLocked decides with every keyed limit's shard locked, into d,
// and takes what the connection holds. It returns the index of the limit
// the connection is to be queued on, or -1.
func (p *Policy) decideLocked(cs []check, addr netip.Addr, t int64, d *Decision) int {
	queued := -1
	for _, i := range p.keyed {
		ch := &cs[i]
		var ok bool
		if ch.idx, ok = ch.ls.cell(&ch.r, ch.cfg.shardCap); !ok {
			ch.refuse = rTableFull
			continue
		}
		if ch.cfg.Shared != nil {
			p.shareKeyed(ch, addr, t)
		}
		ch.checkKeyed(t)
	}
	// A keyed limit refusing, but on its rate while it may borrow, refuses
	// the connection before any ByGlobal limit takes anything.
	for _, i := range p.keyed {
		if ch := &cs[i]; ch.refuse != admits && (ch.refuse != rRate || p.borrow[i] < 0) {
			*d = p.refuse(ch, ch.refuse)
			return -1
		}
	}
	for _, i := range p.keyed {
		if cs[i].full {
			if queued >= 0 {
				*d = p.refuse(&cs[i], rConns)
				return -1 // one queue at a time
			}
			queued = i
		}
	}
	for n, i := range p.global { // borrow targets first
		ch := &cs[i]
		if ch.cfg.Shared != nil {
			ch.shareGlobal(t)
		}
		ch.takeGlobal(t, queued >= 0, p.borrow[i] >= 0 && cs[p.borrow[i]].atOnce())
		if ch.refuse != admits {
			p.giveBack(cs, p.global[:n+1])
			*d = p.refuse(ch, ch.refuse)
			return -1
		}
		if ch.full {
			queued = i
		}
	}
	for _, i := range p.keyed {
		ch := &cs[i]
		if ch.refuse != rRate {
			continue
		}
		if !cs[p.borrow[i]].atOnce() {
			p.giveBack(cs, p.global)
			*d = p.refuse(ch, ch.refuse)
			return -1
		}
		ch.refuse, ch.borrows, ch.delay = admits, true, 0
	}
	// What a connection holds: its slots, and, when it waits in a queue,
	// everything it took, for a refund if it gives up.
	var h *hold
	for i := range cs {
		ch := &cs[i]
		tk := taken{ls: ch.ls, sh: ch.r.sh, idx: ch.idx, slot: ch.slot, rate: ch.rate, window: ch.window}
		if ch.r.sh != nil {
			ch.commitKeyed(&tk, t, i == queued)
		}
		if ch.sref != nil {
			ch.sref.commit(ch.cfg, tk.slot)
			tk.sref = ch.sref
		}
		if ch.delay > int64(d.Delay) {
			d.Delay, d.Limit = time.Duration(ch.delay), ch.cfg.Name
		}
		if !tk.slot && queued < 0 {
			continue
		}
		if h == nil {
			h = newHold()
		}
		if i == queued {
			h.qi = int8(h.n)
		}
		h.add(tk)
	}
	if h != nil {
		d.Hold = h.handle()
	}
	return queued
}

// refuse counts a refusal by ch for r and returns its decision.
func (p *Policy) refuse(ch *check, r reason) Decision {
	ch.count(outRefused)
	return Decision{Verdict: Refuse, Reason: reasons[r], Limit: ch.cfg.Name}
}

// checkKeyed checks ch's key's cell at t. Requires its shard's mu.
func (ch *check) checkKeyed(t int64) {
	cfg, sh := ch.cfg, ch.r.sh
	c := &sh.cells[ch.idx]
	if cfg.Conns > 0 && int(c.conns)+int(ch.rconns) >= cfg.Conns {
		switch {
		case cfg.QueueSize == 0:
			ch.refuse = rConns
		case len(sh.queues[ch.idx]) >= cfg.QueueSize:
			ch.refuse = rQueueFull
		default:
			ch.full = true
		}
	}
	if cfg.iv > 0 {
		e := max(c.tat-t+cfg.iv, 0)
		switch {
		case e > cfg.burstIV:
			if ch.refuse == admits {
				ch.refuse = rRate
			}
		case e > cfg.delayIV:
			ch.delay = e - cfg.delayIV
		}
		ch.tat = t + e
	}
	if !cfg.Window.IsZero() && ch.refuse == admits {
		if _, _, ok := window(c.wstart, c.wcount, cfg.Window.N, cfg.Window.Per, t); (!ok && ch.sref == nil) || ch.wfull {
			ch.refuse = rWindow
		}
	}
}

// commitKeyed takes ch's part from its cell, and notes it in tk. Requires
// its shard's mu.
func (ch *check) commitKeyed(tk *taken, t int64, queued bool) {
	cfg := ch.cfg
	c := &ch.r.sh.cells[ch.idx]
	if cfg.Conns > 0 && !queued {
		c.conns++
		tk.slot = true
	}
	if cfg.iv > 0 && !ch.borrows {
		c.tat = ch.tat
		tk.rate = true
	}
	if !cfg.Window.IsZero() {
		c.wstart, c.wcount, _ = window(c.wstart, c.wcount, cfg.Window.N, cfg.Window.Per, t)
		tk.window = true
	}
}

// takeGlobal checks a ByGlobal limit and takes its part at once: a slot,
// the rate's excess, the window's count. A full limit with room in its
// queue takes a place there unless queued says another limit queues the
// connection already; lent says the limit it borrows from admits at once.
func (ch *check) takeGlobal(t int64, queued, lent bool) {
	cfg, g := ch.cfg, &ch.ls.g
	if !cfg.Window.IsZero() && ch.sref != nil { // the cluster's window counts, not this one
		if ch.wfull {
			ch.refuse = rWindow
			return
		}
	} else if !cfg.Window.IsZero() {
		g.mu.Lock()
		start, count, ok := window(g.wstart, g.wcount, cfg.Window.N, cfg.Window.Per, t)
		if ok {
			g.wstart, g.wcount, ch.window = start, count, true
		}
		g.mu.Unlock()
		if !ok {
			ch.refuse = rWindow
			return
		}
	}
	if cfg.iv > 0 {
		for {
			tat := g.tat.Load()
			e := max(tat-t+cfg.iv, 0)
			if e > cfg.burstIV {
				if !lent {
					ch.refuse = rRate
					return
				}
				ch.borrows = true
				break
			}
			if g.tat.CompareAndSwap(tat, t+e) {
				ch.rate, ch.delay = true, max(e-cfg.delayIV, 0)
				break
			}
		}
	}
	if cfg.Conns > 0 {
		switch {
		case g.waiting.Load() == 0 && g.tryTake(cfg.Conns-int(ch.rconns)):
			ch.slot = true
		case cfg.QueueSize == 0 || queued:
			ch.refuse = rConns
		default:
			ch.full = below(&g.waiting, cfg.QueueSize) // a place in the queue
			if !ch.full {
				ch.refuse = rQueueFull
			}
		}
	}
}

// giveBack gives back what the ByGlobal limits of idx took.
func (p *Policy) giveBack(cs []check, idx []int) {
	for _, i := range idx {
		ch := &cs[i]
		g := &ch.ls.g
		if ch.slot {
			g.give(ch.cfg)
		}
		if ch.full {
			g.waiting.Add(-1)
		}
		if ch.rate {
			g.tat.Add(-ch.cfg.iv)
		}
		if ch.window {
			g.mu.Lock()
			g.wcount -= min(g.wcount, 1)
			g.mu.Unlock()
		}
		ch.slot, ch.full, ch.rate, ch.window = false, false, false, false
	}
}

// enqueue puts the connection in the queue of limit q, or, for a ByGlobal
// limit that has a slot free by now, gives it that slot at once.
func (p *Policy) enqueue(cs []check, q int, d *Decision) {
	ch := &cs[q]
	h := d.Hold.h
	w := &Waiter{ready: make(chan struct{}), hold: d.Hold, tk: h.taken[h.qi]}
	for i := range cs {
		w.refs[i] = cs[i].r // all limits are in h, in order, when queued
	}
	*d = Decision{Verdict: Queue, Limit: ch.cfg.Name, Delay: d.Delay, Waiter: w}
	if ch.r.sh != nil {
		if ch.r.sh.queues == nil {
			ch.r.sh.queues = map[int32][]*Waiter{}
		}
		ch.r.sh.queues[ch.idx] = append(ch.r.sh.queues[ch.idx], w)
		return
	}
	g := &ch.ls.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.tryTake(ch.cfg.Conns) { // freed since: no wait
		g.waiting.Add(-1)
		w.grant()
		return
	}
	g.queue = append(g.queue, w)
}

// Full returns nil while every ByGlobal connection limit of the policy
// without a queue has room, else a channel closed when one of its slots
// is given back: a caller then stops accepting until it is.
func (p *Policy) Full(now time.Time) <-chan struct{} {
	for _, i := range p.global {
		ls := p.limits[i]
		cfg := ls.cfg.Load()
		if cfg.Conns == 0 || cfg.QueueSize > 0 {
			continue
		}
		g := &ls.g
		if int(g.conns.Load()) < cfg.Conns {
			continue
		}
		g.mu.Lock()
		g.watched.Store(true)
		if int(g.conns.Load()) < cfg.Conns { // given back meanwhile
			g.mu.Unlock()
			continue
		}
		if g.freed == nil {
			g.freed = make(chan struct{})
		}
		ch := g.freed
		g.mu.Unlock()
		return ch
	}
	return nil
}

// masked returns addr's network of bits (IPv4) or bits6 (IPv6), as its
// first address.
func masked(addr netip.Addr, bits, bits6 int) netip.Addr {
	if !addr.IsValid() {
		return addr
	}
	if addr.Is6() {
		bits = bits6
	}
	p, err := addr.Prefix(bits)
	if err != nil {
		return addr
	}
	return p.Addr()
}

// ErrNoBan is wrapped by the errors of AddBan and LiftBan for an unknown
// ban policy.
var ErrNoBan = errors.New("admit: no such ban policy")
