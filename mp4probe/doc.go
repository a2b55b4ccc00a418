// Package mp4probe watches a byte stream that a proxy forwards and plans
// how to pace the MP4 video in it. It reads the framing of HTTP/1.x
// responses (so the MP4 inside a response body is found), the top-level MP4
// boxes of that body, and the metadata in its moov and moof boxes, from
// which it builds the file's arrival curve: the media time by which each
// byte is needed. A [Plan] sends the metadata and the first seconds of media
// at once, then each byte when the curve says, divided by a factor.
//
// An [Observer] is passive and incremental: it is shown each piece of the
// stream after the piece was forwarded, never delays or alters bytes, and
// buffers only bounded amounts (a moov or moof of at most [DefaultMaxKeep]
// bytes, and a shared [Budget]). Malformed, encrypted or unknown input makes
// it give up on that body, counted by reason in [Stats]; it never panics.
//
// This package knows nothing of sockets, proxies or clocks: a Plan says how
// long after a body started each byte is due, and the caller waits. It
// must not import proxy, shaper or config.
//
// Typical usage, one Observer per proxied connection:
//
//	obs := mp4probe.NewObserver(mp4probe.Options{
//		Pace:  mp4probe.Pace{Factor: 1.25, Burst: 2 * time.Second},
//		Cache: cache, // shared by the listener's connections
//	})
//	defer obs.Close()
//	// client → server bytes:      obs.Up(p)
//	// server → client, once sent: obs.Observe(p)
//	// before sending more:        if plan := obs.Plan(); plan != nil { wait until start + plan.Due(obs.Pos()+n) }
package mp4probe
