package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluiceproxy/sluice/mp4probe"
)

// chromium finds a Chromium to test with: under CI a missing one is a
// failure, elsewhere a skip.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium is not installed (apt-get install chromium); CI needs it for the player test")
	}
	t.Skip("chromium is not installed (apt-get install chromium)")
	return ""
}

// playerResult is what the test page reports.
type playerResult struct {
	Why       string  `json:"why"`
	StartedMS float64 `json:"started_ms"` // from page load to the first "playing"
	Waiting   int     `json:"waiting"`    // "waiting" events after playback started
	Played    float64 `json:"played"`     // currentTime at the report
	Error     string  `json:"error"`
}

const playerPage = `<!doctype html>
<video id="v" src="%s" autoplay muted playsinline></video>
<script>
const v = document.getElementById("v");
const t0 = performance.now();
let started = -1, waiting = 0, sent = false;
v.addEventListener("playing", () => { if (started < 0) started = performance.now() - t0; });
v.addEventListener("waiting", () => { if (started >= 0) waiting++; });
function report(why) {
  if (sent) return;
  sent = true;
  fetch("/result", {method: "POST", body: JSON.stringify({
    why: why, started_ms: started, waiting: waiting, played: v.currentTime,
    error: v.error ? v.error.code + " " + v.error.message : ""})});
}
v.addEventListener("ended", () => report("ended"));
v.addEventListener("error", () => report("error"));
setTimeout(() => report("timeout"), 25000);
</script>`

// TestMP4Chromium plays a video through sluice in headless Chromium, from a
// page served on loopback: playback starts within two seconds and never
// waits for data, though the file is paced at 1.25× its own rate.
func TestMP4Chromium(t *testing.T) {
	bin := chromium(t)
	for _, name := range []string{"faststart", "moovend"} {
		t.Run(name, func(t *testing.T) { playInChromium(t, bin, name) })
	}
}

// playInChromium plays a fixture; for moovend, the player's tail Range
// request teaches sluice the moov, and what it asks next is paced by it.
func playInChromium(t *testing.T, bin, name string) {
	data := readFixture(t, name)
	var reqMu sync.Mutex
	var reqs []string // what the origin was asked, for failure messages
	start := time.Now()
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqMu.Lock()
		reqs = append(reqs, fmt.Sprintf("%v %s %s Range %q from %s", time.Since(start).Round(time.Millisecond), r.Method, r.URL.Path, r.Header.Get("Range"), r.RemoteAddr))
		reqMu.Unlock()
		w.Header().Set("Content-Type", "video/mp4")
		http.ServeContent(w, r, "v.mp4", time.Time{}, bytes.NewReader(data))
	}))
	defer origin.Close()
	srv, addr, _ := startProxy(t, ListenerConfig{Upstream: origin.Listener.Addr().String(),
		MP4: MP4Config{Enabled: true, Pace: mp4probe.Pace{Factor: 1.25, Burst: 2 * time.Second, Default: 40_000}, CacheEntries: 4}})

	results := make(chan playerResult, 1)
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/":
			fmt.Fprintf(w, playerPage, "http://"+addr+"/v.mp4")
		case "/result":
			var res playerResult
			if err := json.NewDecoder(r.Body).Decode(&res); err != nil {
				res.Why = "bad report: " + err.Error()
			}
			select {
			case results <- res:
			default:
			}
		default:
			http.NotFound(w, r)
		}
	}))
	defer page.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--autoplay-policy=no-user-gesture-required", "--user-data-dir="+t.TempDir(), page.URL)
	// Chromium starts helpers of its own: its process group is ended with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	}()

	var res playerResult
	select {
	case res = <-results:
	case <-ctx.Done():
		t.Fatalf("no report from the page in 60 s; chromium said:\n%s", out.String())
	}
	t.Logf("player: %+v", res)
	if res.Why != "ended" || res.Error != "" {
		t.Fatalf("playback ended with %q %q; chromium said:\n%s", res.Why, res.Error, out.String())
	}
	// Most of the start is the player's own: on a busy 2-core machine it
	// started after 1,070 ms here, and after 1,138 ms with no burst at all
	// (the moov and the first frames still come at once). So this bounds
	// gross delays, as metadata held back would cause; the burst's own
	// effect is measured by ./bench/loadbench -mp4. A moov-at-end file
	// costs the player a tail request and a new connection before it can
	// start: a second more is allowed for it.
	limit := 2000.0
	if name == "moovend" {
		limit = 3000
	}
	if res.StartedMS < 0 || res.StartedMS > limit {
		t.Errorf("playback started after %.0f ms, want within %.0f ms", res.StartedMS, limit)
	}
	if res.Waiting != 0 {
		t.Errorf("%d waiting events during playback, want none", res.Waiting)
	}
	st := srv.Stats()[0].MP4
	if st.Plans == 0 || st.Waited == 0 {
		reqMu.Lock()
		t.Errorf("the video was not paced: %+v; the origin was asked:\n%s", st, strings.Join(reqs, "\n"))
		reqMu.Unlock()
	}
	t.Logf("mp4 stats: %+v", st)
}
