package proxy

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/pion/transport/v2/test"
	"golang.org/x/sys/unix"

	"github.com/sluiceproxy/sluice/shaper"
)

// TestShapedBothWays: a 10 MB/s download and a 1 MB/s upload at once on one
// connection, each within ±5% of its rate over 5 s, byte-exact, with kernel
// pacing off and on (on, the download takes 20 ms grants).
func TestShapedBothWays(t *testing.T) {
	for _, pacing := range []bool{false, true} {
		name := "pacing off"
		if pacing {
			name = "pacing on"
		}
		t.Run(name, func(t *testing.T) { testShapedBothWays(t, pacing) })
	}
}

func testShapedBothWays(t *testing.T, pacing bool) {
	defer test.TimeOut(60 * time.Second).Stop()
	checkRoutines(t)

	const (
		downRate, upRate = 10_000_000, 1_000_000
		seconds          = 5
		burst            = 8192
	)
	b := newBackend(t)
	_, addr, _ := startProxy(t, ListenerConfig{Upstream: b.addr(), Limits: ConnLimits{
		Up:   shaper.Limit{Rate: upRate, Burst: burst},
		Down: shaper.Limit{Rate: downRate, Burst: burst}, KernelPacing: pacing,
	}})
	client, server := connect(t, addr, b)
	defer client.Close()
	defer server.Close()

	type result struct {
		dur       time.Duration
		n         int64
		sent, got [32]byte
		err       error
	}
	transfer := func(w, r *net.TCPConn, seed uint64, size int, out chan<- result) {
		var res result
		var wg sync.WaitGroup
		wg.Add(1)
		start := time.Now()
		go func() {
			defer wg.Done()
			res.got, res.n, res.err = hashAll(r)
			res.dur = time.Since(start)
		}()
		sent, err := sendStream(w, seed, size)
		if err == nil {
			err = w.CloseWrite()
		}
		wg.Wait()
		res.sent = sent
		res.err = errors.Join(res.err, err)
		out <- res
	}
	up, down := make(chan result, 1), make(chan result, 1)
	go transfer(client, server, 1, upRate*seconds, up)
	go transfer(server, client, 2, downRate*seconds, down)
	for _, c := range []struct {
		name string
		rate int
		res  result
	}{{"up", upRate, <-up}, {"down", downRate, <-down}} {
		if c.res.err != nil {
			t.Errorf("%s: %v", c.name, c.res.err)
			continue
		}
		if c.res.n != int64(c.rate*seconds) || c.res.sent != c.res.got {
			t.Errorf("%s: received %d bytes, hash equal %v; want %d byte-exact", c.name, c.res.n, c.res.sent == c.res.got, c.rate*seconds)
		}
		// The first burst is free; the rest comes at the rate. (With
		// pacing the kernel spaces even the first grant.)
		achieved := float64(c.res.n-burst) / c.res.dur.Seconds()
		if ratio := achieved / float64(c.rate); math.Abs(ratio-1) > 0.05 {
			t.Errorf("%s: achieved %.0f B/s over %v, %.3f× the %d B/s limit; want within ±5%%",
				c.name, achieved, c.res.dur.Round(time.Millisecond), ratio, c.rate)
		} else {
			t.Logf("%s: achieved %.4f× the limit over %v", c.name, ratio, c.res.dur.Round(time.Millisecond))
		}
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

// TestLiveRateChange: SetLimits on a running transfer is seen within 200 ms,
// up and down.
func TestLiveRateChange(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	checkRoutines(t)

	b := newBackend(t)
	srv, addr, _ := startProxy(t, ListenerConfig{Upstream: b.addr(), Limits: ConnLimits{
		Down: shaper.Limit{Rate: 1_000_000},
	}})
	client, server := connect(t, addr, b)
	defer client.Close()
	defer server.Close()
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := server.Write(buf); err != nil {
				return
			}
		}
	}()
	var a arrivals
	done := make(chan struct{})
	go func() { a.read(client); close(done) }()

	wait := func(d time.Duration) time.Time {
		realWait(d)
		return time.Now()
	}
	t0 := wait(time.Second)
	for _, step := range []struct {
		name string
		rate int64
	}{{"up to 4 MB/s", 4_000_000}, {"down to 500 KB/s", 500_000}, {"unlimited then 2 MB/s", 0}, {"2 MB/s", 2_000_000}} {
		if err := srv.SetLimits("t", ConnLimits{Down: shaper.Limit{Rate: step.rate}}); err != nil {
			t.Fatal(err)
		}
		change := time.Now()
		end := wait(1200 * time.Millisecond)
		if step.rate == 0 {
			continue
		}
		got := a.rate(change.Add(200*time.Millisecond), end)
		if ratio := got / float64(step.rate); ratio < 0.85 || ratio > 1.15 {
			t.Errorf("%s: %.0f B/s from 200ms after the change, %.2f× the new limit; want within ±15%%", step.name, got, ratio)
		}
	}
	if r := a.rate(t0.Add(-800*time.Millisecond), t0); r > 1.15e6 {
		t.Errorf("before any change: %.0f B/s, want at most 1 MB/s + 15%%", r)
	}
	if err := srv.SetLimits("t", ConnLimits{Down: shaper.Limit{Rate: -1}}); !errors.Is(err, shaper.ErrBadLimit) {
		t.Errorf("SetLimits(rate -1) = %v, want ErrBadLimit", err)
	}
	if err := srv.SetLimits("nope", ConnLimits{}); err == nil {
		t.Error("SetLimits on an unknown listener succeeded")
	}
	client.Close()
	<-done
}

// TestShapedWaitEndsOnShutdown: a connection waiting for tokens (8 KiB at
// 100 B/s is 80 s) in the shaping loop is closed promptly when the drain
// runs out.
func TestShapedWaitEndsOnShutdown(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)

	b := newBackend(t)
	srv, addr, logs := startProxy(t, ListenerConfig{Upstream: b.addr(), Limits: ConnLimits{
		Down: shaper.Limit{Rate: 100, Burst: 8192},
	}})
	client, server := connect(t, addr, b)
	defer client.Close()
	defer server.Close()
	go server.Write(make([]byte, 64<<10))
	if _, err := io.ReadFull(client, make([]byte, 8192)); err != nil {
		t.Fatal(err) // the first burst
	}
	// The wait is the shaping loop's (the pump read ahead).
	if n := waitLoopServed(srv, 1); n != 1 {
		t.Fatalf("the shaping loop serves %d directions, want 1", n)
	}
	shutdownPromptly(t, srv)
	waitLog(t, logs, "result=shutdown", "bytes_down=8192")
}

// shutdownPromptly shuts srv down with a 100 ms drain that a conn waiting
// for tokens outlasts, and checks the wait ends at once.
func shutdownPromptly(t *testing.T, srv *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Shutdown took %v with a connection waiting for tokens", d)
	}
}

// TestWaitingForTokensIsNotIdle: a connection held back by its own limit
// (8 KiB at 100 B/s is 80 s per grant) outlives a 300 ms idle timeout; a
// really idle one does not.
func TestWaitingForTokensIsNotIdle(t *testing.T) {
	defer test.TimeOut(20 * time.Second).Stop()
	checkRoutines(t)

	b := newBackend(t)
	_, addr, _ := startProxy(t, ListenerConfig{Upstream: b.addr(), IdleTimeout: 300 * time.Millisecond,
		Limits: ConnLimits{Down: shaper.Limit{Rate: 100, Burst: 8192}}})
	client, server := connect(t, addr, b)
	defer client.Close()
	defer server.Close()
	go server.Write(make([]byte, 64<<10))
	if _, err := io.ReadFull(client, make([]byte, 8192)); err != nil {
		t.Fatal(err) // the first burst; the rest waits for tokens
	}
	// Four idle timeouts later it is still open: the read times out
	// rather than seeing the connection closed.
	client.SetReadDeadline(time.Now().Add(1200 * time.Millisecond))
	if _, err := client.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("shaped connection: read err = %v, want a timeout (still open)", err)
	}

	// A connection with nothing to move is closed as idle.
	quiet, quietServer := connect(t, addr, b)
	defer quiet.Close()
	defer quietServer.Close()
	quiet.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := quiet.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection: read err = %v, want EOF from the idle timeout", err)
	}
}

func pacingRate(t *testing.T, c *net.TCPConn) uint64 {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v uint64
	raw.Control(func(fd uintptr) {
		n, err := unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_MAX_PACING_RATE)
		if err != nil {
			t.Fatal(err)
		}
		v = n
	})
	return v
}

// TestKernelPacing: with kernel pacing on, the client socket's
// SO_MAX_PACING_RATE follows the down limit (plus 0.5% headroom), live; off,
// it is reset to unlimited.
func TestKernelPacing(t *testing.T) {
	b := newBackend(t)
	srv, addr, _ := startProxy(t, ListenerConfig{Upstream: b.addr(), Limits: ConnLimits{
		Down: shaper.Limit{Rate: 5_000_000}, KernelPacing: true,
	}})
	client, server := connect(t, addr, b)
	defer client.Close()
	defer server.Close()
	// Move a byte so the conn is set up, then find sluice's client socket.
	client.Write([]byte("x"))
	io.ReadFull(server, make([]byte, 1))
	var sc *net.TCPConn
	srv.mu.Lock()
	for c := range srv.conns {
		sc = c.client
	}
	srv.mu.Unlock()
	// The kernel paces 0.5% above the limit; the gate holds the average.
	if got := pacingRate(t, sc); got != 5_025_000 {
		t.Errorf("SO_MAX_PACING_RATE = %d, want 5025000", got)
	}
	srv.SetLimits("t", ConnLimits{Down: shaper.Limit{Rate: 7_000_000}, KernelPacing: true})
	if got := pacingRate(t, sc); got != 7_035_000 {
		t.Errorf("after SetLimits: SO_MAX_PACING_RATE = %d, want 7035000", got)
	}
	srv.SetLimits("t", ConnLimits{Down: shaper.Limit{Rate: 7_000_000}})
	if got := pacingRate(t, sc); got != math.MaxUint64 && got != math.MaxUint32 {
		t.Errorf("pacing off: SO_MAX_PACING_RATE = %d, want unlimited", got)
	}
}

// TestKernelBurst: the most bytes Linux sends at once on a paced socket
// (tcp_tso_autosize), and whether a grant is spread over several bursts:
// not on loopback or a LAN (64 KB more below 512 µs of RTT), yes on a path
// of a few milliseconds, or with tcp_tso_rtt_log 0, or before Linux 5.18.
func TestKernelBurst(t *testing.T) {
	const rate = 1_005_000 // 1 MB/s paced 0.5% above
	for _, tc := range []struct {
		name    string
		rtt     time.Duration
		log     int
		burst   uint64
		spreads bool // a 50 KB grant
	}{
		{"loopback", 30 * time.Microsecond, 9, 981 + 65536, false},
		{"LAN", 400 * time.Microsecond, 9, 981 + 65536, false},
		{"1 ms", time.Millisecond, 9, 981 + 65536>>1, false},
		{"5 ms", 5 * time.Millisecond, 9, 981 + 65536>>9, true},
		{"WAN", 40 * time.Millisecond, 9, 981, true},
		{"loopback, log 0", 30 * time.Microsecond, 0, 981, true},
		{"before 5.18", 30 * time.Microsecond, -1, 981, true},
		{"RTT unknown", 0, 0, 981 + 65536, false},
	} {
		if got := kernelBurst(rate, tc.rtt, tc.log); got != tc.burst {
			t.Errorf("%s: kernelBurst = %d, want %d", tc.name, got, tc.burst)
		}
		if got := kernelSpreads(rate, 50_000, tc.rtt, tc.log); got != tc.spreads {
			t.Errorf("%s: kernelSpreads(50 KB) = %v, want %v", tc.name, got, tc.spreads)
		}
	}
}

// TestPacedGrantFollowsPath: on loopback, where the kernel sends a grant
// as one burst, a paced 1 MB/s connection takes 10 ms grants (10 KB);
// where the kernel spreads them (made so here by taking the namespace's
// tcp_tso_rtt_log as 0), 50 ms grants (50 KB); and the bytes still come
// at the rate.
func TestPacedGrantFollowsPath(t *testing.T) {
	defer test.TimeOut(30 * time.Second).Stop()
	b := newBackend(t)
	grant := func(t *testing.T) (*Server, *conn, *net.TCPConn, *net.TCPConn) {
		srv, addr, _ := startProxy(t, ListenerConfig{Upstream: b.addr(), Limits: ConnLimits{
			Down: shaper.Limit{Rate: 1_000_000}, KernelPacing: true,
		}})
		client, server := connect(t, addr, b)
		t.Cleanup(func() { client.Close(); server.Close() })
		client.Write([]byte("x"))
		io.ReadFull(server, make([]byte, 1))
		var c *conn
		srv.mu.Lock()
		for cn := range srv.conns {
			c = cn
		}
		srv.mu.Unlock()
		return srv, c, client, server
	}
	t.Run("loopback", func(t *testing.T) {
		_, c, _, _ := grant(t)
		if got := c.pumps[Down].chunk.Load(); got != 10_000 {
			t.Errorf("paced grant %d bytes, want 10000 (10 ms)", got)
		}
	})
	t.Run("spread", func(t *testing.T) {
		log := tsoRTTLog
		tsoRTTLog = func() int { return 0 }
		defer func() { tsoRTTLog = log }()
		srv, c, client, server := grant(t)
		if got := c.pumps[Down].chunk.Load(); got != 50_000 {
			t.Errorf("paced grant %d bytes, want 50000 (50 ms)", got)
		}
		srv.SetLimits("t", ConnLimits{Down: shaper.Limit{Rate: 2_000_000}, KernelPacing: true})
		if got := c.pumps[Down].chunk.Load(); got != 100_000 {
			t.Errorf("after SetLimits: paced grant %d bytes, want 100000", got)
		}
		go server.Write(make([]byte, 4<<20))
		start := time.Now()
		n, _ := io.ReadFull(client, make([]byte, 1_000_000))
		// 100 KB at once (the bucket's burst), then 2 MB/s: 0.45 s.
		if el := time.Since(start); n != 1_000_000 || el < 400*time.Millisecond || el > 2*time.Second {
			t.Errorf("1 MB at 2 MB/s in %v (%d bytes), want about 0.45 s", el, n)
		}
		// The first longGrantConns paced conns take long grants, the
		// next ones the loops' short grants; an ended conn is no longer
		// counted.
		addr := srv.Addr("t").String()
		var ends []*net.TCPConn
		for i := 1; i <= longGrantConns; i++ {
			cl, se := connect(t, addr, b)
			ends = append(ends, cl, se)
			cl.Write([]byte("x"))
			io.ReadFull(se, make([]byte, 1))
			want := int64(16_384) // 10 ms of 2 MB/s, down to what the loops serve
			if i < longGrantConns {
				want = 100_000
			}
			srv.mu.Lock()
			for cn := range srv.conns {
				if cn.client.RemoteAddr().String() == cl.LocalAddr().String() {
					if got := cn.pumps[Down].chunk.Load(); got != want {
						t.Errorf("paced conn %d: grant %d bytes, want %d", i+1, got, want)
					}
				}
			}
			srv.mu.Unlock()
		}
		for _, e := range append(ends, client, server) {
			e.Close()
		}
		if !poll(func() bool { return srv.ActiveConns() == 0 }) || srv.pacedConns.Load() != 0 {
			t.Errorf("%d conns, %d paced after all ended", srv.ActiveConns(), srv.pacedConns.Load())
		}
	})
}

// TestGrantsWhole: a paced 1 MB/s download is moved in whole 10 KB grants,
// also where its bytes read ahead run out: a grant cut to the rest of the
// last count (5,232 bytes once every 64 KiB read ahead) left one 100 ms
// window short and the next long. On loopback a grant arrives as one
// block, so every read the client makes is whole grants.
func TestGrantsWhole(t *testing.T) {
	defer test.TimeOut(30 * time.Second).Stop()
	upstream := endless(t)
	_, addr, _ := startProxy(t, ListenerConfig{Upstream: upstream, Limits: ConnLimits{
		Down: shaper.Limit{Rate: 1_000_000}, KernelPacing: true,
	}})
	c := dial(t, addr)
	defer c.Close()
	buf := make([]byte, 1<<20)
	var reads, total int
	for end := time.Now().Add(time.Second); time.Now().Before(end); {
		c.SetReadDeadline(end)
		n, err := c.Read(buf)
		if n%10_000 != 0 {
			t.Errorf("read %d: %d bytes, not whole 10 KB grants", reads, n)
		}
		reads, total = reads+1, total+n
		if err != nil {
			break
		}
	}
	if total < 500_000 {
		t.Errorf("%d bytes in a second at 1 MB/s", total)
	}
}

// opaqueConn hides *net.TCPConn from the pumps, as a TLS or PROXY-protocol
// wrapper would, so both directions copy through a buffer instead of
// splicing. It forwards CloseWrite explicitly (embedding would hide it).
type opaqueConn struct{ net.Conn }

func (c opaqueConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

// TestUserSpacePath: with an upstream that is not a *net.TCPConn, bytes are
// still exact both ways, half-closes still pass, and limits still hold.
func TestUserSpacePath(t *testing.T) {
	defer test.TimeOut(30 * time.Second).Stop()
	checkRoutines(t)

	b := newBackend(t)
	var d net.Dialer
	srv, err := New(Options{
		Listeners: []ListenerConfig{{Name: "t", Addr: "127.0.0.1:0", Upstream: b.addr()}},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return opaqueConn{c}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	addr := srv.Addr("t").String()

	client, server := connect(t, addr, b)
	defer client.Close()
	defer server.Close()
	if err := test.StressDuplex(fullReader{client}, fullReader{server}, test.Options{MsgSize: 32 << 10, MsgCount: 64}); err != nil {
		t.Fatal(err)
	}
	client.CloseWrite()
	if n, err := io.Copy(io.Discard, server); n != 0 || err != nil {
		t.Fatalf("upstream read after the client's half-close = %d, %v; want EOF", n, err)
	}
	server.CloseWrite()
	if n, err := io.Copy(io.Discard, client); n != 0 || err != nil {
		t.Fatalf("client read after the upstream's half-close = %d, %v; want EOF", n, err)
	}

	// A limit on the user-space path: 1 MB at 2 MB/s takes about 0.5 s.
	const rate, size = 2_000_000, 1_000_000
	if err := srv.SetLimits("t", ConnLimits{Down: shaper.Limit{Rate: rate}}); err != nil {
		t.Fatal(err)
	}
	client2, server2 := connect(t, addr, b)
	defer client2.Close()
	defer server2.Close()
	go func() {
		server2.Write(make([]byte, size))
		server2.CloseWrite()
	}()
	start := time.Now()
	n, err := io.Copy(io.Discard, client2)
	el := time.Since(start)
	if n != size || err != nil {
		t.Fatalf("shaped read = %d, %v; want %d bytes", n, err, size)
	}
	if want := time.Duration(float64(size-shaper.DefaultBurst) / rate * float64(time.Second)); el < want*9/10 {
		t.Errorf("1 MB at 2 MB/s arrived in %v, want at least %v: the limit is not applied", el, want*9/10)
	}
}
