package upstream

import (
	"strconv"
	"time"
)

// State is what a server of a [Pool] may do now. Only an [Up] server takes
// new connections (but see [Pool.DialFor] on a pool whose servers are all
// ejected). When several causes apply, the state is the first of
// Draining, Down, Ejected, Cooling.
type State uint8

const (
	// Up: the server takes new connections.
	Up State = iota
	// Down: active checks failed Fall times in a row; it is up again
	// after Rise passes in a row.
	Down
	// Ejected: passive failures (failed dials, connections failed
	// before their first byte) took it out until its ejection ends.
	Ejected
	// Cooling: its quota for the window is spent, or it answered 429/503
	// and its Retry-After has not passed. It is healthy, only not to be
	// asked now.
	Cooling
	// Draining: drained by an operator ([Pool.Drain]) or removed by a
	// reload ([Pool.Update]); its connections go on, it takes no new ones.
	Draining
)

func (s State) String() string {
	switch s {
	case Up:
		return "up"
	case Down:
		return "down"
	case Ejected:
		return "ejected"
	case Cooling:
		return "cooling"
	case Draining:
		return "draining"
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// Reasons a [StateChange] gives.
const (
	ReasonCheck      = "check"       // an active check's result (Down, or Up after Rise passes)
	ReasonFailures   = "failures"    // passive failures ejected it
	ReasonSuccess    = "success"     // a connection succeeded while it was ejected
	ReasonQuota      = "quota"       // its quota for the window is spent
	ReasonRetryAfter = "retry_after" // it answered 429/503, or was cooled by Pool.Cool
	ReasonExpired    = "expired"     // an ejection, a cooling or a quota window ended
	ReasonDrain      = "drain"       // Pool.Drain
	ReasonEnable     = "enable"      // Pool.Enable
	ReasonRemoved    = "removed"     // a reload removed it
	ReasonReload     = "reload"      // a reload brought it back or changed its quota
)

// StateChange reports that a server's [State] changed. A [Pool] reports
// each change once, when it happens (on its clock), never per connection.
type StateChange struct {
	Pool   string    // the pool's name
	Server string    // the server's address
	From   State     // the state it left
	To     State     // the state it is in now
	At     time.Time // when, on the pool's clock
	// Until is when an Ejected or Cooling state ends, as known now; zero
	// for the others.
	Until time.Time
	// Reason is one of the Reason constants: what caused the change.
	Reason string
	// Err is the last check error (to Down) or failure (to Ejected);
	// nil otherwise.
	Err error
}

// Stats is a snapshot of a [Pool].
type Stats struct {
	Name    string
	Balance Balance
	// Picks counts connections given a server (first tries and retries).
	Picks uint64
	// Retries counts tries of another server after a failed one.
	Retries uint64
	// NoServer counts dials that found no server able to take a
	// connection ([ErrNoServer]): the proxy's overflow events.
	NoServer uint64
	// EjectedPicks counts connections given to an ejected server because
	// no server was up (see [Pool.DialFor]).
	EjectedPicks uint64
	// Leaked counts leases collected by the garbage collector without
	// having been ended: a bug in the caller, made harmless (the lease's
	// connection was released then).
	Leaked uint64
	// Servers are the pool's servers in configuration order, then those a
	// reload removed that still have connections.
	Servers []ServerStats
}

// ServerStats is a snapshot of one server of a [Pool].
type ServerStats struct {
	Address string
	Weight  int
	Backup  bool
	State   State
	// Active is how many connections the server has now.
	Active int64
	// Total counts the connections it was given, failed dials included.
	Total uint64
	// Failures counts its passive failures: failed dials and connections
	// reported failed before their first byte.
	Failures uint64
	// ConsecutiveFailures counts those since its last success.
	ConsecutiveFailures int
	// Quota is its quota's window; zero when it has none.
	Quota QuotaStats
	// CoolingUntil is when it stops cooling (a Retry-After or a spent
	// quota); zero when not cooling.
	CoolingUntil time.Time
	// EjectedUntil is when its ejection ends; zero when not ejected.
	EjectedUntil time.Time
	// LastCheck is when its last active check ended; zero if never.
	LastCheck time.Time
	// LastCheckErr is why its last active check failed; "" if it passed.
	LastCheckErr string
}

// QuotaStats is a server's use of its [Quota] in the current window.
type QuotaStats struct {
	Conns, ConnsLimit int64 // connections taken in the window, and the limit (0: none)
	Bytes, BytesLimit int64 // bytes reported in the window, and the limit (0: none)
	// Reset is when the window ends; zero when no window is open.
	Reset time.Time
}
