package mp4probe

import (
	"math"
	"time"
)

// Pace is how MP4 video is paced. Rates are in bytes per second.
type Pace struct {
	// Factor multiplies the video's own rate: 1.25 sends each second of
	// media in 0.8 s. Zero means 1.25; values below 1 would stall the
	// player and are the caller's to refuse.
	Factor float64
	// Burst is the media time sent at full speed after the metadata, so
	// playback starts at once. Zero means none beyond the metadata.
	Burst time.Duration
	// Floor is the slowest pace; zero means none. Ceil is the fastest; zero
	// means none.
	Floor, Ceil int64
	// Default paces a video whose metadata is not known yet (moov at the
	// end of the file, not learned before): a constant rate after
	// Default × Burst bytes. Zero leaves such a video unpaced.
	Default int64
}

func (p Pace) factor() float64 {
	if p.Factor <= 0 {
		return 1.25
	}
	return p.Factor
}

// clamp bounds a rate by Floor and Ceil.
func (p Pace) clamp(r int64) int64 {
	if p.Floor > 0 {
		r = max(r, p.Floor)
	}
	if p.Ceil > 0 {
		r = min(r, p.Ceil)
	}
	return r
}

// Plan is how one body (an HTTP response, or a raw stream) is paced: the
// bytes up to BurstEnd go at full speed, and each later byte is due by the
// time its media time needs it, divided by the factor, less the burst's
// lead. A Plan is immutable, but the Movie under a fragmented one grows as
// moofs arrive; both are read by the goroutine that feeds the Observer.
type Plan struct {
	Movie *Movie // nil for a plan at the default rate
	// Base is the stream offset where the body starts, as counted by the
	// Observer; Start is the file offset of that first byte (a Range
	// response starts inside the file).
	Base, Start int64
	// BurstEnd is the file offset where pacing starts, as far as the movie
	// was known when the plan was made; see PacedFrom.
	BurstEnd int64
	// Bitrate is the movie's average rate, or the default rate, in bytes
	// per second, as known when the plan was made: 0 for a fragmented movie,
	// whose Movie.Bitrate grows with its fragments.
	Bitrate int64

	pace   Pace
	media0 time.Duration // media time of the first byte
}

// NewPlan plans a body of movie m that starts at file offset start and at
// stream offset base (where an Observer counts it): full speed to the end of
// the moov, if the body holds it, and Burst of media from start; then paced.
func NewPlan(m *Movie, base, start int64, pace Pace) *Plan {
	p := &Plan{Movie: m, Base: base, Start: start, Bitrate: m.Bitrate(), pace: pace}
	p.media0, _ = m.NeedAt(start)
	p.BurstEnd = max(start, m.BytesFor(p.media0+pace.Burst))
	if start < m.MoovEnd {
		p.BurstEnd = max(p.BurstEnd, m.MoovEnd)
	}
	return p
}

// defaultPlan plans a body of unknown bitrate at pace.Default; nil if none.
func defaultPlan(base, start int64, pace Pace) *Plan {
	if pace.Default <= 0 {
		return nil
	}
	rate := pace.clamp(pace.Default)
	return &Plan{
		Base: base, Start: start, Bitrate: rate, pace: pace,
		BurstEnd: start + int64(float64(rate)*pace.Burst.Seconds()),
	}
}

// PacedFrom returns the file offset where pacing starts. For a fragmented
// movie, the fragments learned since the plan was made may put it past
// BurstEnd: Burst of media is sent at once however it is fragmented.
func (p *Plan) PacedFrom() int64 {
	if p.Movie == nil || !p.Movie.Fragmented {
		return p.BurstEnd
	}
	return max(p.BurstEnd, p.Movie.BytesFor(p.media0+p.pace.Burst))
}

// BurstBytes is the size of the burst region, from the body's first byte,
// as far as the movie is known.
func (p *Plan) BurstBytes() int64 { return p.PacedFrom() - p.Start }

// Due returns how long after the body's first byte was sent the stream's
// bytes before offset pos (as counted by the Observer) may all have been
// sent. It is 0 in the burst region and never decreases with pos.
func (p *Plan) Due(pos int64) time.Duration {
	off := p.Start + pos - p.Base
	from := p.PacedFrom()
	if off <= from {
		return 0
	}
	paced := float64(off - from) // bytes since the burst
	var d float64                // seconds
	if p.Movie == nil {
		d = paced / float64(p.Bitrate)
	} else {
		at, _ := p.Movie.NeedAt(off)
		d = (at - p.media0 - p.pace.Burst).Seconds() / p.pace.factor()
		if p.pace.Floor > 0 {
			d = min(d, paced/float64(p.pace.Floor))
		}
		if p.pace.Ceil > 0 {
			d = max(d, paced/float64(p.pace.Ceil))
		}
	}
	if d <= 0 {
		return 0
	}
	if d > float64(math.MaxInt64/2)/float64(time.Second) {
		return time.Duration(math.MaxInt64 / 2)
	}
	return time.Duration(d * float64(time.Second))
}
