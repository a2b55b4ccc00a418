package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/pion/transport/v2/test"

	"github.com/sluiceproxy/sluice/shaper"
)

// startParking serves one listener named "t" in front of upstream, with
// idle directions parked after parkAfter whatever the number of
// connections. It skips the test where directions are never parked.
func startParking(t *testing.T, cfg ListenerConfig, parkAfter time.Duration) (*Server, string, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	cfg.Name, cfg.Addr = "t", "127.0.0.1:0"
	srv, err := New(Options{Listeners: []ListenerConfig{cfg},
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	srv.parkAfter, srv.parkMinConns = parkAfter, 1
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	if srv.watch == nil {
		t.Skip("directions are not parked on this system")
	}
	return srv, srv.Addr("t").String(), logs
}

// parkMode is how far idle connections go in a park test: their
// directions parked, or also their sockets detached (park.go).
type parkMode struct {
	name   string
	detach bool
}

var parkModes = []parkMode{{"parked", false}, {"detached", true}}

// idlePair connects a client through addr to b, moves a byte each way,
// and waits until both directions are idle in m's way. The two ends close
// with t.
func (m parkMode) idlePair(t *testing.T, srv *Server, addr string, b *backend) (client, server *net.TCPConn) {
	t.Helper()
	client, server = connect(t, addr, b)
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	exchange(t, client, server)
	m.wait(t, srv, 2)
	return client, server
}

// start is startParking, with sockets detached once both directions of a
// conn have been parked for twice parkAfter in detach mode, never
// otherwise.
func (m parkMode) start(t *testing.T, cfg ListenerConfig, parkAfter time.Duration) (*Server, string, *logBuffer) {
	t.Helper()
	srv, addr, logs := startParking(t, cfg, parkAfter)
	srv.mu.Lock() // the reaper reads it
	srv.detachAfter = time.Hour
	if m.detach {
		srv.detachAfter = 2 * parkAfter
	}
	srv.mu.Unlock()
	return srv, addr, logs
}

// wait waits until n directions are parked and, in detach mode, the
// sockets of n/2 conns detached.
func (m parkMode) wait(t *testing.T, srv *Server, n int) {
	t.Helper()
	waitParked(t, srv, n)
	if m.detach && n%2 == 0 {
		if !poll(func() bool { return srv.DetachedConns() == n/2 }) {
			t.Fatalf("%d conns detached after 5s, want %d", srv.DetachedConns(), n/2)
		}
	}
}

// waitParked waits until n directions are parked.
func waitParked(t *testing.T, srv *Server, n int) {
	t.Helper()
	if !poll(func() bool { return srv.ParkedDirections() == n }) {
		t.Fatalf("%d directions parked after 5s, want %d", srv.ParkedDirections(), n)
	}
}

// TestParkedThenActive: a connection whose directions were parked moves
// every byte both ways once active again (each direction starts from its
// watcher's event), and parks again once quiet.
func TestParkedThenActive(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	checkRoutines(t)
	for _, m := range parkModes {
		t.Run(m.name, func(t *testing.T) {
			b := newBackend(t)
			srv, addr, logs := m.start(t, ListenerConfig{Upstream: b.addr()}, 20*time.Millisecond)
			client, server := connect(t, addr, b)
			defer client.Close()
			defer server.Close()
			exchange(t, client, server)
			for round := range 3 {
				m.wait(t, srv, 2)
				// One direction wakes alone, then both at once.
				exchange(t, client, server)
				m.wait(t, srv, 2)
				err := test.StressDuplex(fullReader{client}, fullReader{server}, test.Options{MsgSize: 32 << 10, MsgCount: 64})
				if err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
			}
			m.wait(t, srv, 2)
			const size = 8 << 20
			up := make(chan streamResult, 1)
			go func() { up <- transfer(client, server, 1, size, 0) }()
			down := transfer(server, client, 2, size, 0)
			for name, res := range map[string]streamResult{"up": <-up, "down": down} {
				if err := res.exact(size); err != nil {
					t.Errorf("%s after parking: %v", name, err)
				}
			}
			client.Close()
			server.Close()
			waitLog(t, logs, "conn done", "result=ok")
		})
	}
}

// TestManyParkedThenBurst: 200 idle connections hold no goroutine, and
// all of them woken at once move their bytes exactly.
func TestManyParkedThenBurst(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	checkRoutines(t)
	for _, m := range parkModes {
		t.Run(m.name, func(t *testing.T) {
			const conns = 200
			b := newBackend(t)
			srv, addr, _ := m.start(t, ListenerConfig{Upstream: b.addr()}, 20*time.Millisecond)
			before := runtime.NumGoroutine()
			clients, servers := make([]*net.TCPConn, conns), make([]*net.TCPConn, conns)
			defer func() {
				for i := range clients {
					clients[i].Close()
					servers[i].Close()
				}
			}()
			for i := range conns {
				clients[i], servers[i] = connect(t, addr, b)
				exchange(t, clients[i], servers[i])
			}
			m.wait(t, srv, 2*conns)
			if n := runtime.NumGoroutine() - before; n > conns/10 {
				t.Errorf("%d idle connections hold %d more goroutines, want none per connection", conns, n)
			}
			const size = 256 << 10
			results := make(chan error, 2*conns)
			for i := range conns {
				go func() { results <- transfer(clients[i], servers[i], uint64(i), size, 0).exact(size) }()
				go func() { results <- transfer(servers[i], clients[i], uint64(i)+conns, size, 0).exact(size) }()
			}
			for range 2 * conns {
				if err := <-results; err != nil {
					t.Error(err)
				}
			}
			if t.Failed() {
				return
			}
			for i := range conns {
				clients[i].Close()
				servers[i].Close()
			}
			if !poll(func() bool { return srv.ActiveConns() == 0 }) {
				t.Errorf("%d connections left after both ends closed", srv.ActiveConns())
			}
		})
	}
}

// TestParkedAborts: an idle timeout, a close through the admin API and a
// shutdown each end a connection whose directions are parked, as they do
// one whose pumps wait.
func TestParkedAborts(t *testing.T) {
	defer test.TimeOut(30 * time.Second).Stop()
	checkRoutines(t)
	for _, m := range parkModes {
		t.Run(m.name, func(t *testing.T) {
			b := newBackend(t)
			t.Run("idle timeout", func(t *testing.T) {
				srv, addr, logs := m.start(t, ListenerConfig{Upstream: b.addr(), IdleTimeout: 400 * time.Millisecond}, 20*time.Millisecond)
				client, _ := m.idlePair(t, srv, addr, b)
				client.SetReadDeadline(time.Now().Add(5 * time.Second))
				if n, err := client.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
					t.Fatalf("idle client read = %d, %v; want 0, EOF", n, err)
				}
				waitLog(t, logs, "conn done", "result=idle_timeout")
				if n := srv.ParkedDirections(); n != 0 {
					t.Errorf("%d directions parked after the conn ended", n)
				}
			})
			t.Run("admin close", func(t *testing.T) {
				srv, addr, logs := m.start(t, ListenerConfig{Upstream: b.addr()}, 20*time.Millisecond)
				client, _ := m.idlePair(t, srv, addr, b)
				conns := srv.Conns()
				if len(conns) != 1 {
					t.Fatalf("Conns() = %v, want one", conns)
				}
				if err := srv.CloseConn(conns[0].ID); err != nil {
					t.Fatal(err)
				}
				client.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := client.Read(make([]byte, 1)); err == nil {
					t.Fatal("read from a closed connection succeeded")
				}
				waitLog(t, logs, "conn done", "result=closed")
			})
			t.Run("shutdown", func(t *testing.T) {
				srv, addr, logs := m.start(t, ListenerConfig{Upstream: b.addr()}, 20*time.Millisecond)
				m.idlePair(t, srv, addr, b)
				ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
				defer cancel()
				if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("Shutdown = %v, want the drain to time out", err)
				}
				waitLog(t, logs, "conn done", "result=shutdown")
			})
		})
	}
}

// TestParkedHalfCloseAndReset: a half-close reaching a parked direction is
// forwarded after its bytes while the other direction goes on (and parks
// and wakes again), and a reset reaching a parked direction is forwarded
// as a reset.
func TestParkedHalfCloseAndReset(t *testing.T) {
	defer test.TimeOut(30 * time.Second).Stop()
	checkRoutines(t)
	for _, m := range parkModes {
		t.Run(m.name, func(t *testing.T) {
			b := newBackend(t)
			srv, addr, logs := m.start(t, ListenerConfig{Upstream: b.addr()}, 20*time.Millisecond)
			for _, end := range bothEnds {
				t.Run(end.name+" half-closes", func(t *testing.T) {
					client, server := m.idlePair(t, srv, addr, b)
					closer, other := end.pick(client, server)
					if _, err := closer.Write([]byte("last words")); err != nil {
						t.Fatal(err)
					}
					closer.CloseWrite()
					got, err := io.ReadAll(other)
					if err != nil || string(got) != "last words" {
						t.Fatalf("other end read %q, %v; want the bytes then EOF", got, err)
					}
					m.wait(t, srv, 1) // the direction left parks again
					if _, err := other.Write([]byte("answer")); err != nil {
						t.Fatal(err)
					}
					other.CloseWrite()
					got, err = io.ReadAll(closer)
					if err != nil || string(got) != "answer" {
						t.Fatalf("closer read %q, %v; want the answer then EOF", got, err)
					}
				})
			}
			for _, end := range bothEnds {
				t.Run(end.name+" resets", func(t *testing.T) {
					client, server := m.idlePair(t, srv, addr, b)
					resetter, other := end.pick(client, server)
					resetter.SetLinger(0)
					resetter.Close()
					other.SetReadDeadline(time.Now().Add(5 * time.Second))
					if _, err := other.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
						t.Fatalf("other end read err = %v, want ECONNRESET", err)
					}
				})
			}
			waitLog(t, logs, "result=reset")
			if !poll(func() bool { return srv.ActiveConns() == 0 && srv.ParkedDirections() == 0 }) {
				t.Errorf("%d conns, %d parked directions left", srv.ActiveConns(), srv.ParkedDirections())
			}
		})
	}
}

// TestDetachedListingAndLimits: while a connection's sockets are detached,
// the listing still shows its client, and a live rate change with kernel
// pacing reaches its socket (set on the descriptor, kept when attached
// again); the bytes then flow at the new rate's pacing.
func TestDetachedListingAndLimits(t *testing.T) {
	defer test.TimeOut(30 * time.Second).Stop()
	checkRoutines(t)

	b := newBackend(t)
	m := parkModes[1]
	srv, addr, _ := m.start(t, ListenerConfig{Upstream: b.addr()}, 20*time.Millisecond)
	client, server := m.idlePair(t, srv, addr, b)
	conns := srv.Conns()
	if len(conns) != 1 || conns[0].Client != client.LocalAddr().String() {
		t.Fatalf("Conns() while detached = %+v, want one from %s", conns, client.LocalAddr())
	}
	if err := srv.SetLimits("t", ConnLimits{Down: shaper.Limit{Rate: 5_000_000}, KernelPacing: true}); err != nil {
		t.Fatal(err)
	}
	if n := srv.DetachedConns(); n != 1 {
		t.Fatalf("%d conns detached after SetLimits, want it still detached", n)
	}
	exchange(t, client, server) // attaches them again
	var sc *net.TCPConn
	srv.mu.Lock()
	for c := range srv.conns {
		c.mu.Lock()
		sc = c.client
		c.mu.Unlock()
	}
	srv.mu.Unlock()
	if sc == nil {
		t.Fatal("no client socket after the conn woke")
	}
	if got, want := pacingRate(t, sc), pacingRateFor(5_000_000); got != want {
		t.Errorf("SO_MAX_PACING_RATE set while detached = %d, want %d", got, want)
	}
	if n := srv.DetachedConns(); n != 0 {
		t.Errorf("%d conns detached after bytes moved, want 0", n)
	}
}

// TestConnRecordSize keeps the connection record in Go's 512-byte size
// class: every byte of it is paid per idle connection, and the next class
// is 576 bytes (docs/internals.md, "Memory per idle connection"). Fields
// most connections do not use go out of line (admitWait, linkSeats).
func TestConnRecordSize(t *testing.T) {
	if size := unsafe.Sizeof(conn{}); size > 512 {
		t.Fatalf("conn is %d bytes, over the 512-byte size class", size)
	}
}
