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
}

// ConnLimits are per-connection limits, per direction.
type ConnLimits struct {
	// Up is client → upstream; Down is upstream → client.
	Up, Down shaper.Limit
	// KernelPacing also sets SO_MAX_PACING_RATE to Down.Rate on the client
	// socket (Linux), so the kernel spaces the packets of each grant.
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
	// Logger receives one Info line per connection at close, and warnings.
	// Nil means no logging.
	Logger *slog.Logger
	// DialContext dials upstreams. Nil means a net.Dialer. A dialer that
	// returns something other than *net.TCPConn still works, but bytes are
	// then copied through user space instead of spliced.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Server accepts and proxies connections for a set of listeners. Its
// methods are safe for concurrent use. A Server is started once; after
// Shutdown or Close it cannot be restarted.
type Server struct {
	opts Options
	log  *slog.Logger
	dial func(ctx context.Context, network, addr string) (net.Conn, error)

	// ctx bounds upstream dials; it is cancelled, with errShutdown as the
	// cause, when the server closes its connections.
	ctx    context.Context
	cancel context.CancelCauseFunc

	nextID atomic.Uint64

	reaperDone chan struct{} // closed to stop the idle reaper; nil if none runs; guarded by mu

	mu        sync.Mutex
	listeners []*listener
	conns     map[*conn]struct{}
	connsDone chan struct{} // closed when conns drops to zero after closing
	closing   bool
	acceptWG  sync.WaitGroup
}

type listener struct {
	cfg    ListenerConfig
	ln     *net.TCPListener
	limits atomic.Pointer[ConnLimits] // current; SetLimits replaces it
}

// Errors that end connections on purpose; they are the context cause seen by
// the pumps and name the result in the connection's log line.
var (
	errShutdown    = errors.New("proxy: server shutting down")
	errIdleTimeout = errors.New("proxy: idle timeout")
)

// ErrServerClosed is returned by Start after Shutdown or Close.
var ErrServerClosed = errors.New("proxy: server closed")

// New checks opts and returns a Server that has not opened anything yet.
// It returns an error when a listener has no address or no upstream, or two
// listeners share a name.
func New(opts Options) (*Server, error) {
	seen := map[string]bool{}
	for i := range opts.Listeners {
		l := &opts.Listeners[i]
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
		if err := l.Limits.validate(); err != nil {
			return nil, fmt.Errorf("listener %q: %w", l.Name, err)
		}
	}
	s := &Server{opts: opts, log: opts.Logger, dial: opts.DialContext, conns: map[*conn]struct{}{}}
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
	var lc net.ListenConfig
	for _, cfg := range s.opts.Listeners {
		ln, err := lc.Listen(ctx, "tcp", cfg.Addr)
		if err != nil {
			for _, l := range s.listeners {
				l.ln.Close()
			}
			s.listeners = nil
			return fmt.Errorf("listener %q: %w", cfg.Name, err)
		}
		l := &listener{cfg: cfg, ln: ln.(*net.TCPListener)}
		lim := cfg.Limits
		l.limits.Store(&lim)
		s.listeners = append(s.listeners, l)
	}
	for _, l := range s.listeners {
		s.acceptWG.Add(1)
		go s.accept(l)
	}
	if period := reapPeriod(s.opts.Listeners); period > 0 {
		s.reaperDone = make(chan struct{})
		go s.reapIdle(period, s.reaperDone)
	}
	return nil
}

// reapPeriod is how often the idle reaper scans: an eighth of the shortest
// idle timeout, within [5ms, 5s], so a connection closes between 1× and
// 1.125× its timeout. Zero means no listener has an idle timeout.
func reapPeriod(ls []ListenerConfig) time.Duration {
	var shortest time.Duration
	for _, l := range ls {
		if l.IdleTimeout > 0 && (shortest == 0 || l.IdleTimeout < shortest) {
			shortest = l.IdleTimeout
		}
	}
	if shortest == 0 {
		return 0
	}
	return min(max(shortest/8, 5*time.Millisecond), 5*time.Second)
}

// reapIdle aborts connections idle for longer than their listener's idle
// timeout; a connection waiting for its own tokens is not idle. One goroutine and one ticker serve every connection: a timer per
// connection would cost each idle one about a quarter KiB. It runs until
// the server has closed and every connection is gone.
func (s *Server) reapIdle(period time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(period)
	defer t.Stop()
	var idle []*conn
	for {
		select {
		case <-t.C:
		case <-stop:
			return
		}
		now := time.Since(monoEpoch)
		idle = idle[:0]
		s.mu.Lock()
		for c := range s.conns {
			if to := c.l.cfg.IdleTimeout; to > 0 && c.idleFor(now) >= to && !c.waitingForTokens() {
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
		if l.cfg.Name == name {
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
		if x.cfg.Name == name {
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
			s.log.Warn("accept", slog.String(keyListener, l.cfg.Name), slog.Any(keyErr, err),
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
	cn := &conn{srv: s, l: l, id: s.nextID.Add(1), client: c, start: time.Now()}
	cn.touch()
	s.conns[cn] = struct{}{}
	return cn
}

func (s *Server) forget(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
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
	defer s.mu.Unlock()
	if s.reaperDone != nil {
		close(s.reaperDone)
		s.reaperDone = nil
	}
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
