package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The ideal loop is a reference point for -shape, not a proxy: one
// goroutine and one ticker shape every connection, with sluice's grant
// sizes and kernel pacing, moving bytes by raw splices through a pipe per
// connection. It has no config, no limits that change, no links, no
// metrics, and nothing that wakes per connection. Its CPU per GB is what the
// bytes and system calls of shaping cost on this machine when scheduling
// costs (almost) nothing, with the same GOMAXPROCS as sluice (-proxy-procs)
// in -shape, and GOMAXPROCS=1 in -rows (the "Go floor" column): a reference
// for sluice's pumps, not a floor of shaping itself, as the Go scheduler's
// own thread wake-ups are part of it.

var (
	idealProxy   = flag.String("ideal-proxy", "", "internal: run the ideal loop on source,echo,upstream,rate")
	idealGrant   = flag.Duration("ideal-paced-grant", 10*time.Millisecond, "-shape: the ideal loop's grant when the kernel paces, as time at the rate (sluice's is 10ms)")
	idealUnpaced = flag.Duration("ideal-unpaced-grant", 5*time.Millisecond, "-shape: the ideal loop's grant when the kernel does not pace (above 50 MB/s), as time at the rate (sluice's is 5ms)")
	idealTimerfd = flag.Bool("ideal-timerfd", false, "-shape, -rows: the ideal loop ticks by a timerfd in Go's poller, read with a raw read (as sluice's shaping loops wait), instead of a time.Ticker")
)

// startIdeal runs this binary as the ideal loop in front of srcAddr, with
// the environment env (procsEnv's, or envProcs(1) for -rows).
func startIdeal(srcAddr, echoAddr string, rate int64, env []string) (*proxyProc, error) {
	return startSelf(idealLoop, env, func(a, b string) []string {
		return []string{"-ideal-proxy", strings.Join([]string{a, b, srcAddr, strconv.FormatInt(rate, 10)}, ","),
			"-ideal-paced-grant", idealGrant.String(), "-ideal-unpaced-grant", idealUnpaced.String(), "-ideal-timerfd=" + strconv.FormatBool(*idealTimerfd)}
	})
}

// Grant sizes as sluice takes them (proxy/conn.go): 10 ms of the rate when
// the kernel paces (up to 50 MB/s; -ideal-paced-grant), else 5 ms of the
// rate (-ideal-unpaced-grant), at least a chunk.
const (
	idealMaxPaced = 50_000_000
	idealAhead    = 64 << 10 // read ahead, as sluice does for small grants
)

type idealConn struct {
	client, up net.Conn
	cfd, ufd   int
	pr, pw     int // the pipe
	inPipe     int
	credit     int64 // bytes it may send now, in nano-bytes
}

// runIdealProxy serves the ideal loop until SIGTERM.
func runIdealProxy(spec string) error {
	f := strings.Split(spec, ",")
	if len(f) != 4 {
		return fmt.Errorf("-ideal-proxy: want source,echo,upstream,rate, got %q", spec)
	}
	rate, err := strconv.ParseInt(f[3], 10, 64)
	if err != nil || rate <= 0 {
		return fmt.Errorf("-ideal-proxy: bad rate %q", f[3])
	}
	src, err := net.Listen("tcp", f[0])
	if err != nil {
		return err
	}
	echo, err := net.Listen("tcp", f[1]) // only answers waitListening
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	paced := rate <= idealMaxPaced
	tick := *idealUnpaced
	if paced {
		tick = *idealGrant
	}
	grant := max(rate*int64(tick)/int64(time.Second), chunk)

	var mu sync.Mutex
	var conns []*idealConn
	go func() {
		for {
			c, err := src.Accept()
			if err != nil {
				return
			}
			ic, err := idealDial(c, f[2], rate, paced)
			if err != nil {
				fmt.Fprintln(os.Stderr, "ideal loop:", err)
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, ic)
			mu.Unlock()
		}
	}()

	ticks := idealTicks(tick)
	last := time.Now()
	for now := range ticks {
		el := int64(now.Sub(last))
		last = now
		mu.Lock()
		live := conns[:0]
		for _, c := range conns {
			c.credit = min(c.credit+el*rate, 2*grant*int64(time.Second))
			if c.move() {
				live = append(live, c)
			} else {
				c.close()
			}
		}
		conns = live
		mu.Unlock()
	}
	return nil
}

func idealDial(c net.Conn, upstream string, rate int64, paced bool) (*idealConn, error) {
	up, err := net.Dial("tcp", upstream)
	if err != nil {
		return nil, err
	}
	ic := &idealConn{client: c, up: up}
	fd := func(c net.Conn) (int, error) {
		rc, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			return 0, err
		}
		var n int
		return n, rc.Control(func(f uintptr) { n = int(f) })
	}
	if ic.cfd, err = fd(c); err == nil {
		ic.ufd, err = fd(up)
	}
	if err == nil && paced {
		err = unix.SetsockoptUint64(ic.cfd, unix.SOL_SOCKET, unix.SO_MAX_PACING_RATE, uint64(rate)*1005/1000) // sluice's 0.5% headroom
	}
	var p [2]int
	if err == nil {
		err = unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC)
	}
	if err != nil {
		up.Close()
		return nil, err
	}
	ic.pr, ic.pw = p[0], p[1]
	_, _ = unix.FcntlInt(uintptr(ic.pr), unix.F_SETPIPE_SZ, 1<<20)
	return ic, nil
}

// move sends what the conn's credit allows; false when the conn is done.
func (c *idealConn) move() bool {
	want := int(c.credit / int64(time.Second))
	if want == 0 {
		return true
	}
	if c.inPipe < want {
		n, e := splice(c.ufd, c.pw, max(idealAhead, want)-c.inPipe)
		switch {
		case e == 0 && n == 0 && c.inPipe == 0:
			return false // upstream ended
		case e != 0 && e != unix.EAGAIN:
			return false
		}
		c.inPipe += n
	}
	n, e := splice(c.pr, c.cfd, min(want, c.inPipe))
	if e != 0 && e != unix.EAGAIN {
		return false
	}
	c.inPipe -= n
	c.credit -= int64(n) * int64(time.Second)
	return true
}

func (c *idealConn) close() {
	c.client.Close()
	c.up.Close()
	unix.Close(c.pr)
	unix.Close(c.pw)
}

func splice(from, to, n int) (int, unix.Errno) {
	if n <= 0 {
		return 0, 0
	}
	r, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(from), 0, uintptr(to), 0, uintptr(n), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
	return int(r), e
}

// idealTicks sends the time every tick: from a time.Ticker, or with
// -ideal-timerfd from a timerfd waited on in Go's poller and read with a
// raw read, which wakes the process once a tick where the runtime's own
// timers wake it up to a millisecond early and once more
// (docs/internals.md#the-shaping-loop).
func idealTicks(tick time.Duration) <-chan time.Time {
	if !*idealTimerfd {
		return time.NewTicker(tick).C
	}
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err == nil {
		ts := unix.NsecToTimespec(int64(tick))
		err = unix.TimerfdSettime(fd, 0, &unix.ItimerSpec{Interval: ts, Value: ts}, nil)
	}
	var rc syscall.RawConn
	if err == nil {
		rc, err = os.NewFile(uintptr(fd), "timerfd").SyscallConn()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ideal loop: timerfd:", err, "(ticking by a time.Ticker)")
		return time.NewTicker(tick).C
	}
	ch := make(chan time.Time, 1)
	go func() {
		var n [8]byte
		read := func(fd uintptr) bool {
			_, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&n[0])), uintptr(len(n)))
			return e != unix.EAGAIN
		}
		for rc.Read(read) == nil {
			ch <- time.Now()
		}
	}()
	return ch
}
