package proxy

import (
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pion/transport/v2/test"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluiceproxy/sluice/shaper"
)

// TestShapedMovesWaitForRoom: shaped grants moved by raw reads and writes
// (read ahead, and not), and by raw splices, both ways at once, to
// receivers that first read nothing for long enough that every socket
// fills and the writes wait for room: byte-exact.
func TestShapedMovesWaitForRoom(t *testing.T) {
	for _, c := range []struct {
		name  string
		rate  int64
		size  int
		stall time.Duration // over 4 MB at the rate: more than sluice's send buffer takes
	}{
		{"read-ahead", 12_000_000, 16 << 20, 600 * time.Millisecond}, // 12 KB grants
		{"copy", 40_000_000, 48 << 20, 300 * time.Millisecond},       // 40 KB grants
		{"splice", 200_000_000, 96 << 20, 300 * time.Millisecond},    // 200 KB grants
	} {
		t.Run(c.name, func(t *testing.T) {
			defer test.TimeOut(60 * time.Second).Stop()
			checkRoutines(t)
			b := newBackend(t)
			lim := shaper.Limit{Rate: c.rate, Burst: 8192}
			_, addr, _ := startProxy(t, ListenerConfig{Upstream: b.addr(), Limits: ConnLimits{Up: lim, Down: lim}})
			client, server := connect(t, addr, b)
			defer client.Close()
			defer server.Close()
			// Small receive buffers, and a stall longer than sluice's
			// send buffers can absorb: its writes find no room.
			for _, c := range []*net.TCPConn{client, server} {
				if err := c.SetReadBuffer(64 << 10); err != nil {
					t.Fatal(err)
				}
			}

			up := make(chan streamResult, 1)
			go func() { up <- transfer(client, server, 1, c.size, c.stall) }()
			down := transfer(server, client, 2, c.size, c.stall)
			for dir, res := range map[string]streamResult{"up": <-up, "down": down} {
				if err := res.exact(c.size); err != nil {
					t.Errorf("%s: %v", dir, err)
				}
			}
		})
	}
}

// TestSplicedGrantAfterReset: a client that resets while a raw splice
// waits to write leaves bytes in that splice's pipe. The conn ends, and
// the next connection, which may draw a pipe from the same pool, still
// gets its bytes exactly: a pipe that holds bytes is closed, never pooled.
func TestSplicedGrantAfterReset(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	checkRoutines(t)
	b := newBackend(t)
	lim := shaper.Limit{Rate: 200_000_000, Burst: 8192}
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
	defer client.Close()
	defer server.Close()
	const size = 64 << 20
	if err := transfer(server, client, 9, size, 0).exact(size); err != nil {
		t.Fatalf("after resets: %v", err)
	}
}

// TestReadAheadAcrossLimitChanges: bytes a shaped pump read ahead of its
// grants go out first, in order, when the limit is lifted (the splice path
// takes over), raised past the copy path (200 MB/s grants are spliced) or
// set again; and all read-ahead memory is given back when the conn ends.
func TestReadAheadAcrossLimitChanges(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	checkRoutines(t)
	b := newBackend(t)
	slow := ConnLimits{Down: shaper.Limit{Rate: 1_000_000}}
	srv, addr, _ := startProxy(t, ListenerConfig{Upstream: b.addr(), Limits: slow})
	client, server := connect(t, addr, b)
	defer client.Close()
	defer server.Close()

	const size = 48 << 20
	down := make(chan streamResult, 1)
	go func() { down <- transfer(server, client, 5, size, 0) }()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(srv))
	readAhead := func(want int) error {
		return testutil.GatherAndCompare(reg, strings.NewReader(fmt.Sprintf(`
# HELP sluice_read_ahead_bytes Memory shaped connections hold in bytes read ahead of their grants, process-wide (at most 32 MiB).
# TYPE sluice_read_ahead_bytes gauge
sluice_read_ahead_bytes %d
`, want)), "sluice_read_ahead_bytes")
	}
	// At 1 MB/s (8 KiB grants) the pump holds its 64 KiB buffer almost
	// all the time; the gauge shows it.
	err := readAhead(aheadSize)
	for deadline := time.Now().Add(5 * time.Second); err != nil && time.Now().Before(deadline); err = readAhead(aheadSize) {
		time.Sleep(5 * time.Millisecond) // polling a gauge
	}
	if err != nil {
		t.Errorf("while reading ahead: %v", err)
	}
	for _, lim := range []ConnLimits{{}, slow, {Down: shaper.Limit{Rate: 200_000_000}}, slow, {}} {
		time.Sleep(300 * time.Millisecond) // letting the pump read ahead at the current limit
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
	if err := readAhead(0); err != nil {
		t.Errorf("after the conn ended: %v", err)
	}
}

// TestReadAheadBudget: with the budget spent, shaped grants are read and
// written exactly; with room for one conn, two conns share it; every byte
// arrives either way, and the budget is whole again afterwards.
func TestReadAheadBudget(t *testing.T) {
	for _, c := range []struct {
		name   string
		budget int64
	}{{"spent", 0}, {"one conn", aheadSize}} {
		t.Run(c.name, func(t *testing.T) {
			defer test.TimeOut(60 * time.Second).Stop()
			checkRoutines(t)
			aheadBudget.Store(c.budget)
			defer aheadBudget.Store(AheadBudget)
			b := newBackend(t)
			srv, addr, _ := startProxy(t, ListenerConfig{Upstream: b.addr(), Limits: ConnLimits{Down: shaper.Limit{Rate: 8_000_000}}})
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
			if left := aheadBudget.Load(); left != c.budget {
				t.Errorf("budget %d after the conns ended, want %d", left, c.budget)
			}
		})
	}
}

// waitIdle waits until srv has no conns left.
func waitIdle(t *testing.T, srv *Server) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for srv.ActiveConns() != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // polling a count the proxy updates as conns end
	}
	if n := srv.ActiveConns(); n != 0 {
		t.Fatalf("%d conns still active", n)
	}
}
