package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"time"
)

// The latency rows of -rows measure every proxy side by side: all run at
// once, each with one ping-pong connection, and the pings go in rounds, a
// slice of each target's pings per round, the order turned each round. On a
// shared VM the cost of a wake-up drifts over seconds (a proxy's p50 was
// 40 µs in one run and 125 µs in the next, as was nginx's), so targets
// measured one after another, as in the core measurement, differ by when
// they ran; interleaved, they share the drift.

var latRounds = flag.Int("lat-rounds", 20, "-rows: rounds the latency rows' pings are split into, the targets interleaved")

// latResult is one run's latency figures for one target: percentiles over
// all its pings in the run.
type latResult struct {
	P50us float64 `json:"p50_us"`
	P99us float64 `json:"p99_us"`
	CPUus float64 `json:"cpu_us_per_round_trip"` // the proxy's CPU time over its pings ÷ their number
}

// latencyOnce is run r of the latency rows: direct, sluice, nginx, HAProxy
// (if set), the floor relay (waiting in epoll_wait and in Go's poller), the
// Go relay and the kernel relay, all started afresh, -pings round trips each
// after 1,000 warm-up, in -lat-rounds interleaved rounds. It returns each
// target's figures by name.
func latencyOnce(dir, srcAddr, echoAddr string, r int) (map[string]latResult, error) {
	starters := append(coreStarters(dir, srcAddr, echoAddr),
		func() (*proxyProc, error) { return startFloorRelay(srcAddr, echoAddr) },
		func() (*proxyProc, error) { return startPollerRelay(srcAddr, echoAddr) },
		func() (*proxyProc, error) { return startGoRelay(srcAddr, echoAddr) },
		kernelRelayStarter(srcAddr, echoAddr))
	targets := []*target{{name: "direct", echoAddr: echoAddr, pids: func() []int { return nil }}}
	for _, start := range starters {
		p, err := start()
		if errors.Is(err, errSkipped) {
			fmt.Fprintf(os.Stderr, "loadbench: run %d: %v\n", r, err)
			continue
		}
		if err != nil {
			return nil, err
		}
		defer p.stop()
		targets = append(targets, p.target)
	}
	conns := make([]net.Conn, len(targets))
	for i, t := range targets {
		c, err := net.Dial("tcp", t.echoAddr)
		if err != nil {
			return nil, fmt.Errorf("latency, %s: %w", t.name, err)
		}
		defer c.Close()
		conns[i] = c
	}
	// Every ping differs (its number, in every 8 bytes), and its echo must
	// be the same bytes: a relay that lost, reordered or mixed up bytes
	// fails the run rather than giving figures.
	msg, back := make([]byte, 64), make([]byte, 64)
	var seq uint64
	ping := func(c net.Conn) (time.Duration, error) {
		seq++
		for i := 0; i < len(msg); i += 8 {
			binary.LittleEndian.PutUint64(msg[i:], seq*8+uint64(i/8))
		}
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return 0, err
		}
		d := time.Since(start)
		if !bytes.Equal(back, msg) {
			return 0, fmt.Errorf("ping %d: echo %x, want %x", seq, back, msg)
		}
		return d, nil
	}
	rounds := max(*latRounds, 1)
	per := max(*pings/rounds, 1)
	rtts := make([][]time.Duration, len(targets))
	cpu := make([]float64, len(targets))
	for round := -1; round < rounds; round++ { // round -1 warms up
		for k := range targets {
			i := (k + max(round, 0)) % len(targets)
			n := per
			if round < 0 {
				n = 1000
			}
			cpu0 := cpuSeconds(targets[i].pids())
			for j := 0; j < n; j++ {
				d, err := ping(conns[i])
				if err != nil {
					return nil, fmt.Errorf("latency, %s: %w", targets[i].name, err)
				}
				if round >= 0 {
					rtts[i] = append(rtts[i], d)
				}
			}
			if round >= 0 {
				cpu[i] += cpuSeconds(targets[i].pids()) - cpu0
			}
		}
	}
	out := map[string]latResult{}
	for i, t := range targets {
		v := rtts[i]
		if len(v) == 0 {
			return nil, errors.New("latency: no pings")
		}
		slices.Sort(v)
		us := func(q float64) float64 { return float64(v[int(q*float64(len(v)-1))]) / 1e3 }
		l := latResult{P50us: us(0.50), P99us: us(0.99), CPUus: cpu[i] / float64(len(v)) * 1e6}
		out[t.name] = l
		fmt.Fprintf(os.Stderr, "run %d latency %-24s p50 %6.1f us  p99 %6.1f us  cpu %5.1f us per round trip\n", r, t.name, l.P50us, l.P99us, l.CPUus)
	}
	return out, nil
}
