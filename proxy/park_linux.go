package proxy

import (
	"errors"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// watcher watches the source sockets of parked directions (park.go) with
// an epoll set of its own. The set's descriptor is itself in Go's
// network poller (epoll sets nest), so the watcher's one goroutine waits
// there like any socket's, and its wake-up starts the parked pumps'
// goroutines. Each socket is in the set with EPOLLONESHOT, level
// triggered: bytes queued before the socket was added are reported too,
// and an event disarms it until it is parked again (EPOLL_CTL_MOD).
//
// A socket stays in the set, disarmed, until it is closed, which takes it
// out. Events carry the pump's key (parkKey), never a pointer: an event
// for a pump that is no longer parked is dropped.
type watcher struct {
	epfd   int
	ep     *os.File // epfd, in Go's poller; closing it ends run
	raw    syscall.RawConn
	done   chan struct{} // closed when run returns
	events [128]unix.EpollEvent

	mu     sync.Mutex
	parked map[uint64]*pump // by parkKey; guarded by mu
}

// newWatcher makes a watcher and starts its goroutine.
func newWatcher() (*watcher, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	// Non-blocking, so that os.NewFile puts it in Go's poller.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	ep := os.NewFile(uintptr(epfd), "epoll")
	raw, err := ep.SyscallConn()
	if err != nil {
		ep.Close()
		return nil, err
	}
	w := &watcher{epfd: epfd, ep: ep, raw: raw, done: make(chan struct{}), parked: map[uint64]*pump{}}
	go w.run()
	return w, nil
}

// run is the watcher's goroutine: it waits in Go's poller until the set
// has events and handles them, until close.
func (w *watcher) run() {
	defer close(w.done)
	_ = w.raw.Read(w.handle) // returns once ep is closed
}

// handle is run's RawConn.Read callback: it starts the goroutine of each
// pump whose socket has an event, and returns false to wait for more.
func (w *watcher) handle(fd uintptr) bool {
	for {
		n, err := unix.EpollWait(int(fd), w.events[:], 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n <= 0 {
			return false
		}
		w.mu.Lock()
		for i := range w.events[:n] {
			ev := &w.events[i]
			key := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if p := w.parked[key]; p != nil && p.park.CompareAndSwap(parkParked, parkNone) {
				delete(w.parked, key)
				go p.pump()
			}
		}
		w.mu.Unlock()
		if n < len(w.events) {
			return false // the set had no more; a new event wakes run
		}
	}
}

// park puts p's source socket in the set, armed for one event, and lists
// p as parked. It reports false if the socket could not be added (p then
// keeps its goroutine). Requires p.c.mu held (see evicted).
func (w *watcher) park(p *pump) bool {
	key := p.parkKey()
	ok := false
	err := p.srcRaw.Control(func(fd uintptr) { // fd stays open meanwhile
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT,
			Fd: int32(uint32(key)), Pad: int32(uint32(key >> 32))}
		w.mu.Lock()
		defer w.mu.Unlock()
		op := unix.EPOLL_CTL_MOD
		if !p.inSet {
			op = unix.EPOLL_CTL_ADD
		}
		err := unix.EpollCtl(w.epfd, op, int(fd), &ev)
		if errors.Is(err, unix.ENOENT) && op == unix.EPOLL_CTL_MOD {
			err = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
		}
		if err != nil {
			return
		}
		p.inSet = true
		p.park.Store(parkParked)
		w.parked[key] = p
		ok = true
	})
	return err == nil && ok
}

// wake starts the goroutine of p if it is still parked. Its socket stays
// armed in the set; an event for it is then dropped.
func (w *watcher) wake(p *pump) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if p.park.CompareAndSwap(parkParked, parkNone) {
		delete(w.parked, p.parkKey())
		go p.pump()
	}
}

// count returns how many pumps are parked.
func (w *watcher) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.parked)
}

// close ends the watcher's goroutine and waits for it. No pump may be
// parked: the Server closes its watcher once its connections are gone.
func (w *watcher) close() {
	w.ep.Close()
	<-w.done
}
