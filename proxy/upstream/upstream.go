package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/sluiceproxy/sluice/shaper"
)

// Options configure a [Dialer] or a [Pool].
type Options struct {
	// ConnectTimeout bounds each dial. Zero or negative means
	// DefaultConnectTimeout. A Pool measures it on Clock.
	ConnectTimeout time.Duration
	// DialContext dials a server (and a Pool's active checks). Nil means
	// a net.Dialer's.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Clock is a Pool's time: ejections, cooling, quota windows, check
	// rounds and connect timeouts. Nil means the real clock.
	Clock shaper.Clock
	// OnState, if set, is called once for each change of a Pool server's
	// [State], in order, outside the pool's lock, from whichever
	// goroutine made or noticed the change (a dial, a timer, the checks).
	// It must not block for long; it may call the pool.
	OnState func(StateChange)

	hooks *testHooks
}

// DefaultConnectTimeout bounds a dial when Options give none.
const DefaultConnectTimeout = 5 * time.Second

// Dialer opens a new connection's upstream socket. Implementations are
// safe for concurrent use. A [Target] (a [Pool] or a [Static]) is a
// Dialer that also hands out leases, which the proxy uses.
type Dialer interface {
	// Dial connects to a server for one client connection. It returns an
	// error wrapping ctx's or the dial's when no server could be reached
	// in time; the caller owns the returned conn.
	Dial(ctx context.Context) (net.Conn, error)
	// Addr names where Dial goes, for logs and the admin API.
	Addr() string
}

// Static is a Dialer to one "host:port". A host name is resolved at every
// dial, so a resolved set may change. It is a pool of one with no health,
// quota or retry: its leases hold nothing.
type Static struct {
	addr    string
	timeout time.Duration
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Interface guard.
var _ Dialer = (*Static)(nil)

// ErrNoAddress is returned by NewStatic for an empty address.
var ErrNoAddress = errors.New("upstream: an address is required")

// NewStatic returns a Dialer to addr, a "host:port". It returns an error
// wrapping [ErrNoAddress] for an empty addr, and one naming addr when it
// is not a host and a port.
func NewStatic(addr string, opts Options) (*Static, error) {
	if addr == "" {
		return nil, ErrNoAddress
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("upstream %q: want host:port: %w", addr, err)
	}
	s := &Static{addr: addr, timeout: opts.ConnectTimeout, dial: opts.DialContext}
	if s.timeout <= 0 {
		s.timeout = DefaultConnectTimeout
	}
	if s.dial == nil {
		var d net.Dialer
		s.dial = d.DialContext
	}
	return s, nil
}

// Dial connects to the address within the connect timeout.
func (s *Static) Dial(ctx context.Context) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.dial(ctx, "tcp", s.addr)
}

// DialFor is Dial, returning a [Lease] whose methods do nothing but
// Conn, Addr and Retry (which returns [ErrNoRetry]).
func (s *Static) DialFor(ctx context.Context, _ Request) (*Lease, error) {
	c, err := s.Dial(ctx)
	if err != nil {
		return nil, err
	}
	return &Lease{conn: c, addr: s.addr}, nil
}

// Addr returns the address.
func (s *Static) Addr() string { return s.addr }
