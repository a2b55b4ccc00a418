package upstream

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluiceproxy/sluice/shaper"
)

// Errors a [Pool] returns. The dial errors wrap these, so callers branch
// with errors.Is.
var (
	// ErrNoServer: no server can take a connection now (all down,
	// ejected and already tried, cooling, draining). The proxy sends the
	// client to its overflow target, if it has one.
	ErrNoServer = errors.New("upstream: no server can take a connection")
	// ErrNoRetry: [Lease.Retry] found the connection's retries spent.
	ErrNoRetry = errors.New("upstream: no retry left")
	// ErrConnectTimeout: a dial took longer than Options.ConnectTimeout.
	ErrConnectTimeout = errors.New("upstream: connect timed out")
	// ErrUnknownServer: an admin operation named an address that is not
	// a server of the pool.
	ErrUnknownServer = errors.New("upstream: no such server")
	// ErrClosed: the pool was closed.
	ErrClosed = errors.New("upstream: pool closed")
)

// Request is what a pool knows of the connection it chooses a server
// for.
type Request struct {
	// Client is the client's address. [SourceHash] hashes its IP (not
	// the port); an invalid Client is balanced round robin.
	Client netip.AddrPort
}

// Target is what a listener sends its connections to: a [Pool], or a
// [Static] address (a pool of one, without health or quotas). The proxy
// calls DialFor for every connection and ends the [Lease] it gets.
type Target interface {
	Dialer
	// DialFor connects to a server for one client connection; see
	// [Pool.DialFor].
	DialFor(ctx context.Context, req Request) (*Lease, error)
}

// Interface guards.
var (
	_ Target = (*Pool)(nil)
	_ Target = (*Static)(nil)
)

// Pool is a [Target] over several servers: it balances connections among
// them, keeps their health (active checks, passive ejection), their
// quotas and cooling, retries another server before the first byte, and
// counts what it does. It is safe for concurrent use. Its zero value is
// not usable: make one with [NewPool], and [Pool.Close] it when done.
//
// A pool holds one lock. Choosing a server takes it once, for at most a
// few hundred nanoseconds, and allocates nothing; dials run outside it.
type Pool struct {
	clock   shaper.Clock
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	timeout time.Duration
	onState func(StateChange)
	hooks   *testHooks

	epoch time.Time // of the clock, at NewPool: the origin of the servers' readyAt

	mu           sync.Mutex
	cfg          PoolConfig // normalized
	servers      []*server  // cfg.Servers' order, then removed ones still draining
	equalWeights bool
	closed       bool
	picks        uint64
	retries      uint64
	noServer     uint64
	ejectedPicks uint64
	events       []StateChange // to deliver to onState, in order
	delivering   bool          // a goroutine is delivering events
	check        *checker      // nil without active checks

	leaked atomic.Uint64
}

// server is one server of a pool and its state. Every field is guarded
// by the pool's mu.
type server struct {
	addr      string
	weight    int64
	invWeight float64 // 1 / weight
	backup    bool
	quota     Quota
	seed      uint64 // of addr, for rendezvous hashing

	current      int64 // smooth weighted round robin
	active       int64
	total        uint64
	failures     uint64
	consec       int // failures since the last success
	ejections    int // ejections since the last success: the backoff's exponent
	ejectedUntil time.Time
	coolUntil    time.Time // Retry-After or Pool.Cool
	lastErr      error
	down         bool // by active checks
	drained      bool // by an operator
	removed      bool // by a reload
	checkPass    int  // checks passed in a row
	checkFail    int  // checks failed in a row
	lastCheck    time.Time
	lastCheckErr error
	winStart     time.Time // quota window; winEnd zero: none open
	winEnd       time.Time
	connsUsed    int64
	bytesUsed    int64

	// What pick reads, kept by settle: out (drained, removed or down)
	// and readyAt, the instant (ns since the pool's epoch) from which
	// ejection, cooling and quota let it take connections.
	out     bool
	readyAt int64

	// Dials in flight, for a server that stops answering them (see
	// stalled): how many, since when (ns since the pool's epoch) the
	// count last rose from zero, and when the last one ended either way.
	stallAt      int // the pool's Passive.Failures; 0: never stalled
	dialing      int
	dialingSince int64
	lastDialEnd  int64 // math.MinInt64/2 before any

	state   State // last reported
	timer   shaper.Timer
	timerAt time.Time
}

// NewPool returns a pool of cfg's servers, all [Up], and starts its
// active checks if cfg has them. It returns a *[ConfigError] for a bad
// cfg.
func NewPool(cfg PoolConfig, opts Options) (*Pool, error) {
	ncfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	p := &Pool{
		clock:   opts.Clock,
		dial:    opts.DialContext,
		timeout: opts.ConnectTimeout,
		onState: opts.OnState,
		hooks:   opts.hooks,
	}
	if p.clock == nil {
		p.clock = shaper.RealClock()
	}
	p.epoch = p.clock.Now()
	if p.dial == nil {
		var d net.Dialer
		p.dial = d.DialContext
	}
	if p.timeout <= 0 {
		p.timeout = DefaultConnectTimeout
	}
	p.mu.Lock()
	p.apply(ncfg)
	p.check = p.newChecker(ncfg.Check)
	p.mu.Unlock()
	return p, nil
}

// apply takes cfg's servers, keeping the state of those that stay.
// Requires p.mu held.
func (p *Pool) apply(cfg PoolConfig) {
	now := p.clock.Now()
	old := make(map[string]*server, len(p.servers))
	for _, s := range p.servers {
		old[s.addr] = s
	}
	servers := make([]*server, 0, len(cfg.Servers))
	for _, sc := range cfg.Servers {
		s := old[sc.Address]
		delete(old, sc.Address)
		if s == nil {
			h := fnv.New64a()
			h.Write([]byte(sc.Address))
			s = &server{addr: sc.Address, seed: mix(h.Sum64()), lastDialEnd: math.MinInt64 / 2}
		}
		s.weight = int64(sc.Weight)
		s.invWeight = 1 / float64(sc.Weight)
		s.stallAt = cfg.Passive.Failures
		s.backup = sc.Backup
		if s.quota != sc.Quota {
			s.quota = sc.Quota
			switch {
			case !sc.Quota.enabled():
				s.winEnd, s.connsUsed, s.bytesUsed = time.Time{}, 0, 0
			case !s.winEnd.IsZero():
				s.winEnd = s.winStart.Add(sc.Quota.Per)
			}
		}
		s.removed = false
		servers = append(servers, s)
		p.settle(s, now, ReasonReload, nil)
	}
	for _, s := range p.servers { // removed ones, in their old order
		if _, gone := old[s.addr]; !gone {
			continue
		}
		s.removed = true
		p.settle(s, now, ReasonRemoved, nil)
		if s.active > 0 {
			servers = append(servers, s)
		} else {
			p.stopTimer(s)
		}
	}
	p.servers = servers
	p.cfg = cfg
	p.equalWeights = true
	for _, s := range servers {
		if s.weight != servers[0].weight {
			p.equalWeights = false
		}
	}
}

// Update applies a new configuration, as on a reload: servers that stay
// (same address) keep their state (ejection, cooling, quota use, active
// connections and counters) and take their new weight, backup flag and
// quota; new ones start [Up]; removed ones are [Draining] and stay in
// [Pool.Stats] until their last connection ends. Active checks restart
// if their configuration changed. It returns a *[ConfigError] for a bad
// cfg, and changes nothing then; [ErrClosed] after Close.
func (p *Pool) Update(cfg PoolConfig) error {
	ncfg, err := cfg.normalize()
	if err != nil {
		return err
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	oldCheck := p.cfg.Check
	p.apply(ncfg)
	var stop *checker
	if ncfg.Check != oldCheck {
		stop = p.check
		p.check = p.newChecker(ncfg.Check)
	}
	p.unlock()
	stop.stop()
	return nil
}

// Close stops the pool's active checks and timers, and waits for a
// check round in progress to end. Dials after Close return [ErrClosed];
// leases taken before may still be ended. Close is idempotent.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	for _, s := range p.servers {
		p.stopTimer(s)
	}
	c := p.check
	p.check = nil
	p.mu.Unlock()
	c.stop()
	return nil
}

// Addr returns the pool's name, for logs.
func (p *Pool) Addr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg.Name
}

// Dial is [Pool.DialFor] with no client address, whose lease ends (as a
// success) as soon as the dial succeeds: picks, retries, conn quotas and
// failed dials count, but the connection is not active for [LeastConn]
// and an early failure cannot be reported. It is there so that a Pool is
// a [Dialer]; the proxy uses DialFor.
func (p *Pool) Dial(ctx context.Context) (net.Conn, error) {
	l, err := p.DialFor(ctx, Request{})
	if err != nil {
		return nil, err
	}
	c := l.Conn()
	l.Done()
	return c, nil
}

// DialFor chooses a server for a connection from req.Client and dials
// it, each dial bounded by Options.ConnectTimeout. On a failed dial
// (refused, unreachable, timed out) it counts a passive failure and tries
// another server, up to the pool's Retry, never one it tried already if
// another can take the connection.
//
// Choosing: among the primaries that are [Up] and not yet tried, by the
// pool's [Balance]; if none, among the backups; then among servers already
// tried. If no server is up at all but some are only [Ejected] (not
// down by checks, not cooling, not draining), it tries the one whose
// ejection ends first: passive ejection is a guess, and when it has taken
// out every server, one connection at a time probes for the first to
// recover rather than all going to overflow (counted in
// Stats.EjectedPicks). A success ends that server's ejection.
//
// DialFor returns a [Lease] on the connected server, which the caller
// must end ([Lease.Done], [Lease.Failed], [Lease.Busy] or [Lease.Retry])
// exactly once, whatever happens to the connection. It returns an error
// wrapping [ErrNoServer] (and the last dial error, if any) when no server
// can take the connection; the last dial error when the retries are
// spent; one wrapping ctx's error if ctx ends first (not counted as a
// server's failure); and [ErrClosed] after Close.
func (p *Pool) DialFor(ctx context.Context, req Request) (*Lease, error) {
	a := &attempt{p: p, retries: -1}
	if req.Client.IsValid() {
		a.key, a.hashed = hashAddr(req.Client.Addr()), true
	}
	return p.run(ctx, a, nil)
}

// attempt is one client connection's way through the pool: the servers
// it tried and the retries it has left.
type attempt struct {
	p       *Pool
	key     uint64 // of the client's IP
	hashed  bool   // key is set
	tried   [MaxRetry + 1]*server
	n       int
	retries int  // left; -1 until the first pick reads the pool's Retry
	stalled bool // pick takes stalled servers too: no other could take it
}

func (a *attempt) has(s *server) bool {
	for _, t := range a.tried[:a.n] {
		if t == s {
			return true
		}
	}
	return false
}

func (a *attempt) add(s *server) {
	if !a.has(s) && a.n < len(a.tried) {
		a.tried[a.n] = s
		a.n++
	}
}

// run dials servers for a until one connects or none is left. last is
// the error that made the caller retry, if any.
func (p *Pool) run(ctx context.Context, a *attempt, last error) (*Lease, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		name := p.cfg.Name
		if a.retries < 0 {
			a.retries = p.cfg.Retry
		}
		now := p.clock.Now()
		s := p.pick(a, now)
		if s == nil {
			p.noServer++
			p.unlock()
			if last != nil {
				return nil, fmt.Errorf("pool %q: %w (last: %w)", name, ErrNoServer, last)
			}
			return nil, fmt.Errorf("pool %q: %w", name, ErrNoServer)
		}
		win := p.charge(s, now)
		a.add(s)
		s.dialStarted(p.since(now))
		p.unlock()

		c, err := p.dialServer(ctx, s.addr)
		p.mu.Lock()
		s.dialEnded(p.since(p.clock.Now()))
		p.mu.Unlock()
		if err == nil {
			return newLease(a, s, win, c), nil
		}
		cancelled := ctx.Err() != nil
		p.mu.Lock()
		p.uncharge(s, win)
		if !cancelled {
			p.fail(s, p.clock.Now(), err)
		}
		p.unlock()
		if cancelled || a.retries <= 0 {
			return nil, fmt.Errorf("pool %q: %w", name, err)
		}
		last = err
		a.retries--
		p.mu.Lock()
		p.retries++
		p.mu.Unlock()
	}
}

var errConnectTimeout = errors.New("connect timeout")

// dialServer dials addr within the connect timeout, on the pool's clock.
func (p *Pool) dialServer(ctx context.Context, addr string) (net.Conn, error) {
	dctx, cancel := context.WithCancelCause(ctx)
	t := p.clock.AfterFunc(p.timeout, func() { cancel(errConnectTimeout) })
	c, err := p.dial(dctx, "tcp", addr)
	t.Stop()
	timedOut := errors.Is(context.Cause(dctx), errConnectTimeout)
	cancel(nil)
	if err != nil {
		if timedOut && ctx.Err() == nil {
			return nil, fmt.Errorf("%w after %s: %w", ErrConnectTimeout, p.timeout, err)
		}
		return nil, err
	}
	return c, nil
}

// charge gives s a connection at now and returns its quota window's
// start (zero without a quota). Requires p.mu held.
func (p *Pool) charge(s *server, now time.Time) time.Time {
	s.active++
	s.total++
	p.picks++
	if !s.quota.enabled() {
		return time.Time{}
	}
	p.window(s, now)
	if s.quota.Conns > 0 {
		s.connsUsed++
		if s.connsUsed == s.quota.Conns {
			p.settle(s, now, ReasonQuota, nil)
		}
	}
	return s.winStart
}

// window opens s's quota window if none is open at now. Requires p.mu
// held.
func (p *Pool) window(s *server, now time.Time) {
	if !s.winEnd.IsZero() && now.Before(s.winEnd) {
		return
	}
	s.winStart, s.winEnd = now, now.Add(s.quota.Per)
	s.connsUsed, s.bytesUsed = 0, 0
}

// uncharge takes back a connection charged in the window starting at
// win whose dial failed. Requires p.mu held.
func (p *Pool) uncharge(s *server, win time.Time) {
	s.active--
	if s.quota.Conns > 0 && !win.IsZero() && win.Equal(s.winStart) && s.connsUsed > 0 {
		s.connsUsed--
		if s.connsUsed == s.quota.Conns-1 { // it was spent
			p.settle(s, p.clock.Now(), ReasonQuota, nil)
		}
	}
	p.maybeDrop(s)
}

// fail counts a passive failure of s at now. Requires p.mu held.
func (p *Pool) fail(s *server, now time.Time, err error) {
	s.failures++
	s.lastErr = err
	pc := p.cfg.Passive
	if pc.Failures == 0 || now.Before(s.ejectedUntil) {
		return // no ejection, or ejected already: failures of earlier conns
	}
	s.consec++
	if s.consec < pc.Failures && s.ejections == 0 {
		return
	}
	// Failures in a row, or a failure right after an ejection (no success
	// since): eject, twice as long as last time, up to MaxEject.
	d := pc.Eject
	for range s.ejections {
		if d >= pc.MaxEject {
			break
		}
		d *= 2
	}
	d = min(d, pc.MaxEject)
	s.ejectedUntil = now.Add(d)
	s.ejections++
	s.consec = 0
	p.settle(s, now, ReasonFailures, err)
}

// succeed records that a connection to s went well. Requires p.mu held.
func (p *Pool) succeed(s *server, now time.Time) {
	s.consec = 0
	s.ejections = 0
	if now.Before(s.ejectedUntil) { // an ejected server probed (see DialFor)
		s.ejectedUntil = time.Time{}
		p.settle(s, now, ReasonSuccess, nil)
	}
}

// maybeDrop forgets s if a reload removed it and its last connection
// ended. Requires p.mu held.
func (p *Pool) maybeDrop(s *server) {
	if !s.removed || s.active > 0 {
		return
	}
	for i, x := range p.servers {
		if x == s {
			p.servers = append(p.servers[:i], p.servers[i+1:]...)
			break
		}
	}
	p.stopTimer(s)
}

// usable reports whether s may take a new connection at now. Requires
// p.mu held.
func (s *server) usable(now time.Time) bool {
	return !s.drained && !s.removed && !s.down && !now.Before(s.ejectedUntil) && !s.cooling(now)
}

// ready is usable for pick, from what settle keeps: at now, ns since the
// pool's epoch. Requires p.mu held.
func (s *server) ready(now int64) bool { return !s.out && now >= s.readyAt }

// stallGrace is how long a server's passive.failures dials may all be in
// flight, none ending, before it takes no new connection until one ends.
const stallGrace = 20 * time.Millisecond

// stalled reports whether s answers no dial lately: as many dials in
// flight as its pool's passive.failures, for longer than stallGrace, and
// none ended within it. Such a server (blackholed: dials hang until the
// connect timeout) takes no new connection while another can, until a
// dial ends, so that only about that many clients wait out the connect
// timeout before it is ejected. Requires p.mu held.
func (s *server) stalled(now int64) bool {
	grace := int64(stallGrace)
	return s.stallAt > 0 && s.dialing >= s.stallAt && now-s.dialingSince > grace && now-s.lastDialEnd > grace
}

// dialStarted and dialEnded keep the count of dials in flight to s, at
// now. Requires p.mu held.
func (s *server) dialStarted(now int64) {
	if s.dialing == 0 {
		s.dialingSince = now
	}
	s.dialing++
}

func (s *server) dialEnded(now int64) {
	s.dialing--
	s.lastDialEnd = now
	if s.dialing == 0 {
		s.dialingSince = 0
	}
}

// since returns t in ns since the pool's epoch (on the monotonic clock
// when both have it).
func (p *Pool) since(t time.Time) int64 { return int64(t.Sub(p.epoch)) }

func (s *server) cooling(now time.Time) bool {
	return now.Before(s.coolUntil) || s.quotaSpent(now)
}

func (s *server) quotaSpent(now time.Time) bool {
	if s.winEnd.IsZero() || !now.Before(s.winEnd) {
		return false
	}
	q := s.quota
	return q.Conns > 0 && s.connsUsed >= q.Conns || q.Bytes > 0 && s.bytesUsed >= q.Bytes
}

// stateAt returns s's state at now. Requires p.mu held.
func (s *server) stateAt(now time.Time) State {
	switch {
	case s.drained || s.removed:
		return Draining
	case s.down:
		return Down
	case now.Before(s.ejectedUntil):
		return Ejected
	case s.cooling(now):
		return Cooling
	}
	return Up
}

// coolEnd returns when s stops cooling, seen at now; zero if it is not
// cooling.
func (s *server) coolEnd(now time.Time) time.Time {
	var end time.Time
	if now.Before(s.coolUntil) {
		end = s.coolUntil
	}
	if s.quotaSpent(now) && s.winEnd.After(end) {
		end = s.winEnd
	}
	return end
}

// settle reports s's state change at now, if any, and arms its timer
// for its next timed change. Requires p.mu held.
func (p *Pool) settle(s *server, now time.Time, reason string, err error) {
	s.out = s.drained || s.removed || s.down
	s.readyAt = math.MinInt64
	for _, t := range [...]time.Time{s.ejectedUntil, s.coolUntil, s.coolEnd(now)} {
		if !t.IsZero() {
			s.readyAt = max(s.readyAt, p.since(t))
		}
	}
	st := s.stateAt(now)
	if st != s.state {
		if p.onState != nil {
			ch := StateChange{Pool: p.cfg.Name, Server: s.addr, From: s.state, To: st, At: now, Reason: reason}
			switch st {
			case Ejected:
				ch.Until, ch.Err = s.ejectedUntil, err
			case Cooling:
				ch.Until = s.coolEnd(now)
			case Down:
				ch.Err = err
			}
			p.events = append(p.events, ch)
		}
		s.state = st
	}
	// The next instant s's state may change by itself.
	var next time.Time
	for _, t := range [...]time.Time{s.ejectedUntil, s.coolEnd(now)} {
		if t.After(now) && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	if p.closed || s.removed && s.active == 0 {
		next = time.Time{}
	}
	switch {
	case next.IsZero():
		p.stopTimer(s)
	case next.Equal(s.timerAt):
	case s.timer == nil:
		s.timerAt = next
		s.timer = p.clock.AfterFunc(next.Sub(now), func() { p.onTimer(s) })
	default:
		s.timerAt = next
		s.timer.Reset(next.Sub(now))
	}
}

func (p *Pool) stopTimer(s *server) {
	if s.timer != nil && !s.timerAt.IsZero() {
		s.timer.Stop()
	}
	s.timerAt = time.Time{}
}

// onTimer runs when one of s's timed states may have ended.
func (p *Pool) onTimer(s *server) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	now := p.clock.Now()
	if now.Before(s.timerAt) { // re-armed meanwhile for later
		p.mu.Unlock()
		return
	}
	s.timerAt = time.Time{}
	p.settle(s, now, ReasonExpired, nil)
	p.unlock()
}

// unlock releases p.mu after delivering pending state changes, in order,
// outside the lock. One goroutine delivers at a time; one that finds
// another delivering leaves its events to it, so OnState may call the
// pool without deadlock.
func (p *Pool) unlock() {
	if len(p.events) == 0 || p.delivering {
		p.mu.Unlock()
		return
	}
	p.delivering = true
	for len(p.events) > 0 {
		evs := p.events
		p.events = nil
		p.mu.Unlock()
		for _, e := range evs {
			p.onState(e)
		}
		p.mu.Lock()
	}
	p.delivering = false
	p.mu.Unlock()
}

// find returns the server at addr that a reload has not removed.
// Requires p.mu held.
func (p *Pool) find(addr string) (*server, error) {
	for _, s := range p.servers {
		if s.addr == addr && !s.removed {
			return s, nil
		}
	}
	return nil, fmt.Errorf("pool %q: %w: %q", p.cfg.Name, ErrUnknownServer, addr)
}

// Drain stops the server at addr from taking new connections, until
// [Pool.Enable]; its connections go on. It returns an error wrapping
// [ErrUnknownServer] if the pool has no such server.
func (p *Pool) Drain(addr string) error {
	p.mu.Lock()
	s, err := p.find(addr)
	if err == nil {
		s.drained = true
		p.settle(s, p.clock.Now(), ReasonDrain, nil)
	}
	p.unlock()
	return err
}

// Enable undoes [Pool.Drain] on the server at addr and ends its passive
// ejection, if any (an operator's word beats a guess); it does not end a
// cooling (a quota or a Retry-After is the server's word) nor a Down
// from active checks. It returns an error wrapping [ErrUnknownServer] if
// the pool has no such server.
func (p *Pool) Enable(addr string) error {
	p.mu.Lock()
	s, err := p.find(addr)
	if err == nil {
		s.drained = false
		s.ejectedUntil, s.ejections, s.consec = time.Time{}, 0, 0
		p.settle(s, p.clock.Now(), ReasonEnable, nil)
	}
	p.unlock()
	return err
}

// Cool makes the server at addr [Cooling] until until (a Retry-After):
// it takes no new connection before that instant and takes them again
// from it. A server cooling already cools until the later of the two
// instants. It returns an error wrapping [ErrUnknownServer] if the pool
// has no such server.
func (p *Pool) Cool(addr string, until time.Time) error {
	p.mu.Lock()
	s, err := p.find(addr)
	if err == nil {
		p.cool(s, until)
	}
	p.unlock()
	return err
}

// cool: see Cool. Requires p.mu held.
func (p *Pool) cool(s *server, until time.Time) {
	if until.After(s.coolUntil) {
		s.coolUntil = until
	}
	p.settle(s, p.clock.Now(), ReasonRetryAfter, nil)
}

// Stats returns a snapshot of the pool and its servers.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock.Now()
	st := Stats{
		Name:         p.cfg.Name,
		Balance:      p.cfg.Balance,
		Picks:        p.picks,
		Retries:      p.retries,
		NoServer:     p.noServer,
		EjectedPicks: p.ejectedPicks,
		Leaked:       p.leaked.Load(),
		Servers:      make([]ServerStats, len(p.servers)),
	}
	for i, s := range p.servers {
		ss := ServerStats{
			Address:             s.addr,
			Weight:              int(s.weight),
			Backup:              s.backup,
			State:               s.stateAt(now),
			Active:              s.active,
			Total:               s.total,
			Failures:            s.failures,
			ConsecutiveFailures: s.consec,
			CoolingUntil:        s.coolEnd(now),
			LastCheck:           s.lastCheck,
		}
		if now.Before(s.ejectedUntil) {
			ss.EjectedUntil = s.ejectedUntil
		}
		if s.lastCheckErr != nil {
			ss.LastCheckErr = s.lastCheckErr.Error()
		}
		if s.quota.enabled() {
			ss.Quota.ConnsLimit, ss.Quota.BytesLimit = s.quota.Conns, s.quota.Bytes
			if !s.winEnd.IsZero() && now.Before(s.winEnd) {
				ss.Quota.Conns, ss.Quota.Bytes, ss.Quota.Reset = s.connsUsed, s.bytesUsed, s.winEnd
			}
		}
		st.Servers[i] = ss
	}
	return st
}

// Server returns the snapshot of the server at addr, and whether the
// pool has it (removed servers still draining included).
func (p *Pool) Server(addr string) (ServerStats, bool) {
	for _, s := range p.Stats().Servers {
		if s.Address == addr {
			return s, true
		}
	}
	return ServerStats{}, false
}

// mix is splitmix64's finalizer.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// hashAddr hashes an IP address; an IPv4-mapped IPv6 address hashes as
// its IPv4 address.
func hashAddr(a netip.Addr) uint64 {
	b := a.Unmap().As16()
	var hi, lo uint64
	for i := range 8 {
		hi = hi<<8 | uint64(b[i])
		lo = lo<<8 | uint64(b[8+i])
	}
	return mix(hi ^ mix(lo))
}
