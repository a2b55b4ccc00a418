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
	"sync/atomic"
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
}

// Set holds the state of named limits and ban policies: per key,
// connection counts and queues, rate excess, window counts, ban tables.
// Policies made from it decide admissions against that state. It is safe
// for concurrent use.
type Set struct {
	opts Options
	log  *slog.Logger
	seed maphash.Seed

	mu     sync.Mutex // guards the maps and ids; each state locks its own shards
	limits map[string]*limitState
	bans   map[string]*banState
	nextID int
}

// NewSet returns a Set holding r's limits and bans. It returns an error
// naming the limit or ban and the field if r is invalid.
func NewSet(r Rules, opts Options) (*Set, error) {
	s := &Set{opts: opts, log: opts.Logger, seed: maphash.MakeSeed(),
		limits: map[string]*limitState{}, bans: map[string]*banState{}}
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
// numbers from now on; lowering a connection limit closes nothing, it
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
		if st == nil {
			s.nextID++
			st = newLimitState(s.nextID, s.seed)
		}
		l := l
		st.cfg.Store(&l)
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
	allow    PrefixSet
	deny     PrefixSet
	limits   []*limitState // in the config's order
	order    []int         // indexes of limits in lock order (by id)
	ban      *banState
	borrow   []int // per limit, the index of the limit it borrows from, or -1
}

// Interface guard.
var _ Admitter = (*Policy)(nil)

// Policy returns the policy pc describes. It returns an error for a name
// that is not in the Set, or a limit listed twice, or a limit borrowing
// from one the policy does not apply.
func (s *Set) Policy(pc PolicyConfig) (*Policy, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := &Policy{set: s, listener: pc.Listener, allow: NewPrefixSet(pc.Allow), deny: NewPrefixSet(pc.Deny)}
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
		p.order = append(p.order, i)
	}
	slices.SortFunc(p.order, func(a, b int) int { return p.limits[a].id - p.limits[b].id })
	if pc.Ban != "" {
		if p.ban = s.bans[pc.Ban]; p.ban == nil {
			return nil, fmt.Errorf("no ban policy %q", pc.Ban)
		}
	}
	return p, nil
}

// check is one limit's part in a decision.
type check struct {
	ls      *limitState
	sh      *limitShard
	key     lkey
	st      *lstate
	excess  int64 // the rate excess after this connection, ns × N
	delay   time.Duration
	refuse  string
	full    bool // conns full, with room in the queue
	borrows bool // admitted on its borrow target's room, not its own rate
}

// maxChecks bounds the limits a policy decides with no allocation.
const maxChecks = 8

// Admit decides on c at now. Allowed clients are admitted at once,
// denied ones refused; a banned key is refused (that refusal counts for
// no tier); then every limit must admit: the first that refuses, in the
// policy's order, names the refusal, and the others take nothing. An
// admitted connection may be delayed (the longest delay of its limits) or
// queued (when one connection limit is full and has room in its queue).
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
	var buf [maxChecks]check
	checks := buf[:0]
	for _, ls := range p.limits {
		cfg := ls.cfg.Load()
		k := ls.key(cfg, addr, p.listener)
		checks = append(checks, check{ls: ls, key: k, sh: &ls.shards[ls.shard(k, cfg)]})
	}
	for _, i := range p.order { // lock order: by limit id
		checks[i].sh.mu.Lock()
	}
	d := p.decide(checks, t)
	for _, i := range p.order {
		checks[i].sh.mu.Unlock()
	}
	if p.ban != nil && addr.IsValid() {
		cfg := p.ban.cfg.Load()
		if cfg.Count == CountConnections || d.Verdict == Refuse {
			p.ban.record(addr, t)
		}
	}
	return d
}

// decide evaluates and commits the checks; every shard is locked.
func (p *Policy) decide(checks []check, t int64) Decision {
	queued := -1
	for i := range checks {
		ch := &checks[i]
		cfg := ch.ls.cfg.Load()
		ch.st = ch.sh.get(ch.key)
		st := ch.st
		if cfg.Conns > 0 && int(st.conns) >= cfg.Conns {
			switch {
			case cfg.QueueSize == 0:
				ch.refuse = "conns"
			case len(st.queue) >= cfg.QueueSize:
				ch.refuse = "queue_full"
			default:
				ch.full = true
			}
		}
		if !cfg.Rate.IsZero() {
			per, n := int64(cfg.Rate.Per), cfg.Rate.N
			e := int64(0)
			if st.last != 0 || st.excess != 0 {
				el := max(t-st.last, 0)
				if el > (st.excess+per)/n+1 {
					e = 0
				} else {
					e = max(st.excess-el*n+per, 0)
				}
			}
			switch {
			case e > int64(cfg.Burst)*per:
				if ch.refuse == "" {
					ch.refuse = "rate"
				}
			case e > int64(cfg.Delay)*per:
				ch.delay = time.Duration((e - int64(cfg.Delay)*per) / n)
			}
			ch.excess = e
		}
		if !cfg.Window.IsZero() && ch.refuse == "" {
			if t-st.wstart < int64(cfg.Window.Per) && st.wcount >= cfg.Window.N {
				ch.refuse = "window"
			}
		}
	}
	// Borrowing: a limit refused on its rate alone goes on while the limit
	// it borrows from admits at once.
	for i := range checks {
		ch := &checks[i]
		if ch.refuse != "rate" || p.borrow[i] < 0 {
			continue
		}
		if b := &checks[p.borrow[i]]; b.refuse == "" && b.delay == 0 && !b.full {
			ch.refuse, ch.delay, ch.borrows = "", 0, true
		}
	}
	for i := range checks {
		ch := &checks[i]
		if ch.refuse == "" && ch.full {
			if queued >= 0 {
				ch.refuse = "conns" // one queue at a time
			} else {
				queued = i
			}
		}
		if ch.refuse != "" {
			ch.ls.refused.Add(1)
			return Decision{Verdict: Refuse, Reason: ch.refuse, Limit: ch.ls.cfg.Load().Name}
		}
	}
	h := &hold{}
	h.taken = h.buf[:0]
	var d Decision
	for i := range checks {
		ch := &checks[i]
		cfg := ch.ls.cfg.Load()
		take := taken{ls: ch.ls, sh: ch.sh, key: ch.key}
		if cfg.Conns > 0 && i != queued {
			ch.st.conns++
			take.slot = true
		}
		if !cfg.Rate.IsZero() && !ch.borrows {
			ch.st.excess, ch.st.last = ch.excess, t
			take.rate = true
		}
		if !cfg.Window.IsZero() {
			if t-ch.st.wstart >= int64(cfg.Window.Per) || ch.st.wcount == 0 {
				ch.st.wstart, ch.st.wcount = t, 0
			}
			ch.st.wcount++
			take.window = true
		}
		h.taken = append(h.taken, take)
		if ch.delay > d.Delay {
			d.Delay, d.Limit = ch.delay, cfg.Name
		}
	}
	for i := range checks {
		switch {
		case i == queued:
			checks[i].ls.queued.Add(1)
		case checks[i].delay > 0:
			checks[i].ls.delayed.Add(1)
		default:
			checks[i].ls.admitted.Add(1)
		}
	}
	if len(h.taken) > 0 {
		d.Hold = h
	}
	if queued >= 0 {
		ch := &checks[queued]
		w := &Waiter{ready: make(chan struct{}), hold: h, ls: ch.ls, sh: ch.sh, key: ch.key}
		ch.st.queue = append(ch.st.queue, w)
		d = Decision{Verdict: Queue, Limit: ch.ls.cfg.Load().Name, Delay: d.Delay, Waiter: w}
	}
	return d
}

// Full returns nil while every ByGlobal connection limit of the policy
// without a queue has room, else a channel closed when one of its slots
// is given back: a caller then stops accepting until it is.
func (p *Policy) Full(now time.Time) <-chan struct{} {
	for _, ls := range p.limits {
		cfg := ls.cfg.Load()
		if cfg.By != ByGlobal || cfg.Conns == 0 || cfg.QueueSize > 0 {
			continue
		}
		sh := &ls.shards[0]
		sh.mu.Lock()
		st := sh.m[lkey{}]
		full := st != nil && int(st.conns) >= cfg.Conns
		var ch chan struct{}
		if full {
			if sh.freed == nil {
				sh.freed = make(chan struct{})
			}
			ch = sh.freed
		}
		sh.mu.Unlock()
		if full {
			return ch
		}
	}
	return nil
}

// lkey is a limit's key: a client's address or network, a listener's
// name, or the zero value for ByGlobal.
type lkey struct {
	addr netip.Addr
	name string
}

// lstate is one key's state in a limit. Guarded by its shard's mu.
type lstate struct {
	conns  int32
	queue  []*Waiter
	excess int64 // rate: connections above the rate, × Per, in ns × N
	last   int64 // rate: unix ns of the last admitted connection
	wstart int64 // window: unix ns it opened
	wcount int64 // window: connections in it
}

type limitShard struct {
	mu    sync.Mutex
	m     map[lkey]*lstate
	freed chan struct{} // closed at the next slot given back; made by Full
}

// get returns k's state, made on first use.
func (sh *limitShard) get(k lkey) *lstate {
	st := sh.m[k]
	if st == nil {
		st = &lstate{}
		sh.m[k] = st
	}
	return st
}

type limitState struct {
	id     int // lock order
	seed   maphash.Seed
	cfg    atomic.Pointer[Limit]
	shards [nShards]limitShard

	admitted, delayed, queued, refused atomic.Uint64
}

func newLimitState(id int, seed maphash.Seed) *limitState {
	ls := &limitState{id: id, seed: seed}
	for i := range ls.shards {
		ls.shards[i].m = map[lkey]*lstate{}
	}
	return ls
}

// key is the key of a connection from addr on listener.
func (ls *limitState) key(cfg *Limit, addr netip.Addr, listener string) lkey {
	switch cfg.By {
	case ByGlobal:
		return lkey{}
	case ByListener:
		return lkey{name: listener}
	case ByCIDR:
		return lkey{addr: masked(addr, cfg.Prefix, cfg.Prefix6)}
	}
	return lkey{addr: addr}
}

// shard is the shard of k: one for ByGlobal.
func (ls *limitState) shard(k lkey, cfg *Limit) int {
	if cfg.By == ByGlobal {
		return 0
	}
	return int(maphash.Comparable(ls.seed, k) % nShards)
}

// masked returns addr's network of bits (IPv4) or bits6 (IPv6), as its
// first address; 0 means 24 and 64.
func masked(addr netip.Addr, bits, bits6 int) netip.Addr {
	if !addr.IsValid() {
		return addr
	}
	if bits == 0 {
		bits = defaultPrefix
	}
	if bits6 == 0 {
		bits6 = defaultPrefix6
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

// taken is what an admission took from one limit.
type taken struct {
	ls                 *limitState
	sh                 *limitShard // the key's shard when taken
	key                lkey
	slot, rate, window bool
}

// hold is what an admitted connection holds: its connection slots.
type hold struct {
	once  sync.Once
	taken []taken // in buf, with room for a queued slot
	buf   [maxChecks + 1]taken
}

// Release gives back the connection slots, once; a waiter queued on a
// slot gets it.
func (h *hold) Release() {
	h.once.Do(func() {
		for _, tk := range h.taken {
			if tk.slot {
				tk.ls.release(tk.sh, tk.key)
			}
		}
	})
}

// refund gives back everything the admission took: slots, the rate's
// excess and the window's count (a queued connection that gave up).
func (h *hold) refund() {
	h.once.Do(func() {
		for _, tk := range h.taken {
			cfg := tk.ls.cfg.Load()
			sh := tk.sh
			if tk.slot {
				tk.ls.release(sh, tk.key)
			}
			sh.mu.Lock()
			if st := sh.m[tk.key]; st != nil {
				if tk.rate && !cfg.Rate.IsZero() {
					st.excess = max(st.excess-int64(cfg.Rate.Per), 0)
				}
				if tk.window && st.wcount > 0 {
					st.wcount--
				}
			}
			sh.mu.Unlock()
		}
	})
}

// release gives back one slot of key, or hands it to the first waiter.
func (ls *limitState) release(sh *limitShard, k lkey) {
	cfg := ls.cfg.Load()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st := sh.m[k]
	if st == nil {
		return
	}
	if len(st.queue) > 0 && (cfg.Conns == 0 || int(st.conns) <= cfg.Conns) {
		w := st.queue[0]
		st.queue = st.queue[1:]
		w.hold.taken = append(w.hold.taken, taken{ls: ls, sh: sh, key: k, slot: true})
		w.granted = true
		close(w.ready) // the slot passes on: conns unchanged
		return
	}
	st.conns--
	if sh.freed != nil {
		close(sh.freed)
		sh.freed = nil
	}
}

// Waiter is a queued connection's place in a limit's queue.
type Waiter struct {
	ready   chan struct{}
	hold    *hold
	ls      *limitState
	sh      *limitShard
	key     lkey
	granted bool // guarded by sh.mu
}

// Ready is closed once the connection has its slot.
func (w *Waiter) Ready() <-chan struct{} { return w.ready }

// Hold returns what the connection holds, its slot included: valid once
// Ready is closed.
func (w *Waiter) Hold() Hold { return w.hold }

// Cancel gives up waiting: it reports true if the connection was still
// waiting, and gives back everything its admission took; false if it was
// granted its slot meanwhile (the caller then holds Hold and goes on).
func (w *Waiter) Cancel() bool {
	sh := w.sh
	sh.mu.Lock()
	if w.granted {
		sh.mu.Unlock()
		return false
	}
	if st := sh.m[w.key]; st != nil {
		st.queue = slices.DeleteFunc(st.queue, func(x *Waiter) bool { return x == w })
	}
	sh.mu.Unlock()
	w.hold.refund()
	return true
}

// ErrNoBan is wrapped by the errors of AddBan and LiftBan for an unknown
// ban policy.
var ErrNoBan = errors.New("admit: no such ban policy")
