package proxy

import (
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/pion/transport/v2/test"

	"github.com/sluiceproxy/sluice/shaper"
	"github.com/sluiceproxy/sluice/shaper/shapertest"
)

// exchange moves one byte each way between client and server, through
// the proxy: the connection is up, and active now.
func exchange(t *testing.T, client, server io.ReadWriter) {
	t.Helper()
	b := []byte{7}
	for _, p := range [][2]io.ReadWriter{{client, server}, {server, client}} {
		if _, err := p[0].Write(b); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(p[1], b); err != nil {
			t.Fatal(err)
		}
	}
}

// TestIdleTimeoutOnClock: on a fake clock, a connection idle for its
// 10 s timeout is closed by the reaper's first scan after it, and kept
// before: the reaper scans every 1.25 s (an eighth of the timeout), so a
// connection closes between 1× and 1.125× its timeout. Activity restarts
// the count.
func TestIdleTimeoutOnClock(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)
	clk := shapertest.NewClock()
	b := newBackend(t)
	srv, addr, logs := startProxyWith(t, Options{Clock: clk}, ListenerConfig{Upstream: b.addr(), IdleTimeout: 10 * time.Second})
	client, server := connect(t, addr, b)
	defer client.Close()
	defer server.Close()
	clk.BlockUntil(1) // the reaper's timer
	const period = 1250 * time.Millisecond
	// scans advances the clock by n periods, one at a time: each fires
	// the reaper's timer once, and BlockUntil(1) returns once that scan
	// is done and the timer re-armed.
	scans := func(n int) {
		for range n {
			clk.Advance(period)
			clk.BlockUntil(1)
		}
	}
	scans(5)
	exchange(t, client, server) // active now: idle from here
	scans(7)                    // idle for at most 8.75 s
	if n := srv.ActiveConns(); n != 1 {
		t.Fatalf("%d conns after at most 8.75 s idle, want the one (timeout 10 s)", n)
	}
	scans(2) // the last scan saw it idle for over 10 s
	if _, err := client.Read(make([]byte, 1)); err == nil {
		t.Fatal("read from an idle-timed-out connection succeeded")
	}
	waitLog(t, logs, "conn done", "result=idle_timeout")
}

// TestDrainOnClock: a listener removed by a reload stops accepting; its
// connection runs on for the drain (30 s on the fake clock) and is closed
// at that instant, not before.
func TestDrainOnClock(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)
	clk := shapertest.NewClock()
	b := newBackend(t)
	srv, addr, logs := startProxyWith(t, Options{Clock: clk}, ListenerConfig{Upstream: b.addr()})
	client, server := connect(t, addr, b)
	defer client.Close()
	defer server.Close()
	exchange(t, client, server)
	if err := srv.Reconfigure(nil, nil, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, addr)
	clk.Advance(30*time.Second - time.Nanosecond)
	exchange(t, client, server)  // still served
	clk.Advance(time.Nanosecond) // the drain timer runs inside Advance
	if _, err := client.Read(make([]byte, 1)); err == nil {
		t.Fatal("read from a drained connection succeeded")
	}
	waitLog(t, logs, "conn done", "result=shutdown")
}

// TestShapedExactOnClock: a download held to 81,920 B/s (a grant of 8 KiB
// every 100 ms) on a fake clock moves exactly its burst at once, then
// exactly the rate's bytes for each 100 ms the clock advances, and not a
// byte more: the client reads burst + rate × 1 s after one second, and a
// short read deadline then gets nothing. The pump takes its own grants
// (no shaping loop: the loops serve on a grid that rounds grants up by up
// to 8.4 ms, tested in shaper).
func TestShapedExactOnClock(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)
	const rate, burst = 81_920, 8192
	clk := shapertest.NewClock()
	_, addr, _ := startProxyWith(t, Options{Clock: clk, ShapingLoops: -1},
		ListenerConfig{Upstream: endless(t), Limits: ConnLimits{Down: shaper.Limit{Rate: rate, Burst: burst}}})
	client := dial(t, addr)
	defer client.Close()
	// The reaper's timer and the gate's: the pump waits for tokens.
	clk.BlockUntil(2)
	if _, err := io.ReadFull(client, make([]byte, burst)); err != nil {
		t.Fatal(err)
	}
	got := int64(burst)
	for range 10 {
		clk.Advance(100 * time.Millisecond) // one grant's tokens
		clk.BlockUntil(2)                   // moved, and waiting again
		n, err := io.ReadFull(client, make([]byte, burst))
		got += int64(n)
		if err != nil {
			t.Fatalf("after %d bytes: %v", got, err)
		}
	}
	if want := int64(burst + rate); got != want {
		t.Errorf("read %d bytes after 1 s of fake time, want burst + rate = %d", got, want)
	}
	if err := client.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if n, err := client.Read(make([]byte, 1)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Read after the second's bytes = %d, %v; want nothing before the deadline", n, err)
	}
}
