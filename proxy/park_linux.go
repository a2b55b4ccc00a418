package proxy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
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

	detached atomic.Int64 // conns whose sockets are detached
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
			if p := w.parked[key]; p != nil && p.unpark() {
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
	ok := false
	err := p.srcRaw.Control(func(fd uintptr) { // fd stays open meanwhile
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.armLocked(int(fd), p) != nil {
			return
		}
		p.park.Store(parkParked)
		w.parked[p.parkKey()] = p
		ok = true
	})
	return err == nil && ok
}

// wake starts the goroutine of p if it is still parked. Its socket stays
// armed in the set; an event for it is then dropped.
func (w *watcher) wake(p *pump) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if p.unpark() {
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

// detach closes Go's sockets of c, whose two directions are parked,
// keeping the kernel's sockets in duplicate descriptors that the watcher
// watches instead (park.go). It does nothing if c was aborted, either
// direction left its parked state, or a socket is not TCP.
func (c *conn) detach() {
	c.mu.Lock()
	defer c.mu.Unlock()
	up, ok := c.up.(*net.TCPConn)
	if c.cause != nil || c.detached || !ok || c.pumps[Up].srcRaw == nil || c.pumps[Down].srcRaw == nil {
		return
	}
	w := c.srv.watch
	w.mu.Lock() // no event or wake takes a pump out of its parked state meanwhile
	defer w.mu.Unlock()
	if !c.detachable() {
		return
	}
	socks := [2]*net.TCPConn{Up: c.client, Down: up} // the source of each direction
	var fds [2]int
	for d, sc := range socks {
		fd, err := dupSocket(sc)
		if err == nil {
			err = w.armLocked(fd, &c.pumps[d])
			if err != nil {
				unix.Close(fd)
			}
		}
		if err != nil {
			for _, fd := range fds[:d] {
				w.unwatch(fd)
			}
			return // both stay parked on Go's sockets
		}
		fds[d] = fd
	}
	for d, sc := range socks {
		p := &c.pumps[d]
		_ = p.srcRaw.Control(func(fd uintptr) { // the watch is on the duplicate now
			_ = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
		})
		sc.Close() // Go's descriptor; the socket lives on in fds[d]
		p.src, p.dst, p.srcRaw, p.dstRaw, p.dstTCP = nil, nil, nil, nil, nil
		p.fd = int32(fds[d])
		p.park.Store(parkDetached)
	}
	c.client, c.up = nil, nil
	if c.lease != nil {
		c.lease.DropConn()
	}
	c.detached = true
	w.detached.Add(1)
}

// attach makes Go sockets of a detached conn's descriptors again, and
// moves the watch of a direction still parked to them. Requires c.mu held
// and c detached. On failure (out of descriptors) the conn is aborted
// with the error and both descriptors are closed.
func (c *conn) attach() error {
	w := c.srv.watch
	w.mu.Lock()
	defer w.mu.Unlock()
	c.detached = false
	w.detached.Add(-1)
	var socks [2]*net.TCPConn
	var err error
	for d := range c.pumps {
		if socks[d], err = fileConn(int(c.pumps[d].fd)); err != nil {
			break
		}
	}
	if err != nil {
		if c.cause == nil {
			c.cause = fmt.Errorf("attach an idle connection's sockets: %w", err)
			if c.done != nil {
				close(c.done)
			}
		}
		for d := range c.pumps {
			p := &c.pumps[d]
			if socks[d] != nil {
				socks[d].Close()
			}
			w.unwatch(int(p.fd))
			p.fd = 0
			if p.park.CompareAndSwap(parkDetached, parkNone) { // it ends at once: c.client is gone
				delete(w.parked, p.parkKey())
				go p.pump()
			}
		}
		return c.cause
	}
	c.client, c.up = socks[Up], socks[Down]
	c.pumps[Up].setSockets(c.client, c.up)
	c.pumps[Down].setSockets(c.up, c.client)
	for d := range c.pumps {
		p := &c.pumps[d]
		old := int(p.fd)
		p.fd = 0
		p.inSet = false
		// A direction still parked keeps an armed watch, on Go's new
		// descriptor; the other was started and parks anew when it must.
		if p.park.CompareAndSwap(parkDetached, parkParked) {
			_ = p.srcRaw.Control(func(fd uintptr) { _ = w.armLocked(int(fd), p) })
			if !p.inSet { // not watched: start it, its wait in Go's poller sees bytes
				p.park.Store(parkNone)
				delete(w.parked, p.parkKey())
				go p.pump()
			}
		}
		w.unwatch(old)
	}
	if c.cause != nil { // aborted while detached: fail the new sockets' waits
		_ = c.client.SetDeadline(aLongTimeAgo)
		_ = c.up.SetDeadline(aLongTimeAgo)
	}
	return nil
}

// unwatch takes fd out of the set and closes it. (Closing alone would
// not take it out while another descriptor of the socket is open.)
func (w *watcher) unwatch(fd int) {
	_ = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	unix.Close(fd)
}

// armLocked arms fd in the set for one event under p's key: it modifies
// the entry if p.inSet says fd is there, adds one otherwise (and the other
// way round if the set says so), and sets p.inSet. Requires w.mu held.
func (w *watcher) armLocked(fd int, p *pump) error {
	key := p.parkKey()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT,
		Fd: int32(uint32(key)), Pad: int32(uint32(key >> 32))}
	op, other, miss := unix.EPOLL_CTL_ADD, unix.EPOLL_CTL_MOD, unix.EEXIST
	if p.inSet {
		op, other, miss = unix.EPOLL_CTL_MOD, unix.EPOLL_CTL_ADD, unix.ENOENT
	}
	err := unix.EpollCtl(w.epfd, op, fd, &ev)
	if errors.Is(err, miss) {
		err = unix.EpollCtl(w.epfd, other, fd, &ev)
	}
	if err == nil {
		p.inSet = true
	}
	return err
}

// dupSocket returns a duplicate of sc's descriptor, close-on-exec.
func dupSocket(sc *net.TCPConn) (int, error) {
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd, derr := -1, error(nil)
	if err := raw.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", derr)
	}
	return nfd, nil
}

// fileConn makes a Go socket of a duplicate of fd (fd stays open).
func fileConn(fd int) (*net.TCPConn, error) {
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", err)
	}
	f := os.NewFile(uintptr(nfd), "")
	defer f.Close()
	nc, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		nc.Close()
		return nil, fmt.Errorf("not a TCP socket: %T", nc)
	}
	return tc, nil
}

// detachedCount returns how many conns are detached.
func (w *watcher) detachedCount() int { return int(w.detached.Load()) }

// peerOf returns the address of fd's peer, for a detached conn's listing.
func peerOf(fd int32) net.Addr {
	sa, err := unix.Getpeername(int(fd))
	if err != nil {
		return nil
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: sa.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: sa.Port}
	}
	return nil
}
