package admin_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/pion/transport/v2/test"

	"github.com/sluiceproxy/sluice/proxy"
)

// checkRoutines fails t if goroutines started during the test outlive it.
// It runs as the last cleanup, after the servers the test started are closed.
func checkRoutines(t *testing.T) {
	t.Cleanup(test.CheckRoutines(t))
}

// backend is a loopback TCP server whose accepted connections a test takes
// from a channel.
type backend struct {
	ln    *net.TCPListener
	conns chan *net.TCPConn
}

func newBackend(t testing.TB) *backend {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{ln: ln, conns: make(chan *net.TCPConn, 64)}
	go func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				close(b.conns)
				return
			}
			b.conns <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for c := range b.conns {
			c.Close()
		}
	})
	return b
}

func (b *backend) addr() string { return b.ln.Addr().String() }

// startProxy serves one listener named "t" on loopback in front of
// cfg.Upstream, with links, and returns the server and its address.
func startProxy(t testing.TB, links []proxy.LinkConfig, cfg proxy.ListenerConfig) (*proxy.Server, string) {
	t.Helper()
	cfg.Name, cfg.Addr = "t", "127.0.0.1:0"
	srv, err := proxy.New(proxy.Options{Links: links, Listeners: []proxy.ListenerConfig{cfg}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv, srv.Addr("t").String()
}

// connect opens a client through the proxy and returns it with the
// backend's side of the same connection.
func connect(t testing.TB, proxyAddr string, b *backend) (client, server *net.TCPConn) {
	t.Helper()
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	client = c.(*net.TCPConn)
	select {
	case server = <-b.conns:
		return client, server
	case <-time.After(5 * time.Second):
		client.Close()
		t.Fatal("backend accepted nothing within 5s")
		return nil, nil
	}
}

// roundTrip sends msg from client to server and back.
func roundTrip(t *testing.T, client, server net.Conn, msg string) {
	t.Helper()
	if _, err := client.Write([]byte(msg)); err != nil {
		t.Fatalf("client write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(server, buf); err != nil {
		t.Fatalf("upstream read: %v", err)
	}
	if _, err := server.Write(buf); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != msg {
		t.Fatalf("client read %q, %v", buf, err)
	}
}

// eventually polls cond until it holds, failing after 5 s: for state the
// proxy updates after the peer already saw the effect.
func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(2 * time.Millisecond) // polling proxy state, not synchronising goroutines
	}
}

// arrivals records when each read of a stream completed.
type arrivals struct {
	mu    sync.Mutex
	at    []time.Time
	total []int64
}

func (a *arrivals) read(r io.Reader) {
	buf := make([]byte, 64<<10)
	var total int64
	for {
		n, err := r.Read(buf)
		total += int64(n)
		a.mu.Lock()
		a.at, a.total = append(a.at, time.Now()), append(a.total, total)
		a.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// bytesAt returns the bytes received by t.
func (a *arrivals) bytesAt(t time.Time) int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	var n int64
	for i, at := range a.at {
		if at.After(t) {
			break
		}
		n = a.total[i]
	}
	return n
}

// rate returns the receive rate over [from, to] in bytes per second.
func (a *arrivals) rate(from, to time.Time) float64 {
	return float64(a.bytesAt(to)-a.bytesAt(from)) / to.Sub(from).Seconds()
}
