package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluiceproxy/sluice/mp4probe"
	"github.com/sluiceproxy/sluice/shaper"
)

// Log keys (snake_case, shared by every log line of the package).
const (
	keyConnID   = "conn_id"
	keyListener = "listener"
	keyClient   = "client"
	keyUpstream = "upstream"
	keyErr      = "err"
	keyDur      = "dur"
	keyResult   = "result"
	keyBytesUp  = "bytes_up"
	keyBytesDn  = "bytes_down"
	keyMP4Plans = "mp4_plans"
	keyMP4Rate  = "mp4_rate_bytes_per_second"
	keyMP4Burst = "mp4_burst_bytes"
)

// Dir is a direction of a proxied connection.
type Dir int

const (
	// Up is client → upstream.
	Up Dir = iota
	// Down is upstream → client.
	Down
)

func (d Dir) String() string {
	if d == Up {
		return "up"
	}
	return "down"
}

// Results of a connection, as logged in its "conn done" line.
const (
	resultOK            = "ok"             // both directions ended with a half-close
	resultReset         = "reset"          // one side reset or broke; the other was reset too
	resultIdle          = "idle_timeout"   // no byte moved for the idle timeout
	resultShutdown      = "shutdown"       // closed when the drain timeout ran out
	resultUpstreamError = "upstream_error" // the upstream dial failed; the client was reset
	resultError         = "error"          // any other I/O error
	resultClosed        = "closed"         // closed through the admin API
)

// results lists every result, in the order metrics report them.
var results = [...]string{resultOK, resultReset, resultIdle, resultShutdown, resultUpstreamError, resultError, resultClosed}

// aLongTimeAgo is a non-zero time far in the past, used to make blocked I/O
// return at once.
var aLongTimeAgo = time.Unix(1, 0)

// monoEpoch anchors lastActive: durations since it use the monotonic clock.
var monoEpoch = time.Now()

// conn is one proxied connection.
//
// It has no context of its own (a context, its children map and an
// AfterFunc cost about 800 bytes per idle connection): abort records the
// first cause and puts both sockets' deadlines in the past, which unblocks
// every read, write and readiness wait of both pumps.
type conn struct {
	srv    *Server
	l      *listener
	cfg    *ListenerConfig // l's config when the conn was accepted
	stats  *listenerStats  // its listener's counters, by the name it was accepted under
	id     uint64
	client *net.TCPConn
	start  time.Time

	mu     sync.Mutex
	up     net.Conn      // set once dialed; guarded by mu until the pumps start
	cause  error         // first reason the conn was aborted; guarded by mu
	done   chan struct{} // made by the first Done, closed by abort; guarded by mu
	paced  bool          // SO_MAX_PACING_RATE is set on client; guarded by mu
	limits ConnLimits    // as last applied; guarded by mu

	// lastActive is when a byte last moved either way (or the conn was
	// accepted), in nanoseconds since monoEpoch; the server's idle reaper
	// reads it.
	lastActive atomic.Int64
	running    atomic.Int32 // pumps still running

	obs *mp4probe.Observer // set at accept when the listener paces MP4

	pumps [2]pump
}

// abort ends the conn for cause: the first cause wins and is what the
// conn's log line reports. It is safe to call from any goroutine, any number
// of times.
func (c *conn) abort(cause error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cause != nil {
		return
	}
	c.cause = cause
	if c.done != nil {
		close(c.done)
	}
	// Best effort: a socket that is already closed has nothing to unblock.
	_ = c.client.SetDeadline(aLongTimeAgo)
	if c.up != nil {
		_ = c.up.SetDeadline(aLongTimeAgo)
	}
}

// A conn is the context of its own gate waits: it is done once aborted.
// (A context.Context of its own would cost every idle connection its
// allocations; the done channel is only made for a conn that waits.)
var _ context.Context = (*conn)(nil)

func (c *conn) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c *conn) Value(any) any               { return nil }

func (c *conn) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
		if c.cause != nil {
			close(c.done)
		}
	}
	return c.done
}

func (c *conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cause != nil {
		return context.Canceled
	}
	return nil
}

// pacedGrant is how much rate a grant covers when the kernel paces the
// client socket. 10 ms gives 10 KB grants at 1 MB/s and 100 KB at 10 MB/s;
// 100 ms windows stay within 0.95–1.06 of the rate for a client on an
// Ethernet-MSS path (measured in docs/shaping.md). Whether the kernel also
// spreads a grant's packets depends on the path: on a path with a minimum
// RTT below a few milliseconds (loopback, a LAN) Linux sends a grant of up
// to 64 KB as one burst whatever the pacing rate; on a longer path it
// sends a few segments at a time at the rate (docs/shaping.md).
const pacedGrant = 10 * time.Millisecond

// unpacedGrant is how much rate a grant covers without kernel pacing: at
// least one chunk, so from 1.6 MB/s a grant is 5 ms of the rate (500 KB at
// 100 MB/s). A client receives each grant as one block, so a 100 ms window
// is within about one grant (±5%) of the rate. Against 1 ms grants it cut
// CPU at 100 MB/s by a third (docs/shaping.md); 8 ms grants cut more but
// put windows and the rate's error at the edge of their targets.
const unpacedGrant = 5 * time.Millisecond

// maxPacedRate is the highest down rate, in bytes per second, at which
// sluice asks the kernel to pace. At 100 MB/s the kernel's pacing stalled
// the socket for 40–60 ms in two 10-s runs of three (a 0.5× window, 0.7%
// short) on the benchmark machine, whatever the grant size; at 30 and
// 50 MB/s it never did. Above it, unpaced grants measured smooth
// (docs/shaping.md).
const maxPacedRate = 50_000_000

// pacingHeadroomPct is how far above the down rate SO_MAX_PACING_RATE is set.
const pacingHeadroomPct = 2

// maxPacedGrant caps a grant, in bytes: reached from 52 MB/s paced and
// from 105 MB/s unpaced. Paced grants of 768 KiB and 1 MiB at 100 MB/s cut
// CPU by a third but stalled the stream for 40–70 ms once in every 10 s
// run (a 0.6× window, 0.7% short); 512 KiB never did (measured in
// docs/shaping.md).
const maxPacedGrant = 512 << 10

// applyLimits sets the conn's gates (making them on first need), grant
// sizes and kernel pacing to lim. Connections of an unlimited listener
// carry no gate at all.
func (c *conn) applyLimits(lim *ConnLimits) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.limits = *lim
	pace := lim.KernelPacing && !lim.Down.Unlimited() && lim.Down.Rate <= maxPacedRate && spliceSupported
	for d, l := range [2]shaper.Limit{Up: lim.Up, Down: lim.Down} {
		p := &c.pumps[d]
		chunk := c.cfg.Chunk
		switch {
		case pace && Dir(d) == Down:
			chunk = max(chunk, min(int(l.Rate*int64(pacedGrant)/int64(time.Second)), maxPacedGrant))
			l.Burst = max(l.Burst, int64(chunk))
		case !l.Unlimited():
			chunk = max(chunk, min(int(l.Rate*int64(unpacedGrant)/int64(time.Second)), maxPacedGrant))
			l.Burst = max(l.Burst, int64(chunk))
		}
		p.chunk.Store(int64(chunk))
		if g := p.gate.Load(); g != nil {
			_ = g.SetLimit(l) // cannot fail: the Server validated l
		} else if !l.Unlimited() {
			p.gate.Store(shaper.NewGate(l, nil))
		}
	}
	if pace || c.paced {
		rate := uint64(math.MaxUint64) // the kernel's "no limit"
		if pace {
			// A little above the gate's rate: the gate stays the exact
			// limit on average, the kernel only spaces packets. At
			// exactly the rate, pacing's own rounding made 100 MB/s
			// come out 0.1–0.3% short (measured).
			rate = uint64(lim.Down.Rate) * (100 + pacingHeadroomPct) / 100
		}
		if err := setPacingRate(c.client, rate); err != nil {
			c.srv.log.Debug("set pacing rate", slog.Uint64(keyConnID, c.id), slog.Any(keyErr, err))
		}
		c.paced = pace
	}
}

func (c *conn) abortCause() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cause
}

// serve dials the upstream and starts both pumps; the last pump to end
// calls finish. serve's own goroutine ends once the pumps run, so an idle
// connection costs two small goroutine stacks, not also the dialer's deep
// one. The conn owns c.client and c.up.
func (c *conn) serve() {
	up, err := c.dialUpstream()
	if err == nil {
		c.mu.Lock()
		c.up = up
		if c.cause != nil { // aborted while dialing
			err = c.cause
		}
		c.mu.Unlock()
	}
	if err != nil {
		// Refused, unreachable or timed out: tell the client at once with
		// a reset rather than leaving it connected to nothing. (SetLinger
		// fails only on a socket already gone, which needs no reset.)
		_ = c.client.SetLinger(0)
		c.client.Close()
		if up != nil {
			up.Close()
		}
		result := resultUpstreamError
		if errors.Is(err, errShutdown) || errors.Is(context.Cause(c.srv.ctx), errShutdown) {
			result, err = resultShutdown, nil
		}
		c.logDone(result, err)
		c.srv.forget(c, result)
		return
	}
	c.touch()
	c.pumps[Up].init(c, Up, c.client, up)
	c.pumps[Down].init(c, Down, up, c.client)
	// A SetLimits or Reconfigure may store new limits between the load
	// and the apply, and apply them to this conn before it does: apply
	// until what was applied is still the listener's.
	for {
		lim := c.l.limits.Load()
		c.applyLimits(lim)
		if c.l.limits.Load() == lim {
			break
		}
	}
	c.running.Store(2)
	go c.pumps[Up].pump()
	go c.pumps[Down].pump()
}

// finish closes both sockets and logs the connection's summary line. It
// runs once, on the goroutine of the pump that ended last.
func (c *conn) finish() {
	result, err := c.result(c.pumps[Up].err, c.pumps[Down].err)
	if result != resultOK && result != resultIdle && result != resultShutdown {
		// Forward a reset as a reset: both sides learn the stream broke.
		_ = c.client.SetLinger(0)
		if tc, ok := c.up.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
	}
	c.client.Close()
	c.up.Close()
	if c.obs != nil {
		c.obs.Close() // gives back the metadata budget it held
	}
	c.logDone(result, err)
	c.srv.forget(c, result)
}

func (c *conn) dialUpstream() (net.Conn, error) {
	ctx, cancel := context.WithTimeout(c.srv.ctx, c.cfg.ConnectTimeout)
	defer cancel()
	return c.srv.dial(ctx, "tcp", c.cfg.Upstream)
}

// result names how the connection ended, and the error worth logging. The
// abort cause is the first failure: whatever the other pump saw after it is
// only the consequence of the abort.
func (c *conn) result(errUp, errDown error) (string, error) {
	cause := c.abortCause()
	switch {
	case errors.Is(cause, errIdleTimeout):
		return resultIdle, nil
	case errors.Is(cause, errShutdown):
		return resultShutdown, nil
	case errors.Is(cause, errClosed):
		return resultClosed, nil
	}
	err := errors.Join(errUp, errDown)
	if cause != nil {
		err = cause
	}
	switch {
	case err == nil:
		return resultOK, nil
	case isReset(err):
		return resultReset, err
	default:
		return resultError, err
	}
}

// touch records that bytes moved now.
func (c *conn) touch() {
	c.lastActive.Store(int64(time.Since(monoEpoch)))
}

// idleFor returns how long no byte has moved, as of now (nanoseconds since
// monoEpoch).
func (c *conn) idleFor(now time.Duration) time.Duration {
	return now - time.Duration(c.lastActive.Load())
}

// waitingForTokens reports whether a pump is held back by the conn's own
// limit: such a conn has bytes to move and is not idle, however long a
// grant takes at a low rate.
func (c *conn) waitingForTokens() bool {
	for i := range c.pumps {
		if c.pumps[i].inLink.Load() {
			return true
		}
		if g := c.pumps[i].gate.Load(); g != nil && g.Stats().Waiting {
			return true
		}
	}
	return false
}

func (c *conn) logDone(result string, err error) {
	level := slog.LevelInfo
	if err != nil && !isBenignClose(err) {
		level = slog.LevelWarn
	}
	if !c.srv.log.Enabled(context.Background(), level) {
		return
	}
	attrs := []slog.Attr{
		slog.Uint64(keyConnID, c.id),
		slog.String(keyListener, c.cfg.Name),
		slog.String(keyClient, c.client.RemoteAddr().String()),
		slog.String(keyUpstream, c.cfg.Upstream),
		slog.Int64(keyBytesUp, c.pumps[Up].bytes.Load()),
		slog.Int64(keyBytesDn, c.pumps[Down].bytes.Load()),
		slog.Duration(keyDur, time.Since(c.start)),
		slog.String(keyResult, result),
	}
	if pc := c.pumps[Down].pacer; pc != nil && pc.plans > 0 {
		// The MP4 plans the download followed; the last one's video rate
		// (bytes/s, or the default rate) and burst region, as known at the
		// end (a fragmented movie's grow with its fragments).
		rate := pc.last.Bitrate
		if pc.last.Movie != nil {
			rate = pc.last.Movie.Bitrate()
		}
		attrs = append(attrs, slog.Int(keyMP4Plans, pc.plans), slog.Int64(keyMP4Rate, rate),
			slog.Int64(keyMP4Burst, pc.last.BurstBytes()))
	}
	if err != nil {
		attrs = append(attrs, slog.Any(keyErr, err))
	}
	c.srv.log.LogAttrs(context.Background(), level, "conn done", attrs...)
}

// isBenignClose reports whether err is an ordinary way for a connection to
// end: EOF, a closed socket, our own deadlines, or a peer's reset.
func isBenignClose(err error) bool {
	return err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, os.ErrDeadlineExceeded) || isReset(err)
}

// isReset reports whether err says the peer reset or abandoned the stream.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ECONNABORTED)
}

// closeWrite half-closes w if it can (TCP), forwarding an EOF.
func closeWrite(w net.Conn) error {
	if cw, ok := w.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
