package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The floor relay is a reference point for the unshaped rows of -rows, not a
// proxy: one thread, one epoll set, and per readable socket one read(2) and
// one write(2) of what was read. That is the least a user-space relay can do
// per message, and what nginx's stream proxy does too; its added round trip
// is the floor of the latency rows on this machine: what a wake-up, a read
// and a write cost here, with nothing else. It has no config, no timeouts,
// no limits, no metrics and no buffering: a write that would block waits in
// poll(2), stalling every other connection, so its throughput figures are a
// reference for one stream only.

var (
	floorRelay = flag.String("floor-relay", "", "internal: run the floor relay on listenA,upstreamA,listenB,upstreamB")
	floorWait  = flag.String("floor-wait", "epoll", "internal: where the floor relay waits: epoll (epoll_wait, its own thread) or poller (Go's network poller)")
	goRelay    = flag.String("go-relay", "", "internal: run the Go relay on listenA,upstreamA,listenB,upstreamB")
	floorProbe = flag.Duration("floor-tick-probe", 0, "internal: the floor relay also runs a goroutine that wants to run every millisecond for this long, and prints how late it ran")
	waitProbe  = flag.Bool("wait-probe", false, "run the floor relay on one core, waiting in epoll_wait and then in Go's poller, under a 64 B ping-pong for -duration × 4, and print how late a goroutine that wants to run every millisecond ran beside it")
)

const (
	floorRelayName  = "floor relay"
	pollerRelayName = "floor relay, Go's poller"
	goRelayName     = "go relay"
)

// startFloorRelay runs this binary as the floor relay in front of srcAddr
// and echoAddr, on one core.
func startFloorRelay(srcAddr, echoAddr string) (*proxyProc, error) {
	return startRelay(floorRelayName, "-floor-relay", srcAddr, echoAddr)
}

// startPollerRelay runs this binary as the floor relay waiting in Go's
// poller, in front of srcAddr and echoAddr, on one core.
func startPollerRelay(srcAddr, echoAddr string) (*proxyProc, error) {
	return startSelf(pollerRelayName, envProcs(1), func(a, b string) []string {
		return []string{"-floor-relay", strings.Join([]string{a, srcAddr, b, echoAddr}, ","), "-floor-wait", "poller"}
	})
}

// startGoRelay runs this binary as the Go relay in front of srcAddr and
// echoAddr, on one core.
func startGoRelay(srcAddr, echoAddr string) (*proxyProc, error) {
	return startRelay(goRelayName, "-go-relay", srcAddr, echoAddr)
}

func startRelay(name, flagName, srcAddr, echoAddr string) (*proxyProc, error) {
	return startSelf(name, envProcs(1), func(a, b string) []string {
		return []string{flagName, strings.Join([]string{a, srcAddr, b, echoAddr}, ",")}
	})
}

// startSelf runs this binary as the reference proxy name, with env, on two
// free loopback ports (source, echo): args(source, echo) are its arguments.
func startSelf(name string, env []string, args func(a, b string) []string) (*proxyProc, error) {
	a, b, err := freePorts()
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, args(a, b)...)
	cmd.Env = env
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proxyProc{cmd: cmd, target: &target{name: name, sourceAddr: a, echoAddr: b,
		pids: func() []int { return []int{cmd.Process.Pid} }}}
	if err := waitListening(a, b); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// floorPeer is one socket of a relayed pair: its descriptor, its peer's,
// and whether it has ended.
type floorPeer struct {
	fd, peer int
	ended    bool
}

// runFloorRelay serves the floor relay until killed; viaPoller, waiting in
// Go's poller rather than in epoll_wait.
func runFloorRelay(spec string, viaPoller bool) error {
	if *floorProbe > 0 {
		go tickProbe(*floorProbe, map[bool]string{false: "epoll_wait", true: "Go's poller"}[viaPoller])
	}
	runtime.LockOSThread()
	ep, upstreamOf, err := relayListen("-floor-relay", spec)
	if err != nil {
		return err
	}
	peers := map[int]*floorPeer{}
	drop := func(p *floorPeer) {
		q := peers[p.peer]
		delete(peers, p.fd)
		delete(peers, p.peer)
		unix.Close(p.fd)
		if q != nil {
			unix.Close(q.fd)
		}
	}
	buf := make([]byte, 64<<10)
	events := make([]unix.EpollEvent, 128)
	wait := func() (int, error) { return unix.EpollWait(ep, events, -1) }
	if viaPoller {
		// The set's descriptor in Go's poller (epoll sets nest), as
		// sluice's park watcher does: the goroutine waits there.
		runtime.UnlockOSThread()
		if err := unix.SetNonblock(ep, true); err != nil {
			return err
		}
		raw, err := os.NewFile(uintptr(ep), "epoll").SyscallConn()
		if err != nil {
			return err
		}
		wait = func() (int, error) {
			var n int
			var werr error
			err := raw.Read(func(fd uintptr) bool {
				n, werr = unix.EpollWait(int(fd), events, 0)
				return n != 0 || werr != nil
			})
			if err != nil {
				return 0, err
			}
			return n, werr
		}
	}
	for {
		n, err := wait()
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		for _, ev := range events[:n] {
			fd := int(ev.Fd)
			if up, ok := upstreamOf[fd]; ok {
				floorAccept(ep, fd, up, peers)
				continue
			}
			p := peers[fd]
			if p == nil {
				continue // dropped by an earlier event of this batch
			}
			k, err := unix.Read(fd, buf)
			switch {
			case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
			case err != nil:
				drop(p)
			case k == 0:
				p.ended = true
				unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, fd, nil)
				unix.Shutdown(p.peer, unix.SHUT_WR)
				if q := peers[p.peer]; q == nil || q.ended {
					drop(p)
				}
			default:
				if floorWrite(p.peer, buf[:k]) != nil {
					drop(p)
				}
			}
		}
	}
}

// floorListen opens a non-blocking listening socket on addr.
func floorListen(addr string) (int, error) {
	ta, err := net.ResolveTCPAddr("tcp4", addr)
	if err != nil {
		return 0, err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	sa := &unix.SockaddrInet4{Port: ta.Port}
	copy(sa.Addr[:], ta.IP.To4())
	if err := unix.Bind(fd, sa); err != nil {
		return 0, err
	}
	return fd, unix.Listen(fd, 4096)
}

// relayListen is the setup of the reference relays (spec is
// listenA,upstreamA,listenB,upstreamB, given with flag): an epoll set
// with a non-blocking listening socket on each listen address, and the
// upstream of each listening socket.
func relayListen(flag, spec string) (ep int, upstreamOf map[int]*net.TCPAddr, err error) {
	f := strings.Split(spec, ",")
	if len(f) != 4 {
		return 0, nil, fmt.Errorf("%s: want listenA,upstreamA,listenB,upstreamB, got %q", flag, spec)
	}
	if ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return 0, nil, err
	}
	upstreamOf = map[int]*net.TCPAddr{}
	for i := 0; i < 4; i += 2 {
		fd, err := floorListen(f[i])
		if err != nil {
			return 0, nil, err
		}
		up, err := net.ResolveTCPAddr("tcp", f[i+1])
		if err != nil {
			return 0, nil, err
		}
		upstreamOf[fd] = up
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
			return 0, nil, err
		}
	}
	return ep, upstreamOf, nil
}

// acceptPairs accepts every pending client on ln (accept4 with flags) and
// connects a socket to up for each (blocking: on loopback the handshake
// completes inside connect), then hands the pair to f. A client whose
// upstream connection fails is closed.
func acceptPairs(ln, flags int, up *net.TCPAddr, f func(client, upstream int)) {
	sa := &unix.SockaddrInet4{Port: up.Port}
	copy(sa.Addr[:], up.IP.To4())
	for {
		c, _, err := unix.Accept4(ln, flags)
		if err != nil {
			return
		}
		u, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			unix.Close(c)
			continue
		}
		if err := unix.Connect(u, sa); err != nil {
			unix.Close(c)
			unix.Close(u)
			continue
		}
		f(c, u)
	}
}

// floorAccept accepts every pending client on ln, connects each to up,
// and adds both sockets to the epoll set.
func floorAccept(ep, ln int, up *net.TCPAddr, peers map[int]*floorPeer) {
	acceptPairs(ln, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, up, func(c, u int) {
		unix.SetNonblock(u, true)
		for _, fd := range []int{c, u} {
			unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
			unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)})
		}
		peers[c] = &floorPeer{fd: c, peer: u}
		peers[u] = &floorPeer{fd: u, peer: c}
	})
}

// floorWrite writes all of b to fd, waiting in poll(2) while it is full.
func floorWrite(fd int, b []byte) error {
	for len(b) > 0 {
		k, err := unix.Write(fd, b)
		switch {
		case errors.Is(err, unix.EAGAIN):
			if _, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}, -1); err != nil && !errors.Is(err, unix.EINTR) {
				return err
			}
		case errors.Is(err, unix.EINTR):
		case err != nil:
			return err
		default:
			b = b[k:]
		}
	}
	return nil
}

// runGoRelay serves the Go relay until killed: what the least Go proxy
// does, two goroutines a connection, each reading into a 16 KiB buffer and
// writing what it read, through Go's network poller.
func runGoRelay(spec string) error {
	f := strings.Split(spec, ",")
	if len(f) != 4 {
		return fmt.Errorf("-go-relay: want listenA,upstreamA,listenB,upstreamB, got %q", spec)
	}
	errs := make(chan error, 2)
	for i := 0; i < 4; i += 2 {
		ln, err := net.Listen("tcp", f[i])
		if err != nil {
			return err
		}
		go func(ln net.Listener, up string) {
			for {
				c, err := ln.Accept()
				if err != nil {
					errs <- err
					return
				}
				go goRelayConn(c, up)
			}
		}(ln, f[i+1])
	}
	return <-errs
}

func goRelayConn(c net.Conn, up string) {
	u, err := net.Dial("tcp", up)
	if err != nil {
		c.Close()
		return
	}
	copyHalf := func(dst, src net.Conn, done chan<- struct{}) {
		b := make([]byte, 16<<10)
		for {
			n, err := src.Read(b)
			if n > 0 {
				if _, werr := dst.Write(b[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		dst.(*net.TCPConn).CloseWrite()
		done <- struct{}{}
	}
	done := make(chan struct{}, 2)
	go copyHalf(u, c, done)
	go copyHalf(c, u, done)
	<-done
	<-done
	c.Close()
	u.Close()
}

// tickProbe wants to run every millisecond for d and prints, to stderr, how
// often it ran and how late: what a process's other goroutines get while
// the floor relay waits as it does.
func tickProbe(d time.Duration, wait string) {
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	var late []time.Duration
	start := time.Now()
	last := start
	for now := range t.C {
		late = append(late, now.Sub(last)-time.Millisecond)
		last = now
		if now.Sub(start) >= d {
			break
		}
	}
	slices.Sort(late)
	fmt.Fprintf(os.Stderr, "floor relay waiting in %s: a 1 ms ticker ran %d times in %v, late p50 %v, p99 %v, max %v\n",
		wait, len(late), d, late[len(late)/2], late[len(late)*99/100], late[len(late)-1])
}

// runWaitProbe runs the floor relay on one core with the tick probe, first
// waiting in epoll_wait and then in Go's poller, each under a 64 B
// ping-pong for -duration × 4 (docs/internals.md, A round trip).
func runWaitProbe(echoAddr string) error {
	d := 4 * *duration
	for _, wait := range []string{"epoll", "poller"} {
		p, err := startSelf(floorRelayName, envProcs(1), func(a, b string) []string {
			return []string{"-floor-relay", strings.Join([]string{a, echoAddr, b, echoAddr}, ","), "-floor-wait", wait,
				"-floor-tick-probe", d.String()}
		})
		if err != nil {
			return err
		}
		c, err := net.Dial("tcp", p.echoAddr)
		if err != nil {
			p.stop()
			return err
		}
		msg, back := make([]byte, 64), make([]byte, 64)
		n := 0
		for end := time.Now().Add(d + 500*time.Millisecond); time.Now().Before(end); n++ {
			if _, err = c.Write(msg); err == nil {
				_, err = io.ReadFull(c, back)
			}
			if err != nil {
				break
			}
		}
		c.Close()
		p.stop()
		if err != nil {
			return fmt.Errorf("wait probe, %s: %w", wait, err)
		}
		fmt.Fprintf(os.Stderr, "  (%d round trips through it meanwhile)\n", n)
	}
	return nil
}
