package proxy

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluiceproxy/sluice/proxy/admit"
	"github.com/sluiceproxy/sluice/proxy/upstream"
)

// ListenerConfig is one listening socket and where its connections go.
type ListenerConfig struct {
	// Name labels the listener in logs. Empty means Addr.
	Name string
	// Addr is the "host:port" to listen on; port 0 picks a free port (see
	// [Server.Addr]).
	Addr string
	// Upstream is where every accepted connection is forwarded: a
	// "host:port", or the name of a pool of Options.Upstreams.
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
	// Admission decides which connections are served, and what the
	// refused ones get; the zero value admits all.
	Admission Admission
	// Listener, when set, is an already-open socket to serve instead of
	// binding Addr (systemd socket activation); Addr then only names it.
	// The Server owns it from New or Reconfigure on.
	Listener *net.TCPListener
}

// A listener is one listening socket and its accept loop. Reconfigure may
// change its config, even its name, but never its address: a new address
// is a new listener.
type listener struct {
	ln        *net.TCPListener
	route     atomic.Pointer[route]      // for new connections; Reconfigure replaces it
	limits    atomic.Pointer[ConnLimits] // current; SetLimits and Reconfigure replace it
	stop      chan struct{}              // closed with ln (close)
	stopOnce  sync.Once
	tarpitted atomic.Int64 // refused connections held in the tarpit or written an overflow response now
}

// close closes the listening socket, which ends its accept loop.
func (l *listener) close() {
	l.stopOnce.Do(func() { close(l.stop) })
	l.ln.Close()
}

// route is what a listener does with a new connection: its config, the
// admission step that decides whether it is served, and the dialer of its
// upstream, replaced together so that a connection sees one generation.
type route struct {
	cfg      *ListenerConfig
	admit    admit.Admitter
	policy   *admit.Policy   // admit's policy; nil when it admits all
	target   upstream.Target // the pool or address connections go to
	pool     *poolEntry      // target's pool; nil for an address
	overflow upstream.Target // the overflow upstream; nil if none
	stats    *listenerStats  // the counters of cfg.Name
}

func (l *listener) config() *ListenerConfig { return l.route.Load().cfg }

func (l *listener) name() string { return l.config().Name }

// setRoute makes cfg the listener's config for new connections, with its
// admission step and upstream dialer. cfg has been normalized and its
// admission checked against the Server's admission set; s.mu is held.
func (s *Server) setRoute(l *listener, cfg ListenerConfig) {
	rt := &route{cfg: &cfg, stats: s.statsFor(cfg.Name)}
	rt.target, rt.pool = s.target(rt.cfg)
	var err error
	rt.cfg.Admission.Refuse = min(rt.cfg.Admission.Refuse, RefuseOverflow)
	if rt.admit, rt.policy, err = s.admitter(rt.cfg); err != nil {
		panic(err) // checkAdmission checked the names
	}
	rt.overflow = s.overflowDialer(rt.cfg)
	l.route.Store(rt)
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
	l := &listener{ln: ln, stop: make(chan struct{})}
	s.setRoute(l, cfg)
	lim := cfg.Limits
	l.limits.Store(&lim)
	s.statsFor(cfg.Name)
	return l
}

// sameSocket reports whether cfg continues on o's socket: the same handed
// socket, or the same address when neither was handed one.
func sameSocket(o *listener, oc *ListenerConfig, cfg ListenerConfig) bool {
	if cfg.Listener != nil || oc.Listener != nil {
		return cfg.Listener == o.ln
	}
	return oc.Addr == cfg.Addr
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
