package upstream_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/sluiceproxy/sluice/proxy/upstream"
	"github.com/sluiceproxy/sluice/shaper/shapertest"
)

func TestParseResponseHead(t *testing.T) {
	now := shapertest.Epoch
	date := func(d time.Duration, layout string) string { return now.Add(d).Format(layout) }
	for _, c := range []struct {
		name   string
		in     string
		status int
		retry  time.Duration
		has    bool
		err    error
	}{
		{"429 seconds", "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 5\r\n\r\nbody", 429, 5 * time.Second, true, nil},
		{"503 no header", "HTTP/1.0 503 Service Unavailable\r\nServer: x\r\n\r\n", 503, 0, false, nil},
		{"lower case, spaces", "HTTP/1.1 503 x\r\nretry-after: \t120 \r\n\r\n", 503, 2 * time.Minute, true, nil},
		{"LF only", "HTTP/1.1 429 x\nRetry-After: 1\n\n", 429, time.Second, true, nil},
		{"no reason", "HTTP/1.1 200\r\n\r\n", 200, 0, false, nil},
		{"IMF date", "HTTP/1.1 503 x\r\nRetry-After: " + date(90*time.Second, "Mon, 02 Jan 2006 15:04:05 GMT") + "\r\n\r\n", 503, 90 * time.Second, true, nil},
		{"RFC 850 date", "HTTP/1.1 503 x\r\nRetry-After: " + date(time.Hour, "Monday, 02-Jan-06 15:04:05 GMT") + "\r\n\r\n", 503, time.Hour, true, nil},
		{"asctime date", "HTTP/1.1 503 x\r\nRetry-After: " + date(time.Minute, "Mon Jan _2 15:04:05 2006") + "\r\n\r\n", 503, time.Minute, true, nil},
		{"date in the past", "HTTP/1.1 503 x\r\nRetry-After: " + date(-time.Hour, "Mon, 02 Jan 2006 15:04:05 GMT") + "\r\n\r\n", 503, 0, true, nil},
		{"garbage value", "HTTP/1.1 503 x\r\nRetry-After: soon\r\n\r\n", 503, 0, false, nil},
		{"negative", "HTTP/1.1 503 x\r\nRetry-After: -5\r\n\r\n", 503, 0, false, nil},
		{"huge", "HTTP/1.1 503 x\r\nRetry-After: 99999999999999999999999\r\n\r\n", 503, time.Duration(1<<63 - 1).Truncate(time.Second), true, nil},
		{"first of two", "HTTP/1.1 503 x\r\nRetry-After: 3\r\nRetry-After: 9\r\n\r\n", 503, 3 * time.Second, true, nil},
		{"folded line", "HTTP/1.1 503 x\r\nX: a\r\n b\r\nRetry-After: 3\r\n\r\n", 503, 3 * time.Second, true, nil},
		{"incomplete status", "HTTP/1.1 50", 0, 0, false, upstream.ErrIncomplete},
		{"incomplete headers", "HTTP/1.1 503 x\r\nRetry-After: 3\r\n", 503, 3 * time.Second, true, upstream.ErrIncomplete},
		{"empty", "", 0, 0, false, upstream.ErrIncomplete},
		{"not http", "SSH-2.0-OpenSSH\r\n", 0, 0, false, upstream.ErrNotHTTP},
		{"not http prefix", "GET / HTTP/1.1", 0, 0, false, upstream.ErrNotHTTP},
		{"http/2", "HTTP/2 200\r\n\r\n", 0, 0, false, upstream.ErrNotHTTP},
		{"bad code", "HTTP/1.1 20x OK\r\n\r\n", 0, 0, false, upstream.ErrNotHTTP},
		{"code 099", "HTTP/1.1 099 OK\r\n\r\n", 0, 0, false, upstream.ErrNotHTTP},
		{"bad header", "HTTP/1.1 200 OK\r\nno colon\r\n\r\n", 0, 0, false, upstream.ErrNotHTTP},
		{"too long", "HTTP/1.1 200 OK\r\nX: " + string(bytes.Repeat([]byte("a"), upstream.MaxHeadBytes)) + "\r\n\r\n", 0, 0, false, upstream.ErrNotHTTP},
	} {
		t.Run(c.name, func(t *testing.T) {
			h, err := upstream.ParseResponseHead([]byte(c.in), now)
			if !errors.Is(err, c.err) || err == nil && c.err != nil {
				t.Fatalf("error %v, want %v", err, c.err)
			}
			if h.Status != c.status || h.RetryAfter != c.retry || h.HasRetryAfter != c.has {
				t.Errorf("ParseResponseHead = %+v, want status %d, retry after %v (%v)", h, c.status, c.retry, c.has)
			}
			if err == nil && string([]byte(c.in)[h.Len-2:h.Len]) != "\n\n" && string([]byte(c.in)[h.Len-4:h.Len]) != "\r\n\r\n" {
				t.Errorf("Len %d does not end the head", h.Len)
			}
		})
	}
}

func TestCoolUntil(t *testing.T) {
	now := shapertest.Epoch
	for _, c := range []struct {
		name string
		h    upstream.Head
		want time.Duration
	}{
		{"absent: default", upstream.Head{Status: 503}, 10 * time.Second},
		{"given", upstream.Head{Status: 429, RetryAfter: 5 * time.Second, HasRetryAfter: true}, 5 * time.Second},
		{"bounded", upstream.Head{Status: 429, RetryAfter: time.Hour, HasRetryAfter: true}, time.Minute},
		{"zero", upstream.Head{Status: 429, HasRetryAfter: true}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := c.h.CoolUntil(now, 10*time.Second, time.Minute); !got.Equal(now.Add(c.want)) {
				t.Errorf("CoolUntil = +%v, want +%v", got.Sub(now), c.want)
			}
		})
	}
}

// FuzzParseResponseHead: no input panics; a parsed head has a status of
// three digits, a Retry-After of at least zero, and a length within the
// input; what parses is not changed by more bytes after its head.
func FuzzParseResponseHead(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 5\r\n\r\n",
		"HTTP/1.0 503 x\nRetry-After: Thu, 01 Jan 2026 00:01:00 GMT\n\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 503",
	} {
		f.Add([]byte(s))
	}
	now := shapertest.Epoch
	f.Fuzz(func(t *testing.T, p []byte) {
		h, err := upstream.ParseResponseHead(p, now)
		if err != nil {
			if !errors.Is(err, upstream.ErrIncomplete) && !errors.Is(err, upstream.ErrNotHTTP) {
				t.Fatalf("error %v", err)
			}
			return
		}
		if h.Status < 100 || h.Status > 999 || h.RetryAfter < 0 || h.Len <= 0 || h.Len > len(p) || h.Len > upstream.MaxHeadBytes {
			t.Fatalf("head %+v from %d bytes", h, len(p))
		}
		more := append(p[:h.Len:h.Len], "HTTP/1.1 999 trailing\r\n\r\n"...)
		h2, err := upstream.ParseResponseHead(more, now)
		if err != nil || h2 != h {
			t.Fatalf("with bytes after the head: %+v, %v; want %+v", h2, err, h)
		}
	})
}

func TestReplay(t *testing.T) {
	var r upstream.Replay
	r.Write([]byte("GET / HTTP/1.1\r\n"))
	r.Write([]byte("\r\n"))
	if !r.Complete() || string(r.Bytes()) != "GET / HTTP/1.1\r\n\r\n" {
		t.Errorf("replay %q complete %v", r.Bytes(), r.Complete())
	}
	if n, err := r.Write(make([]byte, upstream.DefaultReplayBytes)); n != upstream.DefaultReplayBytes || err != nil {
		t.Errorf("Write = %d, %v", n, err)
	}
	if r.Complete() || r.Bytes() != nil {
		t.Errorf("past 64 KiB: complete %v, %d bytes; want incomplete, none", r.Complete(), len(r.Bytes()))
	}
	small := upstream.Replay{Limit: 4}
	small.Write([]byte("abcd"))
	if !small.Complete() || string(small.Bytes()) != "abcd" {
		t.Errorf("at the limit: %q %v", small.Bytes(), small.Complete())
	}
	small.Release()
	if small.Complete() || small.Bytes() != nil {
		t.Error("released replay still complete")
	}
}
