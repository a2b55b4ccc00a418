package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluiceproxy/sluice/config"
	"github.com/sluiceproxy/sluice/mp4probe"
	"github.com/sluiceproxy/sluice/proxy"
	"github.com/sluiceproxy/sluice/proxy/admin"
	"github.com/sluiceproxy/sluice/shaper"
)

// The demo's shape: two listeners in front of one origin, with per-
// connection limits, sharing one link, and clients that download through
// them.
const (
	demoVideoRate = 2_000_000 // bytes/s per connection on "video" (16 Mbit/s)
	demoBulkRate  = 500_000   // bytes/s per connection on "bulk" (4 Mbit/s), up and down
	demoVideo     = 3         // clients on "video"
	demoBulk      = 2         // clients on "bulk"
	demoLinkRate  = 5_000_000 // bytes/s down on the shared link (40 Mbit/s): less than the 7 MB/s asked
	demoAssured   = 1_000_000 // bytes/s each listener is assured on the link (8 Mbit/s)
	demoViewers   = 2         // clients on "movie"
)

func sumValues(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// runDemo starts an origin, a sluice in front of it and a few clients, all
// on loopback in this process, and shows live what the shaping does. Half
// way it doubles the video rate through the admin API, on the live
// connections; at three quarters it closes one connection. Every byte the
// clients receive is checked against what the origin sent.
func runDemo(ctx context.Context, w io.Writer, d time.Duration) error {
	origin, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer func() {
		origin.Close()
		wg.Wait() // the origin's goroutines end once sluice has closed its upstream side
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		serveOrigin(origin, &wg)
	}()

	movie := demoMovie(demoMovieSeconds, demoMovieRate, demoMovieFPS)
	pace := mp4probe.Pace{Factor: demoMovieFactor, Burst: demoMovieBurst}
	probe := mp4probe.NewObserver(mp4probe.Options{Mode: mp4probe.Raw, Pace: pace})
	probe.Observe(movie)
	plan := probe.Plan()
	if plan == nil {
		return errors.New("demo video: no plan")
	}
	movieLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer serveMovie(movieLn, movie).Close()

	lim := func(down, up int64) proxy.ConnLimits {
		return proxy.ConnLimits{Down: shaper.Limit{Rate: down, Burst: 64 << 10}, Up: shaper.Limit{Rate: up}, KernelPacing: true}
	}
	line := []string{"line"}
	srv, err := proxy.New(proxy.Options{
		Links: []proxy.LinkConfig{{Name: "line", KeyBy: proxy.KeyListener, Down: shaper.LinkLimit{
			Limit: shaper.Limit{Rate: demoLinkRate}, Key: shaper.KeyLimit{Rate: demoAssured}}}},
		Listeners: []proxy.ListenerConfig{
			{Name: "video", Addr: "127.0.0.1:0", Upstream: origin.Addr().String(), Limits: lim(demoVideoRate, 0), Links: line},
			{Name: "bulk", Addr: "127.0.0.1:0", Upstream: origin.Addr().String(), Limits: lim(demoBulkRate, demoBulkRate), Links: line},
			{Name: "movie", Addr: "127.0.0.1:0", Upstream: movieLn.Addr().String(),
				MP4: proxy.MP4Config{Enabled: true, Mode: mp4probe.HTTP, Pace: pace, CacheEntries: 16}},
		}})
	if err != nil {
		return err
	}
	if err := srv.Start(ctx); err != nil {
		return err
	}
	defer srv.Close()

	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	token := hex.EncodeToString(tok)
	adminLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: admin.New(srv, admin.Options{
		Token:     token,
		ParseRate: func(s string) (int64, error) { r, err := config.ParseRate(s); return int64(r), err },
		ParseSize: func(s string) (int64, error) { z, err := config.ParseSize(s); return int64(z), err },
	}), ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(slog.DiscardHandler, slog.LevelError)}
	go func() { _ = hs.Serve(adminLn) }()
	defer hs.Close()
	api := &adminClient{base: "http://" + adminLn.Addr().String(), token: token, http: &http.Client{Timeout: 5 * time.Second}}

	fmt.Fprintf(w, "sluice demo: an origin, a sluice with two listeners on one shared link, %d clients, all on loopback, for %v.\n", demoVideo+demoBulk, d)
	fmt.Fprintf(w, "  video %s: %d clients, %s per connection down\n", srv.Addr("video"), demoVideo, fmtBits(demoVideoRate))
	fmt.Fprintf(w, "  bulk  %s: %d clients, %s per connection, each way\n", srv.Addr("bulk"), demoBulk, fmtBits(demoBulkRate))
	fmt.Fprintf(w, "  link line: %s down for both, each listener a key assured %s; they ask for more than the line has,\n", fmtBits(demoLinkRate), fmtBits(demoAssured))
	fmt.Fprintf(w, "    so bulk keeps its %s (under its assured rate) and video shares the rest\n", fmtBits(demoBulk*demoBulkRate))
	fmt.Fprintf(w, "  movie %s: %d viewers of a %d-s, %s MP4 from an HTTP origin, paced: the metadata and %v of media at once,\n",
		srv.Addr("movie"), demoViewers, demoMovieSeconds, fmtBits(demoMovieRate), demoMovieBurst)
	fmt.Fprintf(w, "    then %g× the video's own rate (%s), so a viewer who quits early has not pulled the whole file\n",
		demoMovieFactor, fmtBits(demoMovieFactor*demoMovieRate))
	fmt.Fprintf(w, "  admin API %s (token %s): try `sluice top --admin %s` in another terminal\n\n", api.base, token, api.base)

	cctx, stop := context.WithCancel(ctx)
	defer stop()
	var bad atomic.Int64
	var clients sync.WaitGroup
	for i := range demoVideo + demoBulk {
		name := "video"
		if i >= demoVideo {
			name = "bulk"
		}
		clients.Add(1)
		go func() {
			defer clients.Done()
			if err := demoClient(cctx, srv.Addr(name).String(), name == "bulk"); err != nil {
				bad.Add(1)
				fmt.Fprintf(w, "client on %s: %v\n", name, err)
			}
		}()
	}

	viewers := make([]*viewer, demoViewers)
	for i := range viewers {
		viewers[i] = &viewer{}
		clients.Add(1)
		go func() {
			defer clients.Done()
			viewers[i].watch(cctx, srv.Addr("movie").String(), movie, plan.BurstEnd)
		}()
	}

	view := &topView{c: api, conns: 10}
	if _, err := view.frame(ctx); err != nil {
		return err
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	start := time.Now()
	doubled, closed := false, false
	for time.Since(start) < d {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		f, err := view.frame(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "── %v ──\n%s\n", time.Since(start).Round(time.Second), f)
		switch el := time.Since(start); {
		case !doubled && el >= d/2:
			doubled = true
			body := fmt.Sprintf(`{"down": {"rate": %d}}`, 2*demoLinkRate)
			if err := api.do(ctx, "PUT", "/v1/links/line/limits", strings.NewReader(body), nil); err != nil {
				return err
			}
			fmt.Fprintf(w, ">>> PUT /v1/links/line/limits %s: the line doubles to %s, live; video goes up to its per-connection %s\n\n",
				body, fmtBits(2*demoLinkRate), fmtBits(demoVideoRate))
		case !closed && el >= 3*d/4:
			closed = true
			var cs struct{ Conns []admin.ConnJSON }
			if err := api.do(ctx, "GET", "/v1/conns?listener=bulk&limit=1", nil, &cs); err != nil {
				return err
			}
			if len(cs.Conns) > 0 {
				id := cs.Conns[0].ID
				if err := api.do(ctx, "DELETE", fmt.Sprintf("/v1/conns/%d", id), nil, nil); err != nil {
					return err
				}
				fmt.Fprintf(w, ">>> DELETE /v1/conns/%d: that bulk connection is closed; the others run on\n\n", id)
			}
		}
	}
	stop()
	clients.Wait()
	watched := time.Since(start)
	for i, v := range viewers {
		if v.err != nil {
			bad.Add(1)
			fmt.Fprintf(w, "viewer %d: %v\n", i+1, v.err)
			continue
		}
		fmt.Fprintf(w, "viewer %d: the metadata and first %v of video (%d kB) in %v; quit after %v with %.1f of the file's %.1f MB\n",
			i+1, demoMovieBurst, plan.BurstEnd/1000, time.Duration(v.burst.Load()).Round(time.Millisecond),
			watched.Round(time.Second), float64(v.got.Load())/1e6, float64(len(movie))/1e6)
	}
	for _, ls := range srv.Stats() {
		if ls.Name == "movie" {
			fmt.Fprintf(w, "movie: %d videos seen, %d paced from their metadata, %d fallbacks; without pacing each viewer would have had the whole file in a fraction of a second\n",
				ls.MP4.Videos, ls.MP4.Plans, sumValues(ls.MP4.Fallbacks))
		}
	}
	if n := bad.Load(); n > 0 {
		return fmt.Errorf("%d clients saw corrupt bytes", n)
	}
	fmt.Fprintln(w, "demo done: every byte the clients received matched what the origin sent.")
	return nil
}

// serveOrigin sends each connection an endless, checkable byte stream
// (byte i is i mod 251) and discards what it receives.
func serveOrigin(ln net.Listener, wg *sync.WaitGroup) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, _ = io.Copy(io.Discard, c)
		}()
		go func() {
			defer wg.Done()
			defer c.Close()
			buf := make([]byte, 251*64)
			for i := range buf {
				buf[i] = byte(i % 251)
			}
			for {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
	}
}

// demoClient downloads (and, with upload, also sends) until ctx ends,
// checking every byte. A connection closed by the demo is not an error.
func demoClient(ctx context.Context, addr string, upload bool) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if upload {
		go func() {
			buf := make([]byte, 32<<10)
			for {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
	}
	r := bufio.NewReaderSize(c, 64<<10)
	for i := 0; ; i++ {
		b, err := r.ReadByte()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, io.EOF) || isConnReset(err) {
				return nil
			}
			return err
		}
		if b != byte(i%251) {
			return fmt.Errorf("byte %d is %d, want %d", i, b, i%251)
		}
	}
}

func isConnReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op)
}
