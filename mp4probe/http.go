package mp4probe

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
)

// MaxHeader bounds an HTTP message head (request or response line plus
// headers), in bytes. A longer head makes the stream unknown.
const MaxHeader = 64 << 10

// MaxPending bounds the requests seen upstream whose responses have not
// been seen yet (pipelining).
const MaxPending = 256

// Request is what a response is paired with: the request that asked for it.
type Request struct {
	Method string
	Host   string
	Target string // the request target, e.g. "/videos/a.mp4?x=1"
	Range  string // the Range header, if any
}

// Response is an HTTP/1.x response head.
type Response struct {
	Request     Request // the request it answers; zero if none was seen
	Status      int
	ContentType string
	// Length is the body's length from Content-Length, or -1 when the body
	// is chunked or runs to the end of the connection.
	Length  int64
	Chunked bool
	// RangeStart, RangeEnd and RangeTotal come from a 206's Content-Range
	// (bytes START-END/TOTAL; TOTAL -1 for "*"); all -1 otherwise.
	RangeStart, RangeEnd, RangeTotal int64
	// BodyOffset is the stream offset of the body's first byte: how many
	// server bytes came before it on the connection.
	BodyOffset int64
}

// NoBody reports whether the response has no body whatever its headers say:
// a 1xx, 204 or 304, or the answer to a HEAD.
func (r *Response) NoBody() bool {
	return r.Status < 200 || r.Status == 204 || r.Status == 304 || r.Request.Method == "HEAD"
}

// BodyFunc receives each piece of a response body, decoded from chunked
// transfer coding, with its offset in the body. It must not keep data.
type BodyFunc func(r *Response, offset int64, data []byte)

// Errors that end the observation of a stream.
var (
	ErrHeaderTooLong = errors.New("mp4probe: HTTP head longer than MaxHeader")
	ErrNotHTTP       = errors.New("mp4probe: not an HTTP/1.x response")
	ErrBadHeader     = errors.New("mp4probe: malformed HTTP header")
	ErrBadChunk      = errors.New("mp4probe: malformed chunked body")
	ErrTooManyQueued = errors.New("mp4probe: too many pipelined requests")
	ErrRequestBody   = errors.New("mp4probe: request body not followed (chunked)")
)

// HTTPStream follows one HTTP/1.x connection: requests in the client's
// bytes (Upstream) and responses in the server's (Downstream), pairing them
// in order. Its methods are not safe for concurrent use with each other
// except that Upstream and Downstream may be called from two goroutines if
// the caller serializes them with a mutex (the pairing queue is shared).
type HTTPStream struct {
	OnResponse func(r *Response) // called for each response head; may be nil
	OnBody     BodyFunc          // called for each body piece; may be nil
	OnEnd      func(r *Response) // called when a response ends; may be nil

	up   reqParser
	down respParser
	err  error
}

// Failed returns why the stream is no longer followed, or nil.
func (s *HTTPStream) Failed() error { return s.err }

// Upstream observes bytes the client sent.
func (s *HTTPStream) Upstream(p []byte) {
	if s.err != nil {
		return
	}
	if err := s.up.feed(p, &s.down); err != nil {
		s.err = err
	}
}

// Downstream observes bytes the server sent.
func (s *HTTPStream) Downstream(p []byte) {
	if s.err != nil {
		return
	}
	if err := s.down.feed(p, s); err != nil {
		s.err = err
	}
}

// BodyLeft returns how many of the next server bytes are body bytes the
// stream can be told of with SkipBody instead of Downstream: the rest of a
// Content-Length body or of a chunk, or -1 for a body that runs to the end
// of the connection. It is 0 outside a body and once the stream failed.
func (s *HTTPStream) BodyLeft() int64 {
	if s.err != nil || s.down.resp == nil {
		return 0
	}
	switch {
	case s.down.state == inBody && s.down.resp.Length < 0:
		return -1
	case s.down.state == inBody, s.down.state == inChunkData:
		return s.down.left
	}
	return 0
}

// SkipBody accounts for n body bytes the server sent that the caller did
// not show the stream (n <= BodyLeft, or any n for a body that runs to the
// end of the connection). OnBody is not called for them; a later piece's
// offset counts them.
func (s *HTTPStream) SkipBody(n int64) {
	left := s.BodyLeft()
	if n <= 0 || left == 0 || (left > 0 && n > left) {
		if n > 0 && s.err == nil {
			s.err = errSkipPastBody
		}
		return
	}
	p := &s.down
	p.off += n
	p.fed += n
	if left < 0 {
		return
	}
	p.left -= n
	if p.left > 0 {
		return
	}
	if p.state == inChunkData {
		p.state = inChunkCRLF
		return
	}
	p.end(s)
}

// errSkipPastBody is a caller's bug: skipping bytes the stream must see.
var errSkipPastBody = errors.New("mp4probe: skipped past the body")

// EOF tells the stream the server closed its side: a body that runs to the
// end of the connection ends here.
func (s *HTTPStream) EOF() {
	if s.err == nil && s.down.resp != nil && s.down.state == inBody && s.down.resp.Length < 0 && !s.down.resp.Chunked {
		if s.OnEnd != nil {
			s.OnEnd(s.down.resp)
		}
		s.down.resp = nil
		s.down.state = inHead
	}
}

// reqParser finds request heads in the client's bytes and skips their
// Content-Length bodies.
type reqParser struct {
	head []byte
	skip int64 // body bytes still to skip
}

func (p *reqParser) feed(b []byte, down *respParser) error {
	for len(b) > 0 {
		if p.skip > 0 {
			n := min(int64(len(b)), p.skip)
			p.skip -= n
			b = b[n:]
			continue
		}
		i := bytes.Index(b, []byte("\n"))
		if i < 0 {
			if len(p.head)+len(b) > MaxHeader {
				return ErrHeaderTooLong
			}
			p.head = append(p.head, b...)
			return nil
		}
		if len(p.head)+i+1 > MaxHeader {
			return ErrHeaderTooLong
		}
		p.head = append(p.head, b[:i+1]...)
		b = b[i+1:]
		if !bytes.HasSuffix(p.head, []byte("\n\r\n")) && !bytes.HasSuffix(p.head, []byte("\n\n")) {
			if len(bytes.TrimSpace(p.head)) == 0 {
				p.head = p.head[:0] // blank lines between requests are allowed
			}
			continue
		}
		req, length, chunked, err := parseRequest(p.head)
		p.head = p.head[:0]
		if err != nil {
			return err
		}
		if chunked {
			return ErrRequestBody
		}
		if len(down.pending) >= MaxPending {
			return ErrTooManyQueued
		}
		down.pending = append(down.pending, req)
		p.skip = length
	}
	return nil
}

func parseRequest(head []byte) (Request, int64, bool, error) {
	lines := strings.Split(strings.TrimRight(string(head), "\r\n"), "\n")
	parts := strings.Fields(lines[0])
	if len(parts) != 3 || !strings.HasPrefix(parts[2], "HTTP/1.") {
		return Request{}, 0, false, ErrBadHeader
	}
	req := Request{Method: parts[0], Target: parts[1]}
	var length int64
	chunked := false
	for _, l := range lines[1:] {
		k, v, ok := strings.Cut(strings.TrimRight(l, "\r"), ":")
		if !ok {
			return Request{}, 0, false, ErrBadHeader
		}
		v = strings.TrimSpace(v)
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "host":
			req.Host = v
		case "range":
			req.Range = v
		case "content-length":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return Request{}, 0, false, ErrBadHeader
			}
			length = n
		case "transfer-encoding":
			chunked = strings.Contains(strings.ToLower(v), "chunked")
		}
	}
	return req, length, chunked, nil
}

// Response parser states.
const (
	inHead = iota
	inBody
	inChunkSize
	inChunkData
	inChunkCRLF
	inTrailer
)

// respParser follows response heads and bodies in the server's bytes.
type respParser struct {
	state   int
	head    []byte
	pending []Request
	resp    *Response
	off     int64 // body offset so far
	left    int64 // bytes left in the body (Content-Length) or chunk
	line    []byte
	fed     int64 // server bytes fed or skipped
}

func (p *respParser) feed(b []byte, s *HTTPStream) error {
	end := p.fed + int64(len(b))
	p.fed = end
	for len(b) > 0 {
		switch p.state {
		case inHead:
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				if len(p.head)+len(b) > MaxHeader {
					return ErrHeaderTooLong
				}
				p.head = append(p.head, b...)
				return p.checkStart()
			}
			if len(p.head)+i+1 > MaxHeader {
				return ErrHeaderTooLong
			}
			p.head = append(p.head, b[:i+1]...)
			b = b[i+1:]
			if err := p.checkStart(); err != nil {
				return err
			}
			if !bytes.HasSuffix(p.head, []byte("\n\r\n")) && !bytes.HasSuffix(p.head, []byte("\n\n")) {
				continue
			}
			r, err := parseResponse(p.head)
			p.head = p.head[:0]
			if err != nil {
				return err
			}
			r.BodyOffset = end - int64(len(b))
			if r.Status >= 200 || r.Status == 101 {
				// A final response answers the oldest request; 1xx
				// (but 101) are interim.
				if len(p.pending) > 0 {
					r.Request = p.pending[0]
					p.pending = p.pending[1:]
				}
			}
			if s.OnResponse != nil {
				s.OnResponse(r)
			}
			if r.Status == 101 {
				return ErrNotHTTP // the connection switches protocols
			}
			p.resp, p.off = r, 0
			switch {
			case r.NoBody() || r.Length == 0:
				p.end(s)
			case r.Chunked:
				p.state = inChunkSize
			default:
				p.state, p.left = inBody, r.Length
			}
		case inBody:
			n := int64(len(b))
			if p.resp.Length >= 0 {
				n = min(n, p.left)
				p.left -= n
			}
			p.body(s, b[:n])
			b = b[n:]
			if p.resp.Length >= 0 && p.left == 0 {
				p.end(s)
			}
		case inChunkSize, inChunkCRLF, inTrailer:
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				if len(p.line)+len(b) > 4096 {
					return ErrBadChunk
				}
				p.line = append(p.line, b...)
				return nil
			}
			if len(p.line)+i+1 > 4096 {
				return ErrBadChunk
			}
			p.line = append(p.line, b[:i+1]...)
			b = b[i+1:]
			line := strings.TrimRight(string(p.line), "\r\n")
			p.line = p.line[:0]
			switch p.state {
			case inChunkCRLF:
				if line != "" {
					return ErrBadChunk
				}
				p.state = inChunkSize
			case inTrailer:
				if line == "" {
					p.end(s)
				}
			default:
				size, _, _ := strings.Cut(line, ";")
				n, err := strconv.ParseInt(strings.TrimSpace(size), 16, 64)
				if err != nil || n < 0 || n > 1<<40 {
					return ErrBadChunk
				}
				if n == 0 {
					p.state = inTrailer
				} else {
					p.state, p.left = inChunkData, n
				}
			}
		case inChunkData:
			n := min(int64(len(b)), p.left)
			p.left -= n
			p.body(s, b[:n])
			b = b[n:]
			if p.left == 0 {
				p.state = inChunkCRLF
			}
		}
	}
	return nil
}

// checkStart fails as soon as the head's first bytes are not "HTTP/".
func (p *respParser) checkStart() error {
	n := min(len(p.head), 5)
	if !bytes.Equal(p.head[:n], []byte("HTTP/")[:n]) {
		return ErrNotHTTP
	}
	return nil
}

func (p *respParser) body(s *HTTPStream, b []byte) {
	if len(b) == 0 {
		return
	}
	if s.OnBody != nil {
		s.OnBody(p.resp, p.off, b)
	}
	p.off += int64(len(b))
}

func (p *respParser) end(s *HTTPStream) {
	if s.OnEnd != nil {
		s.OnEnd(p.resp)
	}
	p.resp = nil
	p.state = inHead
}

func parseResponse(head []byte) (*Response, error) {
	lines := strings.Split(strings.TrimRight(string(head), "\r\n"), "\n")
	parts := strings.SplitN(strings.TrimRight(lines[0], "\r"), " ", 3)
	if len(parts) < 2 || !strings.HasPrefix(parts[0], "HTTP/1.") {
		return nil, ErrNotHTTP
	}
	status, err := strconv.Atoi(parts[1])
	if err != nil || status < 100 || status > 999 {
		return nil, ErrNotHTTP
	}
	r := &Response{Status: status, Length: -1, RangeStart: -1, RangeEnd: -1, RangeTotal: -1}
	for _, l := range lines[1:] {
		k, v, ok := strings.Cut(strings.TrimRight(l, "\r"), ":")
		if !ok {
			return nil, ErrBadHeader
		}
		v = strings.TrimSpace(v)
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "content-type":
			r.ContentType = v
		case "content-length":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return nil, ErrBadHeader
			}
			r.Length = n
		case "transfer-encoding":
			r.Chunked = strings.Contains(strings.ToLower(v), "chunked")
		case "content-range":
			r.RangeStart, r.RangeEnd, r.RangeTotal = parseContentRange(v)
		}
	}
	if r.Chunked {
		r.Length = -1 // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3)
	}
	return r, nil
}

// parseContentRange reads "bytes START-END/TOTAL"; -1s when it is not one.
func parseContentRange(v string) (start, end, total int64) {
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return -1, -1, -1
	}
	span, tot, ok := strings.Cut(rest, "/")
	if !ok {
		return -1, -1, -1
	}
	a, b, ok := strings.Cut(span, "-")
	s, err1 := strconv.ParseInt(strings.TrimSpace(a), 10, 64)
	e, err2 := strconv.ParseInt(strings.TrimSpace(b), 10, 64)
	if !ok || err1 != nil || err2 != nil || s < 0 || e < s {
		return -1, -1, -1
	}
	total = -1
	if t := strings.TrimSpace(tot); t != "*" {
		n, err := strconv.ParseInt(t, 10, 64)
		if err != nil || n <= e {
			return -1, -1, -1
		}
		total = n
	}
	return s, e, total
}
