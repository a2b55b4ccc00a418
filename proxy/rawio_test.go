package proxy

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/pion/transport/v2/test"

	"github.com/sluiceproxy/sluice/shaper"
)

// TestShapedMovesWaitForRoom: shaped grants moved by raw reads and writes
// (read ahead, and not), and by raw splices (read ahead into a pipe, and
// not), by the pumps or the shaping loop, both ways at once, to
// receivers that first read nothing for long enough that every socket
// fills and the writes wait for room: byte-exact.
func TestShapedMovesWaitForRoom(t *testing.T) {
	for _, c := range []struct {
		name  string
		rate  int64
		size  int
		stall time.Duration // over 4 MB at the rate: more than sluice's send buffer takes (tcp_wmem's 4 MiB), with room to spare
		pipes int64         // pipe budget: 0 makes read-ahead copy
		loop  bool          // moved by the shaping loop
	}{
		// Grants are 5 ms of the rate (unpacedGrant).
		{"read-ahead", 3_000_000, 9 << 20, 2500 * time.Millisecond, ShapedPipes, false}, // 15 KB grants, spliced ahead
		{"read-ahead-copy", 3_000_000, 9 << 20, 2500 * time.Millisecond, 0, false},      // the same, copied ahead
		{"loop", 3_000_000, 9 << 20, 2500 * time.Millisecond, ShapedPipes, true},        // spliced ahead by the loop
		{"loop-copy", 3_000_000, 9 << 20, 2500 * time.Millisecond, 0, true},             // copied ahead by the loop
		{"copy", 8_000_000, 16 << 20, 600 * time.Millisecond, ShapedPipes, false},       // 40 KB grants
		{"splice", 200_000_000, 96 << 20, 300 * time.Millisecond, ShapedPipes, false},   // 512 KiB grants (the cap)
	} {
		t.Run(c.name, func(t *testing.T) {
			defer test.TimeOut(60 * time.Second).Stop()
			checkRoutines(t)
			pipeBudget.Store(c.pipes)
			defer pipeBudget.Store(ShapedPipes)
			loops := 0 // one per P
			if !c.loop {
				loops = -1 // none
			}
			b := newBackend(t)
			lim := shaper.Limit{Rate: c.rate, Burst: 8192}
			srv, addr, _ := startProxyWith(t, Options{ShapingLoops: loops}, ListenerConfig{Upstream: b.addr(), Limits: ConnLimits{Up: lim, Down: lim}})
			client, server := connect(t, addr, b)
			defer client.Close()
			defer server.Close()
			// Small receive buffers, and a stall longer than sluice's
			// send buffers can absorb: its writes find no room.
			smallReadBuffers(t, client, server)

			up := make(chan streamResult, 1)
			go func() { up <- transfer(client, server, 1, c.size, c.stall) }()
			down := transfer(server, client, 2, c.size, c.stall)
			for dir, res := range map[string]streamResult{"up": <-up, "down": down} {
				if err := res.exact(c.size); err != nil {
					t.Errorf("%s: %v", dir, err)
				}
			}
			// Each direction is handed in, and handed back when the
			// loop finds no room, more than once.
			switch n := srv.loopStats().HandIns; {
			case c.loop && n < 4:
				t.Errorf("the loop was handed a direction %d times, want at least 4", n)
			case !c.loop && n != 0:
				t.Errorf("the loop was handed a direction %d times, want 0 with the loop off", n)
			}
		})
	}
}

// TestLoopFullAtEnd: the upstream sends less than one read-ahead and ends,
// so every byte is held (in a pipe or a buffer) while the upstream socket
// holds only its end; the client stalls, the shaping loop finds its socket
// full and hands the direction back. The held bytes must still count as
// queued: a pump that peeked again would see only the end and lose them.
func TestLoopFullAtEnd(t *testing.T) {
	for _, c := range []struct {
		name  string
		pipes int64
	}{{"pipe", ShapedPipes}, {"buffer", 0}} {
		t.Run(c.name, func(t *testing.T) {
			defer test.TimeOut(30 * time.Second).Stop()
			checkRoutines(t)
			pipeBudget.Store(c.pipes)
			defer pipeBudget.Store(ShapedPipes)
			b := newBackend(t)
			srv, addr, _ := startProxy(t, ListenerConfig{Upstream: b.addr(),
				Limits: ConnLimits{Down: shaper.Limit{Rate: 1_000_000}}}) // 8 KiB grants
			client, server := connect(t, addr, b)
			defer client.Close()
			defer server.Close()
			if err := client.SetReadBuffer(4 << 10); err != nil {
				t.Fatal(err)
			}
			// A small, fixed send buffer on sluice's side too, so that
			// the loop finds it full long before the 60,000 bytes are out.
			srv.mu.Lock()
			for c := range srv.conns {
				if err := c.client.SetWriteBuffer(8 << 10); err != nil {
					t.Error(err)
				}
			}
			srv.mu.Unlock()
			handIns := srv.loopStats().HandIns
			const size = 60_000 // under aheadSize: one read-ahead takes it all
			// The two buffers fill in well under the 500 ms stall at
			// 1 MB/s.
			res := transfer(server, client, 7, size, 500*time.Millisecond)
			if err := res.exact(size); err != nil {
				t.Fatal(err)
			}
			if n := srv.loopStats().HandIns - handIns; n < 2 {
				t.Errorf("the loop was handed the direction %d times, want at least 2 (in, back when full, in again)", n)
			}
		})
	}
}

// TestSplicedGrantAfterReset: a client that resets while a raw splice
// waits to write, or while a pipe holds bytes read ahead, leaves bytes in
// that pipe. The conn ends, and the next connection, which may draw a pipe
// from the same pool, still gets its bytes exactly: a pipe that holds
// bytes is closed, never pooled. Every pipe is given back.
func TestSplicedGrantAfterReset(t *testing.T) {
	for _, c := range []struct {
		name string
		rate int64
	}{{"grant", 200_000_000}, {"read-ahead", 3_000_000}} { // 512 KiB and 15 KB grants
		t.Run(c.name, func(t *testing.T) {
			defer test.TimeOut(60 * time.Second).Stop()
			checkRoutines(t)
			b := newBackend(t)
			lim := shaper.Limit{Rate: c.rate, Burst: 8192}
			srv, addr, _ := startProxy(t, ListenerConfig{Upstream: b.addr(), Limits: ConnLimits{Down: lim}})

			for round := range 3 {
				client, server := connect(t, addr, b)
				sent := make(chan error, 1)
				go func() {
					_, err := sendStream(server, uint64(round), 256<<20)
					sent <- err
				}()
				if _, err := io.ReadFull(client, make([]byte, 1<<20)); err != nil {
					t.Fatal(err)
				}
				// Unread bytes make the close a reset; the proxy is mid-grant.
				if err := client.SetLinger(0); err != nil {
					t.Fatal(err)
				}
				client.Close()
				if err := <-sent; err == nil {
					t.Errorf("round %d: the upstream wrote 256 MiB to a reset client without error", round)
				}
				server.Close()
			}
			waitIdle(t, srv)

			client, server := connect(t, addr, b)
			size := int(min(64<<20, c.rate)) // a second or less
			if err := transfer(server, client, 9, size, 0).exact(size); err != nil {
				t.Fatalf("after resets: %v", err)
			}
			client.Close()
			server.Close()
			waitIdle(t, srv)
			if left := pipeBudget.Load(); left != ShapedPipes {
				t.Errorf("pipe budget %d after the conns ended, want all %d back", left, ShapedPipes)
			}
		})
	}
}

// TestReadAheadAcrossLimitChanges: bytes a shaped pump read ahead of its
// grants, into a pipe or a buffer, go out first, in order, when the limit
// is lifted (the splice path takes over), raised past the copy path
// (200 MB/s grants are spliced) or set again; and every pipe and all
// read-ahead memory are given back when the conn ends, as the gauges show.
func TestReadAheadAcrossLimitChanges(t *testing.T) {
	for _, c := range []struct {
		name  string
		pipes int64 // pipe budget: 0 makes read-ahead copy
		// The gauges while the conn reads ahead: bytes of memory, pipes.
		memory, held int
	}{
		{"pipe", ShapedPipes, 0, 1},
		{"copy", 0, aheadSize, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			defer test.TimeOut(60 * time.Second).Stop()
			checkRoutines(t)
			pipeBudget.Store(c.pipes)
			defer pipeBudget.Store(ShapedPipes)
			b := newBackend(t)
			slow := ConnLimits{Down: shaper.Limit{Rate: 1_000_000}}
			srv, addr, _ := startProxy(t, ListenerConfig{Upstream: b.addr(), Limits: slow})
			client, server := connect(t, addr, b)
			defer client.Close()
			defer server.Close()

			const size = 48 << 20
			down := make(chan streamResult, 1)
			go func() { down <- transfer(server, client, 5, size, 0) }()
			// A pipe budget set below ShapedPipes reads as pipes held.
			spent := int64(ShapedPipes - c.pipes)
			// gauges checks what the metrics sluice_read_ahead_bytes and
			// sluice_shaped_pipes show (package proxy/admin).
			gauges := func(memory, pipes int) error {
				got := srv.Process()
				if want := int64(memory); got.ReadAhead != want {
					return fmt.Errorf("read-ahead memory %d bytes, want %d", got.ReadAhead, want)
				}
				if want := spent + int64(pipes); got.Pipes != want {
					return fmt.Errorf("%d pipes held, want %d", got.Pipes, want)
				}
				return nil
			}
			// At 1 MB/s (8 KiB grants) the pump holds its pipe or
			// buffer almost all the time; the gauge shows it.
			var err error
			poll(func() bool { err = gauges(c.memory, c.held); return err == nil })
			if err != nil {
				t.Errorf("while reading ahead: %v", err)
			}
			if n := waitLoopServed(srv, 1); n != 1 {
				t.Errorf("the shaping loop serves %d directions, want the slow one", n)
			}
			for _, lim := range []ConnLimits{{}, slow, {Down: shaper.Limit{Rate: 200_000_000}}, slow, {}} {
				realWait(300 * time.Millisecond) // letting the pump read ahead at the current limit
				if err := srv.SetLimits("t", lim); err != nil {
					t.Fatal(err)
				}
			}
			if err := (<-down).exact(size); err != nil {
				t.Fatal(err)
			}
			client.Close()
			waitIdle(t, srv)
			if left := aheadBudget.Load(); left != AheadBudget {
				t.Errorf("read-ahead budget %d after the conn ended, want all %d back", left, AheadBudget)
			}
			if left := pipeBudget.Load(); left != c.pipes {
				t.Errorf("pipe budget %d after the conn ended, want all %d back", left, c.pipes)
			}
			if err := gauges(0, 0); err != nil {
				t.Errorf("after the conn ended: %v", err)
			}
		})
	}
}

// TestReadAheadBudget: with both budgets spent, shaped grants are read and
// written exactly; with room for one conn in the pipe budget or the memory
// budget, two conns share it; every byte arrives either way, and the
// budgets are whole again afterwards.
func TestReadAheadBudget(t *testing.T) {
	for _, c := range []struct {
		name          string
		pipes, memory int64
	}{
		{"spent", 0, 0},
		{"one pipe", 1, 0},
		{"one buffer", 0, aheadSize},
		{"one of each", 1, aheadSize},
	} {
		t.Run(c.name, func(t *testing.T) {
			defer test.TimeOut(60 * time.Second).Stop()
			checkRoutines(t)
			pipeBudget.Store(c.pipes)
			defer pipeBudget.Store(ShapedPipes)
			aheadBudget.Store(c.memory)
			defer aheadBudget.Store(AheadBudget)
			b := newBackend(t)
			srv, addr, _ := startProxy(t, ListenerConfig{Upstream: b.addr(), Limits: ConnLimits{Down: shaper.Limit{Rate: 3_000_000}}}) // 15 KB grants
			const size = 4 << 20
			errs := make(chan error, 2)
			var conns []*net.TCPConn
			for seed := range 2 {
				client, server := connect(t, addr, b)
				conns = append(conns, client, server)
				go func() { errs <- transfer(server, client, uint64(seed), size, 0).exact(size) }()
			}
			for range 2 {
				if err := <-errs; err != nil {
					t.Error(err)
				}
			}
			for _, c := range conns {
				c.Close()
			}
			waitIdle(t, srv)
			if left := aheadBudget.Load(); left != c.memory {
				t.Errorf("memory budget %d after the conns ended, want %d", left, c.memory)
			}
			if left := pipeBudget.Load(); left != c.pipes {
				t.Errorf("pipe budget %d after the conns ended, want %d", left, c.pipes)
			}
		})
	}
}

// smallReadBuffers gives conns 64 KiB receive buffers: a stalled reader
// soon leaves its sender no room.
func smallReadBuffers(t *testing.T, conns ...*net.TCPConn) {
	t.Helper()
	for _, c := range conns {
		if err := c.SetReadBuffer(64 << 10); err != nil {
			t.Fatal(err)
		}
	}
}

// waitLoopServed waits up to 5 s for the shaping loops to serve want
// directions, and returns how many they serve then. A loop hands a
// direction back for a moment whenever its upstream has nothing queued
// yet, so a single look can miss it.
func waitLoopServed(srv *Server, want int64) int64 {
	var n int64
	poll(func() bool { n = srv.loopStats().Tasks; return n == want })
	return n
}

// waitIdle waits until srv has no conns left.
func waitIdle(t *testing.T, srv *Server) {
	t.Helper()
	poll(func() bool { return srv.ActiveConns() == 0 })
	if n := srv.ActiveConns(); n != 0 {
		t.Fatalf("%d conns still active", n)
	}
}

// TestLoopWakesOnGrid: sixteen paced downloads at 1 MB/s (10 KB grants, a
// hundred a second each) in the shaping loops wake the loops' timers on
// their shared 8.4 ms grid (119 times a second), at most 130 times a
// second a loop, not once per grant.
func TestLoopWakesOnGrid(t *testing.T) {
	defer test.TimeOut(30 * time.Second).Stop()
	checkRoutines(t)
	srv, addr, _ := startProxy(t, ListenerConfig{Upstream: endless(t), Limits: ConnLimits{Down: shaper.Limit{Rate: 1_000_000}, KernelPacing: true}})
	const conns = 16
	var clients []net.Conn
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for range conns {
		client := dial(t, addr)
		clients = append(clients, client)
		go io.Copy(io.Discard, client)
	}
	if n := waitLoopServed(srv, conns); n < conns {
		t.Fatalf("the loops serve %d directions, want %d", n, conns)
	}
	w0, t0 := srv.loopStats().Wakes, time.Now()
	realWait(time.Second) // for a count of wake-ups a second
	wakes := float64(srv.loopStats().Wakes-w0) / time.Since(t0).Seconds()
	// 1,600 grants a second in all; one wake-up each would be 1,600.
	if most := float64(len(srv.loops)) * 130; wakes > most {
		t.Errorf("the loops' timers woke %.0f times a second for %d conns at 1 MB/s, want at most %.0f (%d loops on an 8.4 ms grid)", wakes, conns, most, len(srv.loops))
	}
	for _, c := range clients {
		c.Close()
	}
	waitIdle(t, srv)
}
