package upstream_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/sluiceproxy/sluice/proxy/upstream"
	"github.com/sluiceproxy/sluice/shaper/shapertest"
)

// ExampleNewPool balances by smooth weighted round robin, fails over on a
// refused dial, and reports each state change once.
func ExampleNewPool() {
	refused := map[string]bool{"10.0.0.3:443": true}
	dial := func(_ context.Context, _, addr string) (net.Conn, error) {
		if refused[addr] {
			return nil, errors.New("connection refused")
		}
		c, _ := net.Pipe()
		return c, nil
	}
	pool, err := upstream.NewPool(upstream.PoolConfig{
		Name:    "api",
		Balance: upstream.RoundRobin,
		Servers: []upstream.ServerConfig{
			{Address: "10.0.0.1:443", Weight: 2},
			{Address: "10.0.0.2:443"},
			{Address: "10.0.0.3:443"},
		},
		Passive: upstream.Passive{Failures: 1, Eject: 10 * time.Second},
		Retry:   1,
	}, upstream.Options{
		Clock:       shapertest.NewClock(),
		DialContext: dial,
		OnState: func(c upstream.StateChange) {
			fmt.Printf("%s %s: %s -> %s (%s)\n", c.Pool, c.Server, c.From, c.To, c.Reason)
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	for range 5 {
		lease, err := pool.DialFor(context.Background(), upstream.Request{})
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println("connected to", lease.Addr())
		lease.Conn().Close()
		lease.Done()
	}
	// Output:
	// connected to 10.0.0.1:443
	// connected to 10.0.0.2:443
	// api 10.0.0.3:443: up -> ejected (failures)
	// connected to 10.0.0.1:443
	// connected to 10.0.0.1:443
	// connected to 10.0.0.1:443
}

// ExampleParseResponseHead reads a 429's Retry-After and the instant its
// server may be asked again.
func ExampleParseResponseHead() {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	h, err := upstream.ParseResponseHead([]byte("HTTP/1.1 429 Too Many Requests\r\nRetry-After: 5\r\n\r\n"), now)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(h.Status, h.Busy(), h.RetryAfter)
	fmt.Println(h.CoolUntil(now, 10*time.Second, time.Minute).Format(time.TimeOnly))
	// Output:
	// 429 true 5s
	// 00:00:05
}
