package shaper

import (
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fdTimer is the real clock's timer for a [Loop] on Linux: a timerfd waited
// on in Go's network poller by a goroutine of its own, which sends the time
// on C when it expires. A time.Timer would be waited on by the runtime's
// netpoller with a timeout in whole milliseconds, so it wakes the process
// up to a millisecond early and then once more, and the runtime's sysmon
// thread wakes at every timer and polls every 20 µs while one is overdue.
// A timerfd wakes the process once, at its time, and is set and read with
// raw system calls, which do not wake sysmon. With a grant every 10 ms
// that was a quarter of a minimal Go shaper's CPU (docs/shaping.md).
//
// Stop closes the timerfd and ends the goroutine, so a Loop with nothing to
// serve holds neither; the next Reset opens another. A value sent before a
// Stop or Reset may still be received after it: the Loop checks the time
// when it wakes, so such a wake-up costs a turn, nothing more.
type fdTimer struct {
	c chan time.Time

	mu   sync.Mutex
	f    *os.File // the timerfd; nil when stopped
	rc   syscall.RawConn
	done chan struct{} // closed when the goroutine of f has ended
}

// newFDTimer returns a timer that expires after d, or false where a
// timerfd cannot be made.
func newFDTimer(d time.Duration) (*fdTimer, bool) {
	t := &fdTimer{c: make(chan time.Time, 1)}
	if t.Reset(d); t.f == nil {
		return nil, false
	}
	return t, true
}

// Reset arms the timer to expire after d, opening a timerfd if it has
// none. It reports whether it was armed before, as far as it knows.
func (t *fdTimer) Reset(d time.Duration) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	was := t.f != nil
	if t.f == nil && !t.openLocked() {
		// No timerfd (out of descriptors): fire now, and the Loop
		// tries again at its next sleep.
		select {
		case t.c <- time.Now():
		default:
		}
		return false
	}
	t.setLocked(d)
	return was
}

// Stop closes the timerfd and ends its goroutine.
func (t *fdTimer) Stop() bool {
	t.mu.Lock()
	f, done := t.f, t.done
	t.f, t.rc, t.done = nil, nil, nil
	t.mu.Unlock()
	if f == nil {
		return false
	}
	f.Close() // ends the goroutine's wait
	<-done
	return true
}

// setLocked arms the timerfd for d from now (at least 1 ns: 0 disarms).
func (t *fdTimer) setLocked(d time.Duration) {
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(max(d, 1)))}
	var fd uintptr
	_ = t.rc.Control(func(f uintptr) { fd = f })
	_, _, _ = unix.RawSyscall6(unix.SYS_TIMERFD_SETTIME, fd, 0, uintptr(unsafe.Pointer(&spec)), 0, 0, 0)
}

// openLocked makes the timerfd and starts its goroutine.
func (t *fdTimer) openLocked() bool {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return false
	}
	f := os.NewFile(uintptr(fd), "timerfd")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return false
	}
	done := make(chan struct{})
	t.f, t.rc, t.done = f, rc, done
	go t.wait(rc, done)
	return true
}

// wait sends the time on c each time the timerfd expires, until it is
// closed.
func (t *fdTimer) wait(rc syscall.RawConn, done chan struct{}) {
	defer close(done)
	var n [8]byte
	read := func(fd uintptr) bool {
		_, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&n[0])), uintptr(len(n)))
		return e != unix.EAGAIN
	}
	for rc.Read(read) == nil {
		select {
		case t.c <- time.Now():
		default:
		}
	}
}
