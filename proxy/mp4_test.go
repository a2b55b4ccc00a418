package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/sluiceproxy/sluice/mp4probe"
)

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("../mp4probe/testdata/" + name + ".mp4")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rawPlan is the plan of a whole file, as a raw stream.
func rawPlan(t testing.TB, data []byte, pace mp4probe.Pace) *mp4probe.Plan {
	t.Helper()
	o := mp4probe.NewObserver(mp4probe.Options{Mode: mp4probe.Raw, Pace: pace})
	o.Observe(data)
	p := o.Plan()
	if p == nil || p.Movie == nil {
		t.Fatal("no plan from the fixture")
	}
	return p
}

// allowedBy returns the most body bytes plan lets through by d after its
// start.
func allowedBy(plan *mp4probe.Plan, size int64, d time.Duration) int64 {
	lo, hi := int64(0), size
	for lo < hi {
		mid := lo + (hi-lo+1)/2
		if plan.Due(plan.Base+mid) <= d {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// checkArrivals checks a paced body's arrival curve against its plan: the
// burst region at once, then every quarter second neither ahead of the plan
// (beyond one pacing step) nor far behind it, and the end on time.
func checkArrivals(t *testing.T, name string, a *arrivals, start time.Time, plan *mp4probe.Plan, size int64) {
	t.Helper()
	end := a.at[len(a.at)-1]
	burst := plan.BurstEnd - plan.Start
	if got := a.bytesAt(start.Add(500 * time.Millisecond)); got < burst {
		t.Errorf("%s: %d bytes in the first 0.5 s, want the burst region's %d", name, got, burst)
	}
	for d := 250 * time.Millisecond; start.Add(d).Before(end); d += 250 * time.Millisecond {
		got := a.bytesAt(start.Add(d))
		ahead := allowedBy(plan, size, d+2*paceStep)
		behind := allowedBy(plan, size, d-time.Second)
		if got > ahead || got < behind {
			t.Errorf("%s: %d bytes at %v; the plan allows %d to %d", name, got, d, behind, ahead)
		}
	}
	took, want := end.Sub(start), plan.Due(plan.Base+size)
	if took < want-paceStep || took > want+want/4+300*time.Millisecond {
		t.Errorf("%s: took %v, the plan says %v", name, took.Round(time.Millisecond), want.Round(time.Millisecond))
	}
	t.Logf("%s: burst %d bytes, %d bytes in %v (plan %v)", name, burst, size, took.Round(time.Millisecond), want.Round(time.Millisecond))
}

// TestMP4PacingHTTP plays a file through sluice from an http.FileServer-like
// origin: the whole file, then a seek on the same keep-alive connection,
// then a HEAD; each paced by its own plan, every byte exact.
func TestMP4PacingHTTP(t *testing.T) {
	checkRoutines(t)
	data := readFixture(t, "faststart")
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "video/mp4")
		http.ServeContent(w, r, "v.mp4", time.Time{}, bytes.NewReader(data))
	}))
	defer origin.Close()
	pace := mp4probe.Pace{Factor: 2, Burst: 2 * time.Second}
	srv, addr, logs := startProxy(t, ListenerConfig{Upstream: origin.Listener.Addr().String(),
		MP4: MP4Config{Enabled: true, Mode: mp4probe.HTTP, Pace: pace, CacheEntries: 4, MetadataBudget: 1 << 20}})
	c := dial(t, addr)
	defer c.Close()
	br := bufio.NewReader(c)
	whole := rawPlan(t, data, pace)

	get := func(rng string) (*arrivals, time.Time, []byte) {
		t.Helper()
		start := time.Now()
		fmt.Fprintf(c, "GET /v.mp4?token=1 HTTP/1.1\r\nHost: video.test\r\nRange: bytes=%s\r\n\r\n", rng)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		var body bytes.Buffer
		a := &arrivals{}
		a.read(io.TeeReader(resp.Body, &body))
		resp.Body.Close()
		if resp.StatusCode != http.StatusPartialContent {
			t.Fatalf("status %d", resp.StatusCode)
		}
		return a, start, body.Bytes()
	}

	a, start, body := get("0-")
	if !bytes.Equal(body, data) {
		t.Fatal("the whole file arrived changed")
	}
	checkArrivals(t, "whole file", a, start, whole, int64(len(data)))

	// A seek to 4 s: its own burst (2 s of media from there), then paced.
	from := whole.Movie.BytesFor(4 * time.Second)
	seek := mp4probe.NewPlan(whole.Movie, 0, from, pace)
	a, start, body = get(fmt.Sprintf("%d-", from))
	if !bytes.Equal(body, data[from:]) {
		t.Fatal("the seek arrived changed")
	}
	checkArrivals(t, "seek", a, start, seek, int64(len(data))-from)

	// A HEAD has no body: the next response is followed all the same.
	fmt.Fprintf(c, "HEAD /v.mp4 HTTP/1.1\r\nHost: video.test\r\n\r\n")
	resp, err := http.ReadResponse(br, &http.Request{Method: "HEAD"})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("HEAD: %v %v", resp, err)
	}
	resp.Body.Close()

	st := srv.Stats()[0].MP4
	if st.Videos != 2 || st.Plans != 2 || st.Cached != 1 || st.PacedBytes == 0 || st.Waited == 0 {
		t.Errorf("MP4 stats %+v; want 2 videos, 2 plans, 1 cached movie, paced bytes and waits", st)
	}
	// What the admin API and the metrics (package proxy/admin) show.
	if want := whole.BurstBytes() + seek.BurstBytes(); st.BurstBytes != want {
		t.Errorf("MP4 burst bytes %d, want %d (both plans' full-speed regions)", st.BurstBytes, want)
	}
	if want := 2 * whole.Bitrate; st.PlannedRate != want {
		t.Errorf("MP4 planned rates sum to %d, want %d (the video's rate, twice)", st.PlannedRate, want)
	}
	c.Close()
	srv.mu.Lock()
	budget := srv.stats["t"].mp4.budget
	srv.mu.Unlock()
	eventually(t, func() bool { return budget.Left() == 1<<20 }) // nothing held once the conn ended
	waitLog(t, logs, "conn done", "mp4_plans=2", fmt.Sprintf("mp4_rate_bytes_per_second=%d", whole.Bitrate),
		fmt.Sprintf("mp4_burst_bytes=%d", seek.BurstBytes()))
}

// fileServer is a raw TCP upstream that sends a file to each connection and
// closes it.
func fileServer(t *testing.T, data []byte) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = c.Write(data)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// TestMP4PacingRaw: over raw TCP the stream is the file: faststart, VBR and
// co64 files are paced by their plans; fragmented ones by the moofs as they
// come; a moov-at-end file at the default rate; a broken one at full speed
// (the listener's normal limits), all byte-exact.
func TestMP4PacingRaw(t *testing.T) {
	checkRoutines(t)
	pace := mp4probe.Pace{Factor: 2, Burst: 2 * time.Second, Default: 50_000}
	for _, name := range []string{"faststart", "vbr", "fragmented", "moovend", "broken"} {
		t.Run(name, func(t *testing.T) {
			var data []byte
			if name == "broken" {
				data = readFixture(t, "faststart")
				i := bytes.Index(data, []byte("mvhd"))
				binary.BigEndian.PutUint32(data[i-4:], 0xffff0000)
			} else {
				data = readFixture(t, name)
			}
			srv, addr, _ := startProxy(t, ListenerConfig{Upstream: fileServer(t, data),
				MP4: MP4Config{Enabled: true, Mode: mp4probe.Raw, Pace: pace}})
			c := dial(t, addr)
			defer c.Close()
			start := time.Now()
			var body bytes.Buffer
			a := &arrivals{}
			a.read(io.TeeReader(c, &body))
			if !bytes.Equal(body.Bytes(), data) {
				t.Fatalf("%d bytes arrived, not the %d of the file", body.Len(), len(data))
			}
			took := time.Since(start)
			st := srv.Stats()[0].MP4
			switch name {
			case "broken":
				if took > time.Second || st.Fallbacks[mp4probe.FallbackMalformed] != 1 {
					t.Errorf("broken file: took %v, fallbacks %v; want full speed, one malformed", took, st.Fallbacks)
				}
			case "moovend":
				// The default rate after its burst of 2 s × 50 kB/s.
				want := time.Duration(float64(len(data)-100_000) / 50_000 * float64(time.Second))
				if took < want-200*time.Millisecond || took > want+want/4+300*time.Millisecond {
					t.Errorf("moov at the end: took %v, want about %v at the default rate", took, want)
				}
				if st.Fallbacks[mp4probe.FallbackMoovUnknown] != 1 {
					t.Errorf("fallbacks %v, want one moov_unknown", st.Fallbacks)
				}
			case "fragmented":
				// 8 s of fragments, 2 s at full speed, the rest at 2×:
				// about 3 s.
				if took < 2800*time.Millisecond || took > 4500*time.Millisecond {
					t.Errorf("fragmented: took %v, want about 3 s", took)
				}
			default:
				checkArrivals(t, name, a, start, rawPlan(t, data, pace), int64(len(data)))
			}
		})
	}
}

// TestMP4ListenerIntegrity: a listener that paces MP4 forwards any other
// traffic byte-exact both ways, whatever it looks like: random bytes, an
// HTTP exchange with a large request body, and a response that is not
// video; no plan is made.
func TestMP4ListenerIntegrity(t *testing.T) {
	checkRoutines(t)
	b := newBackend(t)
	for _, mode := range []mp4probe.Mode{mp4probe.Auto, mp4probe.HTTP, mp4probe.Raw} {
		srv, addr, _ := startProxy(t, ListenerConfig{Upstream: b.addr(),
			MP4: MP4Config{Enabled: true, Mode: mode, Pace: mp4probe.Pace{Factor: 1.25, Burst: time.Second, Default: 10_000}}})
		for _, prefix := range []string{"", "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n"} {
			client, server := connect(t, addr, b)
			const size = 4 << 20
			type res struct {
				sum [32]byte
				n   int64
				err error
			}
			upc, downc := make(chan res, 1), make(chan res, 1)
			go func() { // client → server: the request, then its body
				sum, n, err := hashAll(io.LimitReader(server, int64(len(prefix))+size))
				upc <- res{sum, n, err}
			}()
			go func() {
				sum, n, err := hashAll(client)
				downc <- res{sum, n, err}
			}()
			head := "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 4194304\r\n\r\n"
			if prefix == "" {
				head = ""
			}
			go func() {
				_, _ = io.WriteString(server, head)
				_, _ = sendStream(server, 2, size)
				server.CloseWrite()
			}()
			_, _ = io.WriteString(client, prefix)
			if _, err := sendStream(client, 1, size); err != nil {
				t.Fatal(err)
			}
			up := <-upc
			wantUp := sha256.New()
			wantUp.Write([]byte(prefix))
			_, _ = sendStream(wantUp, 1, size)
			if up.err != nil || up.n != int64(len(prefix))+size || up.sum != [32]byte(wantUp.Sum(nil)) {
				t.Fatalf("mode %d: upstream got %d bytes (%v), not what was sent", mode, up.n, up.err)
			}
			client.CloseWrite()
			down := <-downc
			wantDown := sha256.New()
			wantDown.Write([]byte(head))
			_, _ = sendStream(wantDown, 2, size)
			if down.err != nil || down.n != int64(len(head))+size || down.sum != [32]byte(wantDown.Sum(nil)) {
				t.Fatalf("mode %d: client got %d bytes (%v), not what was sent", mode, down.n, down.err)
			}
			client.Close()
			server.Close()
		}
		if st := srv.Stats()[0].MP4; st.Videos != 0 || st.Plans != 0 {
			t.Errorf("mode %d: %+v; want no video seen", mode, st)
		}
		srv.Close()
	}
}
