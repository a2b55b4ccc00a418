package config

import "time"

// MP4 paces MP4 video a listener forwards downstream: the metadata and the
// first BurstSeconds of media at full speed, then each byte by the time the
// video's own timeline needs it, divided by Factor. See docs/mp4.md.
type MP4 struct {
	// Enabled turns MP4 pacing on. Default false.
	Enabled bool
	// Mode is what the upstream's bytes are: "auto" (HTTP/1.x responses if
	// they start with "HTTP/", else a raw file; the default), "http" or
	// "raw".
	Mode string
	// Factor multiplies the video's rate: 1.25 sends a second of media in
	// 0.8 s. Default 1.25; from 1 to 10.
	Factor float64
	// Burst is the media time sent at full speed after the metadata
	// (burst_seconds in the file, in seconds). Default 2s; 0 to 600s.
	Burst time.Duration
	// Floor is the slowest pace; zero means none. Ceil is the fastest;
	// zero means none.
	Floor, Ceil Rate
	// DefaultRate paces a video whose bitrate is not known yet (moov at the
	// end, not learned before); zero leaves such a video unpaced. Default 0.
	DefaultRate Rate
	// CacheEntries bounds the movies kept per listener to pace later Range
	// requests for the same file (moov-at-end files, seeks). Default 256;
	// 0 keeps none.
	CacheEntries int
	// MetadataBudget bounds the moov and moof bytes the listener's
	// connections buffer at once (a video over it goes at the normal
	// limits). Default 64MiB; from 1MiB.
	MetadataBudget Size
}

// MP4 defaults.
const (
	DefaultMP4Factor       = 1.25
	DefaultMP4Burst        = 2 * time.Second
	DefaultMP4CacheEntries = 256
	MaxMP4Burst            = 600 * time.Second
	MaxMP4CacheEntries     = 100_000
	DefaultMP4Budget       = 64 << 20
	MinMP4Budget           = 1 << 20
	MaxMP4Budget           = 1 << 40
)

// mp4 reads a listener's mp4 block.
func (d *decoder) mp4(path string, v any) MP4 {
	m := d.object(path, v, "enabled", "mode", "factor", "burst_seconds", "floor", "ceil", "default_rate", "cache_entries", "metadata_budget")
	c := MP4{
		Enabled:        d.boolean(path+".enabled", m["enabled"], false),
		Mode:           d.oneOf(path+".mode", m["mode"], "auto", "auto", "http", "raw"),
		Factor:         d.number(path+".factor", m["factor"], DefaultMP4Factor, 1, 10),
		Floor:          d.rate(path+".floor", m["floor"]),
		Ceil:           d.rate(path+".ceil", m["ceil"]),
		DefaultRate:    d.rate(path+".default_rate", m["default_rate"]),
		CacheEntries:   d.integer(path+".cache_entries", m["cache_entries"], DefaultMP4CacheEntries, 0, MaxMP4CacheEntries),
		MetadataBudget: d.size(path+".metadata_budget", m["metadata_budget"], DefaultMP4Budget, MinMP4Budget, MaxMP4Budget),
	}
	secs := d.number(path+".burst_seconds", m["burst_seconds"], DefaultMP4Burst.Seconds(), 0, MaxMP4Burst.Seconds())
	c.Burst = time.Duration(secs * float64(time.Second))
	if c.Floor != 0 && c.Ceil != 0 && c.Floor > c.Ceil {
		d.failf(path+".floor", "%s is above ceil %s: want floor <= ceil", c.Floor, c.Ceil)
	}
	return c
}
