package upstream_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/sluiceproxy/sluice/proxy/upstream"
)

func TestNewStaticBadAddress(t *testing.T) {
	for _, c := range []struct {
		name, addr string
		want       error
	}{
		{"empty", "", upstream.ErrNoAddress},
		{"no port", "10.0.0.1", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := upstream.NewStatic(c.addr, upstream.Options{})
			if err == nil || c.want != nil && !errors.Is(err, c.want) {
				t.Fatalf("NewStatic(%q) error = %v, want one (wrapping %v)", c.addr, err, c.want)
			}
		})
	}
}

// TestStaticDial: the dialer goes to its address, within the connect
// timeout (seen as the ctx deadline of the dial function).
func TestStaticDial(t *testing.T) {
	var gotAddr string
	var gotDeadline time.Duration
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	d, err := upstream.NewStatic("example.test:80", upstream.Options{ConnectTimeout: 3 * time.Second,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			gotAddr = addr
			dl, _ := ctx.Deadline()
			gotDeadline = time.Until(dl)
			return p1, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.Dial(context.Background())
	if err != nil || c != p1 {
		t.Fatalf("Dial = %v, %v; want the dialed conn", c, err)
	}
	if gotAddr != "example.test:80" || d.Addr() != gotAddr {
		t.Errorf("dialed %q, Addr %q; want example.test:80", gotAddr, d.Addr())
	}
	if gotDeadline <= 2*time.Second || gotDeadline > 3*time.Second {
		t.Errorf("dial deadline %v away, want within the 3 s connect timeout", gotDeadline)
	}
}

// TestStaticDialRefused: a dial to a closed loopback port fails with the
// dialer's error.
func TestStaticDialRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	d, err := upstream.NewStatic(addr, upstream.Options{ConnectTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if c, err := d.Dial(context.Background()); err == nil {
		c.Close()
		t.Fatal("Dial to a closed port succeeded")
	}
}
