package mp4probe

import (
	"cmp"
	"errors"
	"math"
	"slices"
	"time"
)

// Bounds on what a Movie holds, whatever its boxes claim.
const (
	// MaxSamples bounds the samples one moov or moof may describe.
	MaxSamples = 4 << 20
	// MaxPoints bounds a Movie's arrival curve: longer curves are thinned,
	// keeping the earliest need of each merged span (never later).
	MaxPoints = 8192
)

// Errors of moov and moof decoding.
var (
	ErrBadMovie  = errors.New("mp4probe: malformed movie metadata")
	ErrEncrypted = errors.New("mp4probe: encrypted movie")
	ErrNoMedia   = errors.New("mp4probe: movie has no audio or video samples")
)

// Track summarises one track of a [Movie].
type Track struct {
	ID        uint32
	Handler   string // "vide", "soun", ...
	Timescale uint32
	Duration  time.Duration
	Samples   int
	Bytes     int64 // the samples' bytes
}

// Bitrate is the track's average rate in bytes per second; 0 if unknown.
func (t Track) Bitrate() int64 {
	if t.Duration <= 0 {
		return 0
	}
	return int64(float64(t.Bytes) / t.Duration.Seconds())
}

// A point of an arrival curve: the bytes of the file before Off must have
// arrived by the media time At for playback not to stall.
type point struct {
	Off int64
	At  time.Duration
}

// Movie is what the moov box of an MP4 (and, for a fragmented MP4, the
// moof boxes that follow it) tell about the file: its tracks and its
// arrival curve, the media time by which each byte offset is needed.
// Offsets are from the start of the file. A Movie is not safe for
// concurrent use while moofs are added; a finished Movie may be shared.
type Movie struct {
	Duration   time.Duration
	Tracks     []Track
	Fragmented bool  // the moov announces fragments (mvex)
	MoovEnd    int64 // offset just past the moov

	curve []point           // sorted by Off; At never decreases
	trex  map[uint32]trex   // fragment defaults by track ID
	scale map[uint32]uint32 // timescale by track ID, for the tracks followed
}

// Bitrate is the movie's average rate in bytes per second, all tracks
// together; 0 if unknown.
func (m *Movie) Bitrate() int64 {
	var b int64
	for _, t := range m.Tracks {
		b += t.Bitrate()
	}
	return b
}

// MediaBytes is the file offset up to which the curve is known: the end of
// the last sample described so far.
func (m *Movie) MediaBytes() int64 {
	if len(m.curve) == 0 {
		return 0
	}
	return m.curve[len(m.curve)-1].Off
}

// NeedAt returns the media time by which the byte at file offset off is
// needed. Between two points of the curve the time is interpolated from the
// earlier point's, so a byte is never due later than the samples after it
// need it, and bytes come due evenly rather than a chunk at a time. Offsets
// past the known curve get its last time, with ok false.
func (m *Movie) NeedAt(off int64) (at time.Duration, ok bool) {
	c := m.curve
	i, _ := slices.BinarySearchFunc(c, off, func(p point, off int64) int {
		if p.Off <= off {
			return -1
		}
		return 1
	})
	switch {
	case len(c) == 0:
		return 0, false
	case i == len(c):
		return c[len(c)-1].At, false
	case i == 0:
		return c[0].At, true
	}
	a, b := c[i-1], c[i]
	frac := float64(off-a.Off) / float64(b.Off-a.Off)
	return a.At + time.Duration(frac*float64(b.At-a.At)), true
}

// BytesFor returns the file offset up to which the bytes are needed to play
// the media up to time at: the end of the last curve point due by at.
func (m *Movie) BytesFor(at time.Duration) int64 {
	i, _ := slices.BinarySearchFunc(m.curve, at, func(p point, at time.Duration) int {
		if p.At <= at {
			return -1
		}
		return 1
	})
	if i == 0 {
		return 0
	}
	return m.curve[i-1].Off
}

// sample is one media sample's place in the file and its decode time.
type sample struct {
	off  int64
	size int64
	at   time.Duration
}

// addSamples merges samples into the curve: sorted by end offset, each
// point's time lowered to the earliest time of any later byte (a player
// reads in order, so a byte is needed as soon as anything after it is),
// then thinned to MaxPoints.
func (m *Movie) addSamples(all []sample) {
	if len(all) == 0 {
		return
	}
	pts := make([]point, 0, len(m.curve)+len(all))
	pts = append(pts, m.curve...)
	for _, s := range all {
		pts = append(pts, point{Off: s.off + s.size, At: s.at})
	}
	// Ties need no order: the suffix minimum below leaves the earliest
	// time first among equal offsets.
	slices.SortFunc(pts, func(a, b point) int { return cmp.Compare(a.Off, b.Off) })
	for i := len(pts) - 2; i >= 0; i-- {
		pts[i].At = min(pts[i].At, pts[i+1].At)
	}
	// One point per offset, the earliest time.
	out := pts[:0]
	for _, p := range pts {
		if n := len(out); n > 0 && out[n-1].Off == p.Off {
			continue
		}
		out = append(out, p)
	}
	m.curve = thin(out, MaxPoints)
}

// thin merges runs of points so at most max remain: a merged point has the
// run's last offset and its first (earliest) time.
func thin(pts []point, max int) []point {
	if len(pts) <= max {
		return pts
	}
	k := (len(pts) + max - 1) / max
	out := pts[:0:0]
	for i := 0; i < len(pts); i += k {
		j := min(i+k, len(pts)) - 1
		out = append(out, point{Off: pts[j].Off, At: pts[i].At})
	}
	return out
}

func ticks(t uint64, scale uint32) time.Duration {
	if scale == 0 {
		return 0
	}
	s := float64(t) / float64(scale)
	if s > float64(math.MaxInt64/int64(time.Second)) {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(s * float64(time.Second))
}
