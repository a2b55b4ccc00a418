//go:build linux

package proxy

import (
	"errors"
	"io"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluiceproxy/sluice/proxy/upstream"
)

// peekHead waits for the first bytes of c and copies them into buf
// without consuming them. With head, it waits on until buf holds as much
// of an HTTP response head as a retry decision needs (a status line that
// is not 429 or 503, or a whole head), or buf is full, or c ends: the
// socket's low-water mark makes it readable only once more bytes than
// those seen are queued. It returns io.EOF when c ended before any byte.
func peekHead(c net.Conn, buf []byte, head bool) (int, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return 1, nil // not a socket to peek at: take it as answered
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return 0, err
	}
	// peek waits until more than seen bytes are queued; after a wake-up
	// it returns whatever is there (the same seen bytes: the stream
	// ended).
	peek := func(seen int) (int, error) {
		var n, calls int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			calls++
			n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if errors.Is(rerr, unix.EAGAIN) {
				return false
			}
			return rerr != nil || n != seen || calls > 1 || peerClosed(fd)
		})
		if err == nil {
			err = rerr
		}
		return n, err
	}
	n, err := peek(0)
	switch {
	case err != nil:
		return 0, err
	case n == 0:
		return 0, io.EOF
	case !head:
		return n, nil
	}
	defer func() {
		_ = rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1) })
	}()
	for n < len(buf) && !enoughHead(buf[:n]) {
		seen := n
		_ = rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, seen+1) })
		if n, err = peek(seen); err != nil {
			return 0, err
		}
		if n <= seen {
			return seen, nil // the server ended mid-head: what it sent is its answer
		}
	}
	return n, nil
}

// peerClosed reports whether the far end of socket fd has closed its
// side (the state after its FIN: CLOSE_WAIT, or CLOSE).
func peerClosed(fd uintptr) bool {
	info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	return err != nil || info.State == tcpCloseWait || info.State == tcpClose
}

// Linux TCP states (include/net/tcp_states.h).
const (
	tcpClose     = 7
	tcpCloseWait = 8
)

// enoughHead reports whether b holds what a retry decision needs of a
// response head: a status line that is not busy, a whole head, or
// something that is no head at all.
func enoughHead(b []byte) bool {
	h, err := upstream.ParseResponseHead(b, time.Time{})
	return !errors.Is(err, upstream.ErrIncomplete) || (h.Status != 0 && !h.Busy())
}
