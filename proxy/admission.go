package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluiceproxy/sluice/proxy/admit"
	"github.com/sluiceproxy/sluice/proxy/upstream"
	"github.com/sluiceproxy/sluice/shaper"
)

// Admission is a listener's admission policy (see [admit.Policy]) and
// what a connection it refuses gets. The zero value admits every
// connection.
type Admission struct {
	// Allow are clients never limited or banned; Deny are clients refused
	// at once.
	Allow, Deny []netip.Prefix
	// Limits names the limits (of Options.Limits) a connection must pass,
	// all of them.
	Limits []string
	// Ban names the ban policy (of Options.Bans) applied; empty for none.
	Ban string
	// Refuse is what a refused connection gets.
	Refuse Refuse
	// TarpitHold is how long RefuseTarpit holds a connection; zero or
	// negative means DefaultTarpitHold.
	TarpitHold time.Duration
	// TarpitMax bounds the connections a listener holds in its tarpit
	// (and the overflow responses it writes) at once; zero or negative
	// means DefaultTarpitMax. Past it, refused connections are closed.
	TarpitMax int
	// Overflow is where RefuseOverflow sends connections: an upstream
	// ("host:port"), or bytes written verbatim before the connection is
	// closed (Respond). Exactly one is set with RefuseOverflow.
	Overflow Overflow
}

// Overflow is a listener's target for refused connections.
type Overflow struct {
	// Upstream is a "host:port" refused connections are forwarded to,
	// with the listener's per-connection limits and links.
	Upstream string
	// Respond is written to the client, which is then closed.
	Respond []byte
}

// Refuse is what a refused connection gets.
type Refuse uint8

const (
	// RefuseClose closes it at once, reading and sending nothing.
	RefuseClose Refuse = iota
	// RefuseReset resets it (an RST).
	RefuseReset
	// RefuseTarpit holds it open, reading nothing, for TarpitHold, then
	// closes it: a client that waits on it spends its own time.
	RefuseTarpit
	// RefuseOverflow hands it to the listener's Overflow target.
	RefuseOverflow
)

var refuseNames = [...]string{RefuseClose: "close", RefuseReset: "reset", RefuseTarpit: "tarpit", RefuseOverflow: "overflow"}

// String returns the config form: "close", "reset", "tarpit", "overflow".
func (r Refuse) String() string {
	if int(r) < len(refuseNames) {
		return refuseNames[r]
	}
	return fmt.Sprintf("Refuse(%d)", r)
}

// ParseRefuse reads the config form of a Refuse; "" is RefuseClose.
func ParseRefuse(s string) (Refuse, error) {
	if s == "" {
		return RefuseClose, nil
	}
	for r, name := range refuseNames {
		if s == name {
			return Refuse(r), nil
		}
	}
	return 0, fmt.Errorf("refuse %q: want close, reset, tarpit or overflow", s)
}

// Defaults of Admission.
const (
	DefaultTarpitHold = 30 * time.Second
	DefaultTarpitMax  = 1000
	// overflowWriteTimeout bounds writing an overflow response.
	overflowWriteTimeout = 10 * time.Second
)

// errRefused ends a connection that waited in a limit's queue and got no
// slot in time.
var errRefused = errors.New("proxy: refused by admission")

func (a Admission) validate(limits, bans map[string]bool) error {
	for _, name := range a.Limits {
		if !limits[name] {
			return fmt.Errorf("no limit %q", name)
		}
	}
	if a.Ban != "" && !bans[a.Ban] {
		return fmt.Errorf("no ban policy %q", a.Ban)
	}
	switch {
	case a.Refuse > RefuseOverflow:
		return fmt.Errorf("unknown refuse action %d", a.Refuse)
	case a.Refuse == RefuseOverflow && (a.Overflow.Upstream == "") == (len(a.Overflow.Respond) == 0):
		return errors.New("refuse overflow needs exactly one of overflow upstream and overflow respond")
	case a.Overflow.Upstream != "":
		if _, _, err := net.SplitHostPort(a.Overflow.Upstream); err != nil {
			return fmt.Errorf("overflow upstream %q: want host:port", a.Overflow.Upstream)
		}
	}
	return nil
}

// enabled reports whether the admission step has anything to decide.
func (a *Admission) enabled() bool {
	return len(a.Allow) > 0 || len(a.Deny) > 0 || len(a.Limits) > 0 || a.Ban != ""
}

// rules returns the Options' limits and bans as admit.Rules.
func rules(opts *Options) admit.Rules {
	return admit.Rules{Limits: opts.Limits, Bans: opts.Bans}
}

// checkAdmission validates the rules and every listener's admission.
func checkAdmission(r admit.Rules, ls []ListenerConfig) error {
	if err := r.Validate(); err != nil {
		return err
	}
	limits, bans := map[string]bool{}, map[string]bool{}
	for _, l := range r.Limits {
		limits[l.Name] = true
	}
	for _, b := range r.Bans {
		bans[b.Name] = true
	}
	for _, l := range ls {
		if err := l.Admission.validate(limits, bans); err != nil {
			return fmt.Errorf("listener %q: %w", l.Name, err)
		}
	}
	return nil
}

// admitter makes the admission step of a listener's config: its policy in
// the Server's admission set, or one that admits all.
func (s *Server) admitter(cfg *ListenerConfig) (admit.Admitter, *admit.Policy, error) {
	a := &cfg.Admission
	if !a.enabled() {
		return admit.All, nil, nil
	}
	p, err := s.admission.Policy(admit.PolicyConfig{Listener: cfg.Name, Allow: a.Allow, Deny: a.Deny, Limits: a.Limits, Ban: a.Ban})
	if err != nil {
		return nil, nil, fmt.Errorf("listener %q: %w", cfg.Name, err)
	}
	return p, p, nil
}

// overflowDialer makes the dialer of a listener's overflow upstream; nil
// when it has none.
func (s *Server) overflowDialer(cfg *ListenerConfig) upstream.Target {
	if cfg.Admission.Overflow.Upstream == "" {
		return nil
	}
	d, err := upstream.NewStatic(cfg.Admission.Overflow.Upstream, upstream.Options{ConnectTimeout: cfg.ConnectTimeout, DialContext: s.dial})
	if err != nil {
		panic(err) // validated
	}
	return d
}

// waitRoom blocks, before an accept, while a global connection limit of
// the listener's policy is full: connections then wait in the kernel's
// backlog rather than being accepted and closed (HAProxy's maxconn). It
// returns false when the listener or the server stops meanwhile. A
// reload that changes the policy is seen within a second.
func (s *Server) waitRoom(l *listener) bool {
	for {
		rt := l.route.Load()
		if rt.policy == nil {
			return true
		}
		full := rt.policy.Full(s.clock.Now())
		if full == nil {
			return true
		}
		rt.stats.acceptPaused.Add(1)
		t, recheck := s.clock.NewTimer(time.Second)
		select {
		case <-full:
		case <-recheck:
		case <-l.stop:
			t.Stop()
			return false
		case <-s.ctx.Done():
			t.Stop()
			return false
		}
		t.Stop()
	}
}

// admit runs the admission step on an accepted connection. It returns the
// decision when the connection is to be served (admitted, delayed or
// queued), and handles it and returns false when it is refused.
func (s *Server) admit(l *listener, rt *route, c *net.TCPConn) (admit.Decision, bool) {
	d := rt.admit.Admit(admit.Conn{Listener: rt.cfg.Name, Client: clientAddr(c)}, s.clock.Now())
	if rt.policy != nil { // listeners that admit all count nothing here
		rt.stats.admission(d)
	}
	if d.Verdict != admit.Refuse {
		return d, true
	}
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.Debug("conn refused", slog.String(keyListener, rt.cfg.Name), slog.String(keyClient, addrString(c.RemoteAddr())),
			slog.String(keyReason, d.Reason), slog.String(keyLimit, d.Limit), slog.String("refuse", rt.cfg.Admission.Refuse.String()))
	}
	s.refuse(l, rt, c)
	return d, false
}

// refuse gives a refused connection what its listener's Refuse says.
func (s *Server) refuse(l *listener, rt *route, c *net.TCPConn) {
	a := &rt.cfg.Admission
	switch a.Refuse {
	case RefuseReset:
		_ = c.SetLinger(0)
		c.Close()
	case RefuseTarpit:
		if !s.tarpits.hold(l, c, rt.tarpitMax(), rt.tarpitHold(), s.clock) {
			c.Close() // the tarpit is full
		}
	case RefuseOverflow:
		if a.Overflow.Upstream != "" {
			ort := *rt
			ort.target, ort.pool, ort.admit, ort.policy = rt.overflow, nil, admit.All, nil
			cn := s.newConn(l, &ort, c, admit.Decision{})
			if cn == nil {
				c.Close()
				return
			}
			rt.stats.overflowed.Add(1)
			go cn.serve()
			return
		}
		if !s.tarpits.respond(l, c, a.Overflow.Respond, rt.tarpitMax(), s.clock) {
			c.Close()
			return
		}
		rt.stats.overflowed.Add(1)
	default:
		c.Close()
	}
}

// awaitAdmission holds a delayed connection for its delay, or a queued one
// until its limit gives it a slot, before its upstream is dialed. It
// returns errRefused when the queue's timeout passes, and the abort cause
// if the connection is aborted meanwhile.
func (c *conn) awaitAdmission() error {
	aw := c.wait
	if aw == nil {
		return nil
	}
	c.wait = nil
	if w := aw.waiter; w != nil {
		t, expire := c.srv.clock.NewTimer(aw.queueWait)
		select {
		case <-w.Ready():
			t.Stop()
		case <-expire:
			if w.Cancel() {
				c.stats.queueTimeouts.Add(1)
				return errRefused
			}
		case <-c.Done():
			t.Stop()
			if w.Cancel() {
				return c.abortCause()
			}
		}
		c.hold = w.Hold()
	}
	if aw.delay > 0 {
		t, wake := c.srv.clock.NewTimer(aw.delay)
		select {
		case <-wake:
		case <-c.Done():
			t.Stop()
			return c.abortCause()
		}
	}
	return nil
}

// queueTimeoutLocked is how long a connection waits in the named limit's
// queue. Requires s.mu held.
func (s *Server) queueTimeoutLocked(limit string) time.Duration {
	for _, l := range s.rules.Limits {
		if l.Name == limit && l.QueueTimeout > 0 {
			return l.QueueTimeout
		}
	}
	return time.Second
}

// tarpits holds connections refused with RefuseTarpit, and those being
// written an overflow response, so that a shutdown closes them.
type tarpits struct {
	mu    sync.Mutex
	conns map[*net.TCPConn]shaper.Timer
	wg    sync.WaitGroup
}

// hold keeps c open, reading nothing, for hold, unless l holds max
// already; it reports whether it took c.
func (tp *tarpits) hold(l *listener, c *net.TCPConn, max int, hold time.Duration, clock shaper.Clock) bool {
	if l.tarpitted.Add(1) > int64(max) {
		l.tarpitted.Add(-1)
		return false
	}
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if tp.conns == nil {
		tp.conns = map[*net.TCPConn]shaper.Timer{}
	}
	tp.conns[c] = clock.AfterFunc(hold, func() { tp.release(l, c) })
	return true
}

// release closes a held connection, once.
func (tp *tarpits) release(l *listener, c *net.TCPConn) {
	tp.mu.Lock()
	t, ok := tp.conns[c]
	delete(tp.conns, c)
	tp.mu.Unlock()
	if !ok {
		return
	}
	t.Stop()
	c.Close()
	l.tarpitted.Add(-1)
}

// respond writes b to c and closes it, in the background, unless l holds
// max tarpitted or responding connections already; it reports whether it
// took c.
func (tp *tarpits) respond(l *listener, c *net.TCPConn, b []byte, max int, clock shaper.Clock) bool {
	if l.tarpitted.Add(1) > int64(max) {
		l.tarpitted.Add(-1)
		return false
	}
	tp.wg.Add(1)
	go func() {
		defer tp.wg.Done()
		defer l.tarpitted.Add(-1)
		_ = c.SetWriteDeadline(clock.Now().Add(overflowWriteTimeout))
		if _, err := c.Write(b); err == nil {
			_ = c.CloseWrite()
		}
		c.Close()
	}()
	return true
}

// closeAll closes every held connection and waits for the responses being
// written.
func (tp *tarpits) closeAll() {
	tp.mu.Lock()
	held := tp.conns
	tp.conns = nil
	tp.mu.Unlock()
	for c, t := range held {
		t.Stop()
		c.Close()
	}
	tp.wg.Wait()
}

func (rt *route) tarpitMax() int {
	if m := rt.cfg.Admission.TarpitMax; m > 0 {
		return m
	}
	return DefaultTarpitMax
}

func (rt *route) tarpitHold() time.Duration {
	if h := rt.cfg.Admission.TarpitHold; h > 0 {
		return h
	}
	return DefaultTarpitHold
}

// admissionCounts are a listener's admission counters by limit and
// verdict.
type admissionCounts struct {
	mu sync.Mutex
	m  map[admissionKey]*atomic.Uint64
}

type admissionKey struct{ limit, verdict string }

// add counts one decision.
func (ac *admissionCounts) add(limit, verdict string) {
	k := admissionKey{limit, verdict}
	ac.mu.Lock()
	n := ac.m[k]
	if n == nil {
		if ac.m == nil {
			ac.m = map[admissionKey]*atomic.Uint64{}
		}
		n = new(atomic.Uint64)
		ac.m[k] = n
	}
	ac.mu.Unlock()
	n.Add(1)
}

// admission counts d for the listener.
func (st *listenerStats) admission(d admit.Decision) {
	verdict := "admit"
	switch {
	case d.Verdict == admit.Refuse:
		verdict = "refuse"
		st.refusedBy.add(d.Reason, "-")
	case d.Verdict == admit.Queue:
		verdict = "queue"
	case d.Delay > 0:
		verdict = "delay"
	}
	st.admissions.add(d.Limit, verdict)
}

// AdmissionStats are a listener's admission counters.
type AdmissionStats struct {
	// Decisions counts decisions by limit ("" when no one limit decided:
	// admitted by all, allowed, denied, banned) and verdict ("admit",
	// "delay", "queue", "refuse").
	Decisions map[[2]string]uint64
	// Refused counts refusals by reason ("deny", "ban", "conns", "rate",
	// "window", "queue_full"); QueueTimeouts those refused after waiting
	// in a queue.
	Refused       map[string]uint64
	QueueTimeouts uint64
	// Tarpitted is the number of connections held in the tarpit or being
	// written an overflow response now; Overflowed counts those handed to
	// the overflow target.
	Tarpitted  int64
	Overflowed uint64
	// AcceptPaused counts the times the accept loop stopped because a
	// global connection limit was full.
	AcceptPaused uint64
}

func (ac *admissionCounts) snapshot() map[[2]string]uint64 {
	ac.mu.Lock()
	defer ac.mu.Unlock()
	out := make(map[[2]string]uint64, len(ac.m))
	for k, n := range ac.m {
		out[[2]string{k.limit, k.verdict}] = n.Load()
	}
	return out
}

// Bans returns the active bans of every ban policy.
func (s *Server) Bans() []admit.BanInfo { return s.admission.Bans() }

// AddBan bans key under the named ban policy for d, as of now.
func (s *Server) AddBan(ban string, key netip.Prefix, d time.Duration) error {
	return s.admission.AddBan(ban, key, d, s.clock.Now())
}

// LiftBan lifts the ban of key under the named policy; it reports whether
// there was one.
func (s *Server) LiftBan(ban string, key netip.Prefix) (bool, error) {
	return s.admission.LiftBan(ban, key, s.clock.Now())
}

// Client returns the admission state of addr's keys in every limit and
// ban, as the named listener's policy sees it.
func (s *Server) Client(addr netip.Addr, listener string) []admit.KeyState {
	return s.admission.Key(addr.Unmap(), listener, s.clock.Now())
}

// AdmissionSet returns the counters of the limits and bans.
func (s *Server) AdmissionSet() ([]admit.LimitStats, []admit.BanStats) {
	return s.admission.Stats()
}

// startSweeper starts sweepAdmission once there are limits or bans to
// sweep; it stops with the idle reaper. Requires s.mu held.
func (s *Server) startSweeper() {
	if s.sweeping || s.reaperDone == nil || len(s.rules.Limits)+len(s.rules.Bans) == 0 {
		return
	}
	s.sweeping = true
	go s.sweepAdmission(s.reaperDone)
}

// sweepAdmission lifts expired bans and forgets idle keys once a second,
// on the Server's clock, until stop is closed.
func (s *Server) sweepAdmission(stop <-chan struct{}) {
	t, tick := s.clock.NewTimer(time.Second)
	defer t.Stop()
	for {
		select {
		case <-tick:
		case <-stop:
			return
		}
		s.admission.Sweep(s.clock.Now())
		t.Reset(time.Second)
	}
}
