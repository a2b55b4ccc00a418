package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The kernel relay is a reference point for the latency rows, not a proxy:
// the bytes of a connection never reach user space. Each accepted client
// and the socket dialled for it upstream go into a BPF sockhash, with an
// SK_SKB stream-verdict program attached to the map; for every skb that
// arrives on either socket the program redirects it to the egress of the
// other (bpf_sk_redirect_hash, no BPF_F_INGRESS), and the kernel writes it
// there from a kworker. User space only accepts, dials, fills the maps and
// waits, without being woken by data, for each side's end, which it passes
// on with shutdown(2). Its added round trip is what relaying costs on this
// machine with no process woken per message: a wake-up of a kworker per
// direction instead of the relay's (the kernel queues an skb redirected to
// a socket's egress and sends it from its workqueue). It needs root (or
// CAP_BPF and CAP_NET_ADMIN).

var kernelRelay = flag.String("kernel-relay", "", "internal: run the kernel relay (BPF sockhash, SK_SKB stream verdict) on listenA,upstreamA,listenB,upstreamB")

const kernelRelayName = "kernel relay (sockmap)"

// startKernelRelay runs this binary as the kernel relay in front of
// srcAddr and echoAddr, on one core. Its CPU is the relay process's and
// every kworker's: the kernel writes redirected skbs from kworkers, and
// counts whatever else they do meanwhile too. Kworkers are added to the
// set as they appear, never taken out, so that a sum over it before and
// after a measurement counts the ones started in between from zero.
func startKernelRelay(srcAddr, echoAddr string) (*proxyProc, error) {
	p, err := startRelay(kernelRelayName, "-kernel-relay", srcAddr, echoAddr)
	if err != nil {
		return nil, err
	}
	seen := map[int]bool{}
	var kworkers []int
	relay := p.pids
	p.pids = func() []int {
		for _, pid := range kworkerPids() {
			if !seen[pid] {
				seen[pid] = true
				kworkers = append(kworkers, pid)
			}
		}
		return append(relay(), kworkers...)
	}
	return p, nil
}

// kernelRelayStarter starts the kernel relay; where BPF is not allowed
// (no root, or no CAP_BPF and CAP_NET_ADMIN) its error wraps errSkipped,
// and the measurement goes on without it.
func kernelRelayStarter(srcAddr, echoAddr string) func() (*proxyProc, error) {
	return func() (*proxyProc, error) {
		p, err := startKernelRelay(srcAddr, echoAddr)
		if err != nil {
			err = fmt.Errorf("%w: %s: %w", errSkipped, kernelRelayName, err)
		}
		return p, err
	}
}

// kworkerPids lists the kernel's workqueue threads.
func kworkerPids() []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if comm, err := os.ReadFile("/proc/" + e.Name() + "/comm"); err == nil && strings.HasPrefix(string(comm), "kworker/") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// bpf(2) commands, and helper function numbers (include/uapi/linux/bpf.h).
const (
	bpfMapCreate     = 0
	bpfMapUpdateElem = 2
	bpfMapDeleteElem = 3
	bpfProgLoad      = 5
	bpfProgAttach    = 8

	bpfFuncMapLookupElem    = 1
	bpfFuncGetSocketCookie  = 46
	bpfFuncSkRedirectHash   = 72
	kernelRelayMaxConns     = 4096
	kernelRelayCloseTimeout = 2 * time.Second
)

// bpfInsn is struct bpf_insn: the registers are two nibbles, dst low.
type bpfInsn struct {
	code byte
	regs byte
	off  int16
	imm  int32
}

func insn(code byte, dst, src byte, off int16, imm int32) bpfInsn {
	return bpfInsn{code: code, regs: src<<4 | dst, off: off, imm: imm}
}

// ldMapFD is BPF_LD_IMM64 of a map's descriptor (src_reg
// BPF_PSEUDO_MAP_FD): two instructions.
func ldMapFD(dst byte, fd int) []bpfInsn {
	return []bpfInsn{insn(unix.BPF_LD|unix.BPF_DW|unix.BPF_IMM, dst, unix.BPF_PSEUDO_MAP_FD, 0, int32(fd)), {}}
}

// kernelRelayProg is the verdict program. peers maps a socket's cookie to
// its peer's cookie, socks a cookie to its socket:
//
//	cookie = bpf_get_socket_cookie(skb)
//	peer = bpf_map_lookup_elem(peers, &cookie)
//	if peer == NULL: return SK_DROP
//	return bpf_sk_redirect_hash(skb, socks, peer, 0)  // SK_PASS, or SK_DROP if the peer is gone
func kernelRelayProg(peers, socks int) []bpfInsn {
	const (
		alu64Mov = unix.BPF_ALU64 | unix.BPF_MOV
		call     = unix.BPF_JMP | unix.BPF_CALL
	)
	var p []bpfInsn
	p = append(p,
		insn(alu64Mov|unix.BPF_X, 6, 1, 0, 0),                     // r6 = skb
		insn(call, 0, 0, 0, bpfFuncGetSocketCookie),               // r0 = cookie(skb)
		insn(unix.BPF_STX|unix.BPF_MEM|unix.BPF_DW, 10, 0, -8, 0), // *(u64 *)(r10-8) = r0
	)
	p = append(p, ldMapFD(1, peers)...) // r1 = peers
	p = append(p,
		insn(alu64Mov|unix.BPF_X, 2, 10, 0, 0),                    // r2 = r10
		insn(unix.BPF_ALU64|unix.BPF_ADD|unix.BPF_K, 2, 0, 0, -8), // r2 -= 8
		insn(call, 0, 0, 0, bpfFuncMapLookupElem),                 // r0 = &peer cookie or NULL
		insn(unix.BPF_JMP|unix.BPF_JEQ|unix.BPF_K, 0, 0, 7, 0),    // if r0 == 0 goto drop
		insn(alu64Mov|unix.BPF_X, 3, 0, 0, 0),                     // r3 = r0
		insn(alu64Mov|unix.BPF_X, 1, 6, 0, 0),                     // r1 = skb
	)
	p = append(p, ldMapFD(2, socks)...) // r2 = socks
	p = append(p,
		insn(alu64Mov|unix.BPF_K, 4, 0, 0, 0),      // r4 = 0: egress
		insn(call, 0, 0, 0, bpfFuncSkRedirectHash), // r0 = verdict
		insn(unix.BPF_JMP|unix.BPF_EXIT, 0, 0, 0, 0),
		insn(alu64Mov|unix.BPF_K, 0, 0, 0, 0), // drop: r0 = SK_DROP
		insn(unix.BPF_JMP|unix.BPF_EXIT, 0, 0, 0, 0),
	)
	return p
}

// bpf calls bpf(2) with attr, which must be one of the bpf_attr layouts.
// Their pointer fields are unsafe.Pointer, 64 bits as the kernel's __u64
// on the 64-bit machines this runs on, so that the garbage collector and
// stack moves see them.
func bpf(cmd int, attr unsafe.Pointer, size uintptr) (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_BPF, uintptr(cmd), uintptr(attr), size)
	runtime.KeepAlive(attr)
	if errno != 0 {
		return int(r), errno
	}
	return int(r), nil
}

// bpfCreateMap creates a map of type typ.
func bpfCreateMap(typ, keySize, valueSize, maxEntries uint32) (int, error) {
	attr := struct{ typ, keySize, valueSize, maxEntries, flags uint32 }{typ, keySize, valueSize, maxEntries, 0}
	fd, err := bpf(bpfMapCreate, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	if err != nil {
		return 0, fmt.Errorf("bpf map create (type %d): %w", typ, err)
	}
	return fd, nil
}

type bpfMapElemAttr struct {
	fd         uint32
	_          uint32
	key, value unsafe.Pointer
	flags      uint64
}

// bpfUpdate sets key to value in map fd.
func bpfUpdate(fd int, key, value unsafe.Pointer) error {
	attr := bpfMapElemAttr{fd: uint32(fd), key: key, value: value}
	_, err := bpf(bpfMapUpdateElem, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	return err
}

// bpfDelete deletes key from map fd.
func bpfDelete(fd int, key unsafe.Pointer) error {
	attr := bpfMapElemAttr{fd: uint32(fd), key: key}
	_, err := bpf(bpfMapDeleteElem, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	return err
}

// bpfLoadVerdict loads prog as an SK_SKB program and returns its
// descriptor, or an error with the verifier's log.
func bpfLoadVerdict(prog []bpfInsn) (int, error) {
	license := []byte("GPL\x00")
	log := make([]byte, 64<<10)
	attr := struct {
		progType, insnCnt  uint32
		insns, license     unsafe.Pointer
		logLevel, logSize  uint32
		logBuf             unsafe.Pointer
		kernVersion, flags uint32
		name               [16]byte
		ifindex            uint32
		expectedAttachType uint32
	}{
		progType: unix.BPF_PROG_TYPE_SK_SKB, insnCnt: uint32(len(prog)),
		insns: unsafe.Pointer(&prog[0]), license: unsafe.Pointer(&license[0]),
		logLevel: 1, logSize: uint32(len(log)), logBuf: unsafe.Pointer(&log[0]),
		expectedAttachType: unix.BPF_SK_SKB_STREAM_VERDICT,
	}
	copy(attr.name[:], "sluice_relay")
	fd, err := bpf(bpfProgLoad, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	if err != nil {
		return 0, fmt.Errorf("bpf prog load: %w; verifier: %s", err, strings.TrimSpace(unix.ByteSliceToString(log)))
	}
	return fd, nil
}

// bpfAttachVerdict attaches prog to map as its stream verdict program.
func bpfAttachVerdict(mapFD, prog int) error {
	attr := struct{ target, prog, typ, flags, replace uint32 }{uint32(mapFD), uint32(prog), unix.BPF_SK_SKB_STREAM_VERDICT, 0, 0}
	if _, err := bpf(bpfProgAttach, unsafe.Pointer(&attr), unsafe.Sizeof(attr)); err != nil {
		return fmt.Errorf("bpf prog attach (stream verdict): %w", err)
	}
	return nil
}

// socketCookie is the socket's cookie (SO_COOKIE), what
// bpf_get_socket_cookie returns for it.
func socketCookie(fd int) (uint64, error) {
	var b [8]byte
	n := uint32(len(b))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_COOKIE,
		uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return 0, fmt.Errorf("SO_COOKIE: %w", errno)
	}
	return binary.NativeEndian.Uint64(b[:]), nil
}

// written is how many bytes have been written to the socket fd since
// base: bytes acknowledged plus those still in its send queue. Read in
// this order, it can only come out short while acknowledgements arrive.
func written(fd int, base uint64) uint64 {
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return 0
	}
	q, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
	if err != nil {
		return 0
	}
	return ti.Bytes_acked + uint64(q) - base
}

// kernelSide is one socket of a relayed pair.
type kernelSide struct {
	fd     int
	cookie uint64
	base   uint64 // bytes_acked when it joined the map: none of it relayed
	peer   *kernelSide
	ended  bool // its end was seen (the loop's)
	passed bool // its end was passed on to peer (the loop's)
}

// runKernelRelay serves the kernel relay until killed.
func runKernelRelay(spec string) error {
	peers, err := bpfCreateMap(unix.BPF_MAP_TYPE_HASH, 8, 8, 2*kernelRelayMaxConns)
	if err != nil {
		return err
	}
	socks, err := bpfCreateMap(unix.BPF_MAP_TYPE_SOCKHASH, 8, 8, 2*kernelRelayMaxConns)
	if err != nil {
		return err
	}
	prog, err := bpfLoadVerdict(kernelRelayProg(peers, socks))
	if err != nil {
		return err
	}
	if err := bpfAttachVerdict(socks, prog); err != nil {
		return err
	}
	runtime.LockOSThread()
	ep, upstreamOf, err := relayListen("-kernel-relay", spec)
	if err != nil {
		return err
	}
	// A side's end is passed on by a goroutine of its own, which waits
	// for the kernel to have written everything the side received to its
	// peer; meanwhile the loop serves every other pair. A pair is closed
	// by the loop, once both ends are passed on: finished sides come back
	// through passed, and an eventfd in the epoll set wakes the loop.
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return err
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		return err
	}
	var mu sync.Mutex
	var passed []*kernelSide
	sides := map[int]*kernelSide{}
	drop := func(s *kernelSide) {
		for _, x := range []*kernelSide{s, s.peer} {
			delete(sides, x.fd)
			bpfDelete(peers, unsafe.Pointer(&x.cookie))
			unix.Close(x.fd) // leaves socks by itself
		}
	}
	one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
	events := make([]unix.EpollEvent, 128)
	var buf [8]byte
	for {
		n, err := unix.EpollWait(ep, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		for _, ev := range events[:n] {
			fd := int(ev.Fd)
			if fd == wake {
				unix.Read(wake, buf[:])
				mu.Lock()
				done := passed
				passed = nil
				mu.Unlock()
				for _, s := range done {
					s.passed = true
					if s.peer.passed {
						drop(s)
					}
				}
				continue
			}
			if up, ok := upstreamOf[fd]; ok {
				kernelAccept(ep, fd, up, peers, socks, sides)
				continue
			}
			s := sides[fd]
			switch {
			case s == nil:
				continue // dropped by an earlier event of this batch
			case ev.Events&unix.EPOLLERR != 0:
				// Reset: nothing more of the pair's is passed on.
				// It closes now, or when the goroutines passing
				// either end on return (they see the reset).
				for _, x := range []*kernelSide{s, s.peer} {
					if !x.ended {
						x.ended, x.passed = true, true
					}
				}
				if s.passed && s.peer.passed {
					drop(s)
				}
				continue
			case s.ended || ev.Events&(unix.EPOLLRDHUP|unix.EPOLLHUP) == 0:
				continue
			}
			s.ended = true
			go func(s *kernelSide) {
				passEnd(s)
				mu.Lock()
				passed = append(passed, s)
				mu.Unlock()
				unix.Write(wake, one)
			}(s)
		}
	}
}

// passEnd passes the end of s on to its peer with shutdown(2), once the
// kernel has written everything s received to the peer, or the peer is
// closed, or kernelRelayCloseTimeout has passed.
func passEnd(s *kernelSide) {
	ti, err := unix.GetsockoptTCPInfo(s.fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err == nil {
		for deadline := time.Now().Add(kernelRelayCloseTimeout); time.Now().Before(deadline); time.Sleep(50 * time.Microsecond) {
			if written(s.peer.fd, s.peer.base) >= ti.Bytes_received {
				break
			}
			if pi, err := unix.GetsockoptTCPInfo(s.peer.fd, unix.IPPROTO_TCP, unix.TCP_INFO); err != nil || pi.State == tcpClose {
				break
			}
		}
	}
	unix.Shutdown(s.peer.fd, unix.SHUT_WR)
}

// tcpClose is TCP_CLOSE, the state of a socket reset by its peer.
const tcpClose = 7

// kernelAccept accepts every pending client on ln, connects each to up,
// puts both sockets in the maps and waits for their ends: epoll is asked
// only for EPOLLRDHUP, edge-triggered (an end, then a reset, wake it once
// each), so the wake-ups of arriving data pass the relay by.
// A pair that cannot join the maps is closed.
func kernelAccept(ep, ln int, up *net.TCPAddr, peers, socks int, sides map[int]*kernelSide) {
	acceptPairs(ln, unix.SOCK_CLOEXEC, up, func(c, u int) {
		a, b := &kernelSide{fd: c}, &kernelSide{fd: u}
		a.peer, b.peer = b, a
		if err := kernelJoin(a, b, peers, socks); err != nil {
			// A client gone before it joined (the sockhash takes
			// only established sockets: EOPNOTSUPP) ends here.
			bpfDelete(peers, unsafe.Pointer(&a.cookie))
			bpfDelete(peers, unsafe.Pointer(&b.cookie))
			unix.Close(c)
			unix.Close(u)
			return
		}
		for _, s := range []*kernelSide{a, b} {
			sides[s.fd] = s
			unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, s.fd, &unix.EpollEvent{Events: unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(s.fd)})
		}
	})
}

// kernelJoin puts the pair a (the client's) and b (upstream) in the maps:
// each one's peer first, then the sockets, upstream first, so that no skb
// meets a peer not there yet. What the client sent before its socket
// joined waits in the socket's receive queue, where the verdict program
// does not see it; setting SO_RCVLOWAT makes TCP signal data ready, which
// runs it through the program, in order, ahead of anything later. The
// same goes for the upstream socket: a backend that speaks first (a
// download) may have filled its receive buffer before the join, and then
// sends nothing more that would.
func kernelJoin(a, b *kernelSide, peers, socks int) error {
	for _, s := range []*kernelSide{a, b} {
		var err error
		if s.cookie, err = socketCookie(s.fd); err != nil {
			return err
		}
		unix.SetsockoptInt(s.fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		ti, err := unix.GetsockoptTCPInfo(s.fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return err
		}
		s.base = ti.Bytes_acked
	}
	for _, s := range []*kernelSide{a, b} {
		if err := bpfUpdate(peers, unsafe.Pointer(&s.cookie), unsafe.Pointer(&s.peer.cookie)); err != nil {
			return fmt.Errorf("bpf peers update: %w", err)
		}
	}
	for _, s := range []*kernelSide{b, a} {
		fd := uint64(s.fd)
		if err := bpfUpdate(socks, unsafe.Pointer(&s.cookie), unsafe.Pointer(&fd)); err != nil {
			return fmt.Errorf("bpf sockhash update: %w", err)
		}
	}
	for _, s := range []*kernelSide{a, b} {
		if err := unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1); err != nil {
			return err
		}
	}
	return nil
}
