package mp4probe

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// recorder logs what an HTTPStream reports, as text.
type recorder struct {
	log  []string
	body map[int]*strings.Builder // by response number
	n    int
}

func (r *recorder) stream() *HTTPStream {
	r.body = map[int]*strings.Builder{}
	return &HTTPStream{
		OnResponse: func(resp *Response) {
			r.n++
			r.body[r.n] = &strings.Builder{}
			r.log = append(r.log, fmt.Sprintf("resp %d %s %s len=%d chunked=%v range=%d-%d/%d",
				resp.Status, resp.Request.Method, resp.Request.Target, resp.Length, resp.Chunked, resp.RangeStart, resp.RangeEnd, resp.RangeTotal))
		},
		OnBody: func(resp *Response, off int64, data []byte) {
			b := r.body[r.n]
			if int64(b.Len()) != off {
				r.log = append(r.log, fmt.Sprintf("bad offset %d after %d bytes", off, b.Len()))
			}
			b.Write(data)
		},
		OnEnd: func(resp *Response) {
			r.log = append(r.log, fmt.Sprintf("end %d body=%q", resp.Status, r.body[r.n].String()))
		},
	}
}

// feed gives s the bytes in pieces of n (0: all at once).
func feed(f func([]byte), b string, n int) {
	if n <= 0 {
		f([]byte(b))
		return
	}
	for len(b) > 0 {
		k := min(n, len(b))
		f([]byte(b[:k]))
		b = b[k:]
	}
}

func TestHTTPStream(t *testing.T) {
	up := "GET /a.mp4 HTTP/1.1\r\nHost: v.example\r\nRange: bytes=0-\r\n\r\n" +
		"HEAD /b HTTP/1.1\r\nHost: v.example\r\n\r\n" +
		"POST /c HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello" +
		"GET /d HTTP/1.1\r\n\r\n" +
		"GET /e HTTP/1.1\r\n\r\n"
	down := "HTTP/1.1 206 Partial Content\r\nContent-Type: video/mp4\r\nContent-Range: bytes 0-4/100\r\nContent-Length: 5\r\n\r\n01234" +
		"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n" + // HEAD: no body whatever the length
		"HTTP/1.1 100 Continue\r\n\r\n" +
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n4;ext=1\r\nabcd\r\n2\r\nef\r\n0\r\nX-Trailer: 1\r\n\r\n" +
		"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n" +
		"HTTP/1.0 200 OK\r\n\r\nuntil close"
	want := []string{
		`resp 206 GET /a.mp4 len=5 chunked=false range=0-4/100`, `end 206 body="01234"`,
		`resp 200 HEAD /b len=999 chunked=false range=-1--1/-1`, `end 200 body=""`,
		`resp 100   len=-1 chunked=false range=-1--1/-1`, `end 100 body=""`,
		`resp 200 POST /c len=-1 chunked=true range=-1--1/-1`, `end 200 body="abcdef"`,
		`resp 304 GET /d len=10 chunked=false range=-1--1/-1`, `end 304 body=""`,
		`resp 200 GET /e len=-1 chunked=false range=-1--1/-1`, `end 200 body="until close"`,
	}
	for _, n := range []int{0, 1, 2, 3, 7, 64} {
		var r recorder
		s := r.stream()
		feed(s.Upstream, up, n)
		feed(s.Downstream, down, n)
		s.EOF()
		if s.Failed() != nil {
			t.Fatalf("pieces of %d: failed: %v", n, s.Failed())
		}
		if got := strings.Join(r.log, "\n"); got != strings.Join(want, "\n") {
			t.Errorf("pieces of %d:\n%s\nwant\n%s", n, got, strings.Join(want, "\n"))
		}
	}
}

func TestHTTPStreamErrors(t *testing.T) {
	for _, tc := range []struct {
		name, up, down string
		want           error
	}{
		{"not http", "", "\x00\x00\x00\x18ftypmp42", ErrNotHTTP},
		{"bad status", "", "HTTP/1.1 abc OK\r\n\r\n", ErrNotHTTP},
		{"head too long", "", "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", MaxHeader) + "\r\n\r\n", ErrHeaderTooLong},
		{"header without colon", "", "HTTP/1.1 200 OK\r\nbroken\r\n\r\n", ErrBadHeader},
		{"negative length", "", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", ErrBadHeader},
		{"bad chunk size", "", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", ErrBadChunk},
		{"chunk without CRLF", "", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naXX\r\n", ErrBadChunk},
		{"endless chunk line", "", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + strings.Repeat("1", 5000), ErrBadChunk},
		{"switching protocols", "", "HTTP/1.1 101 Switching Protocols\r\n\r\n", ErrNotHTTP},
		{"chunked request", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "", ErrRequestBody},
		{"bad request line", "GET /\r\n\r\n", "", ErrBadHeader},
		{"request head too long", "GET / HTTP/1.1\r\nX: " + strings.Repeat("a", MaxHeader), "", ErrHeaderTooLong},
		{"too many pipelined", strings.Repeat("GET / HTTP/1.1\r\n\r\n", MaxPending+1), "", ErrTooManyQueued},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r recorder
			s := r.stream()
			s.Upstream([]byte(tc.up))
			s.Downstream([]byte(tc.down))
			if !errors.Is(s.Failed(), tc.want) {
				t.Fatalf("Failed() = %v, want %v", s.Failed(), tc.want)
			}
			s.Downstream([]byte("HTTP/1.1 200 OK\r\n\r\n")) // ignored once failed
		})
	}
}

func TestContentRange(t *testing.T) {
	for in, want := range map[string][3]int64{
		"bytes 0-99/100":    {0, 99, 100},
		"bytes 100-199/*":   {100, 199, -1},
		"bytes 5-4/100":     {-1, -1, -1},
		"bytes 0-100/100":   {-1, -1, -1},
		"items 0-1/2":       {-1, -1, -1},
		"bytes */100":       {-1, -1, -1},
		"bytes -5-10/100":   {-1, -1, -1},
		"bytes 0-9/notanum": {-1, -1, -1},
	} {
		s, e, tot := parseContentRange(in)
		if [3]int64{s, e, tot} != want {
			t.Errorf("parseContentRange(%q) = %d %d %d, want %v", in, s, e, tot, want)
		}
	}
}

// FuzzHTTPStream: any bytes, split anywhere, give the same report as when
// fed whole, never panic, and never report more body than was fed.
func FuzzHTTPStream(f *testing.F) {
	f.Add("GET /a HTTP/1.1\r\nRange: bytes=0-\r\n\r\n", "HTTP/1.1 206 X\r\nContent-Range: bytes 0-1/2\r\nContent-Length: 2\r\n\r\nab", uint8(3))
	f.Add("", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", uint8(1))
	f.Add("HEAD / HTTP/1.1\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", uint8(2))
	f.Add("POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi", "HTTP/1.0 200 OK\r\n\r\nbody", uint8(5))
	head := fmt.Sprintf("HTTP/1.1 206 Partial Content\r\nContent-Type: video/mp4\r\nContent-Range: bytes 0-4095/%d\r\nContent-Length: 4096\r\n\r\n", 4096)
	f.Add("GET /v.mp4 HTTP/1.1\r\nHost: h\r\nRange: bytes=0-4095\r\n\r\n", head+string(readFixture(f, "faststart")[:4096]), uint8(9))
	f.Fuzz(func(t *testing.T, up, down string, split uint8) {
		var whole, pieces recorder
		a, b := whole.stream(), pieces.stream()
		a.Upstream([]byte(up))
		a.Downstream([]byte(down))
		a.EOF()
		feed(b.Upstream, up, int(split%16)+1)
		feed(b.Downstream, down, int(split%16)+1)
		b.EOF()
		if (a.Failed() == nil) != (b.Failed() == nil) {
			t.Fatalf("whole: %v, in pieces: %v", a.Failed(), b.Failed())
		}
		if a.Failed() == nil && strings.Join(whole.log, "\n") != strings.Join(pieces.log, "\n") {
			t.Fatalf("whole:\n%s\nin pieces:\n%s", strings.Join(whole.log, "\n"), strings.Join(pieces.log, "\n"))
		}
		var body int
		for _, bb := range whole.body {
			body += bb.Len()
		}
		if body > len(down) {
			t.Fatalf("%d body bytes from %d bytes fed", body, len(down))
		}
	})
}
