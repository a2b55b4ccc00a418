package proxy

import (
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// spliceSupported: Linux has splice(2) and MSG_PEEK|MSG_TRUNC on TCP.
const spliceSupported = true

// readable is the RawConn.Read callback of the splice path. It reports true
// with m.avail set when bytes are queued on fd, true with m.rerr set when the
// stream has ended (io.EOF) or failed, and false to wait for readiness.
//
// One recv(MSG_PEEK|MSG_TRUNC) answers all three: on TCP it counts the queued
// bytes (up to maxMove) without copying them (tcp(7), Linux ≥ 4.4), returns 0
// at EOF and EAGAIN when empty. The buffer is NULL, so a kernel that copied
// anyway would fail with EFAULT rather than write into our memory. It
// allocates nothing.
func (m *moving) readable(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, fd, 0, maxMove,
			unix.MSG_PEEK|unix.MSG_TRUNC|unix.MSG_DONTWAIT, 0, 0)
		switch {
		case e == unix.EAGAIN:
			return false
		case e == unix.EINTR:
			continue
		case e != 0:
			m.rerr = os.NewSyscallError("recvfrom", e)
		case n == 0:
			m.rerr = io.EOF
		default:
			m.avail = int(n)
		}
		return true
	}
}

// peekNow is the RawConn.Read callback of a recount (ahead.go): readable,
// without waiting.
func (m *moving) peekNow(fd uintptr) bool {
	m.readable(fd)
	return true
}

// readSmall is the RawConn.Read callback of an unshaped direction whose
// last move was small (smallRead): it reads what src has, up to smallRead,
// into a pooled buffer (m.small, m.avail bytes), rather than count it. Like
// readable it reports true with m.rerr set at the end or on failure, and
// false to wait; a wait holds no buffer.
func (m *moving) readSmall(fd uintptr) bool {
	if m.small == nil {
		m.small = copyPools[smallClass].Get().(*[]byte)
	}
	b := (*m.small)[:smallRead]
	for {
		n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
		case e != 0:
			m.rerr = os.NewSyscallError("read", e)
		case n == 0:
			m.rerr = io.EOF
		default:
			m.avail = int(n)
			return true
		}
		copyPools[smallClass].Put(m.small)
		m.small = nil
		return e != unix.EAGAIN
	}
}

// setClientPacing sets SO_MAX_PACING_RATE (bytes per second; MaxUint64
// means none) on the client socket, also while c is detached (the socket
// keeps it when attached again), so the kernel spaces its packets at that
// rate. Requires c.mu held.
func (c *conn) setClientPacing(rate uint64) error {
	var err error
	if cerr := c.clientFD(func(fd int) {
		err = unix.SetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_MAX_PACING_RATE, rate)
	}); cerr != nil {
		return cerr
	}
	return os.NewSyscallError("setsockopt SO_MAX_PACING_RATE", err)
}

// clientFD runs f on the client socket's descriptor: Go's, or while c is
// detached its duplicate (park.go). With neither (its sockets were lost)
// it runs nothing. Requires c.mu held.
func (c *conn) clientFD(f func(fd int)) error {
	switch {
	case c.client != nil:
		raw, err := c.client.SyscallConn()
		if err != nil {
			return err
		}
		return raw.Control(func(fd uintptr) { f(int(fd)) })
	case c.detached:
		f(int(c.pumps[Up].fd))
	}
	return nil
}

// tsoRTTLog is net.ipv4.tcp_tso_rtt_log of sluice's network namespace,
// read once; -1 where the kernel has none (before Linux 5.18, bursts are
// sized by the pacing rate alone).
var tsoRTTLog = sync.OnceValue(func() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_tso_rtt_log")
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 {
		return -1
	}
	return n
})

// minRTT returns the minimum RTT TCP has measured on fd (the handshake's
// at least), 0 if unknown.
func minRTT(fd int) time.Duration {
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return 0
	}
	return time.Duration(ti.Min_rtt) * time.Microsecond
}

// clientMinRTT is minRTT of the client socket, also while c is detached.
// Requires c.mu held.
func (c *conn) clientMinRTT() time.Duration {
	var rtt time.Duration
	_ = c.clientFD(func(fd int) { rtt = minRTT(fd) })
	return rtt
}
