package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync/atomic"
	"time"
)

// Lease is one client connection's hold on a server: it keeps the
// server's active connection count (for [LeastConn]) until the
// connection ends, and carries what the connection learns of the server
// back to the pool. Its Conn belongs to the caller, who closes it.
//
// A lease is ended exactly once, by [Lease.Done], [Lease.Failed],
// [Lease.Busy] returning true, or [Lease.Retry]; later calls of these
// are no-ops (Retry still dials). A lease dropped without being ended is
// ended when the garbage collector finds it, and counted in
// Stats.Leaked. Done, Failed, Busy and AddBytes are safe for concurrent
// use (both of a connection's pumps may call them); Retry belongs to the
// connection's own goroutine, one at a time.
type Lease struct {
	h    *hold // nil for a Static's lease
	a    *attempt
	conn net.Conn
	addr string
}

// hold is what a lease holds on its server; it is ended exactly once.
type hold struct {
	p    *Pool
	s    *server
	win  time.Time // the quota window the connection was charged in
	done atomic.Bool
}

func newLease(a *attempt, s *server, win time.Time, c net.Conn) *Lease {
	l := &Lease{h: &hold{p: a.p, s: s, win: win}, a: a, conn: c, addr: s.addr}
	runtime.AddCleanup(l, func(h *hold) {
		if h.end(endLeaked) {
			h.p.leaked.Add(1)
		}
	}, l.h)
	return l
}

type ending uint8

const (
	endDone ending = iota
	endFailed
	endLeaked
)

// end ends the hold once; it reports whether this call did.
func (h *hold) end(how ending) bool {
	if h == nil || !h.done.CompareAndSwap(false, true) {
		return false
	}
	p, s := h.p, h.s
	p.mu.Lock()
	now := p.clock.Now()
	s.active--
	switch how {
	case endDone:
		p.succeed(s, now)
	case endFailed:
		p.fail(s, now, errEarlyFailure)
	}
	p.maybeDrop(s)
	p.unlock()
	return true
}

var errEarlyFailure = errors.New("connection failed before its first byte")

// Conn returns the connection to the server: the dialer's own conn (a
// *net.TCPConn with the default dialer), never wrapped. The caller
// closes it.
func (l *Lease) Conn() net.Conn { return l.conn }

// DropConn forgets the connection: its holder owns it alone from then
// on, and may close it and keep its socket by other means (the proxy
// detaches the sockets of idle connections).
func (l *Lease) DropConn() { l.conn = nil }

// Addr returns the server's address.
func (l *Lease) Addr() string { return l.addr }

// Done ends the lease: the connection is over, or at least it went well
// (the server answered). A success forgets the server's passive failures
// and ends an ejection it was probed through.
func (l *Lease) Done() { l.h.end(endDone) }

// Failed ends the lease as a passive failure of the server: the
// connection failed (a reset, an end) before any byte reached the
// client. A failure after that is the connection's, not the server's:
// end it with Done.
func (l *Lease) Failed() { l.h.end(endFailed) }

// AddBytes charges n bytes moved by the connection (either direction) to
// the server's bytes quota, if it has one; once spent, the server is
// [Cooling] until its window ends, and connections open go on. It takes
// the pool's lock: call it per second or at the end rather than per
// chunk. It may be called after the lease ended.
func (l *Lease) AddBytes(n int64) {
	if l.h == nil || n <= 0 {
		return
	}
	p, s := l.h.p, l.h.s
	p.mu.Lock()
	if s.quota.Bytes > 0 {
		now := p.clock.Now()
		p.window(s, now)
		was := s.bytesUsed
		s.bytesUsed += n
		if was < s.quota.Bytes && s.bytesUsed >= s.quota.Bytes {
			p.settle(s, now, ReasonQuota, nil)
		}
	}
	p.unlock()
}

// Busy is for a pool with HTTPRetryAfter, once the proxy has the head of
// the server's first response (see [ParseResponseHead]) and before it
// sends any of it to the client. If the pool has HTTPRetryAfter and
// h.Status is 429 or 503, Busy cools the server for h's Retry-After
// (the pool's RetryAfterDefault when it has none, at most its
// RetryAfterMax), ends the lease (neither a success nor a failure) and
// returns true: the proxy may then [Lease.Retry] and replay the client's
// first bytes ([Replay]). Otherwise it changes nothing and returns false.
func (l *Lease) Busy(h Head) bool {
	if l.h == nil || !h.Busy() {
		return false
	}
	p, s := l.h.p, l.h.s
	p.mu.Lock()
	if !p.cfg.HTTPRetryAfter || !l.h.done.CompareAndSwap(false, true) {
		p.mu.Unlock()
		return false
	}
	// End the lease and cool the server at once, so that no pick
	// meanwhile sees it free.
	s.active--
	p.cool(s, h.CoolUntil(p.clock.Now(), p.cfg.RetryAfterDefault, p.cfg.RetryAfterMax))
	p.maybeDrop(s)
	p.unlock()
	return true
}

// Retry ends the lease as [Lease.Failed] (unless it was ended already, as
// by Busy) and dials another server for the same client connection, as
// [Pool.DialFor] would, never one this connection tried already if
// another can take it. The caller closes the old Conn. Retry is for
// failures before any byte reached the client. It returns an error
// wrapping [ErrNoRetry] when the connection's retries are spent, and
// DialFor's errors otherwise.
func (l *Lease) Retry(ctx context.Context) (*Lease, error) {
	l.h.end(endFailed)
	if l.h == nil {
		return nil, fmt.Errorf("upstream %q: %w", l.addr, ErrNoRetry)
	}
	a, p := l.a, l.h.p
	p.mu.Lock()
	if a.retries <= 0 {
		name := p.cfg.Name
		p.mu.Unlock()
		return nil, fmt.Errorf("pool %q: %w", name, ErrNoRetry)
	}
	a.retries--
	p.retries++
	p.mu.Unlock()
	return p.run(ctx, a, nil)
}
