package mp4probe

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Box is a top-level MP4 box (ISO/IEC 14496-12 §4.2) seen in a stream.
type Box struct {
	// Type is the four-character code, e.g. "moov".
	Type string
	// Offset is where the box header starts, in bytes from the start of
	// the stream the Walker was fed.
	Offset int64
	// Size is the whole box, header included; -1 for a box that runs to
	// the end of the stream (size 0 in the file).
	Size int64
	// Header is the header's length: 8, or 16 with a 64-bit size.
	Header int
}

// End is the stream offset just past the box, or -1 if it runs to the end.
func (b Box) End() int64 {
	if b.Size < 0 {
		return -1
	}
	return b.Offset + b.Size
}

// DefaultMaxKeep bounds a kept box's payload: a moov larger than this makes
// the stream unknown rather than grow memory without bound.
const DefaultMaxKeep = 16 << 20

// Errors that end a Walker.
var (
	ErrNotMP4    = errors.New("mp4probe: stream does not start with an MP4 box")
	ErrBadBox    = errors.New("mp4probe: malformed box header")
	ErrBoxTooBig = errors.New("mp4probe: box to keep is larger than MaxKeep")
)

// firstTypes are the boxes an MP4 stream may start with.
var firstTypes = map[string]bool{
	"ftyp": true, "styp": true, "moov": true, "free": true, "skip": true, "wide": true,
	"mdat": true, "pdin": true, "sidx": true, "moof": true, "uuid": true, "emsg": true, "prft": true,
}

// Walker finds the top-level boxes of an MP4 stream fed to it piece by
// piece, and hands over whole the payloads of the boxes it is asked to keep
// (moov, moof), buffering at most MaxKeep bytes. Other boxes (mdat) are
// counted, never buffered.
type Walker struct {
	// Keep reports whether to buffer a box's payload; nil keeps none.
	Keep func(b Box) bool
	// OnBox is called for each box header; may be nil.
	OnBox func(b Box)
	// OnKept is called with a kept box's whole payload; it must not keep
	// the slice.
	OnKept func(b Box, payload []byte)
	// MaxKeep bounds a kept payload; 0 means DefaultMaxKeep.
	MaxKeep int64

	off   int64    // bytes consumed
	hdr   [16]byte // a box header being assembled
	hn    int
	cur   Box
	in    bool  // inside cur's payload
	left  int64 // payload bytes left in cur; -1 to the end of the stream
	keep  []byte
	keeps bool
	boxes int
	err   error
}

// Failed returns why the stream is no longer followed, or nil.
func (w *Walker) Failed() error { return w.err }

// Offset returns how many bytes were fed.
func (w *Walker) Offset() int64 { return w.off }

// Feed observes the next bytes of the stream.
func (w *Walker) Feed(p []byte) {
	for len(p) > 0 && w.err == nil {
		if w.in {
			n := int64(len(p))
			if w.left >= 0 {
				n = min(n, w.left)
				w.left -= n
			}
			if w.keeps {
				w.keep = append(w.keep, p[:n]...)
			}
			w.off += n
			p = p[n:]
			if w.left == 0 {
				w.finish()
			}
			continue
		}
		// Assemble the 8-byte header, and 8 more for a 64-bit size.
		need := 8
		if w.hn >= 8 && binary.BigEndian.Uint32(w.hdr[:4]) == 1 {
			need = 16
		}
		k := copy(w.hdr[w.hn:need], p)
		w.hn += k
		w.off += int64(k)
		p = p[k:]
		if w.hn < need {
			continue
		}
		if need == 8 && binary.BigEndian.Uint32(w.hdr[:4]) == 1 {
			continue // read the 64-bit size next
		}
		w.start(need)
	}
}

// start begins the box whose header of length n is in w.hdr.
func (w *Walker) start(n int) {
	b := Box{Type: string(w.hdr[4:8]), Offset: w.off - int64(n), Header: n}
	size32 := binary.BigEndian.Uint32(w.hdr[:4])
	switch {
	case size32 == 1:
		size64 := binary.BigEndian.Uint64(w.hdr[8:16])
		if size64 < 16 || size64 > 1<<62 {
			w.err = fmt.Errorf("%w: %q at %d: 64-bit size %d", ErrBadBox, b.Type, b.Offset, size64)
			return
		}
		b.Size = int64(size64)
	case size32 == 0:
		b.Size = -1
	case size32 < 8:
		w.err = fmt.Errorf("%w: %q at %d: size %d", ErrBadBox, b.Type, b.Offset, size32)
		return
	default:
		b.Size = int64(size32)
	}
	if !validType(w.hdr[4:8]) {
		w.err = fmt.Errorf("%w: type %q at %d", ErrBadBox, b.Type, b.Offset)
		return
	}
	if w.boxes == 0 && !firstTypes[b.Type] {
		w.err = fmt.Errorf("%w: first box is %q", ErrNotMP4, b.Type)
		return
	}
	w.boxes++
	w.hn = 0
	w.cur, w.in = b, true
	w.left = -1
	if b.Size >= 0 {
		w.left = b.Size - int64(n)
	}
	if w.OnBox != nil {
		w.OnBox(b)
	}
	w.keeps = w.Keep != nil && w.Keep(b)
	if w.keeps {
		max := w.MaxKeep
		if max <= 0 {
			max = DefaultMaxKeep
		}
		if w.left < 0 || w.left > max {
			w.err = fmt.Errorf("%w: %q at %d: %d bytes", ErrBoxTooBig, b.Type, b.Offset, b.Size)
			return
		}
		w.keep = make([]byte, 0, min(w.left, 64<<10)) // grows with the data, not with the header's claim
	}
	if w.left == 0 {
		w.finish()
	}
}

// Opaque returns how many of the next bytes the Walker needs not see: the
// rest of a box it does not keep (an mdat), or -1 for such a box that runs
// to the end of the stream. It is 0 when it must see the next bytes, and -1
// once it failed (it needs nothing more).
func (w *Walker) Opaque() int64 {
	switch {
	case w.err != nil:
		return -1
	case !w.in || w.keeps:
		return 0
	}
	return w.left
}

// Resume makes a new Walker start inside a box of type typ with left bytes
// of it still to come: a stream that starts in the middle of a file, where
// the file's layout is known from elsewhere. It must be called before Feed.
func (w *Walker) Resume(typ string, left int64) {
	if w.off != 0 || w.boxes != 0 || left <= 0 {
		return
	}
	w.boxes = 1
	w.cur, w.in, w.left = Box{Type: typ, Offset: -1, Size: -1}, true, left
}

// Need returns how many of the next bytes the Walker must see before it
// knows more: the rest of a box it keeps, or of a box header. It is 0 when
// the next bytes are opaque, the length of the stream is unknown, or it
// failed.
func (w *Walker) Need() int64 {
	switch {
	case w.err != nil:
		return 0
	case !w.in:
		if w.hn >= 8 && binary.BigEndian.Uint32(w.hdr[:4]) == 1 {
			return int64(16 - w.hn)
		}
		return int64(8 - w.hn)
	case w.keeps && w.left > 0:
		return w.left
	}
	return 0
}

// Skip accounts for n bytes fed around the Walker; n must be at most
// Opaque (any n once it failed or in a box to the end of the stream).
func (w *Walker) Skip(n int64) {
	if n <= 0 || w.err != nil {
		return
	}
	if op := w.Opaque(); op == 0 || (op > 0 && n > op) {
		w.err = fmt.Errorf("%w: skipped %d bytes the walker had to see", ErrBadBox, n)
		return
	}
	w.off += n
	if w.left < 0 {
		return
	}
	w.left -= n
	if w.left == 0 {
		w.finish()
	}
}

func (w *Walker) finish() {
	if w.keeps && w.OnKept != nil {
		w.OnKept(w.cur, w.keep)
	}
	w.keep, w.keeps, w.in = nil, false, false
}

// validType reports whether a box type is four printable characters, as
// every registered type is (© is 0xA9).
func validType(t []byte) bool {
	for _, c := range t {
		if (c < 0x20 || c > 0x7e) && c != 0xa9 {
			return false
		}
	}
	return true
}
