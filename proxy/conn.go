package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
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
)

// aLongTimeAgo is a non-zero time far in the past, used to make blocked I/O
// return at once.
var aLongTimeAgo = time.Unix(1, 0)

// monoEpoch anchors lastActive: durations since it use the monotonic clock.
var monoEpoch = time.Now()

// conn is one proxied connection. Its two pumps share ctx: cancelling it
// (with a cause) unblocks every read, write and wait of both.
type conn struct {
	srv    *Server
	l      *listener
	id     uint64
	client *net.TCPConn
	up     net.Conn
	start  time.Time

	ctx    context.Context
	cancel context.CancelCauseFunc

	// lastActive is when a byte last moved either way, in nanoseconds
	// since monoEpoch.
	lastActive atomic.Int64
	idleTimer  *time.Timer

	pumps [2]pump
}

// serve dials the upstream, runs both pumps, closes both sockets and logs
// the connection's one summary line. It owns c.client and c.up.
func (c *conn) serve() {
	defer c.srv.forget(c)
	defer c.cancel(nil)

	up, err := c.dialUpstream()
	if err != nil {
		// Refused, unreachable or timed out: tell the client at once with
		// a reset rather than leaving it connected to nothing.
		c.client.SetLinger(0)
		c.client.Close()
		result := resultUpstreamError
		if errors.Is(context.Cause(c.ctx), errShutdown) {
			result = resultShutdown
		}
		c.logDone(result, err)
		return
	}
	c.up = up

	stop := context.AfterFunc(c.ctx, func() {
		c.client.SetDeadline(aLongTimeAgo)
		c.up.SetDeadline(aLongTimeAgo)
	})
	c.touch()
	if idle := c.l.cfg.IdleTimeout; idle > 0 {
		c.idleTimer = time.AfterFunc(idle, c.checkIdle)
	}

	c.pumps[Up].init(c, Up, c.client, c.up)
	c.pumps[Down].init(c, Down, c.up, c.client)
	errc := make(chan error, 1)
	go c.pumps[Up].pump(errc)
	errDown := c.pumps[Down].run()
	errUp := <-errc

	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	stop()
	result, err := c.result(errUp, errDown)
	if result != resultOK && result != resultIdle && result != resultShutdown {
		// Forward a reset as a reset: both sides learn the stream broke.
		c.client.SetLinger(0)
		if tc, ok := c.up.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
	}
	c.client.Close()
	c.up.Close()
	c.logDone(result, err)
}

func (c *conn) dialUpstream() (net.Conn, error) {
	ctx, cancel := context.WithTimeout(c.ctx, c.l.cfg.ConnectTimeout)
	defer cancel()
	return c.srv.dial(ctx, "tcp", c.l.cfg.Upstream)
}

// result names how the connection ended, and the error worth logging. The
// conn's context cause is the first failure: whatever the other pump saw
// after it is only the consequence of the cancel.
func (c *conn) result(errUp, errDown error) (string, error) {
	cause := context.Cause(c.ctx)
	switch {
	case errors.Is(cause, errIdleTimeout):
		return resultIdle, nil
	case errors.Is(cause, errShutdown):
		return resultShutdown, nil
	}
	err := errors.Join(errUp, errDown)
	if cause != nil && !errors.Is(cause, context.Canceled) {
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

// checkIdle runs on the idle timer: it closes the connection if nothing
// moved for the idle timeout, else re-arms for the time left. The timer is
// reset at most once per timeout, never per chunk.
func (c *conn) checkIdle() {
	idle := c.l.cfg.IdleTimeout
	quiet := time.Since(monoEpoch) - time.Duration(c.lastActive.Load())
	if quiet >= idle {
		c.cancel(errIdleTimeout)
		return
	}
	c.idleTimer.Reset(idle - quiet)
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
		slog.String(keyListener, c.l.cfg.Name),
		slog.String(keyClient, c.client.RemoteAddr().String()),
		slog.String(keyUpstream, c.l.cfg.Upstream),
		slog.Int64(keyBytesUp, c.pumps[Up].bytes.Load()),
		slog.Int64(keyBytesDn, c.pumps[Down].bytes.Load()),
		slog.Duration(keyDur, time.Since(c.start)),
		slog.String(keyResult, result),
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
