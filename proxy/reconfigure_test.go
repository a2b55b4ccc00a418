package proxy

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pion/transport/v2/test"

	"github.com/sluiceproxy/sluice/shaper"
)

// echoOnce answers one ping on a fresh connection through addr, proving the
// listener at addr serves and forwards to b.
func echoOnce(t *testing.T, addr string, b *backend) {
	t.Helper()
	client, server := connect(t, addr, b)
	defer client.Close()
	defer server.Close()
	if _, err := client.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(server, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("backend read %q, %v", buf, err)
	}
}

// roundTrip checks a live connection still carries bytes both ways.
func roundTrip(t *testing.T, client, server net.Conn, msg string) {
	t.Helper()
	if _, err := client.Write([]byte(msg)); err != nil {
		t.Fatalf("live connection: client write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(server, buf); err != nil {
		t.Fatalf("live connection: upstream read: %v", err)
	}
	if _, err := server.Write(buf); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != msg {
		t.Fatalf("live connection: client read %q, %v", buf, err)
	}
}

func TestReconfigure(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	checkRoutines(t)
	b1, b2 := newBackend(t), newBackend(t)
	srv, addrA, _ := startProxy(t, ListenerConfig{Upstream: b1.addr()})
	liveC, liveS := connect(t, addrA, b1)
	defer liveC.Close()
	defer liveS.Close()

	// Keep "t" (same address, new upstream and limits) and add "u".
	down := shaper.Limit{Rate: 1 << 20, Burst: 8192}
	next := []ListenerConfig{
		{Name: "t", Addr: "127.0.0.1:0", Upstream: b2.addr(), Limits: ConnLimits{Down: down}}, // as configured: same socket
		{Name: "u", Addr: "127.0.0.1:0", Upstream: b1.addr()},
	}
	if err := srv.Reconfigure(nil, next, time.Minute); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, liveC, liveS, "still here") // the live conn kept its upstream
	echoOnce(t, addrA, b2)                   // new conns of "t" go to the new upstream
	addrU := srv.Addr("u")
	if addrU == nil {
		t.Fatal("listener u not serving")
	}
	echoOnce(t, addrU.String(), b1)
	var limited bool
	for _, c := range srv.Conns() {
		if c.Listener == "t" && c.Limits.Down == down {
			limited = true
		}
	}
	if !limited {
		t.Errorf("live conn limits after reconfigure: %+v, want down %+v", srv.Conns(), down)
	}

	// A bind failure changes nothing.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	bad := append(next[:2:2], ListenerConfig{Name: "v", Addr: busy.Addr().String(), Upstream: b1.addr()})
	bad[0].Limits = ConnLimits{}
	if err := srv.Reconfigure(nil, bad, time.Minute); err == nil || !strings.Contains(err.Error(), `listener "v"`) {
		t.Fatalf("Reconfigure with a busy address = %v, want an error naming listener v", err)
	}
	if srv.Addr("v") != nil || srv.Stats()[0].Limits.Down != down {
		t.Fatalf("a failed Reconfigure changed the running set: %+v", srv.Stats())
	}
	// Invalid limits change nothing either.
	bad[2] = ListenerConfig{Name: "v", Addr: "127.0.0.1:0", Upstream: b1.addr(), Limits: ConnLimits{Up: shaper.Limit{Rate: -1}}}
	if err := srv.Reconfigure(nil, bad, time.Minute); err == nil {
		t.Fatal("Reconfigure with a negative rate succeeded")
	}
	if srv.Addr("v") != nil {
		t.Fatal("a rejected Reconfigure bound a listener")
	}

	// Remove "t": it stops accepting, its live conn runs on until the drain
	// ends, then is closed with result "shutdown".
	if err := srv.Reconfigure(nil, next[1:], 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, addrA)
	roundTrip(t, liveC, liveS, "draining")
	liveC.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := liveC.Read(make([]byte, 1)); err == nil {
		t.Fatal("the removed listener's conn outlived its drain")
	}
	// The client saw the close; the conn's own accounting follows.
	eventually(t, func() bool { return srv.ActiveConns() == 0 })
	st := srv.Stats()
	if len(st) != 2 || st[0].Name != "u" || st[1].Name != "t" || st[1].Addr != "" {
		t.Fatalf("Stats after removing t = %+v, want u then the removed t", st)
	}
	if st[1].Ended[resultShutdown] != 1 || st[1].Ended[resultOK] != 1 || st[1].Accepted != 2 {
		t.Errorf("removed t: accepted %d, ended %v; want 2 accepted, 1 ok, 1 shutdown", st[1].Accepted, st[1].Ended)
	}
}

// TestReconfigureRename: a listener renamed on the same address keeps its
// socket (no bind conflict) and its connections.
func TestReconfigureRename(t *testing.T) {
	defer test.TimeOut(30 * time.Second).Stop()
	checkRoutines(t)
	b := newBackend(t)
	// A fixed port: renaming matches on the configured address.
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.Addr().String()
	probe.Close()
	srv, _, _ := startProxy(t, ListenerConfig{Addr: addr, Upstream: b.addr()})
	c, s := connect(t, addr, b)
	defer c.Close()
	defer s.Close()
	if err := srv.Reconfigure(nil, []ListenerConfig{{Name: "renamed", Addr: addr, Upstream: b.addr()}}, time.Second); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c, s, "hello")
	echoOnce(t, addr, b)
	if srv.Addr("renamed") == nil || srv.Addr("t") != nil {
		t.Fatalf("after rename: renamed at %v, t at %v", srv.Addr("renamed"), srv.Addr("t"))
	}
}

func TestReconfigureAfterClose(t *testing.T) {
	b := newBackend(t)
	srv, _, _ := startProxy(t, ListenerConfig{Upstream: b.addr()})
	srv.Close()
	err := srv.Reconfigure(nil, []ListenerConfig{{Name: "t", Addr: "127.0.0.1:0", Upstream: b.addr()}}, 0)
	if !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Reconfigure after Close = %v, want ErrServerClosed", err)
	}
}

// eventually polls cond until it holds, failing after 5 s: for state the
// proxy updates after the peer already saw the effect.
func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	if !poll(cond) {
		t.Fatal("condition not met within 5s")
	}
}

// poll reports whether cond became true within 5 s, polling every 2 ms.
// It is for state that another process or the kernel changes (a socket's
// queue, a finalizer, a log line written after the peer saw the effect),
// where no channel can say when: the tests' one polling sleep.
func poll(cond func() bool) bool {
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond) // polling, not synchronising goroutines
	}
	return true
}
