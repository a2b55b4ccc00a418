// Bytes read ahead of a shaped pump's grants, and the pooled buffers
// that shaped moves copy through.

package proxy

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
)

// maxCopy is the largest shaped grant copied through a pooled buffer
// instead of spliced. A splice holds a pipe (two descriptors) for as long as
// its write blocks, and a shaped connection's write blocks whenever its
// client is slower than its grants: with thousands of shaped connections
// that would double the descriptors sluice needs. A pooled buffer costs
// memory only while it is in use, and for grants this small as little CPU
// as a splice (two system calls either way).
const maxCopy = 64 << 10

// copyPools hold copy buffers by size class: 8 KiB << class, up to maxCopy.
var copyPools [copyClasses]sync.Pool

const copyClasses = 4 // 8 KiB … 64 KiB

func init() {
	for i := range copyPools {
		size := 8 << 10 << i
		copyPools[i].New = func() any {
			b := make([]byte, size)
			return &b
		}
	}
}

// copyClass is the pool a copy of n <= maxCopy bytes takes its buffer from.
func copyClass(n int) int {
	c := 0
	for 8<<10<<c < n {
		c++
	}
	return c
}

// copyGrant moves want bytes through a pooled buffer and returns how many
// were written; observe, if not nil, is shown them before they are
// written. On the splice path the bytes are already queued on src and are
// read and written with raw system calls (rawio_linux.go); on the
// user-space path it reads once, what src has. Like a splice that meets
// the end of src, it returns fewer than want and no error when src ended.
// It allocates nothing.
func (p *pump) copyGrant(want int, observe func([]byte)) (int64, error) {
	pool := &copyPools[copyClass(want)]
	b := pool.Get().(*[]byte)
	defer pool.Put(b)
	buf := (*b)[:want]
	var n int
	var err error
	if p.srcRaw != nil {
		n, err = p.readQueued(buf)
	} else {
		n, err = p.src.Read(buf)
	}
	if errors.Is(err, io.EOF) {
		err = nil
	}
	if n > 0 {
		// Shown before they are written: the far end cannot act on bytes
		// (ask for the moov a box header points to, on another connection;
		// answer a request) before sluice has learned what they say.
		if observe != nil {
			observe(buf[:n])
		}
		var w int
		var werr error
		if p.dstRaw != nil {
			w, werr = p.writeAll(buf[:n])
		} else {
			w, werr = p.dst.Write(buf[:n])
		}
		if werr != nil {
			return int64(w), werr
		}
	}
	return int64(n), err
}

// aheadSize is how much a shaped pump reads ahead of its grants.
const aheadSize = 64 << 10

// AheadBudget bounds the memory all shaped pumps together hold in bytes
// read ahead of their grants in buffers (see moveAhead): 512 connections'
// worth.
const AheadBudget = 32 << 20

// aheadBudget is what is left of AheadBudget; a variable for tests.
var aheadBudget atomic.Int64

func init() { aheadBudget.Store(AheadBudget) }

// moveAhead moves a shaped grant of want bytes, of the avail bytes known to
// be queued on src (read-ahead bytes included), and returns how many were
// written. For grants of at most 16 KiB it takes up to 64 KiB from src at
// once, ahead of its grants, and writes each grant from there: a read that
// frees a 10 KB grant's room makes the kernel send the upstream a window
// update, which on loopback costs as much as the read, so four to eight
// grants a read cost a fifth less CPU at 50 × 1 MB/s (docs/shaping.md).
//
// The bytes are held in a pipe while the process-wide pipe budget allows
// (no copy through user space), else in a pooled buffer while the
// read-ahead memory budget allows, else a grant is read
// and written exactly. Either is held only while it holds bytes, or, in a
// shaping loop, until the loop hands the direction back.
func (p *pump) moveAhead(want, avail int) (int64, error) {
	if p.held == nil && p.ahead == nil {
		if want > aheadSize/4 || avail <= want {
			return p.copyGrant(want, nil) // nothing to gain; want <= maxCopy here
		}
		if pp := takePipe(); pp != nil {
			p.held, p.heldN = pp, 0
		} else if aheadBudget.Add(-aheadSize) >= 0 {
			p.ahead = copyPools[copyClass(aheadSize)].Get().(*[]byte)
			p.aheadOff, p.aheadLen = 0, 0
		} else {
			aheadBudget.Add(aheadSize)
			return p.copyGrant(want, nil)
		}
	}
	w, err := p.fromAhead(want, avail)
	if p.aheadEmpty() {
		p.dropAhead() // held only while it holds bytes; if src ended, the next peek sees it
	}
	return int64(w), err
}

// ShapedPipes bounds the pipes shaped moves hold at once, process-wide: a
// pipe is two descriptors, held for the time of a grant's move (longer
// when the client is slow to read) or while it holds bytes read ahead. 256
// pipes are 512 descriptors. Beyond it, moves copy through user space.
const ShapedPipes = 256

// pipeBudget is what is left of ShapedPipes; a variable for tests.
var pipeBudget atomic.Int64

func init() { pipeBudget.Store(ShapedPipes) }

// fromAhead moves up to want bytes of a grant out of the read-ahead holder
// (a pipe or a buffer), of the avail bytes known to be queued on src, and
// returns how many it wrote. With p.rawNoWait (a shaping loop) it writes
// what the socket takes and leaves the rest in the holder. It keeps the
// holder, empty or not, unless an error ends the conn.
func (p *pump) fromAhead(want, avail int) (int, error) {
	// Top up when the grant is more than what is held: a grant cut short
	// would send the conn to the back of a link's queue with less than its
	// share.
	var err error
	if held := p.aheadHeld(); held < want && avail > held {
		top := min(avail, aheadSize) - held
		if p.held != nil {
			// A pipe that holds bytes may be full (its slots, one per
			// socket buffer spliced in, run out before its bytes do):
			// then it is drained before it takes more, not waited on.
			var n int
			n, err = p.spliceIn(p.held, top, held > 0)
			p.heldN += n
		} else {
			b := *p.ahead
			copy(b, b[p.aheadOff:p.aheadLen])
			var n int
			n, err = p.readQueued(b[held : held+top])
			p.aheadOff, p.aheadLen = 0, held+n
		}
		if err != nil && !errors.Is(err, io.EOF) {
			p.dropAhead()
			return 0, err
		}
	}
	var w int
	if p.held != nil {
		if k := min(want, p.heldN); k > 0 {
			w, err = p.spliceOut(p.held, k)
			p.heldN -= w
		}
	} else if k := min(want, p.aheadLen-p.aheadOff); k > 0 {
		w, err = p.writeAll((*p.ahead)[p.aheadOff : p.aheadOff+k])
		p.aheadOff += w
	}
	if err != nil {
		p.dropAhead()
	}
	return w, err
}

// aheadHeld is how many bytes are held read ahead.
func (p *pump) aheadHeld() int { return p.heldN + p.aheadLen - p.aheadOff }

// aheadEmpty reports whether no bytes are held read ahead.
func (p *pump) aheadEmpty() bool { return p.aheadHeld() == 0 }

// recount counts the bytes queued on src anew, without waiting, and
// returns them with those held read ahead: what the next grant may take.
// A shaped move recounts when it has counted fewer bytes than a grant, so
// that the grant is not cut to the rest of the last count (which left one
// 100 ms window a part of a grant short and the next as much long).
func (p *pump) recount() (int, error) {
	p.avail, p.rerr = 0, nil
	err := p.srcRaw.Read(p.peekFn)
	return p.aheadHeld() + p.avail, err
}

// dropAhead gives back the read-ahead buffer or pipe and its budget. Bytes
// still in it are lost with the conn that is failing.
func (p *pump) dropAhead() {
	if p.held != nil {
		putPipe(p.held, p.heldN == 0)
		p.held, p.heldN = nil, 0
	}
	if p.ahead == nil {
		return
	}
	copyPools[copyClass(aheadSize)].Put(p.ahead)
	p.ahead, p.aheadOff, p.aheadLen = nil, 0, 0
	aheadBudget.Add(aheadSize)
}
