package mp4probe

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// fixtures are the MP4 files testdata/make.sh makes with ffmpeg.
var fixtures = []string{"faststart", "moovend", "fragmented", "audio", "vbr", "co64"}

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name+".mp4"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ffprobe is what ffprobe said of a fixture (testdata/*.ffprobe.json).
type ffprobe struct {
	Duration string
	BitRate  string `json:"bit_rate"`
	Streams  []struct {
		CodecType string `json:"codec_type"`
		Duration  string
		BitRate   string `json:"bit_rate"`
		NbFrames  string `json:"nb_frames"`
	}
}

func readProbe(t *testing.T, name string) ffprobe {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name+".ffprobe.json"))
	if err != nil {
		t.Fatal(err)
	}
	var p ffprobe
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

func num(t *testing.T, s string) float64 {
	t.Helper()
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatalf("ffprobe number %q: %v", s, err)
	}
	return f
}

// movieOf feeds a whole file to a raw Observer in pieces of random sizes
// and returns the movie it learned.
func movieOf(t *testing.T, data []byte, seed uint64) (*Observer, *Movie) {
	t.Helper()
	o := NewObserver(Options{Mode: Raw, Pace: Pace{Factor: 1.25, Burst: 2 * time.Second}})
	r := rand.New(rand.NewPCG(seed, 1))
	for p := data; len(p) > 0; {
		n := min(len(p), 1+r.IntN(5000))
		o.Observe(p[:n])
		p = p[n:]
	}
	if o.body == nil {
		return o, nil
	}
	return o, o.body.movie
}

// TestMovieMatchesFFprobe checks durations, bitrates and sample counts
// against ffprobe's for every fixture, whatever the pieces it is fed in.
func TestMovieMatchesFFprobe(t *testing.T) {
	for _, name := range fixtures {
		t.Run(name, func(t *testing.T) {
			data := readFixture(t, name)
			want := readProbe(t, name)
			_, m := movieOf(t, data, 1)
			if m == nil {
				t.Fatal("no movie learned")
			}
			if d, w := m.Duration.Seconds(), num(t, want.Duration); math.Abs(d-w) > 0.02 {
				t.Errorf("duration %.3f s, ffprobe %.3f s", d, w)
			}
			if len(m.Tracks) != len(want.Streams) {
				t.Fatalf("%d tracks, ffprobe %d streams", len(m.Tracks), len(want.Streams))
			}
			for i, tr := range m.Tracks {
				s := want.Streams[i]
				kind := map[string]string{"video": "vide", "audio": "soun"}[s.CodecType]
				if tr.Handler != kind {
					t.Errorf("track %d is %q, ffprobe %q", i, tr.Handler, s.CodecType)
				}
				if s.NbFrames == "" { // fragmented: ffprobe counts no frames
					continue
				}
				if n := num(t, s.NbFrames); float64(tr.Samples) != n {
					t.Errorf("track %d: %d samples, ffprobe %v frames", i, tr.Samples, n)
				}
				// ffprobe's stream bit_rate is the samples' bits over the
				// stream's duration: the same as ours, to rounding.
				got, w := float64(tr.Bitrate()*8), num(t, s.BitRate)
				if math.Abs(got-w)/w > 0.02 {
					t.Errorf("track %d: %.0f bit/s, ffprobe %.0f bit/s", i, got, w)
				}
			}
			// The curve covers the file's samples: its end is the last
			// media byte, and its times run to the duration.
			if last := m.curve[len(m.curve)-1]; last.Off > int64(len(data)) || last.At > m.Duration {
				t.Errorf("curve ends at %d bytes, %v; file %d bytes, %v", last.Off, last.At, len(data), m.Duration)
			}
			for i := 1; i < len(m.curve); i++ {
				if a, b := m.curve[i-1], m.curve[i]; b.Off <= a.Off || b.At < a.At {
					t.Fatalf("curve not increasing at %d: %+v then %+v", i, a, b)
				}
			}
		})
	}
}

// TestMovieSameWhateverThePieces: the movie does not depend on how the
// stream was cut.
func TestMovieSameWhateverThePieces(t *testing.T) {
	for _, name := range []string{"faststart", "fragmented"} {
		data := readFixture(t, name)
		_, a := movieOf(t, data, 1)
		for seed := uint64(2); seed < 6; seed++ {
			_, b := movieOf(t, data, seed)
			if fmt.Sprint(a.curve) != fmt.Sprint(b.curve) || a.Duration != b.Duration {
				t.Fatalf("%s: seed %d learned another movie", name, seed)
			}
		}
	}
}

func TestVBRCurveFollowsTheScene(t *testing.T) {
	_, m := movieOf(t, readFixture(t, "vbr"), 1)
	// A still picture but for noise from 2 s to 5 s: most bytes are needed
	// between 2 s and 5 s.
	at2, at5, at8 := m.BytesFor(2*time.Second), m.BytesFor(5*time.Second), m.BytesFor(8*time.Second)
	if (at5-at2)*2 < at8 {
		t.Fatalf("bytes needed by 2, 5, 8 s: %d, %d, %d; want the noise to dominate", at2, at5, at8)
	}
	// Pacing at 1.25 × the average rate after a 2-s burst would stall
	// there; the curve's plan never does.
	pace := Pace{Factor: 1.25, Burst: 2 * time.Second}
	p := NewPlan(m, 0, 0, pace)
	avg := float64(m.Bitrate()) * 1.25
	stalls := 0
	for _, pt := range m.curve {
		if float64(pt.Off-p.BurstEnd)/avg > pt.At.Seconds() {
			stalls++
		}
		if d := p.Due(pt.Off); d > pt.At {
			t.Fatalf("the plan sends byte %d at %v, after its media time %v", pt.Off, d, pt.At)
		}
	}
	if stalls == 0 {
		t.Fatal("average-rate pacing would not stall: the fixture is not VBR enough to test this")
	}
	t.Logf("average-rate pacing would be late for %d of %d curve points", stalls, len(m.curve))
}

func TestDecodeMoovBadInput(t *testing.T) {
	data := readFixture(t, "faststart")
	var moov Box
	var payload []byte
	w := Walker{Keep: func(b Box) bool { return b.Type == "moov" }, OnKept: func(b Box, p []byte) {
		moov, payload = b, append([]byte(nil), p...)
	}}
	w.Feed(data)
	if payload == nil {
		t.Fatal("no moov in faststart.mp4")
	}
	if _, err := DecodeMoov(payload, moov.Offset, moov.Header); err != nil {
		t.Fatalf("DecodeMoov(faststart) = %v", err)
	}
	tests := []struct {
		name    string
		payload []byte
	}{
		{"empty", nil},
		{"truncated", payload[:len(payload)/2]},
		{"garbage", []byte("not a moov at all, just words")},
		{"zeros", make([]byte, 4096)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := DecodeMoov(tt.payload, 0, 8)
			if err == nil || !errors.Is(err, ErrBadMovie) && !errors.Is(err, ErrNoMedia) {
				t.Fatalf("DecodeMoov = %v, %v; want ErrBadMovie or ErrNoMedia", m, err)
			}
		})
	}
	// Every single-byte corruption of the moov either decodes or fails
	// cleanly (a sample of positions, all of them under -short=false is
	// the fuzzer's job).
	r := rand.New(rand.NewPCG(7, 7))
	for range 300 {
		bad := append([]byte(nil), payload...)
		bad[r.IntN(len(bad))] ^= byte(1 + r.IntN(255))
		if m, err := DecodeMoov(bad, 0, 8); err == nil && m.Duration < 0 {
			t.Fatalf("corrupted moov decoded to a negative duration")
		}
	}
}

// TestPlan checks the plan's burst region and its due times on the
// faststart fixture, with and without floor and ceil.
func TestPlan(t *testing.T) {
	_, m := movieOf(t, readFixture(t, "faststart"), 1)
	pace := Pace{Factor: 1.25, Burst: 2 * time.Second}
	p := NewPlan(m, 0, 0, pace)
	if p.BurstEnd < m.MoovEnd || p.BurstEnd != m.BytesFor(2*time.Second) {
		t.Fatalf("BurstEnd %d; want the bytes for 2 s, %d (moov ends at %d)", p.BurstEnd, m.BytesFor(2*time.Second), m.MoovEnd)
	}
	if d := p.Due(p.BurstEnd); d != 0 {
		t.Fatalf("Due(BurstEnd) = %v, want 0", d)
	}
	end := m.MediaBytes()
	// The last bytes are due at (duration - burst) / factor, to a frame.
	want := time.Duration(float64(m.Duration-2*time.Second) / 1.25)
	if d := p.Due(end); d < want-100*time.Millisecond || d > want {
		t.Fatalf("Due(end) = %v, want about %v", d, want)
	}
	prev := time.Duration(0)
	for off := int64(0); off <= end; off += 997 {
		d := p.Due(off)
		if d < prev {
			t.Fatalf("Due(%d) = %v < Due before it, %v", off, d, prev)
		}
		prev = d
		// No byte is due later than the player needs it.
		if at, ok := m.NeedAt(off); ok && d > at {
			t.Fatalf("Due(%d) = %v, after the media time %v that needs it", off, d, at)
		}
	}
	// A ceil slower than the video makes the end later; a floor faster
	// than it makes it sooner.
	slow := NewPlan(m, 0, 0, Pace{Factor: 1.25, Burst: 2 * time.Second, Ceil: m.Bitrate() / 2})
	fast := NewPlan(m, 0, 0, Pace{Factor: 1.25, Burst: 2 * time.Second, Floor: m.Bitrate() * 4})
	if slow.Due(end) <= p.Due(end) || fast.Due(end) >= p.Due(end) {
		t.Fatalf("Due(end): ceil %v, none %v, floor %v; want ceil > none > floor", slow.Due(end), p.Due(end), fast.Due(end))
	}
	// A Range that starts at 4 s bursts 2 s of media from there.
	mid := m.BytesFor(4 * time.Second)
	r := NewPlan(m, 500, mid, pace)
	if r.BurstEnd != m.BytesFor(r.media0+2*time.Second) || r.Due(500) != 0 {
		t.Fatalf("Range plan: BurstEnd %d media0 %v", r.BurstEnd, r.media0)
	}
	if d := r.Due(500 + end - mid); d > want-1500*time.Millisecond {
		t.Fatalf("Range plan from 4 s: end due at %v, want about %v", d, want-1600*time.Millisecond)
	}
}

func TestDefaultPlan(t *testing.T) {
	if defaultPlan(0, 0, Pace{}) != nil {
		t.Fatal("a default plan without a default rate")
	}
	p := defaultPlan(100, 0, Pace{Burst: 2 * time.Second, Default: 50_000, Floor: 60_000})
	if p.Bitrate != 60_000 || p.BurstEnd != 120_000 {
		t.Fatalf("default plan: rate %d, burst end %d; want the floor 60000, 120000", p.Bitrate, p.BurstEnd)
	}
	if d := p.Due(100 + 120_000 + 60_000); d != time.Second {
		t.Fatalf("Due(a second past the burst) = %v", d)
	}
}

// TestFragmentedPlanBurst: a fragmented movie's plan is made from a moov
// with no samples; the burst still covers Burst of media as the fragments
// arrive, and floor and ceil count from its end.
func TestFragmentedPlanBurst(t *testing.T) {
	data := readFixture(t, "fragmented")
	pace := Pace{Factor: 1.25, Burst: 2 * time.Second, Ceil: 1000}
	o := NewObserver(Options{Mode: Raw, Pace: pace})
	var first *Plan
	for p := data; len(p) > 0; {
		n := min(len(p), 1000)
		o.Observe(p[:n])
		p = p[n:]
		if first == nil && o.Plan() != nil {
			first = o.Plan()
		}
	}
	p := o.Plan()
	if p == nil || p != first {
		t.Fatal("no plan, or a second one")
	}
	want := p.Movie.BytesFor(2 * time.Second)
	if p.PacedFrom() != want || want <= p.BurstEnd {
		t.Fatalf("paced from %d, want the bytes for 2 s, %d (BurstEnd %d)", p.PacedFrom(), want, p.BurstEnd)
	}
	if d := p.Due(want); d != 0 {
		t.Fatalf("Due(end of the burst) = %v despite a 1000 B/s ceil, want 0", d)
	}
	if d := p.Due(want + 1000); d < time.Second-time.Millisecond {
		t.Fatalf("Due(1000 bytes past the burst) = %v, want 1 s at the ceil", d)
	}
}
