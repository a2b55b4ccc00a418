package mp4probe

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

var testPace = Pace{Factor: 1.25, Burst: 2 * time.Second, Default: 40_000}

// feedRandom shows p to o in pieces of random sizes, calling each after
// every piece.
func feedRandom(o *Observer, p []byte, r *rand.Rand, each func()) {
	for len(p) > 0 {
		n := min(len(p), 1+r.IntN(3000))
		o.Observe(p[:n])
		p = p[n:]
		if each != nil {
			each()
		}
	}
}

func response206(body []byte, start, total int64, ctype string) []byte {
	return fmt.Appendf(nil, "HTTP/1.1 206 Partial Content\r\nContent-Type: %s\r\nContent-Length: %d\r\nContent-Range: bytes %d-%d/%d\r\n\r\n%s",
		ctype, len(body), start, start+int64(len(body))-1, total, body)
}

func request(path, rng string) []byte {
	return fmt.Appendf(nil, "GET %s HTTP/1.1\r\nHost: Video.Example\r\nRange: bytes=%s\r\n\r\n", path, rng)
}

// TestObserverHTTPKeepAlive follows three responses on one connection: the
// whole file, a seek (a Range from 4 s, paced from the movie learned by
// the first), and a 404 (unpaced).
func TestObserverHTTPKeepAlive(t *testing.T) {
	data := readFixture(t, "faststart")
	stats := new(Stats)
	o := NewObserver(Options{Pace: testPace, Cache: NewCache(8), Stats: stats})
	o.Up(request("/v.mp4?sig=1", "0-"))
	o.Up(request("/v.mp4?sig=2", "100000-"))
	o.Up([]byte("GET /nope HTTP/1.1\r\nHost: video.example\r\n\r\n"))

	r := rand.New(rand.NewPCG(1, 2))
	var stream []byte
	first := response206(data, 0, int64(len(data)), "video/mp4")
	stream = append(stream, first...)
	second := response206(data[100000:], 100000, int64(len(data)), "video/mp4")
	stream = append(stream, second...)
	third := []byte("HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")
	stream = append(stream, third...)

	plans := map[*Plan]int64{} // plan → the stream offset where it was first seen
	feedRandom(o, stream, r, func() {
		if p := o.Plan(); p != nil {
			if _, ok := plans[p]; !ok {
				plans[p] = o.Pos()
			}
		}
	})
	if len(plans) != 2 {
		t.Fatalf("%d plans, want 2", len(plans))
	}
	var p1, p2 *Plan
	for p := range plans {
		if p.Start == 0 {
			p1 = p
		} else {
			p2 = p
		}
	}
	if p1 == nil || p2 == nil || p1.Movie == nil || p2.Movie != p1.Movie {
		t.Fatalf("plans %+v and %+v; want one from 0 and one from 100000 on the same movie", p1, p2)
	}
	if want := int64(len(first) - len(data)); p1.Base != want {
		t.Errorf("first plan's body starts at stream offset %d, want %d", p1.Base, want)
	}
	if want := int64(len(first) + len(second) - (len(data) - 100000)); p2.Base != want || p2.Start != 100000 {
		t.Errorf("seek plan: base %d start %d, want %d and 100000", p2.Base, p2.Start, want)
	}
	if at := plans[p2]; at > int64(len(first))+3000 { // the head and a piece's worth

		t.Errorf("the seek was planned at stream offset %d, after its head (%d)", at, len(first))
	}
	if o.Plan() != nil {
		t.Error("the 404 is paced")
	}
	if got := o.Pos(); got != int64(len(stream)) {
		t.Errorf("Pos() = %d, want %d", got, len(stream))
	}
	if v, p := stats.Videos.Load(), stats.Plans.Load(); v != 2 || p != 2 {
		t.Errorf("stats: %d videos, %d plans; want 2, 2", v, p)
	}
}

// TestObserverMoovAtEnd plays what a player does with a moov-at-end file:
// the first request gets the default rate; a tail Range teaches the moov;
// the next request is planned from it at once.
func TestObserverMoovAtEnd(t *testing.T) {
	data := readFixture(t, "moovend")
	moovOff := int64(bytes.Index(data, []byte("moov"))) - 4
	cache := NewCache(8)
	stats := new(Stats)
	r := rand.New(rand.NewPCG(3, 4))
	conn := func(rng string, start int64) *Observer {
		o := NewObserver(Options{Pace: testPace, Cache: cache, Stats: stats})
		o.Up(request("/m.mp4", rng))
		feedRandom(o, response206(data[start:], start, int64(len(data)), "video/mp4"), r, nil)
		return o
	}
	// 1: from 0, no moov before the media → the default rate.
	o := NewObserver(Options{Pace: testPace, Cache: cache, Stats: stats})
	o.Up(request("/m.mp4", "0-"))
	feedRandom(o, response206(data, 0, int64(len(data)), "video/mp4")[:50_000], r, nil)
	if p := o.Plan(); p == nil || p.Movie != nil || p.Bitrate != testPace.Default {
		t.Fatalf("moov-at-end from 0: plan %+v, want the default rate", p)
	}
	if n := stats.Fallbacks(FallbackMoovUnknown); n != 1 {
		t.Fatalf("moov_unknown fallbacks %d, want 1", n)
	}
	// 2: the tail Range, from a block boundary before the moov (as
	// Chromium asks): the moov is learned where the first response said the
	// media ends; nothing is paced.
	tail := moovOff &^ (32<<10 - 1)
	o = conn(fmt.Sprintf("%d-", tail), tail)
	if cache.Len() != 1 || o.Plan() != nil {
		t.Fatalf("after the tail Range: cache %d, plan %+v; want 1 movie, no plan", cache.Len(), o.Plan())
	}
	if n := stats.Plans.Load(); n != 0 {
		t.Fatalf("%d plans from the tail Range, want none", n)
	}
	// 3: from 0 again: planned from the moov, as soon as the head is seen.
	o = NewObserver(Options{Pace: testPace, Cache: cache, Stats: stats})
	o.Up(request("/m.mp4", "0-"))
	resp := response206(data, 0, int64(len(data)), "video/mp4")
	head := bytes.Index(resp, []byte("\r\n\r\n")) + 4
	o.Observe(resp[:head])
	if p := o.Plan(); p == nil || p.Movie == nil {
		t.Fatalf("from 0 with the moov known: plan %+v, want one from the movie", p)
	}
	// A file of another size under the same name is not that movie.
	o = NewObserver(Options{Pace: testPace, Cache: cache, Stats: stats})
	o.Up(request("/m.mp4", "0-"))
	o.Observe(response206(data[:1000], 0, int64(len(data))+1, "video/mp4")[:head])
	if p := o.Plan(); p != nil && p.Movie != nil {
		t.Fatal("a cached movie was used for a file of another size")
	}
}

// corrupt returns a copy of data with the 4-byte size of the first box
// named typ set to size.
func corrupt(t *testing.T, data []byte, typ string, size uint32) []byte {
	t.Helper()
	i := bytes.Index(data, []byte(typ))
	if i < 4 {
		t.Fatalf("no %q box", typ)
	}
	bad := append([]byte(nil), data...)
	binary.BigEndian.PutUint32(bad[i-4:], size)
	return bad
}

// sampleEntry returns a copy of an H.264 file with its video sample entry
// renamed.
func sampleEntry(t *testing.T, data []byte, typ string) []byte {
	t.Helper()
	i := bytes.Index(data, []byte("stsd"))
	j := bytes.Index(data[i:], []byte("avc1"))
	if i < 0 || j < 0 {
		t.Fatal("no avc1 sample entry")
	}
	bad := append([]byte(nil), data...)
	copy(bad[i+j:], typ)
	return bad
}

// TestObserverFallbacks: bad or unknown input is never paced from its
// boxes, is counted by reason, and every byte is accounted for.
func TestObserverFallbacks(t *testing.T) {
	fast := readFixture(t, "faststart")
	tests := []struct {
		name    string
		data    []byte
		maxKeep int64
		reason  string // "" for not a video at all
		videos  int64
	}{
		{"text", []byte("hello, this is not a video, just some words to forward"), 0, "", 0},
		{"zeros", make([]byte, 100_000), 0, "", 0},
		{"bad mvhd", corrupt(t, fast, "mvhd", 0xffff0000), 0, FallbackMalformed, 1},
		{"bad box after moov", corrupt(t, fast, "mdat", 3), 0, FallbackMalformed, 1},
		{"encrypted", sampleEntry(t, fast, "encv"), 0, FallbackEncrypted, 1},
		{"moov too large", fast, 1000, FallbackTooLarge, 1},
		{"truncated in moov", fast[:2000], 0, "", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stats := new(Stats)
			o := NewObserver(Options{Mode: Raw, Pace: testPace, Stats: stats, MaxKeep: tt.maxKeep})
			feedRandom(o, tt.data, rand.New(rand.NewPCG(5, 6)), nil)
			if tt.name == "bad box after moov" {
				// The moov was good: its plan stands; the box error after
				// it does not matter, the walker had finished.
				if o.Plan() == nil {
					t.Fatal("no plan")
				}
				return
			}
			if p := o.Plan(); p != nil && p.Movie != nil {
				t.Fatalf("planned from bad input: %+v", p)
			}
			if got := stats.Videos.Load(); got != tt.videos {
				t.Errorf("videos %d, want %d", got, tt.videos)
			}
			for _, r := range FallbackReasons {
				want := int64(0)
				if r == tt.reason {
					want = 1
				}
				if got := stats.Fallbacks(r); got != want {
					t.Errorf("fallbacks[%s] = %d, want %d", r, got, want)
				}
			}
			if o.Pos() != int64(len(tt.data)) {
				t.Errorf("Pos() = %d, want %d", o.Pos(), len(tt.data))
			}
		})
	}
}

// TestObserverOpaque: skipping what Opaque allows learns the same as
// seeing every byte, and the probe then sees only a small part.
func TestObserverOpaque(t *testing.T) {
	for _, name := range []string{"faststart", "fragmented", "moovend"} {
		t.Run(name, func(t *testing.T) {
			data := readFixture(t, name)
			_, full := movieOf(t, data, 9)
			for _, mode := range []Mode{Raw, HTTP} {
				stream := data
				o := NewObserver(Options{Mode: mode, Pace: testPace})
				if mode == HTTP {
					o.Up(request("/v.mp4", "0-"))
					stream = response206(data, 0, int64(len(data)), "video/mp4")
				}
				seen := 0
				var m *Movie
				var plan *Plan
				for p := stream; len(p) > 0; {
					if o.body != nil && o.body.movie != nil {
						m = o.body.movie // an HTTP body's movie goes when it ends
					}
					if o.Plan() != nil {
						plan = o.Plan()
					}
					op := o.Opaque()
					if op < 0 || op > int64(len(p)) {
						op = int64(len(p))
					}
					if op > 0 {
						o.Skip(op)
						p = p[op:]
						continue
					}
					n := min(len(p), 4096)
					o.Observe(p[:n])
					seen += n
					p = p[n:]
				}
				if o.Pos() != int64(len(stream)) {
					t.Fatalf("mode %d: Pos() = %d, want %d", mode, o.Pos(), len(stream))
				}
				if name == "faststart" && (plan == nil || plan.Movie == nil) {
					t.Fatalf("mode %d: no plan", mode)
				}
				if name != "moovend" && (m == nil || m.Duration != full.Duration || len(m.curve) != len(full.curve)) {
					t.Fatalf("mode %d: skipping learned another movie", mode)
				}
				if seen*4 > len(stream) {
					t.Errorf("mode %d: the probe saw %d of %d bytes", mode, seen, len(stream))
				}
			}
		})
	}
}

func TestResourceKey(t *testing.T) {
	tests := []struct {
		name string
		req  Request
		want string
	}{
		{"origin form", Request{Host: "A.example", Target: "/v/a.mp4?sig=x"}, "a.example/v/a.mp4"},
		{"absolute form", Request{Target: "http://b.example/v.mp4#t=3"}, "/v.mp4"},
		{"no host", Request{Target: "/x.mp4"}, "/x.mp4"},
		{"asterisk", Request{Target: "*"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := resourceKey(tt.req); got != tt.want {
				t.Fatalf("resourceKey(%+v) = %q, want %q", tt.req, got, tt.want)
			}
		})
	}
}

func TestCacheEvictsLeastRecentlyUsed(t *testing.T) {
	c := NewCache(2)
	a, b, d := &Movie{}, &Movie{}, &Movie{}
	c.Put("a", 1, a)
	c.Put("b", 1, b)
	c.Get("a", 1)
	c.Put("d", 1, d)
	if c.Get("b", 1) != nil || c.Get("a", 1) != a || c.Get("d", -1) != d || c.Len() != 2 {
		t.Fatal("the cache kept the wrong movies")
	}
	// Len counts movies, not hints: a hint takes a place (evicting a), a
	// movie put on it counts, a replaced movie does not count twice.
	c.PutHint("h", 1, 100)
	if c.Len() != 1 || c.Hint("h", 1) != 100 || c.Get("a", 1) != nil {
		t.Fatalf("after a hint: Len %d, hint %d", c.Len(), c.Hint("h", 1))
	}
	c.Put("h", 1, a)
	c.Put("h", 1, b)
	if c.Len() != 2 || c.Get("h", 1) != b || c.Hint("h", 1) != 100 {
		t.Fatalf("after movies on the hint: Len %d", c.Len())
	}
	c.PutHint("x", 1, 5)
	c.PutHint("y", 1, 5) // evicts d, then h: hints only remain
	if c.Len() != 0 {
		t.Fatalf("Len %d with only hints kept, want 0", c.Len())
	}
	var nilCache *Cache
	nilCache.Put("a", 1, a)
	if nilCache.Get("a", 1) != nil || NewCache(0) != nil {
		t.Fatal("a nil cache kept something")
	}
}

// TestObserverBudget: Observers sharing a Budget buffer at most its size of
// metadata at once; one that would go over gives its body up as "busy"; a
// decoded moov or a closed Observer gives its share back.
func TestObserverBudget(t *testing.T) {
	data := readFixture(t, "faststart")
	moov, _ := keptBoxes(data)
	budget := NewBudget(int64(len(moov)) + 100) // room for one moov
	stats := new(Stats)
	newObs := func() *Observer {
		return NewObserver(Options{Mode: Raw, Pace: testPace, Stats: stats, Budget: budget})
	}
	moovAt := bytes.Index(data, []byte("moov")) + 4
	a, b := newObs(), newObs()
	a.Observe(data[:moovAt+10]) // a holds the moov's share
	b.Observe(data[:moovAt+10])
	if got := stats.Fallbacks(FallbackBusy); got != 1 {
		t.Fatalf("busy fallbacks %d, want 1 (b over the budget)", got)
	}
	if left := budget.Left(); left != 100 {
		t.Fatalf("budget left %d while a keeps the moov, want 100", left)
	}
	a.Observe(data[moovAt+10:])
	if a.Plan() == nil || budget.Left() != int64(len(moov))+100 {
		t.Fatalf("after a's moov: plan %v, budget left %d", a.Plan(), budget.Left())
	}
	b.Observe(data[moovAt+10:])
	if b.Plan() != nil || b.Pos() != int64(len(data)) {
		t.Fatal("b, given up as busy, planned or lost count")
	}
	c := newObs()
	c.Observe(data[:moovAt+10])
	c.Close() // the connection ended inside the moov
	if left := budget.Left(); left != int64(len(moov))+100 {
		t.Fatalf("budget left %d after Close, want all of it", left)
	}
}
