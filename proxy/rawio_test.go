package proxy

import (
	"errors"
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
// (8 KiB grants at 8 MB/s) and by raw splices (200 KB grants at 200 MB/s),
// both ways at once, to receivers that first read nothing for 300 ms, so
// that every socket fills and the writes wait for room: byte-exact.
func TestShapedMovesWaitForRoom(t *testing.T) {
	for _, c := range []struct {
		name string
		rate int64
		size int
	}{
		{"copy", 8_000_000, 6 << 20},
		{"splice", 200_000_000, 96 << 20},
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

			type result struct {
				sent, got [32]byte
				n         int64
				err       error
			}
			transfer := func(w, r *net.TCPConn, seed uint64, out chan<- result) {
				got := make(chan result, 1)
				go func() {
					time.Sleep(300 * time.Millisecond) // a stalled receiver, the point of the test
					var res result
					res.got, res.n, res.err = hashAll(r)
					got <- res
				}()
				sent, err := sendStream(w, seed, c.size)
				if err == nil {
					err = w.CloseWrite()
				}
				res := <-got
				res.sent, res.err = sent, errors.Join(res.err, err)
				out <- res
			}
			up, down := make(chan result, 1), make(chan result, 1)
			go transfer(client, server, 1, up)
			go transfer(server, client, 2, down)
			for dir, res := range map[string]result{"up": <-up, "down": <-down} {
				if res.err != nil || res.n != int64(c.size) || res.sent != res.got {
					t.Errorf("%s: %d bytes, hash equal %v, err %v; want %d byte-exact", dir, res.n, res.sent == res.got, res.err, c.size)
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
	sent := make(chan [32]byte, 1)
	go func() {
		h, err := sendStream(server, 9, size)
		if err != nil {
			t.Error(err)
		}
		server.CloseWrite()
		sent <- h
	}()
	got, n, err := hashAll(client)
	if want := <-sent; err != nil || n != size || got != want {
		t.Fatalf("after resets: %d bytes, hash equal %v, err %v; want %d byte-exact", n, got == want, err, size)
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
	sent := make(chan [32]byte, 1)
	go func() {
		h, err := sendStream(server, 5, size)
		if err != nil {
			t.Error(err)
		}
		server.CloseWrite()
		sent <- h
	}()
	type result struct {
		h   [32]byte
		n   int64
		err error
	}
	got := make(chan result, 1)
	go func() {
		var r result
		r.h, r.n, r.err = hashAll(client)
		got <- r
	}()
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
	r := <-got
	if want := <-sent; r.err != nil || r.n != size || r.h != want {
		t.Fatalf("%d bytes, hash equal %v, err %v; want %d byte-exact", r.n, r.h == want, r.err, size)
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
				go func() {
					if _, err := sendStream(server, uint64(seed), size); err != nil {
						t.Error(err)
					}
					server.CloseWrite()
				}()
				go func() {
					h, n, err := hashAll(client)
					want, _ := sendStream(io.Discard, uint64(seed), size)
					if err == nil && (n != size || h != want) {
						err = errors.New("bytes differ")
					}
					errs <- err
				}()
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
