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
