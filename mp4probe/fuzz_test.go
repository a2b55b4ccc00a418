package mp4probe

import (
	"testing"
	"time"
)

// keptBoxes returns the payloads of the moov and moof boxes of a file.
func keptBoxes(data []byte) (moov []byte, moofs [][]byte) {
	w := Walker{Keep: func(b Box) bool { return b.Type == "moov" || b.Type == "moof" }}
	w.OnKept = func(b Box, p []byte) {
		if b.Type == "moov" {
			moov = append([]byte(nil), p...)
		} else if len(moofs) < 2 {
			moofs = append(moofs, append([]byte(nil), p...))
		}
	}
	w.Feed(data)
	return moov, moofs
}

// FuzzDecodeMoov feeds arbitrary moov and moof payloads to the metadata
// decoder: it must not panic, and a movie it accepts must make sense.
func FuzzDecodeMoov(f *testing.F) {
	for _, name := range fixtures {
		moov, moofs := keptBoxes(readFixture(f, name))
		var moof []byte
		if len(moofs) > 0 {
			moof = moofs[0]
		}
		f.Add(moov, moof)
	}
	f.Fuzz(func(t *testing.T, moov, moof []byte) {
		m, err := DecodeMoov(moov, 0, 8)
		if err != nil {
			return
		}
		if m.Fragmented {
			_ = m.AddMoof(moof, m.MoovEnd)
		}
		if m.Duration < 0 || len(m.curve) > MaxPoints {
			t.Fatalf("duration %v, %d curve points", m.Duration, len(m.curve))
		}
		for i := 1; i < len(m.curve); i++ {
			if m.curve[i].Off <= m.curve[i-1].Off || m.curve[i].At < m.curve[i-1].At {
				t.Fatalf("curve not increasing at %d", i)
			}
		}
		p := NewPlan(m, 0, 0, Pace{Factor: 1.25, Burst: time.Second, Floor: 1000, Ceil: 1 << 30})
		prev := time.Duration(0)
		for off := int64(0); off < m.MediaBytes()+1000; off += 1 + m.MediaBytes()/64 {
			d := p.Due(off)
			if d < prev || d < 0 {
				t.Fatalf("Due(%d) = %v after %v", off, d, prev)
			}
			prev = d
		}
	})
}

// FuzzObserver shows arbitrary server bytes (raw, then as an HTTP body) to
// an Observer, whole and in pieces: no panic, every byte counted, due times
// that never decrease.
func FuzzObserver(f *testing.F) {
	f.Add(readFixture(f, "audio"), uint16(1000))
	for _, name := range []string{"faststart", "fragmented", "moovend"} {
		data := readFixture(f, name)
		moov, _ := keptBoxes(data)
		f.Add(data[:min(len(data), 16<<10)], uint16(4096))
		f.Add(append(append([]byte{0, 0, 0, 0}, "moov"...), moov...), uint16(77))
	}
	f.Fuzz(func(t *testing.T, data []byte, piece uint16) {
		n := int(piece%8192) + 1
		for _, mode := range []Mode{Raw, HTTP} {
			o := NewObserver(Options{Mode: mode, Pace: testPace, MaxKeep: 1 << 20, Cache: NewCache(2)})
			stream := data
			if mode == HTTP {
				o.Up(request("/f.mp4", "0-"))
				stream = response206(data, 0, int64(len(data)), "video/mp4")
			}
			prev := time.Duration(0)
			var plan *Plan
			for p := stream; len(p) > 0; {
				k := min(n, len(p))
				o.Observe(p[:k])
				p = p[k:]
				if pl := o.Plan(); pl != plan {
					plan, prev = pl, 0
				}
				if plan != nil {
					d := plan.Due(o.Pos())
					if d < prev {
						t.Fatalf("Due went back from %v to %v", prev, d)
					}
					prev = d
				}
			}
			o.EOF()
			if o.Pos() != int64(len(stream)) {
				t.Fatalf("Pos() = %d, want %d", o.Pos(), len(stream))
			}
		}
	})
}
