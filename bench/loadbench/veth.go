package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

var vethSysctl = flag.String("veth-sysctl", "", "-rows: sysctls to set in the veth path's server namespace before the veth rows, comma-separated key=value (e.g. net.ipv4.tcp_congestion_control=reno,net.ipv4.tcp_min_tso_segs=1; a namespace may only pick one in net.ipv4.tcp_allowed_congestion_control)")

// A vethPath is a client and a server on either end of a veth pair
// between two network namespaces, so that the server's TCP sends as it
// would on a real link: segments of an Ethernet MTU, and bursts sized as
// on a path of a few milliseconds' RTT, which the kernel's pacing spreads
// (docs/shaping.md, "Grant sizes and kernel pacing").
//
// The server's side (proxies and backends) runs in namespace server at
// serverIP; clients dial from namespace client. close deletes both
// namespaces, with the veth pair in them; so does SIGINT, SIGTERM or
// SIGHUP while the path exists.
type vethPath struct {
	client, server string // namespace names
	serverIP       string
	// setup says what shapes the server's sends: the qdisc on its end of
	// the pair, and the path delay or what stands for it.
	setup    string
	untrap   func()
	nextPort int
}

// newVethPath makes the namespaces and the pair: MTU 1500, fq on the
// server's end and a 5 ms netem delay on the client's (its ACKs), where
// the kernel has them. Without netem the server's namespace sets
// net.ipv4.tcp_tso_rtt_log=0, which sizes TSO bursts by the rate alone,
// as for a path of a few ms; without fq TCP paces by itself (Linux ≥ 4.13).
func newVethPath() (*vethPath, error) {
	id := os.Getpid()
	v := &vethPath{
		client:   fmt.Sprintf("lbc%d", id),
		server:   fmt.Sprintf("lbs%d", id),
		serverIP: "10.213.0.2",
		nextPort: 8001,
	}
	v.untrap = trapSignals(v.close)
	steps := [][]string{
		{"ip", "netns", "add", v.client},
		{"ip", "netns", "add", v.server},
		{"ip", "link", "add", v.client, "netns", v.client, "mtu", "1500", "type", "veth", "peer", "name", v.server, "netns", v.server, "mtu", "1500"},
		{"ip", "-n", v.client, "addr", "add", "10.213.0.1/24", "dev", v.client},
		{"ip", "-n", v.server, "addr", "add", v.serverIP + "/24", "dev", v.server},
		{"ip", "-n", v.client, "link", "set", v.client, "up"},
		{"ip", "-n", v.server, "link", "set", v.server, "up"},
		{"ip", "-n", v.client, "link", "set", "lo", "up"},
		{"ip", "-n", v.server, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := runCmd(s...); err != nil {
			v.close()
			return nil, err
		}
	}
	var notes []string
	if runCmd("tc", "-n", v.server, "qdisc", "replace", "dev", v.server, "root", "fq") == nil {
		notes = append(notes, "fq on the sender's end")
	} else {
		notes = append(notes, "no fq in this kernel: TCP paces by itself (noqueue)")
	}
	if runCmd("tc", "-n", v.client, "qdisc", "replace", "dev", v.client, "root", "netem", "delay", "5ms") == nil {
		notes = append(notes, "netem delay 5ms on the client's end (ACKs)")
	} else if err := runCmd("ip", "netns", "exec", v.server, "sysctl", "-qw", "net.ipv4.tcp_tso_rtt_log=0"); err == nil {
		notes = append(notes, "no netem in this kernel: tcp_tso_rtt_log=0 in the sender's namespace (bursts sized as on a path of a few ms)")
	} else {
		v.close()
		return nil, fmt.Errorf("neither netem nor net.ipv4.tcp_tso_rtt_log: %w", err)
	}
	for _, kv := range strings.Split(*vethSysctl, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		if err := runCmd("ip", "netns", "exec", v.server, "sysctl", "-qw", kv); err != nil {
			v.close()
			return nil, fmt.Errorf("-veth-sysctl: %w", err)
		}
		notes = append(notes, kv+" in the sender's namespace")
	}
	v.setup = "veth MTU 1500, " + strings.Join(notes, ", ")
	return v, nil
}

// close deletes the namespaces; it may run more than once.
func (v *vethPath) close() {
	for _, ns := range []string{v.client, v.server} {
		if _, err := os.Stat("/run/netns/" + ns); err == nil {
			if err := runCmd("ip", "netns", "del", ns); err != nil {
				fmt.Fprintln(os.Stderr, "loadbench:", err)
			}
		}
	}
	if v.untrap != nil {
		v.untrap()
	}
}

// addrs returns two fresh listen addresses on the server's end.
func (v *vethPath) addrs() [2]string {
	v.nextPort += 2
	return [2]string{fmt.Sprintf("%s:%d", v.serverIP, v.nextPort), fmt.Sprintf("%s:%d", v.serverIP, v.nextPort+1)}
}

// dial connects as a client (dialClient) from the client's namespace.
func (v *vethPath) dial(addr string) (c net.Conn, err error) {
	err = inNetns(v.client, func() error {
		c, err = dialClient(addr)
		return err
	})
	return c, err
}

// listenBackend is listenBackend in the server's namespace, on its
// loopback.
func (v *vethPath) listenBackend(serve func(net.Conn)) (ln net.Listener, err error) {
	err = inNetns(v.server, func() error {
		ln, err = listenBackend(serve)
		return err
	})
	return ln, err
}

// inNetns runs f on an OS thread that has joined network namespace ns, so
// that the sockets f opens live there (a socket stays in the namespace it
// was made in, whichever thread uses it later). The thread then goes back
// to this namespace. If it cannot, it stays locked and ends with its
// goroutine: then no other goroutine runs in ns, but a child process
// started from that thread with Pdeathsig would be killed.
func inNetns(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("this network namespace: %w", err)
			return
		}
		defer unix.Close(self)
		fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("network namespace %q: %w", ns, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("join network namespace %q: %w", ns, err)
			return
		}
		err = f()
		if unix.Setns(self, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// runCmd runs a command, with its output in the error if it fails.
func runCmd(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// canNetns reports whether this process may make network namespaces.
func canNetns() error {
	if os.Geteuid() != 0 {
		return errors.New("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("network namespaces need ip (iproute2)")
	}
	return nil
}

// trapSignals runs cleanup and exits if SIGINT, SIGTERM or SIGHUP comes
// before the returned function is called.
func trapSignals(cleanup func()) (untrap func()) {
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		select {
		case s := <-sigc:
			cleanup()
			fmt.Fprintln(os.Stderr, "loadbench:", s)
			os.Exit(1)
		case <-done:
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			signal.Stop(sigc)
			close(done)
		})
	}
}
