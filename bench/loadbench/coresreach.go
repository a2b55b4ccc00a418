package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// coresResult is how long sluice's cores: auto took to reach every core
// after a sustained unshaped load started.
type coresResult struct {
	Streams int     `json:"streams"`
	ReachS  float64 `json:"reach_s"` // from the first dial to the move; -1 if it did not move within coresWait
	Cores   int     `json:"cores"`   // GOMAXPROCS after the move
	CPUs    int     `json:"cpus"`    // this machine's
	// BusyCores is the load sluice logged as the reason to move, in
	// cores; EarlyCores what it used in the load's first coresEarly.
	BusyCores  float64 `json:"busy_cores"`
	EarlyCores float64 `json:"early_cores"`
}

// coresEarly is the span over which coresOnce reports the CPU sluice used
// at the load's start, in cores: how busy the governor could find it.
const coresEarly = 300 * time.Millisecond

// coresWait is how long coresOnce waits for the move.
const coresWait = 5 * time.Second

// coreEvent is one "cores" line of sluice's log.
type coreEvent struct {
	at     time.Time // the line's time (slog's, to the millisecond)
	procs  int
	reason string
	busy   float64 // busy_cores: the load behind a move
}

// coresOnce starts a fresh sluice with cores: auto, waits until it runs on
// one core and has been quiet for 0.5 s, then downloads from the source
// backend on streams unshaped streams and times the move to every core
// from the first dial. The move is read from sluice's "cores" log line,
// stamped by sluice when it moved: polling sluice_cores would add the
// scrapes' CPU to the load the governor measures, and the reader's own
// delay under load to the figure.
func coresOnce(dir, srcAddr, echoAddr string, streams, r int) (coresResult, error) {
	res := coresResult{Streams: streams, ReachS: -1, CPUs: runtime.NumCPU()}
	if res.CPUs == 1 {
		res.ReachS, res.Cores = 0, 1 // one core is every core
		return res, nil
	}
	pr, pw := io.Pipe()
	events := make(chan coreEvent, 64)
	var readers sync.WaitGroup
	readers.Add(1)
	go func() {
		defer readers.Done()
		readCoreEvents(pr, events)
	}()
	p, err := startSluiceSpec(dir, srcAddr, echoAddr, sluiceSpec{cores: "auto", logLevel: "info", stderr: pw})
	if err != nil {
		pw.Close()
		readers.Wait()
		return res, err
	}
	defer func() {
		p.stop()
		pw.Close()
		readers.Wait()
	}()

	// Settle: on one core, and no move for 0.5 s.
	procs := 0
	quiet := time.NewTimer(500 * time.Millisecond)
	defer quiet.Stop()
	deadline := time.After(coreDownSettle)
settle:
	for {
		select {
		case ev := <-events:
			procs = ev.procs
			quiet.Reset(500 * time.Millisecond)
		case <-quiet.C:
			if procs == 1 {
				break settle
			}
			quiet.Reset(500 * time.Millisecond)
		case <-deadline:
			return res, fmt.Errorf("sluice on %d cores, not 1, %v after its start", procs, coreDownSettle)
		}
	}

	start := time.Now()
	pid := p.cmd.Process.Pid
	cpu0, _ := processCPU(pid)
	earlyc := make(chan float64, 1)
	go func() {
		time.Sleep(coresEarly)
		cpu1, _ := processCPU(pid)
		earlyc <- (cpu1 - cpu0) / time.Since(start).Seconds()
	}()
	conns := make([]net.Conn, 0, streams)
	var wg sync.WaitGroup
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}()
	for range streams {
		c, err := net.Dial("tcp", p.sourceAddr)
		if err != nil {
			return res, err
		}
		conns = append(conns, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 256<<10)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
			}
		}()
	}
	timeout := time.After(coresWait)
wait:
	for {
		select {
		case ev := <-events:
			if ev.reason == "busy" {
				// slog stamps to the millisecond, truncating: the move
				// was up to 1 ms later than ev.at.
				res.ReachS = max(ev.at.Sub(start).Seconds(), 0)
				res.Cores, res.BusyCores = ev.procs, ev.busy
				break wait
			}
		case <-timeout:
			break wait
		}
	}
	res.EarlyCores = <-earlyc
	reach := "did not move in " + coresWait.String()
	if res.ReachS >= 0 {
		reach = fmt.Sprintf("to %d of %d cores in %.3f s (logged busy_cores %.3f)", res.Cores, res.CPUs, res.ReachS, res.BusyCores)
	}
	fmt.Fprintf(os.Stderr, "run %d cores: auto, %2d streams: %s; sluice used %.2f cores in the first %v\n", r, streams, reach, res.EarlyCores, coresEarly)
	return res, nil
}

// coreDownSettle bounds the wait for a fresh sluice to run on one core:
// one that moved to every core while starting moves back after 5 s quiet.
const coreDownSettle = 8 * time.Second

// readCoreEvents sends the "cores" lines of sluice's text log from r to
// events, and copies lines of level WARN and ERROR to stderr, until r ends.
func readCoreEvents(r io.Reader, events chan<- coreEvent) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		kv := map[string]string{}
		for _, f := range strings.Fields(line) {
			if k, v, ok := strings.Cut(f, "="); ok {
				kv[k] = v
			}
		}
		if kv["level"] == "WARN" || kv["level"] == "ERROR" {
			fmt.Fprintln(os.Stderr, line)
		}
		if kv["msg"] != "cores" {
			continue
		}
		at, err := time.Parse("2006-01-02T15:04:05.000Z07:00", kv["time"])
		procs, perr := strconv.Atoi(kv["gomaxprocs"])
		if err != nil || perr != nil {
			fmt.Fprintln(os.Stderr, "loadbench: unreadable cores line:", line)
			continue
		}
		busy, _ := strconv.ParseFloat(kv["busy_cores"], 64)
		select {
		case events <- coreEvent{at: at, procs: procs, reason: kv["reason"], busy: busy}:
		default: // nobody waits for it any more
		}
	}
	io.Copy(io.Discard, r)
}
