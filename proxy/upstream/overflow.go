package upstream

import "errors"

// Overflow is where a listener sends a connection no server can take
// (a dial that returns [ErrNoServer]) or that admission refused with
// refuse: overflow: another upstream, or a fixed response. The zero
// value is no overflow: the client is reset.
type Overflow struct {
	// Upstream, if set, takes the connection, proxied as any other.
	Upstream Dialer
	// Response, if Upstream is nil, is written to the client (e.g. an
	// HTTP 503 notice page read from respond_file), which is then closed.
	Response []byte
}

// ErrOverflowBoth is returned by [NewOverflow] when given both an
// upstream and a response.
var ErrOverflowBoth = errors.New("upstream: overflow takes an upstream or a response, not both")

// NewOverflow returns the Overflow to upstream (a "host:port", dialed
// with opts) or, if upstream is "", to response. It returns an error
// wrapping [ErrOverflowBoth] if both are set, and NewStatic's errors for
// a bad upstream.
func NewOverflow(upstream string, response []byte, opts Options) (Overflow, error) {
	switch {
	case upstream != "" && len(response) > 0:
		return Overflow{}, ErrOverflowBoth
	case upstream != "":
		d, err := NewStatic(upstream, opts)
		if err != nil {
			return Overflow{}, err
		}
		return Overflow{Upstream: d}, nil
	}
	return Overflow{Response: response}, nil
}

// IsZero reports whether o is no overflow.
func (o Overflow) IsZero() bool { return o.Upstream == nil && len(o.Response) == 0 }
