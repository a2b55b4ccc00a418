package proxy

// What a controller of a running Server (the admin API of package
// proxy/admin) asks of it beyond Stats, Conns, Links and the setters.

// Conn returns the live connection with this id, and false if there is
// none.
func (s *Server) Conn(id uint64) (ConnInfo, bool) {
	c := s.conn(id)
	if c == nil {
		return ConnInfo{}, false
	}
	return c.info(), true
}

// ProcessStats are gauges of what the shaped connections of every Server
// in the process share.
type ProcessStats struct {
	// ReadAhead is the memory, in bytes, that shaped connections hold in
	// bytes read ahead of their grants; at most AheadBudget.
	ReadAhead int64
	// Pipes is the number of pipes shaped connections hold now; at most
	// ShapedPipes, two descriptors each.
	Pipes int64
	// LoopDirs is the number of connection directions the shaping loops
	// serve now, those waiting for a link grant included; always 0 where
	// there are no shaping loops (outside Linux).
	LoopDirs int64
	// Parked is the number of connection directions parked now: idle,
	// with no goroutine of their own (docs/internals.md).
	Parked int64
	// Detached is the number of idle connections whose sockets are
	// detached from Go now: both directions parked for a second.
	Detached int64
}

// Process returns the process-wide gauges. They are the same for every
// Server; the method exists so that a controller needs only its Server.
func (s *Server) Process() ProcessStats {
	return ProcessStats{
		ReadAhead: AheadBudget - aheadBudget.Load(),
		Pipes:     ShapedPipes - pipeBudget.Load(),
		LoopDirs:  s.loopStats().Tasks,
		Parked:    int64(s.ParkedDirections()),
		Detached:  int64(s.DetachedConns()),
	}
}
