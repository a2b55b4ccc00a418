package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sluiceproxy/sluice/proxy/upstream"
)

// pools are a Server's upstream pools by name. A pool keeps its servers'
// state (health, ejections, cooling, quotas) across reloads that keep
// its name; one a reload removes is closed once no listener names it.
type pools struct {
	byName map[string]*poolEntry // guarded by Server.mu
}

type poolEntry struct {
	pool *upstream.Pool
	cfg  upstream.PoolConfig
	// sniff: connections wait for the server's first bytes before the
	// pumps run, so that a failure or a busy answer is retried.
	sniff bool
	// bytesQuota: some server counts bytes, which connections report.
	bytesQuota bool
	// noServer is set while the pool's last dial found no server that
	// could take a connection; its changes are logged, once each.
	noServer atomic.Bool
}

// checkUpstreams checks the pools and that every listener's upstream
// names one of them or is a "host:port".
func checkUpstreams(ps []upstream.PoolConfig, ls []ListenerConfig) error {
	names := map[string]bool{}
	for i := range ps {
		p := &ps[i]
		if p.Name == "" || strings.Contains(p.Name, ":") {
			return fmt.Errorf("upstream pool %d: want a name without ':', got %q", i, p.Name)
		}
		if names[p.Name] {
			return fmt.Errorf("upstream pool %q: defined twice", p.Name)
		}
		names[p.Name] = true
		if err := p.Validate(); err != nil {
			return fmt.Errorf("upstream pool %q: %w", p.Name, err)
		}
	}
	for _, l := range ls {
		if names[l.Upstream] {
			continue
		}
		if _, _, err := net.SplitHostPort(l.Upstream); err != nil {
			return fmt.Errorf("listener %q: upstream %q: want host:port or the name of a pool", l.Name, l.Upstream)
		}
	}
	return nil
}

// setPools makes the pools ps, keeping the state of those that stay, and
// returns those removed, to be closed by the caller once no route uses
// them. ps were checked; s.mu is held.
func (s *Server) setPools(ps []upstream.PoolConfig, ls []ListenerConfig) []*upstream.Pool {
	if s.pools.byName == nil {
		s.pools.byName = map[string]*poolEntry{}
	}
	next := make(map[string]*poolEntry, len(ps))
	for _, cfg := range ps {
		e := s.pools.byName[cfg.Name]
		if e != nil {
			if err := e.pool.Update(cfg); err != nil {
				panic(err) // checkUpstreams validated cfg
			}
		} else {
			p, err := upstream.NewPool(cfg, upstream.Options{
				ConnectTimeout: poolConnectTimeout(cfg.Name, ls), DialContext: s.dial, Clock: s.clock,
				OnState: s.logServerState,
			})
			if err != nil {
				panic(err)
			}
			e = &poolEntry{pool: p}
		}
		e.cfg = cfg
		e.sniff = cfg.Retry > 0 || cfg.HTTPRetryAfter
		e.bytesQuota = slices.ContainsFunc(cfg.Servers, func(sc upstream.ServerConfig) bool { return sc.Quota.Bytes > 0 })
		next[cfg.Name] = e
	}
	var removed []*upstream.Pool
	for name, e := range s.pools.byName {
		if next[name] == nil {
			removed = append(removed, e.pool)
		}
	}
	s.pools.byName = next
	return removed
}

// poolConnectTimeout is the connect timeout of a pool: the shortest of
// the listeners naming it.
func poolConnectTimeout(name string, ls []ListenerConfig) time.Duration {
	var d time.Duration
	for _, l := range ls {
		if l.Upstream == name && (d == 0 || l.ConnectTimeout < d) {
			d = l.ConnectTimeout
		}
	}
	return d
}

// logServerState logs a pool server's change of state, once a change.
func (s *Server) logServerState(ch upstream.StateChange) {
	attrs := []any{slog.String("pool", ch.Pool), slog.String("server", ch.Server), slog.String("from", ch.From.String()),
		slog.String("to", ch.To.String()), slog.String(keyReason, ch.Reason)}
	if !ch.Until.IsZero() {
		attrs = append(attrs, slog.Time("until", ch.Until))
	}
	if ch.Err != nil {
		attrs = append(attrs, slog.String("err", ch.Err.Error()))
	}
	level := slog.LevelInfo
	if ch.To == upstream.Down || ch.To == upstream.Ejected {
		level = slog.LevelWarn
	}
	s.log.Log(s.ctx, level, "upstream server state", attrs...)
}

// target returns where a listener's connections go: its pool, or a
// static address. s.mu is held.
func (s *Server) target(cfg *ListenerConfig) (upstream.Target, *poolEntry) {
	if e := s.pools.byName[cfg.Upstream]; e != nil {
		return e.pool, e
	}
	d, err := upstream.NewStatic(cfg.Upstream, upstream.Options{ConnectTimeout: cfg.ConnectTimeout, DialContext: s.dial})
	if err != nil {
		panic(err) // checkUpstreams checked the address
	}
	return d, nil
}

// noServerNow notes, and logs when it starts, that the pool had no server
// for a connection.
func (e *poolEntry) noServerNow(log *slog.Logger, listener string, overflow bool) {
	if e.noServer.CompareAndSwap(false, true) {
		log.Warn("upstream pool: no server can take a connection", slog.String("pool", e.cfg.Name),
			slog.String(keyListener, listener), slog.Bool("overflow", overflow))
	}
}

// served notes that the pool served a connection, and logs the end of a
// spell without a server.
func (e *poolEntry) served(log *slog.Logger) {
	if e.noServer.Load() && e.noServer.CompareAndSwap(true, false) {
		log.Info("upstream pool: servers take connections again", slog.String("pool", e.cfg.Name))
	}
}

// closePools closes every pool: their checks stop.
func (s *Server) closePools() {
	s.mu.Lock()
	ps := s.pools.byName
	s.pools.byName = nil
	s.mu.Unlock()
	for _, e := range ps {
		e.pool.Close()
	}
}

// ErrNoPool is returned by the pool operations for an unknown pool name.
var ErrNoPool = errors.New("proxy: no such upstream pool")

// Pools returns a snapshot of every upstream pool, by name.
func (s *Server) Pools() []upstream.Stats {
	s.mu.Lock()
	ps := make([]*upstream.Pool, 0, len(s.pools.byName))
	for _, e := range s.pools.byName {
		ps = append(ps, e.pool)
	}
	s.mu.Unlock()
	out := make([]upstream.Stats, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Stats())
	}
	slices.SortFunc(out, func(a, b upstream.Stats) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (s *Server) pool(name string) (*upstream.Pool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.pools.byName[name]
	if e == nil {
		return nil, fmt.Errorf("%w %q", ErrNoPool, name)
	}
	return e.pool, nil
}

// DrainServer stops giving new connections to a server of a pool; its
// connections go on. It returns an error wrapping [ErrNoPool] or
// upstream.ErrUnknownServer.
func (s *Server) DrainServer(pool, addr string) error {
	p, err := s.pool(pool)
	if err != nil {
		return err
	}
	return p.Drain(addr)
}

// EnableServer undoes DrainServer.
func (s *Server) EnableServer(pool, addr string) error {
	p, err := s.pool(pool)
	if err != nil {
		return err
	}
	return p.Enable(addr)
}
