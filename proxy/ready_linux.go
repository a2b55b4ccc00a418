package proxy

import (
	"io"
	"net"
	"os"

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

// setPacingRate sets SO_MAX_PACING_RATE (bytes per second; MaxUint64 means
// none) on c, so the kernel spaces its packets at that rate.
func setPacingRate(c *net.TCPConn, rate uint64) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_MAX_PACING_RATE, rate)
	})
	if err != nil {
		return err
	}
	return os.NewSyscallError("setsockopt SO_MAX_PACING_RATE", serr)
}
