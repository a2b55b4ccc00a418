package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/sluiceproxy/sluice/mp4probe"
)

// An mp4Fixture is a video made with ffmpeg for the benchmark.
type mp4Fixture struct {
	name string
	// video is the lavfi source: a moving test pattern, with noise over
	// some spans for the VBR one.
	video string
	args  []string
}

const mp4Seconds = 30

var mp4Fixtures = []mp4Fixture{
	{"cbr", "testsrc2=size=640x360:rate=25",
		[]string{"-b:v", "1M", "-maxrate", "1M", "-bufsize", "500k"}},
	{"vbr", "testsrc2=size=640x360:rate=25,noise=alls=60:allf=t+u:enable='between(t,6,12)+between(t,20,22)'",
		[]string{"-crf", "28", "-maxrate", "6M", "-bufsize", "6M"}},
	{"frag", "testsrc2=size=640x360:rate=25",
		[]string{"-b:v", "1M", "-maxrate", "1M", "-bufsize", "500k", "-movflags", "+frag_keyframe+empty_moov+default_base_moof"}},
}

// makeFixture writes a fixture with ffmpeg (H.264 + AAC, moov first, or
// fragmented).
func makeFixture(dir string, f mp4Fixture) (string, error) {
	path := filepath.Join(dir, f.name+".mp4")
	args := []string{"-hide_banner", "-loglevel", "error", "-y",
		"-f", "lavfi", "-i", f.video, "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
		"-t", fmt.Sprint(mp4Seconds), "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
		"-g", "50", "-keyint_min", "50", "-sc_threshold", "0"}
	args = append(args, f.args...)
	if !slices.Contains(args, "-movflags") {
		args = append(args, "-movflags", "+faststart")
	}
	args = append(args, "-c:a", "aac", "-b:a", "128k", path)
	cmd := exec.Command("ffmpeg", args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("ffmpeg (apt-get install ffmpeg): %w", err)
	}
	return path, nil
}

// mp4Result is one download's figures.
type mp4Result struct {
	BurstSec   float64 // time for the plan's burst region to arrive
	Steady     float64 // rate after the burst ÷ the video's bitrate
	SteadyRest float64 // rate after the burst ÷ the bitrate of the media after the burst
	WinMin     float64 // 1-s windows after the burst ÷ bitrate
	WinMed     float64
	WinMax     float64
	GapMS      float64 // longest time between two reads after the burst
	StartSec   float64 // earliest playback start that never stalls
	QuitMB     float64 // bytes delivered by 10 s, when a viewer quits, 10^6
	TotalSec   float64
	FileMB     float64
	ByteExact  bool
	Stalls1Sec int // model stalls for a player that starts after 1 s
}

func runMP4(dir string) error {
	if _, err := exec.LookPath("ffmpeg"); err != nil {
		return errors.New("-mp4 needs ffmpeg: apt-get install ffmpeg")
	}
	const factor, burst = 1.25, 2 * time.Second
	// nginx's workers (www-data) read the fixtures from the work dir.
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	type fixture struct {
		mp4Fixture
		path  string
		data  []byte
		plan  *mp4probe.Plan
		rate  int64 // average bitrate, bytes/s
		after int64 // nginx's limit_rate_after: the same burst region
	}
	var fxs []fixture
	for _, f := range mp4Fixtures {
		path, err := makeFixture(dir, f)
		if err != nil {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		o := mp4probe.NewObserver(mp4probe.Options{Mode: mp4probe.Raw, Pace: mp4probe.Pace{Factor: factor, Burst: burst}})
		o.Observe(data)
		plan := o.Plan()
		if plan == nil || plan.Movie == nil {
			return fmt.Errorf("%s: no plan", f.name)
		}
		fxs = append(fxs, fixture{f, path, data, plan, plan.Movie.Bitrate(), plan.PacedFrom()})
		fmt.Printf("fixture %s: %.1f MB, %.0f kbit/s average, burst region %.0f kB (moov + %v)\n",
			f.name, float64(len(data))/1e6, float64(plan.Movie.Bitrate())*8/1e3, float64(plan.PacedFrom())/1e3, burst)
	}

	// One nginx: a plain static origin, and a server that paces each file
	// by hand the way nginx documents it (limit_rate_after + limit_rate).
	origin, paced, err := freePorts()
	if err != nil {
		return err
	}
	var locs string
	for _, f := range fxs {
		locs += fmt.Sprintf("    location = /%s.mp4 { limit_rate_after %d; limit_rate %d; }\n", f.name, f.after, int64(float64(f.rate)*factor))
	}
	conf := fmt.Sprintf(`daemon off;
master_process on;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  types { video/mp4 mp4; }
  server { listen %[2]s; root %[1]s; }
  server { listen %[3]s; root %[1]s;
%[4]s  }
}
`, dir, origin, paced, locs)
	nconf := filepath.Join(dir, "nginx-http.conf")
	if err := os.WriteFile(nconf, []byte(conf), 0o644); err != nil {
		return err
	}
	ncmd := exec.Command(*nginxBin, "-c", nconf, "-p", dir)
	ncmd.Stderr = os.Stderr
	ncmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := ncmd.Start(); err != nil {
		return err
	}
	defer (&proxyProc{cmd: ncmd}).stop()
	if err := waitListening(origin, paced); err != nil {
		return err
	}
	// sluice in front of the plain origin.
	p, err := startSluice(dir, origin, origin, fmt.Sprintf(`mp4: {enabled: true, mode: http, factor: %g, burst_seconds: %g}`, factor, burst.Seconds()))
	if err != nil {
		return err
	}
	defer p.stop()

	targets := []struct{ name, addr string }{{"direct", origin}, {"sluice", p.sourceAddr}, {"nginx", paced}}
	all := map[string][]mp4Result{}
	for r := 1; r <= *runs; r++ {
		for _, f := range fxs {
			// The three download at once: at video rates they do not
			// compete for the machine.
			var wg sync.WaitGroup
			res := make([]mp4Result, len(targets))
			errs := make([]error, len(targets))
			for i, t := range targets {
				wg.Add(1)
				go func() {
					defer wg.Done()
					res[i], errs[i] = downloadMP4(t.addr, f.name, f.data, f.plan, f.rate)
				}()
			}
			wg.Wait()
			for i, t := range targets {
				if errs[i] != nil {
					return fmt.Errorf("%s %s: %w", t.name, f.name, errs[i])
				}
				all[t.name+"|"+f.name] = append(all[t.name+"|"+f.name], res[i])
			}
			fmt.Printf("run %d %s: sluice steady %.3f gap %.0f ms start %.2f s; nginx steady %.3f gap %.0f ms start %.2f s\n",
				r, f.name, res[1].Steady, res[1].GapMS, res[1].StartSec, res[2].Steady, res[2].GapMS, res[2].StartSec)
		}
	}
	fmt.Printf("\nMP4 pacing, factor %g, burst %v, median of %d runs (bitrate-relative figures ÷ the file's average rate)\n", factor, burst, *runs)
	fmt.Printf("%-8s %-7s %8s %7s %6s %6s %6s %6s %7s %8s %8s %8s %8s %6s\n",
		"fixture", "target", "burst s", "steady", "rest", "win lo", "win md", "win hi", "gap ms", "start s", "quit MB", "need MB", "total s", "exact")
	for _, f := range fxs {
		need := float64(f.plan.Movie.BytesFor(10*time.Second)) / 1e6 // what 10 s of playback takes
		for _, t := range targets {
			rs := all[t.name+"|"+f.name]
			m := func(g func(mp4Result) float64) float64 { return median(rs, g) }
			exact := true
			for _, r := range rs {
				exact = exact && r.ByteExact
			}
			fmt.Printf("%-8s %-7s %8.3f %7.3f %6.3f %6.2f %6.2f %6.2f %7.0f %8.2f %8.2f %8.2f %8.2f %6v\n", f.name, t.name,
				m(func(r mp4Result) float64 { return r.BurstSec }), m(func(r mp4Result) float64 { return r.Steady }),
				m(func(r mp4Result) float64 { return r.SteadyRest }),
				m(func(r mp4Result) float64 { return r.WinMin }), m(func(r mp4Result) float64 { return r.WinMed }),
				m(func(r mp4Result) float64 { return r.WinMax }), m(func(r mp4Result) float64 { return r.GapMS }),
				m(func(r mp4Result) float64 { return r.StartSec }), m(func(r mp4Result) float64 { return r.QuitMB }),
				need, m(func(r mp4Result) float64 { return r.TotalSec }), exact)
		}
	}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(all, "", " ")
		return os.WriteFile(*jsonOut, b, 0o644)
	}
	return nil
}

// downloadMP4 GETs a fixture as a player does (Range: bytes=0-) and
// measures its arrival against the fixture's plan and movie.
func downloadMP4(addr, name string, data []byte, plan *mp4probe.Plan, rate int64) (mp4Result, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return mp4Result{}, err
	}
	defer c.Close()
	start := time.Now()
	fmt.Fprintf(c, "GET /%s.mp4 HTTP/1.1\r\nHost: bench\r\nRange: bytes=0-\r\n\r\n", name)
	resp, err := http.ReadResponse(bufio.NewReaderSize(c, 64<<10), nil)
	if err != nil {
		return mp4Result{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent {
		return mp4Result{}, fmt.Errorf("GET %s: %s", name, resp.Status)
	}
	type arrival struct {
		at    time.Duration
		total int64
	}
	var arr []arrival
	buf := make([]byte, 64<<10)
	var got []byte
	var total int64
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			total += int64(n)
			got = append(got, buf[:n]...)
			arr = append(arr, arrival{time.Since(start), total})
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return mp4Result{}, err
		}
	}
	r := mp4Result{ByteExact: slices.Equal(got, data), FileMB: float64(len(data)) / 1e6}
	if len(arr) == 0 {
		return r, errors.New("no bytes")
	}
	// timeOf returns when the byte count first reached n.
	timeOf := func(n int64) time.Duration {
		i := sort.Search(len(arr), func(i int) bool { return arr[i].total >= n })
		if i == len(arr) {
			return arr[len(arr)-1].at
		}
		return arr[i].at
	}
	bytesAt := func(d time.Duration) int64 {
		i := sort.Search(len(arr), func(i int) bool { return arr[i].at > d })
		if i == 0 {
			return 0
		}
		return arr[i-1].total
	}
	end := arr[len(arr)-1].at
	burstEnd := plan.PacedFrom()
	burstAt := timeOf(burstEnd)
	r.BurstSec, r.TotalSec = burstAt.Seconds(), end.Seconds()
	r.QuitMB = float64(bytesAt(10*time.Second)) / 1e6
	if end > burstAt {
		r.Steady = float64(total-burstEnd) / (end - burstAt).Seconds() / float64(rate)
		at, _ := plan.Movie.NeedAt(burstEnd)
		rest := float64(plan.Movie.MediaBytes()-burstEnd) / (plan.Movie.Duration - at).Seconds()
		r.SteadyRest = float64(total-burstEnd) / (end - burstAt).Seconds() / rest
	}
	var wins []float64
	for t := burstAt; t+time.Second <= end; t += time.Second {
		wins = append(wins, float64(bytesAt(t+time.Second)-bytesAt(t))/float64(rate))
	}
	if len(wins) > 0 {
		slices.Sort(wins)
		r.WinMin, r.WinMed, r.WinMax = wins[0], wins[len(wins)/2], wins[len(wins)-1]
	}
	for i := 1; i < len(arr); i++ {
		if arr[i-1].total >= burstEnd {
			r.GapMS = max(r.GapMS, float64(arr[i].at-arr[i-1].at)/1e6)
		}
	}
	// A player that starts at s never stalls iff every byte arrives by s
	// plus the media time that needs it.
	m := plan.Movie
	for off := int64(1); off <= m.MediaBytes(); off += 4096 {
		need, _ := m.NeedAt(off)
		late := timeOf(off) - need
		r.StartSec = max(r.StartSec, late.Seconds())
		if late > time.Second {
			r.Stalls1Sec++
		}
	}
	r.StartSec = max(r.StartSec, timeOf(m.MoovEnd).Seconds())
	return r, nil
}
