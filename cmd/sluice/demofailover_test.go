package main

import (
	"bytes"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/transport/v2/test"
)

// TestDemoFailover: the failover demo runs by itself; with one server of
// three killed no request fails, with all killed the clients get the
// notice page, and once they are back every server answers again.
func TestDemoFailover(t *testing.T) {
	defer test.TimeOut(60 * time.Second).Stop()
	var stdout, stderr bytes.Buffer
	if code := execute([]string{"demo", "failover"}, &stdout, &stderr); code != exitOK {
		t.Fatalf("demo failover: exit %d: %s\n%s", code, stderr.String(), stdout.String())
	}
	out := stdout.String()
	for _, want := range []string{
		"sluice: b up → ",
		"── b down (1s): ",
		"── all down (1s): 0 answers, ",
		"the notice page, as a client got it: \"HTTP/1.1 503 Service Unavailable\\r\\nRetry-After: 30",
		"with one server of three down, 0 failed;",
		"demo done.",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	m := regexp.MustCompile(`with none up, (\d+) got the notice page`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("demo output lacks the notice count:\n%s", out)
	}
	if n, _ := strconv.Atoi(m[1]); n < 50 {
		t.Errorf("%d clients got the notice page, want at least 50 in a second of ~200 requests:\n%s", n, out)
	}
	back := regexp.MustCompile(`── back \(1s\): \d+ answers \(a (\d+), b (\d+), c (\d+)\)`).FindStringSubmatch(out)
	if back == nil {
		t.Fatalf("demo output lacks answers from a, b and c once they are back:\n%s", out)
	}
}
