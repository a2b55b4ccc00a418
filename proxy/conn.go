package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluiceproxy/sluice/mp4probe"
	"github.com/sluiceproxy/sluice/proxy/admit"
	"github.com/sluiceproxy/sluice/proxy/upstream"
)

// Log keys (snake_case, shared by every log line of the package).
const (
	keyConnID   = "conn_id"
	keyListener = "listener"
	keyClient   = "client"
	keyUpstream = "upstream"
	keyErr      = "err"
	keyReason   = "reason"
	keyLimit    = "limit"
	keyDur      = "dur"
	keyResult   = "result"
	keyBytesUp  = "bytes_up"
	keyBytesDn  = "bytes_down"
	keyMP4Plans = "mp4_plans"
	keyMP4Rate  = "mp4_rate_bytes_per_second"
	keyMP4Burst = "mp4_burst_bytes"
)

// Dir is a direction of a proxied connection.
type Dir uint8

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
	resultRefused       = "refused"        // waited in a limit's queue and got no slot in time
)

// results lists every result, in the order metrics report them.
var results = [...]string{resultOK, resultReset, resultIdle, resultShutdown, resultUpstreamError, resultError, resultClosed, resultRefused}

// aLongTimeAgo is a non-zero time far in the past, used to make blocked I/O
// return at once.
var aLongTimeAgo = time.Unix(1, 0)

// conn is one proxied connection.
//
// It has no context of its own (a context, its children map and an
// AfterFunc cost about 800 bytes per idle connection): abort records the
// first cause and puts both sockets' deadlines in the past, which unblocks
// every read, write and readiness wait of both pumps.
type conn struct {
	srv *Server
	l   *listener
	cfg *ListenerConfig // l's config when the conn was accepted
	rt  *route          // l's route when the conn was accepted: its dialer, admission, counters

	hold   admit.Hold     // what admission gave it (zero: nothing); forget releases it
	wait   *admitWait     // what it waits for before dialing (awaitAdmission); nil if nothing
	stats  *listenerStats // its listener's counters, by the name it was accepted under
	id     uint64
	client *net.TCPConn
	start  time.Duration // when it was accepted, since the Server's epoch

	lease *upstream.Lease // the server's, once dialed; ended by finish or on an early failure

	up     net.Conn      // set once dialed; guarded by mu until the pumps start
	cause  error         // first reason the conn was aborted; guarded by mu
	done   chan struct{} // made by the first Done, closed by abort; guarded by mu
	limits *ConnLimits   // as last applied, never changed in place; guarded by mu

	// lastActive is when a byte last moved either way (or the conn was
	// accepted), in nanoseconds since the Server's epoch; its idle reaper
	// reads it.
	lastActive atomic.Int64

	mu         sync.Mutex
	running    atomic.Int32 // pumps still running
	paced      bool         // SO_MAX_PACING_RATE is set on client; guarded by mu
	overflowed bool         // sent to the overflow upstream in its first exchange (once at most)
	detached   bool         // client and up are closed, their sockets kept in the pumps' fd (park.go); guarded by mu
	ended      bool         // finish has begun: limits no longer apply; guarded by mu

	obs *mp4probe.Observer // set at accept when the listener paces MP4

	pumps [2]pump
}

// admitWait is what an admitted connection waits for before its upstream
// is dialed: a place in a limit's queue, a delay, or both. Out of line:
// most connections wait for neither, and every byte of conn is paid per
// idle connection (docs/internals.md).
type admitWait struct {
	waiter    *admit.Waiter // a limit's queue to wait in; nil if none
	queueWait time.Duration // how long waiter may wait
	delay     time.Duration // how long to hold the conn before dialing
}

// A connection's life, in the order it happens: the accept loop takes
// it; the listener's admission step decides whether it is served; newConn
// registers it (stats, links, MP4 observer); serve dials its upstream and
// starts one pump per direction (pump.go); each pump forwards its source's
// end as a half-close once every granted byte is written; the last pump
// to end calls finish, which closes both sockets, logs the connection's
// one line, and forget, which unregisters it and releases what admission
// gave it.

// accept runs one listener's accept loop until the listener is closed.
func (s *Server) accept(l *listener) {
	defer s.acceptWG.Done()
	var backoff time.Duration
	for {
		if !s.waitRoom(l) {
			return
		}
		c, err := l.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors or memory, or an aborted handshake: back
			// off like net/http, without spinning, and keep serving.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept", slog.String(keyListener, l.name()), slog.Any(keyErr, err),
				slog.Duration("retry_in", backoff), slog.Bool("fd_exhausted", isFDExhausted(err)))
			t, wake := s.clock.NewTimer(backoff)
			select {
			case <-wake:
			case <-s.ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		backoff = 0
		rt := l.route.Load()
		d, ok := s.admit(l, rt, c)
		if !ok {
			continue // refused, and given what the listener's Refuse says
		}
		cn := s.newConn(l, rt, c, d)
		if cn == nil {
			if d.Waiter != nil && !d.Waiter.Cancel() {
				d.Waiter.Hold().Release()
			}
			d.Release()
			_ = c.SetLinger(0) // refuse with a reset: sluice is closing
			c.Close()
			continue
		}
		go cn.serve()
	}
}

// newConn registers an admitted connection on rt, the route it was
// admitted by, or returns nil when the server is closing.
func (s *Server) newConn(l *listener, rt *route, c *net.TCPConn, d admit.Decision) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx.Err() != nil {
		return nil
	}
	cfg := rt.cfg
	st := s.statsFor(cfg.Name)
	st.accepted.Add(1)
	cn := &conn{srv: s, l: l, cfg: cfg, rt: rt, hold: d.Hold, stats: st, id: s.nextID.Add(1), client: c, start: s.clock.Now().Sub(s.epoch)}
	if d.Waiter != nil || d.Delay > 0 {
		cn.wait = &admitWait{waiter: d.Waiter, delay: d.Delay}
		if d.Waiter != nil {
			cn.wait.queueWait = s.queueTimeoutLocked(d.Limit)
		}
	}
	cn.limits = l.limits.Load() // what serve applies once the upstream is dialed; listed meanwhile
	if cn.obs = st.mp4.observer(cfg.MP4); cn.obs != nil {
		cn.pumps[Up].pacer, cn.pumps[Down].pacer = &pacer{obs: cn.obs}, &pacer{obs: cn.obs}
	}
	s.joinLinks(cn)
	cn.touch()
	s.conns[cn] = struct{}{}
	if len(s.conns) == s.parkMinConns && s.watch != nil {
		select { // the reaper's sweep starts parking idle directions
		case s.sweepNow <- struct{}{}:
		default:
		}
	}
	return cn
}

// serve dials the upstream and starts both pumps; the last pump to end
// calls finish. serve's own goroutine ends once the pumps run, so an idle
// connection costs two small goroutine stacks, not also the dialer's deep
// one. The conn owns c.client and c.up.
func (c *conn) serve() {
	if err := c.awaitAdmission(); err != nil {
		c.endEarly(err)
		return
	}
	up, err := c.dial()
	if err != nil {
		if errors.Is(err, errOverflowed) {
			return // written the overflow response, or reset
		}
		// Refused, unreachable, timed out, or no server answered: tell the
		// client at once with a reset rather than leaving it connected to
		// nothing. (SetLinger fails only on a socket already gone, which
		// needs no reset.)
		_ = c.client.SetLinger(0)
		c.client.Close()
		c.mu.Lock()
		if c.up != nil {
			c.up.Close() // a server that failed its first exchange
		}
		c.mu.Unlock()
		result := resultUpstreamError
		switch {
		case errors.Is(err, errShutdown) || errors.Is(context.Cause(c.srv.ctx), errShutdown):
			result, err = resultShutdown, nil
		case c.abortCause() != nil: // idle, closed by the admin API, drained
			result, err = c.result(nil, nil)
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

// endLease reports the end of the connection to its server's pool: the
// bytes it moved (for a bytes quota), and whether it failed before its
// server's first byte: the client sent bytes, the server answered none,
// and sluice did not end the connection itself.
func (c *conn) endLease() {
	if c.lease == nil {
		return
	}
	up, down := c.pumps[Up].bytes.Load(), c.pumps[Down].bytes.Load()
	if c.rt.pool != nil && c.rt.pool.bytesQuota {
		c.lease.AddBytes(up + down)
	}
	if down == 0 && up > 0 && c.abortCause() == nil {
		c.lease.Failed()
		return
	}
	c.lease.Done()
}

// endEarly ends a connection that never reached its upstream: refused
// after waiting in a limit's queue (it then gets what its listener's
// Refuse says), or aborted while it waited.
func (c *conn) endEarly(err error) {
	if errors.Is(err, errRefused) {
		c.logDone(resultRefused, nil)
		c.srv.forget(c, resultRefused)
		c.srv.refuse(c.l, c.rt, c.client)
		return
	}
	c.client.Close()
	result, err := c.result(nil, nil)
	c.logDone(result, err)
	c.srv.forget(c, result)
}

// finish closes both sockets and logs the connection's summary line. It
// runs once, on the goroutine of the pump that ended last.
func (c *conn) finish() {
	result, err := c.result(c.pumps[Up].err, c.pumps[Down].err)
	c.mu.Lock()
	c.ended = true // a SetLimits that listed c before forget applies nothing
	if c.paced {
		c.paced = false
		c.srv.pacedConns.Add(-1)
	}
	c.mu.Unlock()
	if c.client == nil { // its sockets were lost attaching them again (park.go)
		c.endLease()
		c.logDone(result, err)
		c.srv.forget(c, result)
		return
	}
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
	c.endLease()
	c.logDone(result, err)
	c.srv.forget(c, result)
}

// forget unregisters an ended connection and adds it to its listener's
// counters, in one step under s.mu, so a scrape never counts it twice or
// not at all.
func (s *Server) forget(c *conn, result string) {
	c.leaveLinks()
	c.hold.Release() // the zero Hold holds nothing
	s.mu.Lock()
	defer s.mu.Unlock()
	c.stats.ended(c, result)
	delete(s.conns, c)
	if len(s.conns) == 0 && s.connsDone != nil {
		close(s.connsDone)
		s.connsDone = nil
	}
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
	// A detached conn has no Go socket: the pump that attaches them sets
	// their deadlines.
	if c.client != nil {
		_ = c.client.SetDeadline(aLongTimeAgo)
	}
	if c.up != nil {
		_ = c.up.SetDeadline(aLongTimeAgo)
	}
	c.wakeParked() // parked directions have no wait to unblock: start them
}

// attached makes sure c's sockets are Go's, attaching them if c was
// detached (park.go). A pump calls it before it touches them. It returns
// the cause if they were lost.
func (c *conn) attached() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.detached {
		return c.attach()
	}
	if c.client == nil {
		return c.cause
	}
	return nil
}

// clientAddrLocked returns the client's address, also while c is
// detached. Requires c.mu held.
func (c *conn) clientAddrLocked() net.Addr {
	switch {
	case c.client != nil:
		return c.client.RemoteAddr()
	case c.detached:
		return peerOf(c.pumps[Up].fd)
	}
	return nil
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

func (c *conn) abortCause() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cause
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
	c.lastActive.Store(int64(c.srv.clock.Now().Sub(c.srv.epoch)))
}

// idleFor returns how long no byte has moved, as of now (nanoseconds since
// the Server's epoch).
func (c *conn) idleFor(now time.Duration) time.Duration {
	return now - time.Duration(c.lastActive.Load())
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
		slog.String(keyClient, addrString(c.clientAddr())),
		slog.String(keyUpstream, c.cfg.Upstream),
		slog.Int64(keyBytesUp, c.pumps[Up].bytes.Load()),
		slog.Int64(keyBytesDn, c.pumps[Down].bytes.Load()),
		slog.Duration(keyDur, c.srv.clock.Now().Sub(c.srv.epoch)-c.start),
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

// closeWrite half-closes w if it can (TCP), forwarding an EOF. A socket
// no longer connected has nothing left to half-close: a pool's first
// exchange forwards a client's EOF before the pump does, and the server
// may have closed in turn.
func closeWrite(w net.Conn) error {
	if cw, ok := w.(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); !errors.Is(err, syscall.ENOTCONN) {
			return err
		}
	}
	return nil
}

func isFDExhausted(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// clientAddr is clientAddrLocked, taking c.mu.
func (c *conn) clientAddr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.clientAddrLocked()
}

// clientAddr is c's peer address, an IPv4-mapped one as IPv4, for
// admission; the zero value if unknown.
func clientAddr(c *net.TCPConn) netip.AddrPort {
	a, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := a.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
