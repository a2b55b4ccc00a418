package proxy

import (
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// spliceSupported: Linux has splice(2) and SIOCINQ.
const spliceSupported = true

// readable is the RawConn.Read callback of the splice path. It reports true
// with p.avail set when bytes are queued on fd, true with p.rerr set when the
// stream has ended (io.EOF) or failed, and false to wait for readiness. It
// reads nothing: SIOCINQ counts the queued bytes and a one-byte MSG_PEEK
// tells an ended stream from an empty one. It allocates nothing.
func (p *pump) readable(fd uintptr) bool {
	for {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.SIOCINQ, uintptr(unsafe.Pointer(&p.inq)))
		if e != 0 {
			p.rerr = os.NewSyscallError("ioctl", e)
			return true
		}
		if p.inq > 0 {
			p.avail = int(p.inq)
			return true
		}
		n, _, e := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&p.peek[0])), 1,
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		switch {
		case e == unix.EAGAIN:
			return false
		case e == unix.EINTR:
			continue
		case e != 0:
			p.rerr = os.NewSyscallError("recvfrom", e)
			return true
		case n == 0:
			p.rerr = io.EOF
			return true
		}
		// Bytes arrived between the two calls: count them again.
	}
}
