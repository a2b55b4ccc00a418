package proxy

import (
	"io"
	"net"
	"strconv"
	"testing"
)

// BenchmarkSpliceMove measures one move of the splice path through a running
// proxy: the readiness check, the splice and the accounting. Steady state
// allocates nothing.
func BenchmarkSpliceMove(b *testing.B) {
	for _, size := range []int{64, 8 << 10, 256 << 10} {
		b.Run(strconv.Itoa(size)+"B", func(b *testing.B) {
			be := newBackend(b)
			_, addr, _ := startProxy(b, ListenerConfig{Upstream: be.addr()})
			client, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			defer client.Close()
			server := be.accept(b)
			defer server.Close()
			msg, got := make([]byte, size), make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := client.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(server, got); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestCopyGrantAllocates checks the copy path of small shaped grants moves
// bytes exactly and allocates nothing per grant, for every buffer size.
func TestCopyGrantAllocates(t *testing.T) {
	inW, inR := tcpPair(t)
	outW, outR := tcpPair(t)
	p := &pump{src: inR, dst: outW}
	for _, size := range []int{100, 8 << 10, 12 << 10, 32 << 10, maxCopy} {
		msg, got := make([]byte, size), make([]byte, size)
		for i := range msg {
			msg[i] = byte(i * 7)
		}
		move := func() {
			if _, err := inW.Write(msg); err != nil {
				t.Fatal(err)
			}
			if n, err := p.copyGrant(size, nil); n != int64(size) || err != nil {
				t.Fatalf("copyGrant(%d) = %d, %v", size, n, err)
			}
			if _, err := io.ReadFull(outR, got); err != nil {
				t.Fatal(err)
			}
		}
		move()
		if string(got) != string(msg) {
			t.Fatalf("%d bytes: copied bytes differ", size)
		}
		if allocs := testing.AllocsPerRun(50, move); allocs != 0 {
			t.Errorf("%d bytes: %.1f allocations per grant, want 0", size, allocs)
		}
	}
}
