package main

import (
	"errors"
	"flag"
	"io"
	"net"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

var arrivalStamps = flag.Bool("stamps", false, "-shape, -rows: also give each shaped case's 100 ms windows with every read's bytes counted when the client's kernel received them (SO_TIMESTAMPNS; reads of at most 1,448 bytes), to tell a client read late from bytes sent late")

// plainReader returns a read function for conn whose stamp is the time
// the read returned.
func plainReader(conn net.Conn) func([]byte) (int, time.Time, error) {
	return func(b []byte) (int, time.Time, error) {
		n, err := conn.Read(b)
		return n, time.Now(), err
	}
}

// stampedReader returns a read function for conn that also says when the
// client's kernel received the last byte read (SO_TIMESTAMPNS), and true;
// or, where conn is not a TCP socket or the option is refused, a plain
// read whose stamp is the time it returned, and false.
func stampedReader(conn net.Conn) (read func([]byte) (int, time.Time, error), ok bool) {
	plain := plainReader(conn)
	sc, isSC := conn.(syscall.Conn)
	if !isSC {
		return plain, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return plain, false
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	}); err != nil || serr != nil {
		return plain, false
	}
	oob := make([]byte, unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{}))))
	return func(b []byte) (int, time.Time, error) {
		var n, oobn int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, oobn, _, _, rerr = unix.Recvmsg(int(fd), b, oob, 0)
			return !errors.Is(rerr, unix.EAGAIN)
		})
		now := time.Now()
		if err != nil {
			return 0, now, err // the deadline
		}
		if rerr != nil {
			return 0, now, rerr
		}
		if n == 0 {
			return 0, now, io.EOF
		}
		at := now
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= int(unsafe.Sizeof(unix.Timespec{})) {
					ts := (*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
					at = time.Unix(ts.Unix())
				}
			}
		}
		return n, at, nil
	}, true
}
