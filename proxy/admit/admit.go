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
	// Queue makes it wait for a connection slot: Decision.Waiter says
	// when it has one.
	Queue
)

func (v Verdict) String() string {
	switch v {
	case Admit:
		return "admit"
	case Queue:
		return "queue"
	}
	return "refuse"
}

// Decision is a [Verdict] and what goes with it.
type Decision struct {
	Verdict Verdict
	// Reason says why the connection was refused: "deny", "ban",
	// "conns", "queue_full", "rate" or "window"; empty otherwise.
	Reason string
	// Limit names the limit that refused, queued or delayed the
	// connection; empty when none did alone (admitted by all, allowed,
	// denied, banned).
	Limit string
	// Delay is how long an admitted connection is to be held before it is
	// served (a rate's burst beyond its delay); zero for at once.
	Delay time.Duration
	// Waiter is set with the Queue verdict: the connection has a slot
	// once Ready is closed, or gives up with Cancel.
	Waiter *Waiter
	// Hold is what an admitted connection holds while it lives (a slot of
	// a connection limit); the zero value when nothing.
	Hold Hold
}

// Release gives back what the connection held, if anything. Call it once,
// when the connection ends, whichever way it ends.
func (d Decision) Release() { d.Hold.Release() }

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
