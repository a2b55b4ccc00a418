package proxy

import (
	"errors"
	"io"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluiceproxy/sluice/shaper"
)

// maxMove caps one unshaped move. Each move is bounded by what the kernel
// already holds for us (see waitReadable), so this only bounds how long one
// splice call may hold a pipe on a very fast stream.
const maxMove = 4 << 20

// genericBufSize is the copy buffer of the user-space path, used only when an
// end is not a *net.TCPConn.
const genericBufSize = 32 << 10

// pump moves the bytes of one direction of a conn, src → dst.
//
// On the splice path (both ends *net.TCPConn) it first waits until src has
// bytes queued, without holding anything but the goroutine (no pipe, no
// buffer), then splices exactly the queued bytes. Go's splice would otherwise
// park in the kernel holding a pipe (two descriptors) for as long as src is
// idle.
//
// A pump is part of its conn for the conn's life; what it needs only while
// its goroutine runs (moving) is pooled, and a parked direction (park.go)
// holds neither.
type pump struct {
	c        *conn
	src, dst net.Conn
	bytes    atomic.Int64 // moved, read by Stats while the pump runs

	shaping // what holds the direction back

	// srcRaw, dstRaw and dstTCP are set on the splice path (both ends
	// TCP); srcRaw is nil on the user-space path.
	srcRaw, dstRaw syscall.RawConn
	dstTCP         *net.TCPConn

	// moving is the state of moves in progress, taken from a pool while
	// the pump's goroutine runs, nil while it has none.
	*moving

	// pacer is set, before the conn is listed, when an MP4 Observer
	// watches the conn (both directions).
	pacer *pacer
	// lp is the shaping loop's state (loop_linux.go); nil until a first
	// hand-in.
	lp *loopState

	// err is how the direction ended: nil after a clean half-close. Set
	// before the pump's exit is counted in conn.running.
	err error

	// park is the direction's park state (park.go): parkNone, or what
	// its wait for src is.
	park   atomic.Int32
	inLink atomic.Bool // waiting for a link's grant
	// fd is src's descriptor while the conn is detached (park.go);
	// guarded by c.mu.
	fd  int32
	dir Dir
	// inSet: src is in the watcher's epoll set; guarded by the
	// watcher's mu.
	inSet bool
}

// shaping is what holds a direction back: its own gate and its seats on
// links.
type shaping struct {
	chunk atomic.Int64                // grant size when shaped; set by applyLimits
	gate  atomic.Pointer[shaper.Gate] // nil while the direction has never been limited
	seats *linkSeats                  // nil unless the conn crosses a link; set before the pump runs
}

// linkSeats are a direction's seats on the links its conn crosses. Out of
// line: most connections cross none.
type linkSeats struct {
	members []*shaper.Member // one per link
	loop    *shaper.Loop     // the loop that drives the links' grants
}

// members returns the direction's seats on links, nil if none.
func (s *shaping) members() []*shaper.Member {
	if s.seats == nil {
		return nil
	}
	return s.seats.members
}

// moving is what a pump uses while its goroutine runs: the reused state of
// its moves and grants, and the callbacks bound to it. Pooled: an idle
// conn's parked directions hold none.
type moving struct {
	splicePath              // wait for queued bytes, then splice them
	rawMove                 // a shaped grant moved with raw system calls (rawio_linux.go)
	readAhead               // bytes read from src ahead of the grants (ahead.go)
	taken      *shaper.Gate // the gate the current grant came from, for refunds
}

// splicePath is the state of the splice path's moves.
type splicePath struct {
	lr     io.LimitedReader      // reused: R is src, N is set per move
	ready  func(fd uintptr) bool // m.readable, bound once
	peekFn func(fd uintptr) bool // m.peekNow, bound once
	readFn func(fd uintptr) bool // m.readSmall, bound once
	avail  int                   // set by ready: bytes queued on src; by readSmall: bytes in small
	rerr   error                 // set by ready and readSmall: io.EOF or the socket's error
	// small is the buffer readSmall read avail bytes into, until they are
	// written; nil while the pump waits. smallNext: the next wait reads
	// (readSmall) rather than counts (ready).
	small     *[]byte
	smallNext bool
}

// rawMove is a raw move of a shaped grant in progress (rawio_linux.go).
type rawMove struct {
	rawInFn       func(fd uintptr) bool // m.rawIn, bound once
	rawOutFn      func(fd uintptr) bool // m.rawOut, bound once
	rawBuf        []byte                // read into and written from; nil with a pipe
	pipe          *pipe                 // spliced through; nil with rawBuf
	rawWant, rawN int
	rawErr        error
	rawNoWait     bool // rawIn, rawOut: return what moved rather than wait
}

// readAhead holds bytes read ahead of the grants (moveAhead):
// ahead[aheadOff:aheadLen] are read from src and not yet written; or heldN
// bytes are spliced from src into held and not yet out. At most one of the
// two is set.
type readAhead struct {
	ahead              *[]byte
	aheadOff, aheadLen int
	held               *pipe
	heldN              int
}

// movings pools the moving state of pumps whose goroutine runs.
var movings = sync.Pool{New: func() any {
	m := &moving{}
	m.ready, m.peekFn, m.readFn, m.rawInFn, m.rawOutFn = m.readable, m.peekNow, m.readSmall, m.rawIn, m.rawOut
	return m
}}

// takeMoving gives p, whose goroutine starts, its moving state.
func (p *pump) takeMoving() {
	m := movings.Get().(*moving)
	if p.srcRaw != nil {
		m.lr.R = p.src
	}
	p.moving = m
}

// dropMoving gives p's moving state back; p must hold no bytes read
// ahead and no grant.
func (p *pump) dropMoving() {
	m := p.moving
	p.moving = nil
	*m = moving{splicePath: splicePath{ready: m.ready, peekFn: m.peekFn, readFn: m.readFn}, rawMove: rawMove{rawInFn: m.rawInFn, rawOutFn: m.rawOutFn}}
	movings.Put(m)
}

func (p *pump) init(c *conn, dir Dir, src, dst net.Conn) {
	p.c, p.dir = c, dir
	p.setSockets(src, dst)
}

// setSockets sets the direction's source and destination, and their raw
// access on the splice path.
func (p *pump) setSockets(src, dst net.Conn) {
	p.src, p.dst = src, dst
	st, ok1 := src.(*net.TCPConn)
	dt, ok2 := dst.(*net.TCPConn)
	if !ok1 || !ok2 || !spliceSupported {
		return
	}
	raw, err := st.SyscallConn()
	if err != nil {
		return
	}
	draw, err := dt.SyscallConn()
	if err != nil {
		return
	}
	p.srcRaw, p.dstRaw, p.dstTCP = raw, draw, dt
}

// pump is the goroutine of one direction (stack dumps name it). The last of
// a conn's two pumps to end closes the conn. A parked direction's
// goroutine returns, and the watcher starts pump again (park.go).
func (p *pump) pump() {
	if err := p.c.attached(); err != nil { // its sockets could not be attached again
		p.err = err
		if p.c.running.Add(-1) == 0 {
			p.c.finish()
		}
		return
	}
	p.takeMoving()
	err := p.run()
	if errors.Is(err, errParked) {
		return // the watcher has the direction: touch nothing of p
	}
	p.err = err
	p.dropAhead()
	p.dropMoving()
	if p.c.running.Add(-1) == 0 {
		p.c.finish()
	}
}

// run moves bytes until src ends or fails. On a clean end it forwards the
// half-close to dst, after every byte is written, and returns nil. On
// failure it aborts the conn, so the other direction stops too, and returns
// the error.
func (p *pump) run() error {
	var err error
	switch {
	case p.pacer != nil:
		err = p.copyObserved()
	case p.srcRaw != nil:
		err = p.copySplice()
	default:
		err = p.copyBuffer()
	}
	if errors.Is(err, errParked) {
		return err
	}
	if err == nil {
		err = closeWrite(p.dst)
	}
	if err != nil {
		err = &DirError{Dir: p.dir, Err: err}
		p.c.abort(err)
	}
	return err
}

// copySplice is the splice path. It returns nil when src ends cleanly.
func (p *pump) copySplice() error {
	queued := 0 // bytes known to be queued on src, counted by the last peek
	for {
		avail := queued
		if avail > 0 && (p.taken != nil || len(p.members()) > 0) && avail < int(p.chunk.Load()) {
			if n, err := p.recount(); err == nil { // fewer counted than a grant
				avail = max(avail, n)
			}
		}
		if avail == 0 {
			var err error
			if avail, err = p.waitReadable(); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
			if p.small != nil { // read, not counted: write them
				if err := p.writeSmall(avail); err != nil {
					return err
				}
				continue
			}
		}
		want, err := p.grant(min(avail, maxMove))
		if err != nil {
			return err
		}
		var n int64
		shaped := p.taken != nil || len(p.members()) > 0
		switch {
		case p.ahead != nil || p.held != nil || shaped && want <= maxCopy:
			// Bytes read ahead go first, even when the limit was lifted
			// or raised meanwhile.
			n, err = p.moveAhead(want, avail)
		case shaped:
			n, err = p.spliceGrant(want)
		default:
			p.lr.N = int64(want)
			n, err = p.dstTCP.ReadFrom(&p.lr) // splice(2) for TCP → TCP
			p.smallNext = avail < smallRead
		}
		if n > 0 {
			p.moved(n)
		}
		if n < int64(want) {
			p.refund(want - int(n))
		}
		if err != nil {
			return err
		}
		// A shaped move takes a grant at a time out of what one peek
		// counted: the rest is still queued, so the next grant needs no
		// peek (at 100 MB/s a peek was a tenth of sluice's CPU). n < want
		// with no error means src ended inside the move; the next
		// waitReadable sees the EOF.
		queued = 0
		if n == int64(want) {
			queued = avail - want
		}
		if queued > 0 && p.loopable() {
			if queued, err = p.runInLoop(queued); err != nil {
				return err
			}
		}
	}
}

// waitReadable blocks until src has bytes queued and returns how many, or
// returns io.EOF once src has ended, or the socket's error. The wait holds
// no pipe and no buffer; it honours src's read deadline. It returns
// errParked once the direction is parked (park.go): the caller returns it
// and touches p no more.
func (p *pump) waitReadable() (int, error) {
	for {
		p.avail, p.rerr = 0, nil
		parkable := p.parkable()
		if parkable {
			p.park.Store(parkWaiting)
		}
		f := p.ready
		if p.smallNext && p.aheadEmpty() && p.unshaped() {
			f = p.readFn
		}
		err := p.srcRaw.Read(f)
		if parkable && p.park.Swap(parkNone) == parkEvict {
			parked, again := p.evicted(err)
			if parked {
				return 0, errParked
			}
			if again {
				continue
			}
		}
		if err != nil {
			return 0, err
		}
		return p.avail, p.rerr
	}
}

// smallRead is the most an unshaped direction reads into a buffer at once
// (readSmall) rather than count and splice: a direction whose last move was
// smaller reads its next bytes at once. A request or an answer of a few KiB
// then costs a read and a write, where counting it and splicing it through
// a pipe cost three system calls; a read that fills the buffer sends the
// next wait back to counting, so a bulk stream is spliced as before.
const smallRead = 16 << 10

// smallClass is the copy pool of smallRead buffers.
var smallClass = copyClass(smallRead)

// unshaped reports whether the direction is held back by nothing: no limit
// and no link.
func (p *pump) unshaped() bool {
	g := p.gate.Load()
	return (g == nil || g.Unlimited()) && len(p.members()) == 0
}

// writeSmall writes the n bytes readSmall read into p.small, grant by grant
// if a limit or a link came meanwhile, and gives the buffer back. A read
// that filled it sends the next wait back to counting (splice).
func (p *pump) writeSmall(n int) error {
	b := (*p.small)[:n]
	p.smallNext = n < smallRead
	var err error
	for len(b) > 0 && err == nil {
		var want, w int
		if want, err = p.grant(len(b)); err != nil {
			break
		}
		w, err = p.writeAll(b[:want])
		if w > 0 {
			p.moved(int64(w))
		}
		if w < want {
			p.refund(want - w)
		}
		b = b[w:]
	}
	copyPools[smallClass].Put(p.small)
	p.small = nil
	if f := smallMoveHook.Load(); f != nil {
		(*f)(n)
	}
	return err
}

// smallMoveHook, if set, is told of each writeSmall's bytes (tests).
var smallMoveHook atomic.Pointer[func(n int)]

// grant asks the conn's own gate, if the direction is limited, and then
// every link the conn crosses, for up to one chunk of the want bytes that
// are ready, and returns how many to move: the smallest grant, the excess
// given back. The caller refunds what it does not move. Waits end when the
// conn is aborted.
func (p *pump) grant(want int) (int, error) {
	p.taken = nil
	g := p.gate.Load()
	limited := g != nil && !g.Unlimited()
	if !limited && len(p.members()) == 0 {
		return want, nil
	}
	size := int(p.chunk.Load())
	if !limited {
		size = p.linkGrant(size)
	}
	n := min(want, size)
	if limited {
		var err error
		if n, err = g.Take(p.c, n); err != nil {
			return 0, err
		}
		p.taken = g
	}
	upTo := n
	if !limited {
		upTo = want // a link may grant a key that fell behind more than a chunk
	}
	for i, m := range p.members() {
		p.inLink.Store(true)
		got, err := m.TakeUpTo(p.c, n, upTo)
		p.inLink.Store(false)
		if err != nil {
			p.refundFirst(i, n)
			return 0, err
		}
		switch {
		case got < n:
			p.refundFirst(i, n-got)
			n = got
		case got > n && i == 0:
			n, upTo = got, got // later links are asked for as much
		case got > n:
			m.Refund(got - n)
		}
	}
	return n, nil
}

// linkGrantTime is how much of its share of a link a grant covers, for a
// direction under links alone: 10 KB at a 1 MB/s share, the grant a
// connection's own 1 MB/s rate gets with kernel pacing (pacedGrant). A
// grant above one chunk still leaves ten or more in every 100 ms, so the
// connection's windows stay within about a tenth of its share; the grants
// are fewer, and each is a system call: at 50 connections sharing
// 50 MB/s, a median of 1.43 s/GB against 1.53 with 8 KiB grants
// (docs/links.md).
const linkGrantTime = 10 * time.Millisecond

// linkGrant returns the grant a direction under links alone asks for:
// linkGrantTime of its share of its links (the least of them, as measured
// by each), at least chunk, and at most maxLinkGrant.
func (p *pump) linkGrant(chunk int) int {
	if chunk >= maxLinkGrant || len(p.members()) == 0 {
		return chunk
	}
	share := int64(math.MaxInt64)
	for _, m := range p.members() {
		share = min(share, m.Share())
	}
	return max(chunk, int(min(share/int64(time.Second/linkGrantTime), maxLinkGrant)))
}

// maxLinkGrant caps linkGrant: two default chunks, the largest grant the
// shaping loops serve (loopMaxGrant on Linux). A link's grants are not
// paced by the kernel, so each leaves as one burst.
const maxLinkGrant = aheadSize / 4

// refundFirst gives k bytes back to the gate and the first i links.
func (p *pump) refundFirst(i, k int) {
	if p.taken != nil {
		p.taken.Refund(k)
	}
	for _, m := range p.members()[:i] {
		m.Refund(k)
	}
}

// refund gives back k bytes of the current grant that were not moved.
func (p *pump) refund(k int) {
	if k > 0 && (p.taken != nil || len(p.members()) > 0) {
		p.refundFirst(len(p.members()), k)
	}
}

// copyBuffer is the user-space path for ends that are not TCP sockets. It
// takes the grant before reading, so a limited direction reads no more
// than it may send.
func (p *pump) copyBuffer() error {
	buf := make([]byte, genericBufSize)
	for {
		want, err := p.grant(len(buf))
		if err != nil {
			return err
		}
		n, err := p.src.Read(buf[:want])
		if n < want {
			p.refund(want - n)
		}
		if n > 0 {
			if _, werr := p.dst.Write(buf[:n]); werr != nil {
				return werr
			}
			p.moved(int64(n))
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// DirError is an I/O error of one direction of a connection.
type DirError struct {
	Dir Dir
	Err error
}

func (e *DirError) Error() string { return e.Dir.String() + ": " + e.Err.Error() }
func (e *DirError) Unwrap() error { return e.Err }

func (p *pump) moved(n int64) {
	p.bytes.Add(n)
	p.c.touch()
}
