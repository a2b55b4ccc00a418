package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pion/transport/v2/test"
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
	b := &backend{ln: ln, conns: make(chan *net.TCPConn, 1024)}
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

// accept returns the next connection the backend accepted.
func (b *backend) accept(t testing.TB) *net.TCPConn {
	t.Helper()
	select {
	case c := <-b.conns:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("backend accepted nothing within 5s")
		return nil
	}
}

// logBuffer collects log lines for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// startProxy serves one listener named "t" in front of upstream and returns
// the server, its address and its log.
func startProxy(t testing.TB, cfg ListenerConfig) (*Server, string, *logBuffer) {
	t.Helper()
	return startProxyWith(t, Options{}, cfg)
}

// startProxyWith is startProxy with opts (its Listeners and Logger are
// startProxy's).
func startProxyWith(t testing.TB, opts Options, cfg ListenerConfig) (*Server, string, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	cfg.Name = "t"
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	opts.Listeners = []ListenerConfig{cfg}
	opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv, srv.Addr("t").String(), logs
}

func dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.TCPConn)
}

// connect opens a client through the proxy and returns it with the
// backend's side of the same connection.
func connect(t testing.TB, proxyAddr string, b *backend) (client, server *net.TCPConn) {
	t.Helper()
	client = dial(t, proxyAddr)
	return client, b.accept(t)
}

// realWait lets d of real time pass: for the few end-to-end tests that
// measure a rate or a count per second on real sockets and timers, or
// stall a receiver (the proxy's timing logic is tested on a fake clock).
// It never stands in for synchronisation.
func realWait(d time.Duration) {
	time.Sleep(d) // real time, measured
}

// overRealTime returns how fast count grows, per second, over d of real
// time after settle.
func overRealTime(settle, d time.Duration, count func() int64) float64 {
	realWait(settle)
	n0, t0 := count(), time.Now()
	realWait(d)
	return float64(count()-n0) / time.Since(t0).Seconds()
}

// waitLog waits until the proxy logged a line containing every part.
func waitLog(t *testing.T, logs *logBuffer, parts ...string) string {
	t.Helper()
	var found string
	if poll(func() bool {
		for _, line := range strings.Split(logs.String(), "\n") {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(line, p)
			}
			if ok {
				found = line
				return true
			}
		}
		return false
	}) {
		return found
	}
	t.Fatalf("no log line with %q within 5s; log:\n%s", parts, logs.String())
	return ""
}

// streamSender writes size bytes of a seeded pseudo-random stream to w and
// returns their SHA-256. Every 1 MiB block carries its index, so a dropped,
// repeated or reordered block changes the hash.
func sendStream(w io.Writer, seed uint64, size int) ([32]byte, error) {
	const block = 1 << 20
	buf := make([]byte, block)
	r := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}))
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	h := sha256.New()
	for i := 0; i < size; i += block {
		binary.LittleEndian.PutUint64(buf, uint64(i/block))
		n := min(block, size-i)
		h.Write(buf[:n])
		if _, err := w.Write(buf[:n]); err != nil {
			return [32]byte{}, err
		}
	}
	return [32]byte(h.Sum(nil)), nil
}

// streamResult is what one direction of a transfer sent and received.
type streamResult struct {
	sent, got [32]byte
	n         int64
	err       error
}

// transfer sends size bytes of seed's stream on w and half-closes it, while
// hashing all that r receives; the receiver starts reading after
// readDelay.
func transfer(w, r *net.TCPConn, seed uint64, size int, readDelay time.Duration) streamResult {
	got := make(chan streamResult, 1)
	go func() {
		realWait(readDelay) // a stalled receiver, when a test asks for one
		var res streamResult
		res.got, res.n, res.err = hashAll(r)
		got <- res
	}()
	sent, err := sendStream(w, seed, size)
	if err == nil {
		err = w.CloseWrite()
	}
	res := <-got
	res.sent, res.err = sent, errors.Join(res.err, err)
	return res
}

// exact returns an error unless res moved size bytes, byte-exact.
func (res streamResult) exact(size int) error {
	if res.err != nil || res.n != int64(size) || res.sent != res.got {
		return fmt.Errorf("%d bytes, SHA-256 equal %v, err %s; want %d byte-exact", res.n, res.sent == res.got, fmt.Sprint(res.err), size)
	}
	return nil
}

func hashAll(r io.Reader) ([32]byte, int64, error) {
	h := sha256.New()
	n, err := io.CopyBuffer(h, r, make([]byte, 256<<10))
	return [32]byte(h.Sum(nil)), n, err
}

// TestIntegrity256MiB sends 256 MiB of random bytes each way at once and
// checks both arrive byte-exact, then that each half-close arrives after the
// last byte.
func TestIntegrity256MiB(t *testing.T) {
	defer test.TimeOut(120 * time.Second).Stop()
	checkRoutines(t)

	const size = 256 << 20
	b := newBackend(t)
	_, addr, logs := startProxy(t, ListenerConfig{Upstream: b.addr()})
	client, server := connect(t, addr, b)
	defer client.Close()
	defer server.Close()

	up := make(chan streamResult, 1)
	go func() { up <- transfer(client, server, 1, size, 0) }() // the client's stream, read by the backend
	down := transfer(server, client, 2, size, 0)
	for name, res := range map[string]streamResult{"up (client → backend)": <-up, "down (backend → client)": down} {
		if err := res.exact(size); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	client.Close()
	server.Close()
	line := waitLog(t, logs, "conn done")
	for _, want := range []string{"result=ok", "bytes_up=268435456", "bytes_down=268435456"} {
		if !strings.Contains(line, want) {
			t.Errorf("log line %q lacks %q", line, want)
		}
	}
}

// fullReader makes test.StressDuplex work on a stream: its reader does one
// Read per message, which a TCP stream may split.
type fullReader struct{ net.Conn }

func (f fullReader) Read(p []byte) (int, error) { return io.ReadFull(f.Conn, p) }

func TestStressDuplex(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	checkRoutines(t)

	b := newBackend(t)
	_, addr, _ := startProxy(t, ListenerConfig{Upstream: b.addr()})
	client, server := connect(t, addr, b)
	defer client.Close()
	defer server.Close()
	err := test.StressDuplex(fullReader{client}, fullReader{server}, test.Options{MsgSize: 32 << 10, MsgCount: 256})
	if err != nil {
		t.Fatal(err)
	}
}

// bothEnds runs a test once with the client as the acting end and once with
// the upstream.
var bothEnds = []struct {
	name string
	pick func(client, server *net.TCPConn) (actor, other *net.TCPConn)
}{
	{"client", func(c, s *net.TCPConn) (*net.TCPConn, *net.TCPConn) { return c, s }},
	{"upstream", func(c, s *net.TCPConn) (*net.TCPConn, *net.TCPConn) { return s, c }},
}

func TestHalfClose(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)

	b := newBackend(t)
	_, addr, logs := startProxy(t, ListenerConfig{Upstream: b.addr()})

	for _, end := range bothEnds {
		t.Run(end.name+" closes first", func(t *testing.T) {
			client, server := connect(t, addr, b)
			defer client.Close()
			defer server.Close()
			closer, other := end.pick(client, server)

			// The closer sends a request and half-closes; the other side
			// reads it all, sees EOF, and can still answer.
			req := bytes.Repeat([]byte("request "), 100_000)
			go func() {
				closer.Write(req)
				closer.CloseWrite()
			}()
			got, err := io.ReadAll(other)
			if err != nil || !bytes.Equal(got, req) {
				t.Fatalf("other side read %d bytes, err %v; want %d bytes then EOF", len(got), err, len(req))
			}
			resp := []byte("answer after EOF")
			if _, err := other.Write(resp); err != nil {
				t.Fatalf("write after peer's half-close: %v", err)
			}
			other.CloseWrite()
			got, err = io.ReadAll(closer)
			if err != nil || !bytes.Equal(got, resp) {
				t.Fatalf("closer read %q, %v; want %q then EOF", got, err, resp)
			}
		})
	}
	waitLog(t, logs, "conn_id=2", "result=ok")
}

func TestResetPropagation(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)

	b := newBackend(t)
	_, addr, logs := startProxy(t, ListenerConfig{Upstream: b.addr()})
	for _, end := range bothEnds {
		t.Run(end.name+" resets", func(t *testing.T) {
			client, server := connect(t, addr, b)
			defer client.Close()
			defer server.Close()
			resetter, other := end.pick(client, server)
			// Prove the path works, then reset one end.
			if _, err := resetter.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(other, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			resetter.SetLinger(0)
			resetter.Close()
			other.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := other.Read(make([]byte, 1))
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("other side read err = %v, want ECONNRESET", err)
			}
		})
	}
	waitLog(t, logs, "conn_id=2", "result=reset")
}

func TestIdleTimeout(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)

	const idle = 300 * time.Millisecond
	b := newBackend(t)
	_, addr, logs := startProxy(t, ListenerConfig{Upstream: b.addr(), IdleTimeout: idle})

	// A connection busy in one direction only stays open past the timeout.
	client, server := connect(t, addr, b)
	defer client.Close()
	defer server.Close()
	done := make(chan error, 1)
	go func() {
		tick := time.NewTicker(idle / 4)
		defer tick.Stop()
		for i := 0; i < 12; i++ { // 3 idle timeouts' worth of traffic
			<-tick.C
			if _, err := server.Write([]byte("tick")); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	if _, err := io.ReadFull(client, make([]byte, 12*4)); err != nil {
		t.Fatalf("one-way traffic was cut: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// Now quiet: it is closed after about the idle timeout.
	start := time.Now()
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := client.Read(make([]byte, 1))
	waited := time.Since(start)
	if n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("idle client read = %d, %v; want 0, EOF", n, err)
	}
	if waited < idle*3/4 || waited > idle*4 {
		t.Errorf("idle connection closed after %v, want about %v", waited, idle)
	}
	waitLog(t, logs, "result=idle_timeout")
}

func TestUpstreamDown(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)

	// A port with nothing listening: bind one, then close it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()

	_, addr, logs := startProxy(t, ListenerConfig{Upstream: dead})
	// sluice resets the client at once: the reset may even beat the end of
	// the client's connect().
	c, err := net.Dial("tcp", addr)
	if err == nil {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Read(make([]byte, 1))
	}
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("client err = %v, want the connection closed at once", err)
	}
	line := waitLog(t, logs, "result=upstream_error")
	if !strings.Contains(line, "connection refused") {
		t.Errorf("log line %q does not say why", line)
	}
}

func TestConnectTimeout(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)

	logs := &logBuffer{}
	block := make(chan struct{})
	defer close(block)
	srv, err := New(Options{
		Listeners: []ListenerConfig{{Name: "t", Addr: "127.0.0.1:0", Upstream: "192.0.2.1:9", ConnectTimeout: 200 * time.Millisecond}},
		Logger:    slog.New(slog.NewTextHandler(logs, nil)),
		// A dial that hangs until its context ends, like a black-holed
		// upstream, without sending a packet anywhere.
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-block:
				return nil, errors.New("unblocked")
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	client := dial(t, srv.Addr("t").String())
	defer client.Close()
	start := time.Now()
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("client read err = %v, want closed after the connect timeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("closed after %v, want about 200ms", d)
	}
	waitLog(t, logs, "result=upstream_error", "deadline exceeded")
}

// pipeFDs counts this process's open pipe descriptors.
func pipeFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	n := 0
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(target, "pipe:") {
			n++
		}
	}
	return n
}

// TestIdleConnsHoldNoPipes checks the splice path holds no pipe while a
// connection waits for data: a plain io.Copy proxy holds one pipe (two
// descriptors) per waiting direction once it has spliced anything.
func TestIdleConnsHoldNoPipes(t *testing.T) {
	defer test.TimeOut(30 * time.Second).Stop()
	checkRoutines(t)

	const conns = 100
	b := newBackend(t)
	srv, addr, _ := startProxy(t, ListenerConfig{Upstream: b.addr()})
	before := pipeFDs(t)
	var clients, servers []*net.TCPConn
	defer func() {
		for i := range clients {
			clients[i].Close()
			servers[i].Close()
		}
	}()
	msg := make([]byte, 100_000)
	for i := 0; i < conns; i++ {
		c, s := connect(t, addr, b)
		clients, servers = append(clients, c), append(servers, s)
		// Move bytes both ways so both pumps have spliced.
		go c.Write(msg)
		if _, err := io.ReadFull(s, make([]byte, len(msg))); err != nil {
			t.Fatal(err)
		}
		go s.Write(msg)
		if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
			t.Fatal(err)
		}
	}
	if n := srv.ActiveConns(); n != conns {
		t.Fatalf("ActiveConns() = %d, want %d", n, conns)
	}
	// Go keeps spare pipes in a sync.Pool, how many depends on how many
	// splices overlapped. Two GCs empty the pool and the pipes' finalizers
	// close them. A pipe held per idle direction would stay: 2*conns pipes,
	// 4*conns descriptors.
	extra := pipeFDs(t) - before
	poll(func() bool { // finalizers run on their own goroutine
		runtime.GC()
		runtime.GC()
		extra = pipeFDs(t) - before
		return extra <= 0
	})
	if extra > 0 {
		t.Errorf("%d idle connections hold %d pipe descriptors after the pool is emptied, want 0", conns, extra)
	}
}

func TestShutdownDrains(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)

	b := newBackend(t)
	srv, addr, logs := startProxy(t, ListenerConfig{Upstream: b.addr()})
	client, server := connect(t, addr, b)
	defer client.Close()
	defer server.Close()

	// waitClosed's probes may slip in before the listener closes; the
	// backend ends them so they do not hold the drain open.
	go func() {
		for c := range b.conns {
			c.Close()
		}
	}()

	// A live connection keeps working after Shutdown began, and Shutdown
	// returns nil once it ends by itself.
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(context.Background()) }()
	waitClosed(t, addr)
	if _, err := client.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, make([]byte, 10)); err != nil {
		t.Fatalf("live connection broken during drain: %v", err)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v while a connection was live", err)
	default:
	}
	client.CloseWrite()
	server.CloseWrite()
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown = %v, want nil after connections ended", err)
	}
	waitLog(t, logs, "result=ok")
}

func TestShutdownDrainTimeout(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)

	b := newBackend(t)
	srv, addr, logs := startProxy(t, ListenerConfig{Upstream: b.addr()})
	client, server := connect(t, addr, b)
	defer client.Close()
	defer server.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want context.DeadlineExceeded", err)
	}
	if n := srv.ActiveConns(); n != 0 {
		t.Errorf("ActiveConns() = %d after Shutdown, want 0", n)
	}
	client.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("client read err = %v, want closed", err)
	}
	waitLog(t, logs, "result=shutdown")
}

// waitClosed waits until nothing accepts on addr any more.
func waitClosed(t *testing.T, addr string) {
	t.Helper()
	if poll(func() bool { // the kernel's listen state
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return true
		}
		c.Close()
		return false
	}) {
		return
	}
	t.Fatalf("%s still accepts connections", addr)
}

func TestStartFailsOnBusyAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srv, err := New(Options{Listeners: []ListenerConfig{
		{Name: "free", Addr: "127.0.0.1:0", Upstream: "127.0.0.1:1"},
		{Name: "busy", Addr: ln.Addr().String(), Upstream: "127.0.0.1:1"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	err = srv.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), `listener "busy"`) || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("Start = %v, want an address-in-use error naming listener \"busy\"", err)
	}
	if srv.Addr("free") != nil {
		t.Errorf("listener \"free\" left open after a failed Start")
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		ls   []ListenerConfig
		want string
	}{
		{"no upstream", []ListenerConfig{{Name: "a", Addr: "127.0.0.1:0"}}, "upstream are required"},
		{"no address", []ListenerConfig{{Name: "a", Upstream: "127.0.0.1:1"}}, "address and upstream"},
		{"duplicate", []ListenerConfig{
			{Name: "a", Addr: "127.0.0.1:0", Upstream: "127.0.0.1:1"},
			{Name: "a", Addr: "127.0.0.1:0", Upstream: "127.0.0.1:1"},
		}, `duplicate name "a"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(Options{Listeners: tc.ls})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want error containing %q", err, tc.want)
			}
		})
	}
}
