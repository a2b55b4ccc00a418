// Package proxy runs sluice's TCP listeners: it accepts connections, asks
// each listener's admission step ([admit]) whether to serve them, dials
// their upstream ([upstream]), and moves bytes both ways with one pump per
// direction, through the kernel's splice path when both ends are TCP
// sockets, shaped by [shaper] gates, links and loops and paced by
// [mp4probe] plans. A connection's life, in order, is in conn.go.
//
// It takes plain structs, never config (it must not import config), and
// serves no HTTP: the admin API and the Prometheus collector live in
// proxy/admin, over the Server's exported methods. Every timed decision
// runs on [Options.Clock].
//
// Typical usage:
//
//	srv, err := proxy.New(proxy.Options{
//		Listeners: []proxy.ListenerConfig{{
//			Name: "web", Addr: "127.0.0.1:8080", Upstream: "127.0.0.1:80",
//			ConnectTimeout: 5 * time.Second, IdleTimeout: 5 * time.Minute,
//		}},
//		Logger: logger,
//	})
//	if err != nil { ... }
//	if err := srv.Start(ctx); err != nil { ... } // binds every listener or none
//	...
//	err = srv.Shutdown(drainCtx) // stop accepting, let connections finish
package proxy

import (
	"context"
	"errors"
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

// DefaultConnectTimeout is the dial bound used when ListenerConfig has none.
const DefaultConnectTimeout = 5 * time.Second

// Options configure a [Server]. The zero value of each field has the meaning
// documented on it.
type Options struct {
	// Listeners are opened by Start, all or none.
	Listeners []ListenerConfig
	// Links are the shared budgets listeners name.
	Links []LinkConfig
	// Logger receives one Info line per connection at close, and warnings.
	// Nil means no logging.
	Logger *slog.Logger
	// DialContext dials upstreams. Nil means a net.Dialer. A dialer that
	// returns something other than *net.TCPConn still works, but bytes are
	// then copied through user space instead of spliced.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Clock is the time source of every timed decision: idle timeouts,
	// the drain of removed listeners, accept back-off, the connections'
	// gates, links, the shaping loops and MP4 pacing. Nil means the real
	// clock. Upstream dials are bounded on the real clock, as the dialer
	// works.
	Clock shaper.Clock
	// Limits and Bans are the admission limits and ban policies
	// listeners name in their Admission.
	Limits []admit.Limit
	Bans   []admit.Ban
	// Upstreams are the pools a listener's Upstream may name instead of a
	// "host:port".
	Upstreams []upstream.PoolConfig
	// OnBan and OnLift, if set, hear of the bans started and lifted here
	// (see [admit.Options]); a cluster shares them from there. They must
	// not block. Fixed at New: Reload keeps the first.
	OnBan  func(ban string, key netip.Prefix, until time.Time)
	OnLift func(ban string, key netip.Prefix)
	// ShapingLoops is how many shaping loops serve the small grants of
	// shaped directions (see [shaper.Loop]). Zero means one per P
	// (GOMAXPROCS at New); negative means none: each shaped direction
	// waits on its own gate and each link runs its own timer.
	ShapingLoops int
}

// Server accepts and proxies connections for a set of listeners. Its
// methods are safe for concurrent use. A Server is started once; after
// Shutdown or Close it cannot be restarted.
type Server struct {
	opts  Options
	log   *slog.Logger
	dial  func(ctx context.Context, network, addr string) (net.Conn, error)
	clock shaper.Clock
	epoch time.Time // conn.lastActive counts from it

	loops     []*shaper.Loop // the shaping loops; none when ShapingLoops < 0
	admission *admit.Set     // the state of every limit and ban
	rules     admit.Rules    // what admission was last set to; guarded by mu
	sweeping  bool           // sweepAdmission runs; guarded by mu
	tarpits   tarpits        // refused connections held open
	pools     pools          // upstream pools by name
	linksMade atomic.Uint64  // spreads links over the loops

	// ctx bounds upstream dials; it is cancelled, with errShutdown as the
	// cause, when the server closes its connections.
	ctx    context.Context
	cancel context.CancelCauseFunc

	nextID atomic.Uint64
	// pacedConns counts live conns whose client socket the kernel paces
	// (conn.paced): the first few take long grants where the path spreads
	// them (applyLimits).
	pacedConns atomic.Int64

	reaperDone chan struct{} // closed to stop the idle reaper; nil if none runs; guarded by mu
	reapEvery  atomic.Int64  // the reaper's period in ns; Reconfigure updates it
	sweepNow   chan struct{} // wakes the reaper when enough conns are open to park idle ones

	// watch watches the sockets of parked directions (park.go); nil when
	// directions are never parked. Set by Start, closed by stopReaper
	// once the conns are gone.
	watch *watcher
	// parkAfter is how long a conn moves no byte before its directions
	// that wait for their source are parked, while at least parkMinConns
	// conns are open; tests lower them before Start.
	parkAfter    time.Duration
	parkMinConns int
	// detachAfter is how long a conn whose two directions are parked
	// moves no byte before its sockets are detached from Go (park.go).
	detachAfter time.Duration
	reconfMu    sync.Mutex     // serializes Reconfigure
	draining    sync.WaitGroup // drain timers of removed listeners, pending or running

	mu          sync.Mutex
	listeners   []*listener
	conns       map[*conn]struct{}
	stats       map[string]*listenerStats // by listener name; kept across reconfigures
	links       map[string]*link          // by name
	drainTimers []shaper.Timer            // of removed listeners
	connsDone   chan struct{}             // closed when conns drops to zero after closing
	closing     bool
	acceptWG    sync.WaitGroup
}

// Errors that end connections on purpose; they are the context cause seen by
// the pumps and name the result in the connection's log line.
var (
	errShutdown    = errors.New("proxy: server shutting down")
	errIdleTimeout = errors.New("proxy: idle timeout")
	errClosed      = errors.New("proxy: closed by the admin API")
)

// ErrServerClosed is returned by Start after Shutdown or Close.
var ErrServerClosed = errors.New("proxy: server closed")

// New checks opts and returns a Server that has not opened anything yet.
// It returns an error when a listener has no address or no upstream, or two
// listeners share a name.
func New(opts Options) (*Server, error) {
	var err error
	if opts.Listeners, err = normalize(opts.Listeners); err != nil {
		return nil, err
	}
	if err := checkLinks(opts.Links, opts.Listeners); err != nil {
		return nil, err
	}
	if err := checkAdmission(rules(&opts), opts.Listeners); err != nil {
		return nil, err
	}
	if err := checkUpstreams(opts.Upstreams, opts.Listeners); err != nil {
		return nil, err
	}
	s := &Server{opts: opts, log: opts.Logger, dial: opts.DialContext, clock: opts.Clock,
		conns: map[*conn]struct{}{}, stats: map[string]*listenerStats{},
		sweepNow: make(chan struct{}, 1), parkAfter: defaultParkAfter, detachAfter: defaultDetachAfter, parkMinConns: defaultParkMinConns}
	if s.clock == nil {
		s.clock = shaper.RealClock()
	}
	s.epoch = s.clock.Now()
	s.loops = newLoops(opts.ShapingLoops, s.clock)
	s.setLinks(opts.Links)
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.dial == nil {
		d := &net.Dialer{}
		s.dial = d.DialContext
	}
	s.rules = rules(&opts)
	if s.admission, err = admit.NewSet(s.rules, admit.Options{Logger: s.log, OnBan: opts.OnBan, OnLift: opts.OnLift}); err != nil {
		return nil, err
	}
	s.ctx, s.cancel = context.WithCancelCause(context.Background())
	s.setPools(opts.Upstreams, opts.Listeners)
	return s, nil
}

// Start binds every listener, then serves them in the background. If any
// bind fails, the ones already bound are closed and the error names the
// listener. ctx bounds binding only.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return ErrServerClosed
	}
	if len(s.listeners) > 0 {
		return errors.New("proxy: server already started")
	}
	for _, cfg := range s.opts.Listeners {
		ln, err := bind(ctx, cfg)
		if err != nil {
			for _, l := range s.listeners {
				l.close()
			}
			s.listeners = nil
			return err
		}
		s.listeners = append(s.listeners, s.newListener(cfg, ln))
	}
	for _, l := range s.listeners {
		s.acceptWG.Add(1)
		go s.accept(l)
	}
	s.reapEvery.Store(int64(reapPeriod(s.opts.Listeners)))
	if s.parkAfter > 0 {
		// Without a watcher (not Linux, or no epoll set to be had) every
		// direction keeps its goroutine, as it always may.
		if w, err := newWatcher(); err == nil && w != nil {
			s.watch = w
		} else if err != nil {
			s.log.Warn("park watcher", slog.Any(keyErr, err))
		}
	}
	s.reaperDone = make(chan struct{})
	go s.reapIdle(s.reaperDone)
	s.startSweeper()
	return nil
}

// ActiveConns returns the number of connections being served.
func (s *Server) ActiveConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Shutdown stops accepting on every listener, then waits for live
// connections to finish on their own until ctx is done, then closes those
// left and waits for them to wind down. It returns nil if every connection
// finished by itself, and ctx's error (context.DeadlineExceeded for a drain
// timeout) if some had to be closed.
func (s *Server) Shutdown(ctx context.Context) error {
	done := s.stopAccepting()
	defer s.closePools()
	defer s.stopReaper()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.abortAll()
	<-done
	return ctx.Err()
}

// Close closes every listener and every connection at once, and waits for
// their goroutines to end.
func (s *Server) Close() error {
	done := s.stopAccepting()
	s.abortAll()
	<-done
	s.stopReaper()
	s.closePools()
	return nil
}

// stopReaper ends the idle reaper, once.
func (s *Server) stopReaper() {
	s.mu.Lock()
	if s.reaperDone != nil {
		close(s.reaperDone)
		s.reaperDone = nil
	}
	timers := s.drainTimers
	s.drainTimers = nil
	s.mu.Unlock()
	if s.watch != nil {
		s.watch.close() // no direction is parked: the conns are gone
	}
	// Removed listeners' drain timers: their conns are gone by now.
	for _, t := range timers {
		if t.Stop() {
			s.draining.Done()
		}
	}
	s.draining.Wait() // for a timer that fired concurrently
}

// abortAll cancels dials in flight and aborts every live connection.
func (s *Server) abortAll() {
	s.cancel(errShutdown)
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.abort(errShutdown)
	}
}

// stopAccepting closes the listeners, waits for the accept loops to end and
// returns a channel closed once no connection is left.
func (s *Server) stopAccepting() <-chan struct{} {
	s.mu.Lock()
	s.closing = true
	for _, l := range s.listeners {
		l.close()
	}
	s.mu.Unlock()
	s.acceptWG.Wait()
	s.tarpits.closeAll() // refused connections hold no shutdown up

	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.conns) == 0 {
		done := make(chan struct{})
		close(done)
		return done
	}
	// Several callers may wait: hand each the same channel, which forget
	// closes when the last connection goes.
	if s.connsDone == nil {
		s.connsDone = make(chan struct{})
	}
	return s.connsDone
}
