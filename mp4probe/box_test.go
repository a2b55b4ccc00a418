package mp4probe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// box builds a box with a 32-bit size (or 64-bit when large, or 0 when
// toEnd).
func box(typ string, payload []byte, large, toEnd bool) []byte {
	var b []byte
	switch {
	case toEnd:
		b = binary.BigEndian.AppendUint32(nil, 0)
		b = append(b, typ...)
	case large:
		b = binary.BigEndian.AppendUint32(nil, 1)
		b = append(b, typ...)
		b = binary.BigEndian.AppendUint64(b, uint64(16+len(payload)))
	default:
		b = binary.BigEndian.AppendUint32(nil, uint32(8+len(payload)))
		b = append(b, typ...)
	}
	return append(b, payload...)
}

type walkLog struct{ lines []string }

func (l *walkLog) walker(maxKeep int64) *Walker {
	return &Walker{
		Keep: func(b Box) bool { return b.Type == "moov" || b.Type == "moof" },
		OnBox: func(b Box) {
			l.lines = append(l.lines, fmt.Sprintf("box %s @%d size=%d hdr=%d", b.Type, b.Offset, b.Size, b.Header))
		},
		OnKept:  func(b Box, p []byte) { l.lines = append(l.lines, fmt.Sprintf("kept %s %q", b.Type, p)) },
		MaxKeep: maxKeep,
	}
}

func TestWalker(t *testing.T) {
	var stream []byte
	stream = append(stream, box("ftyp", []byte("isom\x00\x00\x02\x00"), false, false)...)
	stream = append(stream, box("free", nil, false, false)...)
	stream = append(stream, box("uuid", make([]byte, 16), false, false)...)
	stream = append(stream, box("moov", []byte("MOVIE-HEADER"), false, false)...)
	stream = append(stream, box("mdat", []byte("0123456789"), true, false)...)
	stream = append(stream, box("moof", []byte("frag"), false, false)...)
	stream = append(stream, box("mdat", []byte("tail to the end"), false, true)...)
	want := strings.Join([]string{
		"box ftyp @0 size=16 hdr=8",
		"box free @16 size=8 hdr=8",
		"box uuid @24 size=24 hdr=8",
		"box moov @48 size=20 hdr=8",
		`kept moov "MOVIE-HEADER"`,
		"box mdat @68 size=26 hdr=16",
		"box moof @94 size=12 hdr=8",
		`kept moof "frag"`,
		"box mdat @106 size=-1 hdr=8",
	}, "\n")
	for _, n := range []int{0, 1, 3, 7, 100} {
		var l walkLog
		w := l.walker(0)
		feed(w.Feed, string(stream), n)
		if w.Failed() != nil {
			t.Fatalf("pieces of %d: %v", n, w.Failed())
		}
		if got := strings.Join(l.lines, "\n"); got != want {
			t.Errorf("pieces of %d:\n%s\nwant\n%s", n, got, want)
		}
		if w.Offset() != int64(len(stream)) {
			t.Errorf("Offset = %d, want %d", w.Offset(), len(stream))
		}
	}
}

func TestWalkerErrors(t *testing.T) {
	ftyp := box("ftyp", []byte("isom"), false, false)
	for _, tc := range []struct {
		name   string
		stream []byte
		want   error
	}{
		{"not mp4", []byte("HTTP/1.1 200 OK\r\n\r\n"), ErrNotMP4},
		{"first box not mp4", box("abcd", nil, false, false), ErrNotMP4},
		{"size below 8", append(ftyp, 0, 0, 0, 4, 'f', 'r', 'e', 'e'), ErrBadBox},
		{"64-bit size below 16", append(ftyp, append([]byte{0, 0, 0, 1, 'm', 'd', 'a', 't'}, 0, 0, 0, 0, 0, 0, 0, 8)...), ErrBadBox},
		{"type not printable", append(ftyp, 0, 0, 0, 8, 0, 1, 2, 3), ErrBadBox},
		{"moov too big", append(ftyp, box("moov", make([]byte, 100), false, false)...), ErrBoxTooBig},
		{"moov to the end", append(ftyp, box("moov", nil, false, true)...), ErrBoxTooBig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var l walkLog
			w := l.walker(64)
			w.Feed(tc.stream)
			if !errors.Is(w.Failed(), tc.want) {
				t.Fatalf("Failed() = %v, want %v", w.Failed(), tc.want)
			}
		})
	}
}

// FuzzWalker: any bytes, split anywhere, give the same boxes as when fed
// whole; kept payloads never exceed MaxKeep; nothing panics.
func FuzzWalker(f *testing.F) {
	f.Add(append(box("ftyp", []byte("isom"), false, false), box("moov", []byte("m"), false, false)...), uint8(3))
	f.Add(append(box("ftyp", nil, false, false), box("mdat", []byte("xx"), true, false)...), uint8(1))
	f.Add(box("moof", []byte("f"), false, true), uint8(7))
	for _, name := range fixtures { // the fixtures' first boxes
		data := readFixture(f, name)
		f.Add(data[:min(len(data), 8<<10)], uint8(len(name)))
	}
	f.Fuzz(func(t *testing.T, stream []byte, split uint8) {
		const maxKeep = 1 << 10
		var whole, pieces walkLog
		a, b := whole.walker(maxKeep), pieces.walker(maxKeep)
		kept := 0
		a.OnKept = func(bx Box, p []byte) {
			kept = max(kept, len(p))
			whole.lines = append(whole.lines, fmt.Sprintf("kept %s %q", bx.Type, p))
		}
		a.Feed(stream)
		feed(b.Feed, string(stream), int(split%16)+1)
		if (a.Failed() == nil) != (b.Failed() == nil) {
			t.Fatalf("whole: %v, in pieces: %v", a.Failed(), b.Failed())
		}
		if strings.Join(whole.lines, "\n") != strings.Join(pieces.lines, "\n") {
			t.Fatalf("whole:\n%s\nin pieces:\n%s", strings.Join(whole.lines, "\n"), strings.Join(pieces.lines, "\n"))
		}
		if kept > maxKeep {
			t.Fatalf("kept %d bytes, MaxKeep %d", kept, maxKeep)
		}
	})
}
