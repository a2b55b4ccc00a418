package proxy

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/sluiceproxy/sluice/shaper"
)

// What a cluster of instances (package shaper/cluster, wired by the
// command) needs of a Server: each link direction's activity, to report
// its demand, and a way to run it at its leased share; and ban hooks,
// through Options.OnBan and ImportBan. The Server knows nothing of Redis.

// LinkActivity ends the current count of one direction of a link and
// returns it (see [shaper.Link.Activity]). It reports false for an
// unknown link or a direction the link does not limit.
func (s *Server) LinkActivity(name string, d Dir) (shaper.LinkActivity, bool) {
	sl := s.linkDir(name, d)
	if sl == nil {
		return shaper.LinkActivity{}, false
	}
	return sl.Activity(), true
}

// SetLinkShare runs one direction of a link at rate bytes per second in
// place of its configured rate (a burst set in the config is scaled
// alike; keys keep their shares, capped by the rate), for its live
// connections too. The share holds across reloads that keep the
// direction limited; rate 0 goes back to the configured rate. It returns
// an error, and changes nothing, for an unknown link, a direction the
// link does not limit, or a rate outside [0, shaper.MaxRate].
func (s *Server) SetLinkShare(name string, d Dir, rate int64) error {
	if rate < 0 || rate > shaper.MaxRate {
		return fmt.Errorf("proxy: link %q %s: share %d outside [0, %d]", name, d, rate, int64(shaper.MaxRate))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.links[name]
	if l == nil {
		return fmt.Errorf("proxy: no link %q", name)
	}
	if l.dirs[d] == nil {
		return fmt.Errorf("proxy: link %q does not limit %s", name, d)
	}
	ll := l.cfg.Up
	if d == Down {
		ll = l.cfg.Down
	}
	l.share[d] = rate
	return l.dirs[d].SetLimit(withShare(ll, rate))
}

// withShare returns ll at share bytes per second, its burst scaled alike
// (none set stays none: the link's default follows the rate); share 0
// returns ll.
func withShare(ll shaper.LinkLimit, share int64) shaper.LinkLimit {
	if share <= 0 || ll.Rate <= 0 {
		return ll
	}
	if ll.Burst > 0 {
		ll.Burst = max(shaper.DefaultBurst, min(int64(float64(ll.Burst)*float64(share)/float64(ll.Rate)), shaper.MaxBurst))
	}
	ll.Rate = share
	return ll
}

// linkDir returns one direction of a link in service, or nil.
func (s *Server) linkDir(name string, d Dir) *shaper.Link {
	if d != Up && d != Down {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.links[name]; l != nil {
		return l.dirs[d]
	}
	return nil
}

// ImportBan installs a ban made elsewhere (another instance of a
// cluster) under the named policy: key's ban ends at until, or later if
// it had a longer one; it never shortens a ban, and does not call
// Options.OnBan. It returns an error wrapping [admit.ErrNoBan] for an
// unknown policy.
func (s *Server) ImportBan(ban string, key netip.Prefix, until time.Time) error {
	return s.admission.ImportBan(ban, key, until, s.clock.Now())
}

// ImportLift lifts a ban lifted elsewhere, without calling Options.OnLift;
// it reports whether key had a ban.
func (s *Server) ImportLift(ban string, key netip.Prefix) (bool, error) {
	return s.admission.ImportLift(ban, key, s.clock.Now())
}
