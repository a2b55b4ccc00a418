package upstream

import (
	"bytes"
	"errors"
	"strings"
	"time"
)

// MaxHeadBytes bounds the response head [ParseResponseHead] reads: a
// head not complete within it is not one it parses.
const MaxHeadBytes = 16 << 10

// Errors of [ParseResponseHead].
var (
	// ErrIncomplete: the bytes so far begin a response head but do not
	// end it; read more (up to MaxHeadBytes) and parse again.
	ErrIncomplete = errors.New("upstream: response head incomplete")
	// ErrNotHTTP: the bytes are not an HTTP/1.x response head, or it is
	// longer than MaxHeadBytes.
	ErrNotHTTP = errors.New("upstream: not an HTTP/1.x response head")
)

// Head is what [ParseResponseHead] found in an HTTP/1.x response head.
type Head struct {
	// Status is the status code: 100 to 999.
	Status int
	// RetryAfter is how long the Retry-After header asks to wait,
	// relative to the time given to ParseResponseHead; zero for an
	// HTTP-date in the past. Meaningful when HasRetryAfter.
	RetryAfter time.Duration
	// HasRetryAfter reports a valid Retry-After (the first one, if
	// several): delta-seconds or an HTTP-date.
	HasRetryAfter bool
	// Len is the head's length in bytes, the blank line included.
	Len int
}

// Busy reports whether the status asks the client to come back later:
// 429 Too Many Requests or 503 Service Unavailable.
func (h Head) Busy() bool { return h.Status == 429 || h.Status == 503 }

// CoolUntil returns when a server that answered h at now may be asked
// again: now plus h's Retry-After, or def when h has none, at most limit
// (limit ≤ 0: no bound).
func (h Head) CoolUntil(now time.Time, def, limit time.Duration) time.Time {
	d := def
	if h.HasRetryAfter {
		d = h.RetryAfter
	}
	if limit > 0 && d > limit {
		d = limit
	}
	return now.Add(max(d, 0))
}

// ParseResponseHead parses the head of an HTTP/1.x response at the start
// of p: its status line and its Retry-After header. now is the time an
// HTTP-date Retry-After is measured from. Line ends may be CRLF or LF.
//
// It returns [ErrIncomplete] while p is a prefix of a head shorter than
// [MaxHeadBytes] (with Status set once the status line is complete), and
// [ErrNotHTTP] for anything else that is not a head. It never panics, and
// allocates nothing for a head without an HTTP-date.
func ParseResponseHead(p []byte, now time.Time) (Head, error) {
	var h Head
	if len(p) > MaxHeadBytes {
		p = p[:MaxHeadBytes]
	}
	i := bytes.IndexByte(p, '\n')
	if i < 0 {
		if len(p) >= MaxHeadBytes || !couldBeStatusLine(p) {
			return h, ErrNotHTTP
		}
		return h, ErrIncomplete
	}
	code, ok := parseStatusLine(p[:i])
	if !ok {
		return h, ErrNotHTTP
	}
	h.Status = code
	off := i + 1
	for {
		j := bytes.IndexByte(p[off:], '\n')
		if j < 0 {
			if len(p) >= MaxHeadBytes {
				return Head{}, ErrNotHTTP
			}
			return h, ErrIncomplete
		}
		line := trimCR(p[off : off+j])
		off += j + 1
		if len(line) == 0 {
			h.Len = off
			return h, nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue // an obsolete folded continuation: not a header we read
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !isToken(line[:colon]) {
			return Head{}, ErrNotHTTP
		}
		if h.HasRetryAfter || !equalFold(line[:colon], "retry-after") {
			continue
		}
		h.RetryAfter, h.HasRetryAfter = parseRetryAfter(trimOWS(line[colon+1:]), now)
	}
}

// parseStatusLine parses "HTTP/1.x SSS[ reason]" (a trailing CR
// allowed) and returns the status code.
func parseStatusLine(line []byte) (int, bool) {
	line = trimCR(line)
	if len(line) < 12 || string(line[:7]) != "HTTP/1." || !isDigit(line[7]) || line[8] != ' ' {
		return 0, false
	}
	c := line[9:12]
	if !isDigit(c[0]) || !isDigit(c[1]) || !isDigit(c[2]) || c[0] == '0' {
		return 0, false
	}
	if len(line) > 12 && line[12] != ' ' {
		return 0, false
	}
	return int(c[0]-'0')*100 + int(c[1]-'0')*10 + int(c[2]-'0'), true
}

// couldBeStatusLine reports whether p, with no line end yet, may begin a
// status line.
func couldBeStatusLine(p []byte) bool {
	const prefix = "HTTP/1."
	n := min(len(p), len(prefix))
	if string(p[:n]) != prefix[:n] {
		return false
	}
	for k, b := range p[n:] { // version digit, space, code digits
		switch {
		case k == 0 || k >= 2 && k <= 4:
			if !isDigit(b) {
				return false
			}
		case k == 1 || k == 5:
			if b != ' ' {
				return false
			}
		}
	}
	return true
}

// maxRetryAfterSeconds bounds a delta-seconds Retry-After so that it
// fits a time.Duration (about 292 years).
const maxRetryAfterSeconds = int64(1<<63-1) / int64(time.Second)

// parseRetryAfter parses a Retry-After value: delta-seconds, or an
// HTTP-date (IMF-fixdate, RFC 850 or asctime) measured from now.
func parseRetryAfter(v []byte, now time.Time) (time.Duration, bool) {
	if len(v) == 0 {
		return 0, false
	}
	if isDigit(v[0]) {
		var n int64
		for _, b := range v {
			if !isDigit(b) {
				return 0, false
			}
			if n < maxRetryAfterSeconds {
				n = n*10 + int64(b-'0')
			}
		}
		n = min(n, maxRetryAfterSeconds)
		return time.Duration(n) * time.Second, true
	}
	if len(v) > 64 {
		return 0, false
	}
	s := string(v)
	for _, layout := range [...]string{
		"Mon, 02 Jan 2006 15:04:05 GMT",   // IMF-fixdate
		"Monday, 02-Jan-06 15:04:05 GMT",  // RFC 850
		"Mon Jan _2 15:04:05 2006",        // asctime
		"Mon, 02 Jan 2006 15:04:05 -0700", // seen in the wild
	} {
		t, err := time.Parse(layout, s)
		if err == nil {
			return max(t.Sub(now), 0), true
		}
	}
	return 0, false
}

func isDigit(b byte) bool { return b >= '0' && b <= '9' }

func trimCR(b []byte) []byte {
	if len(b) > 0 && b[len(b)-1] == '\r' {
		return b[:len(b)-1]
	}
	return b
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// isToken reports whether b is an HTTP token (a header name).
func isToken(b []byte) bool {
	for _, c := range b {
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// equalFold reports whether b is lower, ignoring ASCII case.
func equalFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// Replay keeps the first bytes a client sent, so that a connection
// refused by its server before answering (a 429 or 503, a reset) can be
// replayed to another. It keeps up to its limit; past it, the connection
// can no longer be replayed. The zero value keeps up to
// [DefaultReplayBytes]. It is not safe for concurrent use.
type Replay struct {
	// Limit is how many bytes it keeps; zero means DefaultReplayBytes.
	Limit int
	buf   []byte
	over  bool
}

// Write keeps p, if the total stays within the limit; it always returns
// len(p), nil, so that it can sit in an io.TeeReader or io.MultiWriter.
func (r *Replay) Write(p []byte) (int, error) {
	limit := r.Limit
	if limit <= 0 {
		limit = DefaultReplayBytes
	}
	if r.over || len(r.buf)+len(p) > limit {
		r.over = true
		r.buf = nil
		return len(p), nil
	}
	r.buf = append(r.buf, p...)
	return len(p), nil
}

// Complete reports whether it holds every byte written: false once more
// than its limit was written.
func (r *Replay) Complete() bool { return !r.over }

// Bytes returns the bytes kept; nil once not Complete.
func (r *Replay) Bytes() []byte { return r.buf }

// Release forgets the bytes and keeps no more: for when the first byte
// reached the client and no retry can happen.
func (r *Replay) Release() {
	r.buf = nil
	r.over = true
}
