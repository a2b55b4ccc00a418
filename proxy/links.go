package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/sluiceproxy/sluice/shaper"
)

// LinkConfig is a shared budget, a costly line, that the connections of
// the listeners naming it cross. Each direction has its own budget; a
// connection's grant must fit its own limit and every link it crosses.
type LinkConfig struct {
	Name string
	// Up (client → upstream) and Down (upstream → client); a zero Rate
	// leaves that direction unshaped by this link.
	Up, Down shaper.LinkLimit
	// KeyBy groups connections into keys; the zero value is one key.
	KeyBy KeyBy
	// Prefix and Prefix6 are the "cidr" prefix lengths for IPv4 and IPv6.
	Prefix, Prefix6 int
}

func (lc LinkConfig) validate() error {
	if lc.Name == "" {
		return fmt.Errorf("link: a name is required")
	}
	if lc.Up.Rate == 0 && lc.Down.Rate == 0 {
		return fmt.Errorf("link %q: a rate in up, down or both is required", lc.Name)
	}
	for d, ll := range [2]shaper.LinkLimit{Up: lc.Up, Down: lc.Down} {
		if ll.Rate == 0 {
			continue
		}
		if err := ll.Validate(); err != nil {
			return fmt.Errorf("link %q %s: %w", lc.Name, Dir(d), err)
		}
	}
	switch lc.KeyBy {
	case KeyNone, KeySourceIP, KeyListener, KeyUpstream:
	case KeyCIDR:
		if lc.Prefix < 1 || lc.Prefix > 32 || lc.Prefix6 < 1 || lc.Prefix6 > 128 {
			return fmt.Errorf("link %q: cidr prefixes %d and %d out of range", lc.Name, lc.Prefix, lc.Prefix6)
		}
	default:
		return fmt.Errorf("link %q: unknown key mode %d", lc.Name, lc.KeyBy)
	}
	return nil
}

// KeyBy is how a link groups its connections into keys, each with its
// own share of the link. The zero value puts every connection under one
// key.
type KeyBy uint8

// The ways to key a link's connections.
const (
	KeyNone     KeyBy = iota // one key for every connection
	KeySourceIP              // the client's IP address
	KeyCIDR                  // the client's network (LinkConfig.Prefix, Prefix6)
	KeyListener              // the listener's name
	KeyUpstream              // the upstream's address
)

var keyByNames = [...]string{KeyNone: "none", KeySourceIP: "source_ip", KeyCIDR: "cidr", KeyListener: "listener", KeyUpstream: "upstream"}

// String returns the config form: "none", "source_ip", "cidr",
// "listener" or "upstream".
func (k KeyBy) String() string {
	if int(k) < len(keyByNames) {
		return keyByNames[k]
	}
	return fmt.Sprintf("KeyBy(%d)", k)
}

// ParseKeyBy reads the config form of a KeyBy; "" is KeyNone. It returns
// an error naming the forms for anything else.
func ParseKeyBy(s string) (KeyBy, error) {
	if s == "" {
		return KeyNone, nil
	}
	for k, name := range keyByNames {
		if s == name {
			return KeyBy(k), nil
		}
	}
	return 0, fmt.Errorf("key mode %q: want none, source_ip, cidr, listener or upstream", s)
}

// link is a LinkConfig in service: one shaper.Link per limited direction.
type link struct {
	cfg   LinkConfig
	dirs  [2]*shaper.Link // nil for a direction the link does not limit
	loops [2]*shaper.Loop // the shaping loop that drives each (nil where there are none)
	share [2]int64        // a cluster's share of each direction, in place of its rate; 0: none (cluster.go)
}

// unlimitedLink is what a direction's budget becomes when a reload removes
// it: live members stop being held back; new connections no longer join.
var unlimitedLink = shaper.LinkLimit{Limit: shaper.Limit{Rate: shaper.MaxRate}}

func (s *Server) newLink(lc LinkConfig) *link {
	l := &link{cfg: lc}
	for d, ll := range [2]shaper.LinkLimit{Up: lc.Up, Down: lc.Down} {
		if ll.Rate > 0 {
			l.dirs[d], l.loops[d] = s.newLinkDir(ll)
		}
	}
	return l
}

// newLinkDir makes one direction of a link, at ll, driven by one of the
// shaping loops if there are any (see [shaper.Loop.Drive]): the loop then
// makes the link's grants when its own timer fires, and serves at once the
// directions of the link's members it has. A link's timer of its own would
// wake a goroutine of its own every few milliseconds, and then the loops
// its grants went to.
func (s *Server) newLinkDir(ll shaper.LinkLimit) (*shaper.Link, *shaper.Loop) {
	sl := shaper.NewLink(ll, s.clock)
	if len(s.loops) == 0 {
		return sl, nil
	}
	loop := s.loops[s.linksMade.Add(1)%uint64(len(s.loops))]
	loop.Drive(sl)
	return sl, loop
}

// update applies lc to a link in service. A direction that becomes limited
// gets a budget for new connections; one that is no longer limited stops
// holding back its live connections.
func (l *link) update(s *Server, lc LinkConfig) {
	for d, ll := range [2]shaper.LinkLimit{Up: lc.Up, Down: lc.Down} {
		switch {
		case ll.Rate > 0 && l.dirs[d] != nil:
			_ = l.dirs[d].SetLimit(withShare(ll, l.share[d])) // validated
		case ll.Rate > 0:
			l.dirs[d], l.loops[d] = s.newLinkDir(ll)
		case l.dirs[d] != nil:
			_ = l.dirs[d].SetLimit(unlimitedLink)
			l.dirs[d], l.share[d] = nil, 0
		}
	}
	l.cfg = lc
}

// retire stops a removed link from holding back its live connections.
func (l *link) retire() {
	for _, sl := range l.dirs {
		if sl != nil {
			_ = sl.SetLimit(unlimitedLink)
		}
	}
}

// key returns the key a connection joins the link under.
func (l *link) key(client net.Addr, cfg *ListenerConfig) string {
	switch l.cfg.KeyBy {
	case KeySourceIP, KeyCIDR:
		ap, err := netip.ParseAddrPort(addrString(client))
		if err != nil {
			return ""
		}
		ip := ap.Addr().Unmap()
		if l.cfg.KeyBy == KeySourceIP {
			return ip.String()
		}
		bits := l.cfg.Prefix
		if ip.Is6() {
			bits = l.cfg.Prefix6
		}
		p, err := ip.Prefix(bits)
		if err != nil {
			return ip.String()
		}
		return p.String()
	case KeyListener:
		return cfg.Name
	case KeyUpstream:
		return cfg.Upstream
	}
	return ""
}

// joinLinks seats a new connection on every link its listener names; s.mu
// is held.
func (s *Server) joinLinks(c *conn) {
	for _, name := range c.cfg.Links {
		l := s.links[name]
		if l == nil {
			continue
		}
		key := l.key(c.client.RemoteAddr(), c.cfg)
		for d, sl := range l.dirs {
			if sl != nil {
				p := &c.pumps[d]
				if p.seats == nil {
					p.seats = &linkSeats{}
				}
				p.seats.members = append(p.seats.members, sl.Join(key))
				p.seats.loop = l.loops[d]
			}
		}
	}
}

// leaveLinks gives up a connection's seats.
func (c *conn) leaveLinks() {
	for d := range c.pumps {
		for _, m := range c.pumps[d].members() {
			m.Leave()
		}
	}
}

// setLinks validates links and makes the server's link set match them;
// s.mu is held. Removed links stop limiting their live connections.
func (s *Server) setLinks(links []LinkConfig) {
	next := make(map[string]*link, len(links))
	for _, lc := range links {
		if l := s.links[lc.Name]; l != nil {
			l.update(s, lc)
			next[lc.Name] = l
		} else {
			next[lc.Name] = s.newLink(lc)
		}
	}
	for name, l := range s.links {
		if next[name] == nil {
			l.retire()
		}
	}
	s.links = next
}

// checkLinks validates links and that every listener's links exist.
func checkLinks(links []LinkConfig, ls []ListenerConfig) error {
	names := map[string]bool{}
	for _, lc := range links {
		if err := lc.validate(); err != nil {
			return err
		}
		if names[lc.Name] {
			return fmt.Errorf("link %q: duplicate name", lc.Name)
		}
		names[lc.Name] = true
	}
	for _, l := range ls {
		for _, name := range l.Links {
			if !names[name] {
				return fmt.Errorf("listener %q: no link %q", l.Name, name)
			}
		}
		if len(slices.Compact(slices.Sorted(slices.Values(l.Links)))) != len(l.Links) {
			return fmt.Errorf("listener %q: a link is listed twice", l.Name)
		}
	}
	return nil
}

// LinkDirStats are one direction of a link.
type LinkDirStats struct {
	Limit shaper.LinkLimit
	shaper.LinkStats
	// Keys are the keys with connections, when asked for.
	Keys []shaper.KeyStats
}

// LinkStats describe a link in service.
type LinkStats struct {
	Name  string
	KeyBy KeyBy
	// Dirs are Up and Down; nil where the link does not limit.
	Dirs [2]*LinkDirStats
}

// Links returns the links in service, by name; with keys, each
// direction's keys too.
func (s *Server) Links(keys bool) []LinkStats {
	s.mu.Lock() // guards each link's cfg and dirs
	ls := make([]link, 0, len(s.links))
	for _, l := range s.links {
		ls = append(ls, *l)
	}
	s.mu.Unlock()
	slices.SortFunc(ls, func(a, b link) int {
		if a.cfg.Name < b.cfg.Name {
			return -1
		}
		return 1
	})
	out := make([]LinkStats, 0, len(ls))
	for _, l := range ls {
		st := LinkStats{Name: l.cfg.Name, KeyBy: l.cfg.KeyBy}
		for d, sl := range l.dirs {
			if sl == nil {
				continue
			}
			ds := &LinkDirStats{Limit: sl.Limit(), LinkStats: sl.Stats()}
			if keys {
				ds.Keys = sl.Keys()
			}
			st.Dirs[d] = ds
		}
		out = append(out, st)
	}
	return out
}

// SetLinkLimit changes one direction of a link in service, for its live
// connections too, until the next reload. It returns an error, and changes
// nothing, for an unknown link, a direction the link does not limit, or an
// invalid limit.
func (s *Server) SetLinkLimit(name string, d Dir, ll shaper.LinkLimit) error {
	if err := ll.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	l := s.links[name]
	var sl *shaper.Link
	if l != nil {
		sl = l.dirs[d]
	}
	s.mu.Unlock()
	if l == nil {
		return fmt.Errorf("proxy: no link %q", name)
	}
	if sl == nil {
		return fmt.Errorf("proxy: link %q does not limit %s", name, d)
	}
	return sl.SetLimit(ll)
}

// loopStats sums the counters of the Server's shaping loops.
func (s *Server) loopStats() shaper.LoopStats {
	var sum shaper.LoopStats
	for _, l := range s.loops {
		st := l.Stats()
		sum.Tasks += st.Tasks
		sum.HandIns += st.HandIns
		sum.Wakes += st.Wakes
	}
	return sum
}
