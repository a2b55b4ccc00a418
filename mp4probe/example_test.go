package mp4probe_test

import (
	"fmt"
	"os"
	"time"

	"github.com/sluiceproxy/sluice/mp4probe"
)

// An Observer shown an MP4 file over raw TCP plans its pacing once it has
// read the moov: the metadata and 2 s of media at once, then the rest at
// 1.25× the video's own timeline.
func ExampleObserver() {
	data, err := os.ReadFile("testdata/faststart.mp4")
	if err != nil {
		panic(err)
	}
	obs := mp4probe.NewObserver(mp4probe.Options{
		Mode: mp4probe.Raw,
		Pace: mp4probe.Pace{Factor: 1.25, Burst: 2 * time.Second},
	})
	defer obs.Close()
	obs.Observe(data) // in a proxy: each piece, after forwarding it
	plan := obs.Plan()
	m := plan.Movie
	fmt.Printf("%v of video, %d tracks, %d kbit/s\n", m.Duration.Round(100*time.Millisecond), len(m.Tracks), plan.Bitrate*8/1000)
	fmt.Printf("at once: %d bytes; the last byte due after %v\n",
		plan.BurstBytes(), plan.Due(m.MediaBytes()).Round(100*time.Millisecond))
	// Output:
	// 8s of video, 2 tracks, 234 kbit/s
	// at once: 69812 bytes; the last byte due after 4.8s
}
