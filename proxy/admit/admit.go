package admit

import (
	"net/netip"
	"time"
)

// Conn is what admission knows of a new connection.
type Conn struct {
	// Listener is the name of the listener that accepted it.
	Listener string
	// Client is the client's address; an IPv4-mapped IPv6 address is
	// its IPv4 address. The zero value means unknown.
	Client netip.AddrPort
}

// Verdict is what admission decided.
type Verdict uint8

const (
	// Admit lets the connection through.
	Admit Verdict = iota
	// Refuse turns it away; Decision.Reason says why.
	Refuse
)

func (v Verdict) String() string {
	if v == Admit {
		return "admit"
	}
	return "refuse"
}

// Decision is a [Verdict] and what goes with it.
type Decision struct {
	Verdict Verdict
	// Reason names what refused the connection (a limit, a ban, a deny
	// list), for logs and metrics; empty when admitted.
	Reason string
	// Hold is what an admitted connection holds while it lives (a slot of
	// a connection limit); nil when nothing.
	Hold Hold
}

// Release gives back what the connection held, if anything. Call it once,
// when the connection ends, whichever way it ends.
func (d Decision) Release() {
	if d.Hold != nil {
		d.Hold.Release()
	}
}

// Hold is something an admitted connection holds until it ends.
type Hold interface {
	// Release gives it back. It is called once.
	Release()
}

// Admitter decides on new connections. Implementations are safe for
// concurrent use: every accept loop asks.
type Admitter interface {
	// Admit decides on c at now. It does not block.
	Admit(c Conn, now time.Time) Decision
}

// All admits every connection and holds nothing: a listener with no
// admission policy.
var All Admitter = all{}

type all struct{}

func (all) Admit(Conn, time.Time) Decision { return Decision{} }
