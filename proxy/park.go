package proxy

import (
	"errors"
	"os"
	"time"
)

// Parking idle directions.
//
// A pump that waits for its source to have bytes queued (waitReadable)
// holds a goroutine, parked in Go's network poller: a 2 KiB stack and a
// descriptor of about 400 bytes, 5 KiB of the 8.7 KiB of RSS an idle
// connection cost with two of them (docs/internals.md). So a direction
// that has waited long enough is *parked*: its goroutine ends, its source
// socket is watched by a [watcher] (one per Server: an epoll set of its
// own, itself waited on in Go's poller by one goroutine), and when the
// socket becomes readable, has ended or failed, the watcher starts the
// pump's goroutine again, which peeks as always. An idle connection then
// holds no goroutine, no stack and no buffer.
//
// Bytes that flow do not pay for this: a pump goes on waiting in Go's
// poller as before, with one more atomic store and swap a wait, and only
// the idle reaper's sweep takes it out (evict), once the conn has moved
// no byte either way for Server.parkAfter, and only while the server has
// at least Server.parkMinConns connections (below that, parking saves
// little and the sweep would wake the process for nothing). The sweep
// puts the source's read deadline in the past, under c.mu, as abort
// does; the pump clears it again under c.mu unless the conn was aborted
// meanwhile, and parks. Only a wait for the source is ever parked: a pump
// blocked writing to a slow peer, waiting for tokens, holding bytes read
// ahead, or in a shaping loop keeps its goroutine.
//
// A parked direction is woken by its watcher's event, or by abort (which
// also puts the deadlines in the past, so the started goroutine's wait
// fails at once, as a parked one's would have): whichever changes its
// state from parkParked first starts the goroutine. The goroutine that
// parked a direction touches nothing of its pump once the watcher holds
// it: it returns errParked up to pump, which returns.

// Pump park states (pump.park).
const (
	parkNone     int32 = iota // running, or blocked in something else than a wait for src
	parkWaiting               // waiting in Go's poller for src: evictable
	parkEvict                 // the sweep put src's read deadline in the past
	parkParked                // no goroutine; src is in the watcher's set
	parkDetached              // parked, and the conn's sockets are detached from Go (detach)
)

// Defaults of Server.parkAfter and Server.parkMinConns. 100 ms keeps a
// burst of new connections from holding many goroutines at once (the
// stacks of goroutines that end are heap memory the process keeps), and
// costs a connection that pauses longer one parking and one wake-up
// (about 10 µs of CPU) per pause.
const (
	defaultParkAfter    = 100 * time.Millisecond
	defaultParkMinConns = 64
)

// Detaching idle connections' sockets.
//
// A parked connection still holds what Go's net package keeps per
// socket: a poller descriptor outside the heap (about 540 bytes with its
// two deadline timers and finalizer), the netFD, its two addresses and
// their sockaddrs, the TCPConn and RawConns (about 360 bytes of heap,
// twice that in RSS with the GC's headroom): about 1.8 KB of the 3.3 KB
// RSS of a parked connection, measured with a plain Go program holding
// TCP pairs (docs/internals.md). So once both directions of a connection
// have been parked for detachAfter, the sweep *detaches* its sockets: it
// duplicates each descriptor, moves the watcher's armed watch to the
// duplicate, and closes Go's socket (the kernel's socket lives on in the
// duplicate). The conn then holds two descriptors and nothing of Go's.
// The first pump started again (an event, or an abort) attaches them
// back first (net.FileConn) under c.mu, so every other path finds Go
// sockets as before; the few that may run while a conn is detached (the
// listing, an abort, a rate change, the reaper) check c.detached under
// c.mu.
//
// 1 s keeps connections that pause briefly (a keystroke, a request every
// few hundred milliseconds) from paying a detach and an attach (about 20
// system calls) per pause; a connection idle for a second is usually
// idle for much longer (a pooled keep-alive, a push channel).
const defaultDetachAfter = time.Second

// detachable reports whether both directions of c are parked with their
// sockets attached: what the sweep detaches.
func (c *conn) detachable() bool {
	return c.pumps[Up].park.Load() == parkParked && c.pumps[Down].park.Load() == parkParked
}

// unpark takes p out of a parked state (attached or not) and reports
// whether it did; its caller then starts p's goroutine.
func (p *pump) unpark() bool {
	return p.park.CompareAndSwap(parkParked, parkNone) || p.park.CompareAndSwap(parkDetached, parkNone)
}

// errParked is what a pump's wait returns once the watcher holds the
// direction: the goroutine must return without touching the pump.
var errParked = errors.New("proxy: direction parked")

// parkable reports whether the pump's wait for src may be parked: the
// server has a watcher and the pump holds no bytes read ahead.
func (p *pump) parkable() bool {
	return p.c.srv.watch != nil && p.held == nil && p.ahead == nil
}

// evicted is called by a pump whose wait for src the sweep ended (state
// parkEvict seen), with the error the wait returned. Unless the conn was
// aborted, it clears src's read deadline and, if the wait ended by that
// deadline, parks the direction. It reports whether the direction is
// parked (the caller returns errParked and touches p no more) and
// whether the wait should be made again (the deadline ended it, and
// parking failed).
func (p *pump) evicted(err error) (parked, again bool) {
	c := p.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cause != nil {
		return false, false // aborted: the wait's error ends the pump
	}
	_ = p.src.SetReadDeadline(time.Time{})
	if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false, false // bytes, an end or an error came first
	}
	// Requires c.mu held: an abort cannot come between the check above
	// and the direction's listing, so it finds the direction parked. The
	// moving state goes back first: the watcher may start the pump's
	// goroutine again before park returns.
	p.dropMoving()
	if c.srv.watch.park(p) {
		return true, false
	}
	p.takeMoving()
	return false, true
}

// evict asks the pumps of c that wait for their source in Go's poller to
// park (see above). Called by the idle reaper's sweep.
func (c *conn) evict() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cause != nil {
		return
	}
	for i := range c.pumps {
		p := &c.pumps[i]
		if p.park.CompareAndSwap(parkWaiting, parkEvict) {
			_ = p.src.SetReadDeadline(aLongTimeAgo)
		}
	}
}

// evictable reports whether a pump of c waits for its source in Go's
// poller.
func (c *conn) evictable() bool {
	return c.pumps[Up].park.Load() == parkWaiting || c.pumps[Down].park.Load() == parkWaiting
}

// wakeParked starts the goroutine of each parked pump of c. Requires c.mu
// held and the conn aborted: the goroutines' waits fail at once.
func (c *conn) wakeParked() {
	w := c.srv.watch
	if w == nil {
		return
	}
	for i := range c.pumps {
		if st := c.pumps[i].park.Load(); st == parkParked || st == parkDetached {
			w.wake(&c.pumps[i])
		}
	}
}

// parkKey names a pump in its watcher: unique for the Server's life.
func (p *pump) parkKey() uint64 { return p.c.id<<1 | uint64(p.dir) }

// ParkedDirections returns how many directions of live connections are
// parked: no goroutine waits for their source, a shared watcher does.
func (s *Server) ParkedDirections() int {
	if s.watch == nil {
		return 0
	}
	return s.watch.count()
}

// DetachedConns returns how many live connections have their sockets
// detached from Go: both directions parked for detachAfter.
func (s *Server) DetachedConns() int {
	if s.watch == nil {
		return 0
	}
	return s.watch.detachedCount()
}
