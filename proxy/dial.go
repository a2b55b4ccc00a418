package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/sluiceproxy/sluice/proxy/upstream"
)

// errOverflowed: the connection got its listener's overflow response and
// is ended.
var errOverflowed = errors.New("proxy: no server; given the overflow response")

// dial connects c to a server of its route's target and returns the
// server's conn, which c.up and c.lease then hold. A pool that retries
// holds the connection in its first exchange (firstByte) first. When no
// server of a pool can take it (or every server it tried failed), the
// connection goes to its listener's overflow target: another upstream, or
// the response written and the connection ended (errOverflowed).
func (c *conn) dial() (net.Conn, error) {
	rt := c.rt
	req := upstream.Request{Client: clientAddr(c.client)}
	lease, err := rt.target.DialFor(c.srv.ctx, req)
	if err != nil && rt.pool != nil && c.srv.ctx.Err() == nil {
		return c.overflow(req, err) // no server could take it, or every try failed
	}
	if err != nil {
		return nil, err
	}
	if rt.pool != nil {
		rt.pool.served(c.srv.log)
	}
	if err := c.setUp(lease); err != nil {
		return nil, err
	}
	if rt.pool != nil && rt.pool.sniff {
		if err := c.firstByte(); err != nil {
			if errors.Is(err, errNoAnswer) && len(rt.cfg.Admission.Overflow.Respond) > 0 {
				c.mu.Lock()
				c.up.Close() // the last server tried
				c.mu.Unlock()
				return c.overflow(req, err)
			}
			return nil, err
		}
	}
	return c.up, nil
}

// setUp makes lease's conn c's upstream, unless c was aborted meanwhile:
// it then ends the lease, closes the conn and returns the abort's cause.
func (c *conn) setUp(lease *upstream.Lease) error {
	c.mu.Lock()
	cause := c.cause
	if cause == nil {
		c.up, c.lease = lease.Conn(), lease
	}
	c.mu.Unlock()
	if cause != nil {
		lease.Done()
		lease.Conn().Close()
	}
	return cause
}

// overflow sends a connection no server of its pool took to its
// listener's overflow target. Without one it returns cause.
func (c *conn) overflow(req upstream.Request, cause error) (net.Conn, error) {
	rt := c.rt
	resp := rt.cfg.Admission.Overflow.Respond
	rt.pool.noServerNow(c.srv.log, rt.cfg.Name, rt.overflow != nil || len(resp) > 0)
	switch {
	case rt.overflow != nil:
		lease, err := rt.overflow.DialFor(c.srv.ctx, req)
		if err != nil {
			return nil, err
		}
		rt.stats.overflowed.Add(1)
		if err := c.setUp(lease); err != nil {
			return nil, err
		}
		return c.up, nil
	case len(resp) > 0:
		rt.stats.overflowed.Add(1)
		c.logDone(resultUpstreamError, errOverflowed)
		c.srv.forget(c, resultUpstreamError)
		if !c.srv.tarpits.respond(c.l, c.client, resp, rt.tarpitMax(), c.srv.clock) {
			c.client.Close()
		}
		return nil, errOverflowed
	}
	return nil, cause
}

// firstByte holds a connection whose pool retries in its first exchange:
// the client's bytes are relayed to the server and kept (up to 64 KiB)
// until the server's first bytes are there. A server that ends or resets
// before them, or (with http_retry_after) whose answer is a 429 or 503,
// is replaced by another, to which the kept bytes are replayed: the
// client sees the first good answer. The server's bytes are peeked, not
// read, so the pumps then move them as any others. It returns an error
// when no server answered; c's lease is then ended and its conn closed.
func (c *conn) firstByte() error {
	r := &relay{c: c, up: c.up, done: make(chan struct{})}
	go r.run()
	err := c.awaitAnswer(r)
	r.stop()
	return err
}

// awaitAnswer waits for the first bytes of c's server, retrying servers
// as firstByte says.
func (c *conn) awaitAnswer(r *relay) error {
	sniff := c.rt.pool.cfg.HTTPRetryAfter
	buf := make([]byte, 1) // a peek only needs to see a byte...
	if sniff {
		buf = make([]byte, upstream.MaxHeadBytes) // ...or the answer's head
	}
	for {
		n, err := peekHead(c.up, buf, sniff)
		if err == nil && sniff {
			head, herr := upstream.ParseResponseHead(buf[:n], c.srv.clock.Now())
			if herr == nil && c.lease.Busy(head) {
				if c.retry(r) == nil {
					continue
				}
				return nil // every server busy: the client gets the last answer
			}
		}
		if err == nil {
			return nil
		}
		if cause := c.abortCause(); cause != nil {
			c.lease.Done()
			return cause
		}
		if errors.Is(err, io.EOF) && r.endedEmpty() {
			// The client closed without a byte and the server closed
			// in turn: a port probe, not a server failure.
			return nil
		}
		// The server ended or reset before its first byte: another one,
		// or the overflow target.
		if c.retry(r) == nil {
			continue
		}
		c.lease.Failed()
		if !c.overflowed && c.rt.overflow != nil && c.toOverflow(r) == nil {
			continue
		}
		return fmt.Errorf("%w: %w", errNoAnswer, err)
	}
}

// errNoAnswer: no server of the pool answered the connection.
var errNoAnswer = errors.New("no server answered")

// toOverflow moves c, in its first exchange, to its listener's overflow
// upstream, the client's bytes replayed.
func (c *conn) toOverflow(r *relay) error {
	c.overflowed = true
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.replay.Complete() {
		return errNoReplay
	}
	next, err := c.rt.overflow.DialFor(c.srv.ctx, upstream.Request{Client: clientAddr(c.client)})
	if err != nil {
		return err
	}
	c.rt.stats.overflowed.Add(1)
	return c.switchTo(r, next)
}

// retry moves c to another server of its pool and replays the client's
// bytes kept so far. It returns an error, and changes nothing, when the
// bytes were not all kept or no other server can take the connection.
func (c *conn) retry(r *relay) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.replay.Complete() {
		return errNoReplay
	}
	next, err := c.lease.Retry(c.srv.ctx)
	if err != nil {
		return err
	}
	return c.switchTo(r, next)
}

// switchTo makes next c's server in its first exchange, the client's
// bytes kept so far replayed to it. Requires r.mu.
func (c *conn) switchTo(r *relay, next *upstream.Lease) error {
	up := next.Conn()
	if b := r.replay.Bytes(); len(b) > 0 {
		_, _ = up.Write(b) // a failure shows as the new server's early end
	}
	if r.eof {
		_ = closeWrite(up)
	}
	c.mu.Lock()
	old, cause := c.up, c.cause
	if cause == nil {
		c.up, c.lease = up, next
	}
	c.mu.Unlock()
	if cause != nil {
		next.Done()
		up.Close()
		return cause
	}
	old.Close()
	r.up = up
	return nil
}

var errNoReplay = errors.New("proxy: the client sent more than can be replayed")

// relay copies the client's bytes to the current server during a first
// exchange, keeping them for a replay.
type relay struct {
	c      *conn
	mu     sync.Mutex
	up     net.Conn // the current server; guarded by mu
	replay upstream.Replay
	eof    bool // the client half-closed; guarded by mu
	done   chan struct{}
}

// relayBuf is the size of the reads a relay makes.
const relayBuf = 16 << 10

func (r *relay) run() {
	defer close(r.done)
	c := r.c
	pool := &copyPools[copyClass(relayBuf)]
	b := pool.Get().(*[]byte)
	defer pool.Put(b)
	buf := (*b)[:relayBuf]
	for {
		n, err := c.client.Read(buf)
		if n > 0 {
			r.mu.Lock()
			if c.obs != nil {
				c.obs.Up(buf[:n])
			}
			_, _ = r.replay.Write(buf[:n]) // never fails: past its limit it keeps nothing
			_, _ = r.up.Write(buf[:n])     // a failure shows as the server's early end
			r.mu.Unlock()
			c.pumps[Up].bytes.Add(int64(n))
			c.touch()
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				r.mu.Lock()
				r.eof = true
				_ = closeWrite(r.up)
				r.mu.Unlock()
			}
			return // the end, an error the pumps will meet again, or stop's deadline
		}
		if !r.replay.Complete() {
			return // past what can be replayed: the pumps take over
		}
	}
}

// endedEmpty reports whether the client ended its side having sent
// nothing.
func (r *relay) endedEmpty() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.eof && r.replay.Complete() && len(r.replay.Bytes()) == 0
}

// stop ends the relay and waits for it; the client's read deadline is
// cleared again unless the conn was aborted meanwhile.
func (r *relay) stop() {
	c := r.c
	_ = c.client.SetReadDeadline(aLongTimeAgo)
	<-r.done
	c.mu.Lock()
	if c.cause == nil {
		_ = c.client.SetReadDeadline(time.Time{})
	}
	c.mu.Unlock()
	r.replay.Release()
}
