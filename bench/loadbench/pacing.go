package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The pacing probe answers one question about the kernel it runs on: when
// a socket has SO_MAX_PACING_RATE set and the application writes a whole
// grant at once, does the peer receive that grant spread over the grant's
// time at the rate, or as one block? It writes grants on a loopback pair
// at the grant's pace and counts the reads that receive them.

var pacingProbe = flag.Bool("pacing-probe", false, "measure whether the kernel spreads a grant written at once on a socket with SO_MAX_PACING_RATE (loopback, this network namespace)")

// probeCase is one rate and grant size to probe.
type probeCase struct {
	rate  int64         // bytes/s; SO_MAX_PACING_RATE is 2% above, as sluice sets it
	grant time.Duration // time at the rate that one write holds
}

func runPacingProbe() error {
	rttLog := "unknown"
	if b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_tso_rtt_log"); err == nil {
		rttLog = strings.TrimSpace(string(b))
	}
	fmt.Printf("net.ipv4.tcp_tso_rtt_log = %s; client MSS %d; each case writes grants at the rate for 2 s\n", rttLog, *clientMSS)
	fmt.Printf("%-10s %-8s %9s %7s %7s %10s %14s\n", "rate", "grant", "bytes", "writes", "reads", "reads/w", "largest read")
	for _, c := range []probeCase{
		{1_000_000, 10 * time.Millisecond},
		{1_000_000, 30 * time.Millisecond},
		{10_000_000, 10 * time.Millisecond},
	} {
		writes, reads, largest, err := probePacing(c)
		if err != nil {
			return err
		}
		size := c.rate * int64(c.grant) / int64(time.Second)
		fmt.Printf("%-10s %-8s %9d %7d %7d %10.1f %8d = %.2f grant\n", fmt.Sprintf("%d MB/s", c.rate/1_000_000), c.grant,
			size, writes, reads, float64(reads)/float64(writes), largest, float64(largest)/float64(size))
	}
	fmt.Println("reads/w near 1 and largest read = 1 grant: each grant arrived as one block (the kernel did not spread it)")
	return nil
}

// probePacing writes c's grants for 2 s after a 0.5 s warm-up and returns
// the writes made, the reads that received them and the largest read.
func probePacing(c probeCase) (writes, reads, largest int, err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, 0, err
	}
	defer ln.Close()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			if *clientMSS > 0 {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG, *clientMSS)
			}
		}); err != nil {
			return err
		}
		return serr
	}}
	client, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		return 0, 0, 0, err
	}
	defer client.Close()
	sender, err := ln.Accept()
	if err != nil {
		return 0, 0, 0, err
	}
	defer sender.Close()
	rc, err := sender.(*net.TCPConn).SyscallConn()
	if err != nil {
		return 0, 0, 0, err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_MAX_PACING_RATE, uint64(c.rate)*102/100)
	}); err != nil {
		return 0, 0, 0, err
	}
	if serr != nil {
		return 0, 0, 0, fmt.Errorf("SO_MAX_PACING_RATE: %w", serr)
	}

	const warmup, measure = 500 * time.Millisecond, 2 * time.Second
	grant := make([]byte, c.rate*int64(c.grant)/int64(time.Second))
	start := time.Now()
	measured := make(chan int, 1)
	go func() {
		t := time.NewTicker(c.grant)
		defer t.Stop()
		n := 0
		for now := range t.C {
			if now.Sub(start) > warmup+measure {
				break
			}
			if _, err := sender.Write(grant); err != nil {
				break
			}
			if now.Sub(start) > warmup {
				n++
			}
		}
		measured <- n
		sender.(*net.TCPConn).CloseWrite()
	}()
	buf := make([]byte, 1<<20)
	for {
		n, err := client.Read(buf)
		if n > 0 && time.Since(start) > warmup {
			reads++
			largest = max(largest, n)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, 0, 0, err
		}
	}
	return <-measured, reads, largest, nil
}
