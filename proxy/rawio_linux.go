package proxy

import (
	"os"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The shaped moves of the splice path read and write with raw system calls
// inside RawConn callbacks, so that the Go scheduler is not told of them.
//
// Why: a shaped pump parks on its gate between grants, and on a quiet
// process every P is then idle. The runtime's sysmon thread sleeps while
// all Ps are idle, and every system call a goroutine enters through
// syscall.Syscall wakes it (so that it could hand the P on, were the call
// to block); once woken it polls every 20 µs until the Ps are idle again.
// At 1,000 grants a second that was a third of sluice's CPU at 100 MB/s on
// the benchmark machine (docs/shaping.md). These calls never block: the
// sockets are non-blocking, a read asks only for bytes already queued, and
// a write that would block returns EAGAIN and waits in the netpoller like
// any other. Each call moves at most one grant (a pooled buffer's 64 KiB,
// or a pipe's 1 MiB), so the P is held for the time of one copy. The
// buffers are heap memory, which the collector does not move.

// A raw move is set up in the pump's raw fields, then run by rawIn inside
// srcRaw.Read and by rawOut inside dstRaw.Write: with p.pipe nil it reads
// into and writes from p.rawBuf; with a pipe it splices src → pipe and
// pipe → dst. p.rawWant is how many bytes the move is for, p.rawN how many
// it has moved, p.rawErr a system call's error.

// readQueued reads into b from src, whose bytes are known to be queued.
func (p *pump) readQueued(b []byte) (int, error) {
	p.rawBuf, p.rawWant, p.rawN, p.rawErr = b, len(b), 0, nil
	err := p.srcRaw.Read(p.rawInFn)
	p.rawBuf = nil
	if err != nil {
		return 0, err
	}
	return p.rawN, p.rawErr
}

// writeAll writes all of b to dst.
func (p *pump) writeAll(b []byte) (int, error) {
	p.rawBuf, p.rawWant, p.rawN, p.rawErr = b, len(b), 0, nil
	err := p.dstRaw.Write(p.rawOutFn)
	p.rawBuf = nil
	if err != nil {
		return p.rawN, err
	}
	return p.rawN, p.rawErr
}

// spliceGrant moves up to want queued bytes from src to dst through a pooled
// pipe with raw splice(2) calls and returns how many it wrote. A pipe that
// still holds bytes after a failed write is closed, not pooled.
func (p *pump) spliceGrant(want int) (int64, error) {
	pp := takePipe()
	if pp == nil {
		return p.copyGrant(min(want, maxCopy), nil)
	}
	in, err := p.spliceIn(pp, want, false)
	var out int
	if in > 0 && err == nil {
		out, err = p.spliceOut(pp, in)
	}
	putPipe(pp, out == in)
	return int64(out), err
}

// spliceIn splices up to n bytes queued on src into pp and returns how many
// moved. With noWait it returns 0 instead of waiting when none can move.
func (p *pump) spliceIn(pp *pipe, n int, noWait bool) (int, error) {
	outer := p.rawNoWait // a shaping loop's, kept for the calls after
	p.pipe, p.rawWant, p.rawN, p.rawErr, p.rawNoWait = pp, n, 0, nil, noWait || outer
	err := p.srcRaw.Read(p.rawInFn)
	p.pipe, p.rawNoWait = nil, outer
	if err == nil {
		err = p.rawErr
	}
	return p.rawN, err
}

// spliceOut splices n bytes from pp to dst, waiting for room, and returns
// how many moved.
func (p *pump) spliceOut(pp *pipe, n int) (int, error) {
	p.pipe, p.rawWant, p.rawN, p.rawErr = pp, n, 0, nil
	err := p.dstRaw.Write(p.rawOutFn)
	p.pipe = nil
	if err == nil {
		err = p.rawErr
	}
	return p.rawN, err
}

// rawIn is the RawConn.Read callback: one read or splice of up to rawWant
// bytes queued on fd. With rawNoWait, nothing to move is not waited for.
func (m *moving) rawIn(fd uintptr) bool {
	for {
		var n uintptr
		var e unix.Errno
		if m.pipe == nil {
			n, _, e = unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(m.rawBuf))), uintptr(m.rawWant))
		} else {
			n, _, e = unix.RawSyscall6(unix.SYS_SPLICE, fd, 0, uintptr(m.pipe.w), 0, uintptr(m.rawWant), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		}
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return m.rawNoWait
		case 0:
			m.rawN = int(n)
		default:
			m.rawErr = os.NewSyscallError(m.rawName("read"), e)
		}
		return true
	}
}

// rawOut is the RawConn.Write callback: writes or splices to fd until
// rawWant bytes are out, waiting for room when the socket is full (with
// rawNoWait, returning what is out).
func (m *moving) rawOut(fd uintptr) bool {
	for m.rawN < m.rawWant {
		var n uintptr
		var e unix.Errno
		if m.pipe == nil {
			rest := m.rawBuf[m.rawN:m.rawWant]
			n, _, e = unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(rest))), uintptr(len(rest)))
		} else {
			n, _, e = unix.RawSyscall6(unix.SYS_SPLICE, uintptr(m.pipe.r), 0, fd, 0, uintptr(m.rawWant-m.rawN), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		}
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return m.rawNoWait
		case 0:
			m.rawN += int(n)
		default:
			m.rawErr = os.NewSyscallError(m.rawName("write"), e)
			return true
		}
	}
	return true
}

// rawName names the system call of the current raw move, for errors.
func (m *moving) rawName(plain string) string {
	if m.pipe != nil {
		return "splice"
	}
	return plain
}

// A pipe is a pair of non-blocking pipe ends for the splices of shaped
// moves.
type pipe struct {
	r, w    int
	cleanup runtime.Cleanup
}

// close closes a pipe that is not going back to the pool.
func (pp *pipe) close() {
	pp.cleanup.Stop()
	_ = unix.Close(pp.r)
	_ = unix.Close(pp.w)
}

// pipeSize is the capacity asked of a pooled pipe: a whole grant fits.
const pipeSize = 1 << 20

var pipePool = sync.Pool{New: newPipe}

// takePipe returns a pooled pipe, or nil when the budget is spent or no pipe
// can be made (out of descriptors): the caller then copies. The caller
// gives it back with putPipe.
func takePipe() *pipe {
	if pipeBudget.Add(-1) < 0 {
		pipeBudget.Add(1)
		return nil
	}
	pp, _ := pipePool.Get().(*pipe)
	if pp == nil {
		pipeBudget.Add(1)
	}
	return pp
}

// putPipe gives back a pipe from takePipe: to the pool when empty, else
// closed (its bytes belong to a conn that failed).
func putPipe(pp *pipe, empty bool) {
	if empty {
		pipePool.Put(pp)
	} else {
		pp.close()
	}
	pipeBudget.Add(1)
}

func newPipe() any {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil
	}
	_, _ = unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pipeSize) // a smaller pipe only means shorter moves
	pp := &pipe{r: fds[0], w: fds[1]}
	// A pipe the pool drops is closed once unreachable.
	pp.cleanup = runtime.AddCleanup(pp, func(fds [2]int) {
		_ = unix.Close(fds[0])
		_ = unix.Close(fds[1])
	}, fds)
	return pp
}
