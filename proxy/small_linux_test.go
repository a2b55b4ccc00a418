package proxy

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/transport/v2/test"

	"github.com/sluiceproxy/sluice/shaper"
)

// TestSmallMoves: an unshaped direction whose last move was small reads its
// next bytes at once (readSmall) and writes them (writeSmall); a bulk stream
// goes back to splicing; a limit set while a direction waits to read is
// obeyed by the bytes that read takes. Every byte arrives, in order.
func TestSmallMoves(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	checkRoutines(t)
	var small atomic.Int64 // bytes moved by small reads
	count := func(n int) { small.Add(int64(n)) }
	smallMoveHook.Store(&count)
	t.Cleanup(func() { smallMoveHook.Store(nil) })

	b := newBackend(t)
	srv, addr, _ := startProxy(t, ListenerConfig{Upstream: b.addr()})
	client, server := connect(t, addr, b)
	defer client.Close()
	defer server.Close()
	for _, c := range []net.Conn{client, server} {
		c.SetDeadline(time.Now().Add(40 * time.Second))
	}

	rng := rand.New(rand.NewPCG(1, 2))
	// pingPong sends n messages of 1 byte to smallRead-1 each way and
	// returns how many bytes they were.
	pingPong := func(n int) int64 {
		var total int64
		for i := 0; i < n; i++ {
			msg := make([]byte, 1+rng.IntN(smallRead-1))
			for j := range msg {
				msg[j] = byte(rng.Uint32())
			}
			got := make([]byte, len(msg))
			if _, err := client.Write(msg); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(server, got); err != nil {
				t.Fatal(err)
			}
			for j := range got {
				got[j] ^= 0xff // the answer differs from the question
			}
			if _, err := server.Write(got); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(client, got); err != nil {
				t.Fatal(err)
			}
			for j := range got {
				if got[j] != ^msg[j] {
					t.Fatalf("message %d (%d bytes): byte %d is %#x, want %#x", i, len(msg), j, got[j], ^msg[j])
				}
			}
			total += 2 * int64(len(msg))
		}
		return total
	}

	// Each direction's first message is counted and spliced; every later
	// one is read at once.
	total := pingPong(200)
	if got := small.Load(); got < total-2*smallRead || got > total {
		t.Errorf("small reads moved %d of %d bytes of small messages, want all but each direction's first", got, total)
	}

	// A bulk stream, sent at once, is spliced, not copied 16 KiB at a time.
	const bulk = 32 << 20
	before := small.Load()
	sent := make(chan [32]byte, 1)
	go func() {
		sum, err := sendStream(client, 7, bulk)
		if err != nil {
			t.Error(err)
		}
		sent <- sum
	}()
	sum, n, err := hashAll(io.LimitReader(server, bulk))
	if err != nil || n != bulk || sum != <-sent {
		t.Fatalf("bulk: %d of %d bytes, err %v, or a different hash", n, bulk, err)
	}
	if got := small.Load() - before; got > bulk/4 {
		t.Errorf("small reads moved %d of a %d-byte bulk stream, want under a quarter", got, bulk)
	}

	// Small again after the bulk.
	before = small.Load()
	total = pingPong(50)
	if got := small.Load() - before; got < total-2*smallRead {
		t.Errorf("after a bulk stream, small reads moved %d of %d bytes of small messages", got, total)
	}

	// A limit set while the upload waits to read at once: 12 KiB at
	// 4 KB/s with its 8 KiB burst take about a second, not at once.
	if err := srv.SetLimits("t", ConnLimits{Up: shaper.Limit{Rate: 4000}}); err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte{0x5a}, 12<<10)
	start := time.Now()
	if _, err := client.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(server, got); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 500*time.Millisecond {
		t.Errorf("12 KiB limited to 4 KB/s (8 KiB burst) arrived in %v, want about 1 s", el)
	}
	if !bytes.Equal(got, msg) {
		t.Error("the limited message arrived changed")
	}
}
