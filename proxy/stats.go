package proxy

import (
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"time"
)

// listenerStats are a listener name's counters. The counters of ended
// connections live here; those of live connections are read from the
// connections themselves when asked for, so a pump never touches shared
// memory per grant.
type listenerStats struct {
	accepted atomic.Uint64
	results  [len(results)]atomic.Uint64
	bytes    [2]atomic.Int64 // moved by ended connections, per Dir
	waited   [2]atomic.Int64 // nanoseconds ended connections waited for tokens, per Dir
	mp4      mp4State

	admissions    admissionCounts // decisions by limit and verdict
	refusedBy     admissionCounts // refusals by reason
	queueTimeouts atomic.Uint64
	overflowed    atomic.Uint64
	acceptPaused  atomic.Uint64
}

// statsFor returns the counters of a listener name, making them on first
// use; s.mu is held.
func (s *Server) statsFor(name string) *listenerStats {
	st := s.stats[name]
	if st == nil {
		st = &listenerStats{}
		s.stats[name] = st
	}
	return st
}

// ended adds an ended connection to the counters; the Server's mu is held.
func (st *listenerStats) ended(c *conn, result string) {
	if i := slices.Index(results[:], result); i >= 0 {
		st.results[i].Add(1)
	}
	for d := range c.pumps {
		st.bytes[d].Add(c.pumps[d].bytes.Load())
		if g := c.pumps[d].gate.Load(); g != nil {
			st.waited[d].Add(int64(g.Stats().Waited))
		}
	}
	if pc := c.pumps[Down].pacer; pc != nil {
		st.mp4.waited.Add(pc.waited.Load())
		st.mp4.paced.Add(pc.paced.Load())
	}
}

// ListenerStats are a listener's counters since the Server started, live
// connections included. They survive reconfiguration under the same name.
type ListenerStats struct {
	Name string
	// Addr is the bound address; empty for a listener that is gone.
	Addr string
	// Upstream is where new connections go; empty for a listener that is gone.
	Upstream string
	// Limits are the current per-connection limits.
	Limits ConnLimits
	// Chunk is the grant size of the listener's new connections, in bytes;
	// 0 for a listener that is gone.
	Chunk int
	// Active is the number of live connections accepted under this name.
	Active int
	// Accepted counts connections accepted.
	Accepted uint64
	// Ended counts ended connections by result ("ok", "reset",
	// "idle_timeout", "shutdown", "upstream_error", "error", "closed",
	// "refused").
	Ended map[string]uint64
	// Bytes moved, per direction ([Up], [Down]).
	Bytes [2]int64
	// Waited is the time pumps spent waiting for tokens, per direction.
	Waited [2]time.Duration
	// Waiting is the number of directions of live connections waiting for
	// tokens now, per direction.
	Waiting [2]int
	// MP4Enabled reports whether the listener paces MP4 now; MP4 are its
	// counters.
	MP4Enabled bool
	MP4        MP4Stats
	// Admission are the listener's admission counters.
	Admission AdmissionStats
}

// Stats returns the counters of every listener name the Server has served,
// current listeners first in config order, then removed ones by name.
func (s *Server) Stats() []ListenerStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	byName := make(map[string]*ListenerStats, len(s.stats))
	out := make([]ListenerStats, 0, len(s.stats))
	add := func(name string) *ListenerStats {
		st := s.stats[name]
		ls := ListenerStats{Name: name, Accepted: st.accepted.Load(), Ended: make(map[string]uint64, len(results))}
		for i, r := range results {
			ls.Ended[r] = st.results[i].Load()
		}
		for d := range ls.Bytes {
			ls.Bytes[d] = st.bytes[d].Load()
			ls.Waited[d] = time.Duration(st.waited[d].Load())
		}
		ls.Admission = AdmissionStats{Decisions: st.admissions.snapshot(), Refused: map[string]uint64{},
			QueueTimeouts: st.queueTimeouts.Load(), Overflowed: st.overflowed.Load(), AcceptPaused: st.acceptPaused.Load()}
		for k, n := range st.refusedBy.snapshot() {
			ls.Admission.Refused[k[0]] = n
		}
		ls.MP4 = st.mp4.snapshot()
		out = append(out, ls)
		return &out[len(out)-1]
	}
	for _, l := range s.listeners {
		cfg := l.config()
		ls := add(cfg.Name)
		ls.Addr, ls.Upstream, ls.Limits = l.ln.Addr().String(), cfg.Upstream, *l.limits.Load()
		ls.Chunk = cfg.Chunk
		ls.MP4Enabled = cfg.MP4.Enabled
		ls.Admission.Tarpitted = l.tarpitted.Load()
	}
	var gone []string
	for name := range s.stats {
		if !slices.ContainsFunc(out, func(ls ListenerStats) bool { return ls.Name == name }) {
			gone = append(gone, name)
		}
	}
	slices.Sort(gone)
	for _, name := range gone {
		add(name)
	}
	for i := range out {
		byName[out[i].Name] = &out[i]
	}
	for c := range s.conns {
		ls := byName[c.cfg.Name]
		ls.Active++
		if pc := c.pumps[Down].pacer; pc != nil {
			ls.MP4.Waited += time.Duration(pc.waited.Load())
			ls.MP4.PacedBytes += pc.paced.Load()
		}
		for d := range c.pumps {
			ls.Bytes[d] += c.pumps[d].bytes.Load()
			if g := c.pumps[d].gate.Load(); g != nil {
				gs := g.Stats()
				ls.Waited[d] += gs.Waited
				if gs.Waiting {
					ls.Waiting[d]++
				}
			}
		}
	}
	return out
}

// ConnInfo describes a live connection.
type ConnInfo struct {
	ID       uint64
	Listener string
	Client   string
	Upstream string
	Start    time.Time
	// Bytes moved, per direction ([Up], [Down]).
	Bytes [2]int64
	// Limits are the connection's current limits; a zero Rate is none.
	Limits ConnLimits
	// Chunk is the connection's grant size, in bytes.
	Chunk int
	// Waiting reports, per direction, whether the pump waits for tokens, of
	// its own limit or a link's.
	Waiting [2]bool
}

// Conns returns the live connections, in no particular order.
func (s *Server) Conns() []ConnInfo {
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	out := make([]ConnInfo, 0, len(conns))
	for _, c := range conns {
		out = append(out, c.info())
	}
	return out
}

func (c *conn) info() ConnInfo {
	ci := ConnInfo{ID: c.id, Listener: c.cfg.Name,
		Upstream: c.cfg.Upstream, Start: c.srv.epoch.Add(c.start), Chunk: c.cfg.Chunk}
	c.mu.Lock()
	ci.Client = addrString(c.clientAddrLocked())
	ci.Limits = *c.limits
	c.mu.Unlock()
	for d := range c.pumps {
		ci.Bytes[d] = c.pumps[d].bytes.Load()
		ci.Waiting[d] = c.pumps[d].inLink.Load()
		if g := c.pumps[d].gate.Load(); g != nil && !ci.Waiting[d] {
			ci.Waiting[d] = g.Stats().Waiting
		}
	}
	return ci
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// conn returns the live connection with this id, or nil.
func (s *Server) conn(id uint64) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if c.id == id {
			return c
		}
	}
	return nil
}

// ErrNoConn is returned for a connection id that is not live.
var ErrNoConn = fmt.Errorf("proxy: no such connection")

// CloseConn closes a live connection at once; its result is "closed".
func (s *Server) CloseConn(id uint64) error {
	c := s.conn(id)
	if c == nil {
		return ErrNoConn
	}
	c.abort(errClosed)
	return nil
}

// SetConnLimits changes one live connection's limits, within one chunk's
// time. They hold until the connection ends or its listener's limits
// change (SetLimits or a Reconfigure that changes them).
func (s *Server) SetConnLimits(id uint64, lim ConnLimits) error {
	if err := lim.validate(); err != nil {
		return err
	}
	c := s.conn(id)
	if c == nil {
		return ErrNoConn
	}
	c.applyLimits(&lim)
	return nil
}
