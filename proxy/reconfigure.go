package proxy

import (
	"context"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/sluiceproxy/sluice/proxy/upstream"
)

// Reconfigure is [Server.Reload] that keeps the admission limits, ban
// policies and upstream pools as they are.
func (s *Server) Reconfigure(links []LinkConfig, ls []ListenerConfig, drain time.Duration) error {
	s.mu.Lock()
	r := s.rules
	var ps []upstream.PoolConfig
	for _, e := range s.pools.byName {
		ps = append(ps, e.cfg)
	}
	s.mu.Unlock()
	return s.Reload(Options{Links: links, Listeners: ls, Limits: r.Limits, Bans: r.Bans, Upstreams: ps}, drain)
}

// Reload replaces the link and listener sets and the admission limits
// and ban policies with those of opts (its other fields are ignored),
// without dropping a live connection:
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
//     drains as if removed;
//   - a limit or ban policy that keeps its name keeps its counters, queues
//     and bans, and applies its new numbers to new connections; lowering
//     a connection limit never closes a live connection.
//
// It binds every new socket before changing anything: if one fails, it
// closes those it bound and returns the error, and the running set stays.
func (s *Server) Reload(opts Options, drain time.Duration) error {
	links := opts.Links
	ls, err := normalize(opts.Listeners)
	if err != nil {
		return err
	}
	if err := checkLinks(links, ls); err != nil {
		return err
	}
	r := rules(&opts)
	if err := checkAdmission(r, ls); err != nil {
		return err
	}
	if err := checkUpstreams(opts.Upstreams, ls); err != nil {
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
			if oc := o.config(); !taken[o] && oc.Name == cfg.Name && sameSocket(o, oc, cfg) {
				keep[i], taken[o] = o, true
			}
		}
	}
	for i, cfg := range ls {
		if keep[i] != nil || cfg.Listener != nil || strings.HasSuffix(cfg.Addr, ":0") {
			continue
		}
		for _, o := range old {
			if oc := o.config(); !taken[o] && oc.Addr == cfg.Addr && !slices.ContainsFunc(ls, func(c ListenerConfig) bool { return c.Name == oc.Name }) {
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
	removedPools := s.setPools(opts.Upstreams, ls)
	if err := s.admission.Update(r); err != nil {
		panic(err) // checkAdmission validated r
	}
	s.rules = r
	s.startSweeper()
	var changes []change
	next := make([]*listener, len(ls))
	for i, cfg := range ls {
		if fresh[i] != nil {
			next[i] = s.newListener(cfg, fresh[i])
			continue
		}
		l := keep[i]
		s.setRoute(l, cfg)
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

	for _, p := range removedPools {
		p.Close() // its checks stop; its connections run on
	}
	for _, o := range removed {
		o.close() // its accept loop ends; its connections run on
		if drain > 0 {
			s.draining.Add(1)
			t := s.clock.AfterFunc(drain, func() {
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
