// Package proxy runs sluice's TCP listeners: it accepts connections, dials
// their upstream, and moves bytes both ways with one pump per direction,
// through the kernel's splice path when both ends are TCP sockets.
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
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluiceproxy/sluice/shaper"
)

// ListenerConfig is one listening socket and where its connections go.
type ListenerConfig struct {
	// Name labels the listener in logs. Empty means Addr.
	Name string
	// Addr is the "host:port" to listen on; port 0 picks a free port (see
	// [Server.Addr]).
	Addr string
	// Upstream is the "host:port" every accepted connection is forwarded to.
	Upstream string
	// ConnectTimeout bounds the upstream dial. Zero or negative means
	// DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// IdleTimeout closes a connection once no byte has moved in either
	// direction for this long. Zero or negative disables it.
	IdleTimeout time.Duration
	// Chunk is the most a shaped direction moves per grant, in bytes. Zero
	// or negative means DefaultChunk.
	Chunk int
	// Limits hold each connection to a rate per direction; the zero value
	// imposes none. [Server.SetLimits] changes them on live connections.
	Limits ConnLimits
	// Links names the links (of Options.Links) every connection of this
	// listener crosses.
	Links []string
	// MP4 paces MP4 video downstream; the zero value paces nothing.
	MP4 MP4Config
	// Listener, when set, is an already-open socket to serve instead of
	// binding Addr (systemd socket activation); Addr then only names it.
	// The Server owns it from New or Reconfigure on.
	Listener *net.TCPListener
}

// ConnLimits are per-connection limits, per direction.
type ConnLimits struct {
	// Up is client → upstream; Down is upstream → client.
	Up, Down shaper.Limit
	// KernelPacing also sets SO_MAX_PACING_RATE 2% above Down.Rate on the
	// client socket (Linux, up to 50 MB/s) and takes 10 ms grants instead
	// of 5 ms ones. On a path with a minimum RTT of a few milliseconds or
	// more the kernel then spaces each grant's packets at the rate; on
	// loopback and LANs a grant still leaves as one burst
	// (docs/shaping.md).
	KernelPacing bool
}

func (l ConnLimits) validate() error {
	if err := l.Up.Validate(); err != nil {
		return fmt.Errorf("up: %w", err)
	}
	if err := l.Down.Validate(); err != nil {
		return fmt.Errorf("down: %w", err)
	}
	return nil
}

// DefaultChunk is the grant size of shaped connections.
const DefaultChunk = 8192

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
	linksMade atomic.Uint64  // spreads links over the loops

	// ctx bounds upstream dials; it is cancelled, with errShutdown as the
	// cause, when the server closes its connections.
	ctx    context.Context
	cancel context.CancelCauseFunc

	nextID atomic.Uint64

	reaperDone chan struct{}  // closed to stop the idle reaper; nil if none runs; guarded by mu
	reapEvery  atomic.Int64   // the reaper's period in ns; Reconfigure updates it
	reconfMu   sync.Mutex     // serializes Reconfigure
	draining   sync.WaitGroup // drain timers of removed listeners, pending or running

	mu          sync.Mutex
	listeners   []*listener
	conns       map[*conn]struct{}
	stats       map[string]*listenerStats // by listener name; kept across reconfigures
	links       map[string]*link          // by name
	drainTimers []*time.Timer             // of removed listeners
	connsDone   chan struct{}             // closed when conns drops to zero after closing
	closing     bool
	acceptWG    sync.WaitGroup
}

// A listener is one listening socket and its accept loop. Reconfigure may
// change its config, even its name, but never its address: a new address
// is a new listener.
type listener struct {
	ln     *net.TCPListener
	cfg    atomic.Pointer[ListenerConfig] // for new connections; Reconfigure replaces it
	limits atomic.Pointer[ConnLimits]     // current; SetLimits and Reconfigure replace it
}

func (l *listener) name() string { return l.cfg.Load().Name }

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
	s := &Server{opts: opts, log: opts.Logger, dial: opts.DialContext, clock: opts.Clock,
		conns: map[*conn]struct{}{}, stats: map[string]*listenerStats{}}
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
	s.ctx, s.cancel = context.WithCancelCause(context.Background())
	return s, nil
}

// normalize checks listener configs and fills in their defaults, in a copy.
func normalize(ls []ListenerConfig) ([]ListenerConfig, error) {
	ls = slices.Clone(ls)
	seen := map[string]bool{}
	for i := range ls {
		l := &ls[i]
		if l.Addr == "" || l.Upstream == "" {
			return nil, fmt.Errorf("listener %d (%q): address and upstream are required", i, l.Name)
		}
		if l.Name == "" {
			l.Name = l.Addr
		}
		if seen[l.Name] {
			return nil, fmt.Errorf("listener %d: duplicate name %q", i, l.Name)
		}
		seen[l.Name] = true
		if l.ConnectTimeout <= 0 {
			l.ConnectTimeout = DefaultConnectTimeout
		}
		if l.Chunk <= 0 {
			l.Chunk = DefaultChunk
		}
		if err := l.MP4.validate(); err != nil {
			return nil, fmt.Errorf("listener %q: %w", l.Name, err)
		}
		if err := l.Limits.validate(); err != nil {
			return nil, fmt.Errorf("listener %q: %w", l.Name, err)
		}
	}
	return ls, nil
}

// bind opens cfg's socket, or takes the one it was handed.
func bind(ctx context.Context, cfg ListenerConfig) (*net.TCPListener, error) {
	if cfg.Listener != nil {
		return cfg.Listener, nil
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listener %q: %w", cfg.Name, err)
	}
	return ln.(*net.TCPListener), nil
}

// newListener makes a listener for cfg on ln and its stats; s.mu is held.
func (s *Server) newListener(cfg ListenerConfig, ln *net.TCPListener) *listener {
	l := &listener{ln: ln}
	l.cfg.Store(&cfg)
	lim := cfg.Limits
	l.limits.Store(&lim)
	s.statsFor(cfg.Name)
	return l
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
				l.ln.Close()
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
	s.reaperDone = make(chan struct{})
	go s.reapIdle(s.reaperDone)
	return nil
}

// Reconfigure replaces the link and listener sets, without dropping a live
// connection:
//
//   - a link that keeps its name takes its new rates, bursts and key
//     shares at once, for live connections too; a new key mode applies to
//     new connections; a removed link (or direction) stops holding back
//     its live connections;
//   - a listener whose name is new (and whose address no removed listener
//     holds) is bound and served;
//   - a listener whose name is gone stops accepting; its connections run on
//     and are closed after drain if still open (drain <= 0 waits for them
//     without limit, until Shutdown);
//   - a listener that keeps its name (or, renamed, its address) keeps its
//     socket and its connections: changed limits apply to them within one
//     chunk's time; a changed upstream, timeouts or chunk apply to new
//     connections; a changed address is a new socket, and the old one
//     drains as if removed.
//
// It binds every new socket before changing anything: if one fails, it
// closes those it bound and returns the error, and the running set stays.
func (s *Server) Reconfigure(links []LinkConfig, ls []ListenerConfig, drain time.Duration) error {
	ls, err := normalize(ls)
	if err != nil {
		return err
	}
	if err := checkLinks(links, ls); err != nil {
		return err
	}
	s.reconfMu.Lock()
	defer s.reconfMu.Unlock()

	s.mu.Lock()
	if s.closing || s.reaperDone == nil {
		s.mu.Unlock()
		return ErrServerClosed
	}
	old := slices.Clone(s.listeners)
	s.mu.Unlock()

	// Match each new config to the listener it continues: by name with
	// the same address, else (a rename) by the same fixed address.
	keep := make([]*listener, len(ls))
	taken := map[*listener]bool{}
	for i, cfg := range ls {
		for _, o := range old {
			if oc := o.cfg.Load(); !taken[o] && oc.Name == cfg.Name && sameSocket(o, oc, cfg) {
				keep[i], taken[o] = o, true
			}
		}
	}
	for i, cfg := range ls {
		if keep[i] != nil || cfg.Listener != nil || strings.HasSuffix(cfg.Addr, ":0") {
			continue
		}
		for _, o := range old {
			if oc := o.cfg.Load(); !taken[o] && oc.Addr == cfg.Addr && !slices.ContainsFunc(ls, func(c ListenerConfig) bool { return c.Name == oc.Name }) {
				keep[i], taken[o] = o, true
			}
		}
	}
	// Bind the new sockets.
	fresh := make([]*net.TCPListener, len(ls))
	for i, cfg := range ls {
		if keep[i] != nil {
			continue
		}
		ln, err := bind(context.Background(), cfg)
		if err != nil {
			for _, f := range fresh {
				if f != nil {
					f.Close()
				}
			}
			return err
		}
		fresh[i] = ln
	}

	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		for _, f := range fresh {
			if f != nil {
				f.Close()
			}
		}
		return ErrServerClosed
	}
	type change struct {
		l     *listener
		lim   ConnLimits
		conns []*conn
	}
	s.setLinks(links)
	var changes []change
	next := make([]*listener, len(ls))
	for i, cfg := range ls {
		if fresh[i] != nil {
			next[i] = s.newListener(cfg, fresh[i])
			continue
		}
		l := keep[i]
		l.cfg.Store(&cfg)
		s.statsFor(cfg.Name)
		if *l.limits.Load() != cfg.Limits {
			lim := cfg.Limits
			l.limits.Store(&lim)
			changes = append(changes, change{l: l, lim: lim})
		}
		next[i] = l
	}
	var removed []*listener
	for _, o := range old {
		if !taken[o] {
			removed = append(removed, o)
		}
	}
	for i := range changes {
		for c := range s.conns {
			if c.l == changes[i].l {
				changes[i].conns = append(changes[i].conns, c)
			}
		}
	}
	s.listeners = next
	for i, l := range next {
		if fresh[i] != nil {
			s.acceptWG.Add(1)
			go s.accept(l)
		}
	}
	s.reapEvery.Store(int64(reapPeriod(ls)))
	s.mu.Unlock()

	for _, o := range removed {
		o.ln.Close() // its accept loop ends; its connections run on
		if drain > 0 {
			s.draining.Add(1)
			t := time.AfterFunc(drain, func() {
				defer s.draining.Done()
				s.abortWhere(func(c *conn) bool { return c.l == o }, errShutdown)
			})
			s.mu.Lock()
			s.drainTimers = append(s.drainTimers, t)
			s.mu.Unlock()
		}
	}
	for _, ch := range changes {
		for _, c := range ch.conns {
			c.applyLimits(&ch.lim)
		}
	}
	return nil
}

// sameSocket reports whether cfg continues on o's socket: the same handed
// socket, or the same address when neither was handed one.
func sameSocket(o *listener, oc *ListenerConfig, cfg ListenerConfig) bool {
	if cfg.Listener != nil || oc.Listener != nil {
		return cfg.Listener == o.ln
	}
	return oc.Addr == cfg.Addr
}

// abortWhere aborts the live connections for which match is true.
func (s *Server) abortWhere(match func(*conn) bool, cause error) {
	s.mu.Lock()
	var hit []*conn
	for c := range s.conns {
		if match(c) {
			hit = append(hit, c)
		}
	}
	s.mu.Unlock()
	for _, c := range hit {
		c.abort(cause)
	}
}

// reapPeriod is how often the idle reaper scans: an eighth of the shortest
// idle timeout, within [5ms, 5s], so a connection closes between 1× and
// 1.125× its timeout; 5s when no listener has one (a reload may add one,
// and connections keep the timeout they were accepted with).
func reapPeriod(ls []ListenerConfig) time.Duration {
	var shortest time.Duration
	for _, l := range ls {
		if l.IdleTimeout > 0 && (shortest == 0 || l.IdleTimeout < shortest) {
			shortest = l.IdleTimeout
		}
	}
	if shortest == 0 {
		return 5 * time.Second
	}
	return min(max(shortest/8, 5*time.Millisecond), 5*time.Second)
}

// reapIdle aborts connections idle for longer than their listener's idle
// timeout; a connection waiting for its own tokens is not idle. One goroutine and one ticker serve every connection: a timer per
// connection would cost each idle one about a quarter KiB. It runs until
// the server has closed and every connection is gone.
func (s *Server) reapIdle(stop <-chan struct{}) {
	period := time.Duration(s.reapEvery.Load())
	t := time.NewTicker(period)
	defer t.Stop()
	var idle []*conn
	for {
		select {
		case <-t.C:
		case <-stop:
			return
		}
		if p := time.Duration(s.reapEvery.Load()); p != period {
			period = p
			t.Reset(p)
		}
		now := time.Since(monoEpoch)
		idle = idle[:0]
		s.mu.Lock()
		for c := range s.conns {
			if to := c.cfg.IdleTimeout; to > 0 && c.idleFor(now) >= to && !c.waitingForTokens() {
				idle = append(idle, c)
			}
		}
		s.mu.Unlock()
		for _, c := range idle {
			c.abort(errIdleTimeout)
		}
	}
}

// Addr returns the bound address of the named listener, or nil if there is
// none (not started, or no such name).
func (s *Server) Addr(name string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.listeners {
		if l.name() == name {
			return l.ln.Addr()
		}
	}
	return nil
}

// SetLimits changes the per-connection limits of the named listener, for new
// connections and for every live one, within one chunk's time. It returns an
// error, and changes nothing, if there is no such listener or a limit is
// invalid.
func (s *Server) SetLimits(name string, lim ConnLimits) error {
	if err := lim.validate(); err != nil {
		return err
	}
	s.mu.Lock()
	var l *listener
	for _, x := range s.listeners {
		if x.name() == name {
			l = x
		}
	}
	if l == nil {
		s.mu.Unlock()
		return fmt.Errorf("proxy: no listener %q", name)
	}
	l.limits.Store(&lim)
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		if c.l == l {
			conns = append(conns, c)
		}
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.applyLimits(&lim)
	}
	return nil
}

// ActiveConns returns the number of connections being served.
func (s *Server) ActiveConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// accept runs one listener's accept loop until the listener is closed.
func (s *Server) accept(l *listener) {
	defer s.acceptWG.Done()
	var backoff time.Duration
	for {
		c, err := l.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors or memory, or an aborted handshake: back
			// off like net/http, without spinning, and keep serving.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept", slog.String(keyListener, l.name()), slog.Any(keyErr, err),
				slog.Duration("retry_in", backoff), slog.Bool("fd_exhausted", isFDExhausted(err)))
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-s.ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		backoff = 0
		cn := s.newConn(l, c)
		if cn == nil {
			_ = c.SetLinger(0) // refuse with a reset: sluice is closing
			c.Close()
			continue
		}
		go cn.serve()
	}
}

// newConn registers a connection, or returns nil when the server is closing.
func (s *Server) newConn(l *listener, c *net.TCPConn) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx.Err() != nil {
		return nil
	}
	cfg := l.cfg.Load()
	st := s.statsFor(cfg.Name)
	st.accepted.Add(1)
	cn := &conn{srv: s, l: l, cfg: cfg, stats: st, id: s.nextID.Add(1), client: c, start: time.Now()}
	cn.limits = *l.limits.Load() // what serve applies once the upstream is dialed; listed meanwhile
	if cn.obs = st.mp4.observer(cfg.MP4); cn.obs != nil {
		cn.pumps[Up].pacer, cn.pumps[Down].pacer = &pacer{obs: cn.obs}, &pacer{obs: cn.obs}
	}
	s.joinLinks(cn)
	cn.touch()
	s.conns[cn] = struct{}{}
	return cn
}

// forget unregisters an ended connection and adds it to its listener's
// counters, in one step under s.mu, so a scrape never counts it twice or
// not at all.
func (s *Server) forget(c *conn, result string) {
	c.leaveLinks()
	s.mu.Lock()
	defer s.mu.Unlock()
	c.stats.ended(c, result)
	delete(s.conns, c)
	if len(s.conns) == 0 && s.connsDone != nil {
		close(s.connsDone)
		s.connsDone = nil
	}
}

// Shutdown stops accepting on every listener, then waits for live
// connections to finish on their own until ctx is done, then closes those
// left and waits for them to wind down. It returns nil if every connection
// finished by itself, and ctx's error (context.DeadlineExceeded for a drain
// timeout) if some had to be closed.
func (s *Server) Shutdown(ctx context.Context) error {
	done := s.stopAccepting()
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
		l.ln.Close()
	}
	s.mu.Unlock()
	s.acceptWG.Wait()

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

func isFDExhausted(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}
