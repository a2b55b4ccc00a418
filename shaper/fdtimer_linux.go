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
// on c when it expires. A time.Timer would be waited on by the runtime's
// netpoller with a timeout in whole milliseconds, so it wakes the process
// up to a millisecond early and then once more, and the runtime's sysmon
// thread wakes at every timer and polls every 20 µs while one is overdue.
// A timerfd wakes the process once, at its time, and is set and read with
// raw system calls, which do not wake sysmon. With a grant every 10 ms
// that was about a fifth of a minimal Go shaper's CPU (docs/shaping.md).
//
// Stop closes the timerfd and ends the goroutine, so a Loop with nothing to
// serve holds neither; the next Reset opens another, or, where none can be
// opened (the process is out of descriptors), arms a time.Timer instead. A
// value sent before a Stop or Reset may still be received after it: the
// Loop checks the time when it wakes, so such a wake-up costs a turn,
// nothing more.
type fdTimer struct {
	c chan time.Time

	mu       sync.Mutex
	f        *os.File      // the timerfd; nil when stopped
	fd       uintptr       // f's descriptor
	done     chan struct{} // closed when the goroutine of f has ended
	fallback *time.Timer   // armed instead while no timerfd can be opened
}

// newFDTimer returns a timer that expires after d, or false where a
// timerfd cannot be made.
func newFDTimer(d time.Duration) (*fdTimer, bool) {
	t := &fdTimer{c: make(chan time.Time, 1)}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.openLocked() {
		return nil, false
	}
	t.setLocked(d)
	return t, true
}

// Reset arms the timer to expire after d, opening a timerfd if it has
// none. It reports whether it was armed before, as far as it knows.
func (t *fdTimer) Reset(d time.Duration) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	was := t.f != nil || t.fallback != nil && t.fallback.Stop()
	if t.f == nil && !t.openLocked() {
		if t.fallback == nil {
			t.fallback = time.AfterFunc(d, t.send)
		} else {
			t.fallback.Reset(d)
		}
		return was
	}
	t.setLocked(d)
	return was
}

// send passes the time on to c, unless a value waits there already.
func (t *fdTimer) send() {
	select {
	case t.c <- time.Now():
	default:
	}
}

// Stop closes the timerfd and ends its goroutine, or stops the time.Timer
// armed instead.
func (t *fdTimer) Stop() bool {
	t.mu.Lock()
	f, done := t.f, t.done
	t.f, t.done = nil, nil
	stopped := t.fallback != nil && t.fallback.Stop()
	t.mu.Unlock()
	if f == nil {
		return stopped
	}
	f.Close() // ends the goroutine's wait
	<-done
	return true
}

// setLocked arms the timerfd for d from now (at least 1 ns: 0 disarms).
func (t *fdTimer) setLocked(d time.Duration) {
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(max(d, 1)))}
	_, _, _ = unix.RawSyscall6(unix.SYS_TIMERFD_SETTIME, t.fd, 0, uintptr(unsafe.Pointer(&spec)), 0, 0, 0)
}

// openLocked makes the timerfd and starts its goroutine.
func (t *fdTimer) openLocked() bool {
	fd, err := newTimerfd()
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
	t.f, t.fd, t.done = f, uintptr(fd), done
	go t.wait(rc, done)
	return true
}

// newTimerfd makes a non-blocking timerfd; a variable for tests.
var newTimerfd = func() (int, error) {
	return unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
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
		t.send()
	}
}
