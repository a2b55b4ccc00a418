package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

var (
	admission       = flag.Bool("admission", false, "measure the accept path: new connections per second, with and without admission limits")
	admissionConns  = flag.Int("admission-workers", 16, "-admission: clients opening connections in a loop, each from its own 127.0.0.x addresses")
	admissionSource = flag.Int("admission-sources", 200, "-admission: client source addresses (127.0.1.1 onwards), spread over the workers")
)

// The admission case's limits: three, and a ban policy, each with room
// for the whole load, so that every connection is decided but none is
// refused: what admission costs when it lets everything through.
const admissionTop = `limits:
  per-ip: {by: source_ip, conns: 10000, rate: 1000000/s, burst: 100000}
  per-net: {by: cidr, window: {max: 1000000000, per: 1m}}
  global: {by: global, conns: 19000, rate: 1000000000/s, burst: 1000000}
bans:
  scanners: {tiers: [{over: 255, per: 1ms, ban: 1m}]}
`

const admissionOpts = `limits: [per-ip, per-net, global], bans: scanners, deny: [192.0.2.0/24]`

// runAdmission measures connections per second through each target's
// echo address: a worker dials from its source address, sends a byte,
// reads it back and closes, over and over, for -duration.
func runAdmission(dir, echoAddr string) error {
	type row struct {
		name      string
		rate, cpu []float64 // conns/s, proxy CPU µs per connection
	}
	rows := []*row{{name: "direct"}, {name: "sluice"}, {name: "sluice+limits"}}
	if *nginxBin != "" {
		rows = append(rows, &row{name: "nginx"}, &row{name: "nginx+limit_conn"})
	}
	for run := 1; run <= *runs; run++ {
		for _, r := range rows {
			var p *proxyProc
			var err error
			addr := echoAddr
			switch r.name {
			case "sluice":
				p, err = startSluiceTop(dir, echoAddr, echoAddr, "timeouts: {idle: 5m}", "")
			case "sluice+limits":
				p, err = startSluiceTop(dir, echoAddr, echoAddr, admissionOpts, admissionTop)
			case "nginx":
				p, err = startNginx(dir, echoAddr, echoAddr, "")
			case "nginx+limit_conn":
				p, err = startNginxTop(dir, echoAddr, echoAddr, "limit_conn perip 10000; limit_conn all 19000;",
					"limit_conn_zone $binary_remote_addr zone=perip:10m; limit_conn_zone $server_addr zone=all:1m;")
			}
			if err != nil {
				return err
			}
			var pids func() []int
			if p != nil {
				addr, pids = p.sourceAddr, p.pids
			}
			settle()
			rate, cpu, err := connRate(addr, pids)
			if p != nil {
				p.stop()
			}
			if err != nil {
				return fmt.Errorf("%s: %w", r.name, err)
			}
			r.rate, r.cpu = append(r.rate, rate), append(r.cpu, cpu)
			fmt.Fprintf(os.Stderr, "run %d %-17s %8.0f conns/s  cpu %6.1f us/conn\n", run, r.name, rate, cpu)
		}
	}
	med := func(v []float64) float64 { return median(v, func(x float64) float64 { return x }) }
	fmt.Printf("\naccept path, median of %d runs, %d workers from %d source addresses, %s each\n", *runs, *admissionConns, *admissionSource, *duration)
	fmt.Printf("%-17s %10s %7s %12s\n", "target", "conns/s", "ratio", "cpu us/conn")
	base := map[string]float64{}
	for _, r := range rows {
		base[r.name] = med(r.rate)
	}
	for _, r := range rows {
		ratio := med(r.rate) / base["direct"]
		fmt.Printf("%-17s %10.0f %7.2f %12.1f\n", r.name, med(r.rate), ratio, med(r.cpu))
	}
	fmt.Printf("\nsluice+limits ÷ sluice: %.3f conns/s; nginx+limit_conn ÷ nginx: %.3f\n",
		base["sluice+limits"]/base["sluice"], base["nginx+limit_conn"]/max(base["nginx"], 1))
	return nil
}

// connRate opens connections to addr for -duration and returns how many
// a second completed a one-byte round trip, and the CPU the proxy (pids,
// nil for none) spent per connection, in microseconds.
func connRate(addr string, pids func() []int) (float64, float64, error) {
	var done atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var cpu0 float64
	if pids != nil {
		cpu0 = cpuSeconds(pids())
	}
	start := time.Now()
	for w := range *admissionConns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := []byte{1}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				src := 1 + (w+i**admissionConns)%*admissionSource
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1+byte(src/250), byte(1+src%250))}, Timeout: 5 * time.Second}
				c, err := d.Dial("tcp", addr)
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_, err = c.Write(buf)
				if err == nil {
					_, err = c.Read(buf)
				}
				// A reset close: the client side's TIME_WAIT would run
				// out of ports within a run.
				_ = c.(*net.TCPConn).SetLinger(0)
				c.Close()
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				done.Add(1)
			}
		}()
	}
	time.Sleep(*duration)
	close(stop)
	wg.Wait()
	el := time.Since(start).Seconds()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, 0, err
	}
	n := float64(done.Load())
	var cpu float64
	if pids != nil {
		cpu = (cpuSeconds(pids()) - cpu0) / n * 1e6
	}
	return n / el, cpu, nil
}
