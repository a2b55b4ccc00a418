package proxy

import "time"

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
// timeout; a connection waiting for its own tokens is not idle. One
// goroutine and one timer, on the Server's clock, serve every
// connection: a timer per connection would cost each idle one about a
// quarter KiB. Each scan ends before the timer is re-armed. It runs until
// the server has closed and every connection is gone.
//
// The same scan parks the directions of connections that moved no byte
// for parkAfter (park.go), and detaches the sockets of those whose two
// directions are parked and that moved no byte for detachAfter, while at
// least parkMinConns are open: it then
// runs every parkAfter/2 at least, and newConn wakes it when the count
// gets there.
func (s *Server) reapIdle(stop <-chan struct{}) {
	t, tick := s.clock.NewTimer(time.Duration(s.reapEvery.Load()))
	defer t.Stop()
	var idle, evict, detach []*conn
	for {
		select {
		case <-tick:
		case <-s.sweepNow:
			t.Stop()
		case <-stop:
			return
		}
		now := s.clock.Now().Sub(s.epoch)
		idle, evict, detach = idle[:0], evict[:0], detach[:0]
		s.mu.Lock()
		sweep := s.parking()
		for c := range s.conns {
			quiet := c.idleFor(now)
			if to := c.cfg.IdleTimeout; to > 0 && quiet >= to && !c.waitingForTokens() {
				idle = append(idle, c)
			} else if sweep && quiet >= s.parkAfter && c.evictable() {
				evict = append(evict, c)
			} else if sweep && quiet >= s.detachAfter && c.detachable() {
				detach = append(detach, c)
			}
		}
		sweep = s.parking() // for the period: the count may have dropped
		s.mu.Unlock()
		for _, c := range idle {
			c.abort(errIdleTimeout)
		}
		for _, c := range evict {
			c.evict()
		}
		for _, c := range detach {
			c.detach()
		}
		every := time.Duration(s.reapEvery.Load()) // Reconfigure may change the period
		if sweep {
			every = min(every, s.parkAfter/2)
		}
		t.Reset(every)
	}
}

// parking reports whether idle directions are parked now: the server has
// a watcher and at least parkMinConns conns. Requires s.mu held.
func (s *Server) parking() bool {
	return s.watch != nil && len(s.conns) >= s.parkMinConns
}
