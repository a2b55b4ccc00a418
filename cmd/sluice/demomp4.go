package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// The demo's video: a synthetic MP4 whose boxes are real and whose samples
// are noise (sluice reads only the metadata).
const (
	demoMovieSeconds = 60
	demoMovieRate    = 250_000 // bytes/s (2 Mbit/s)
	demoMovieFPS     = 25
	demoMovieFactor  = 1.25
	demoMovieBurst   = 2 * time.Second
)

// box appends an MP4 box of type typ around the payload parts.
func box(typ string, parts ...[]byte) []byte {
	n := 8
	for _, p := range parts {
		n += len(p)
	}
	b := binary.BigEndian.AppendUint32(make([]byte, 0, n), uint32(n))
	b = append(b, typ...)
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// u32s encodes numbers as 32-bit big-endian words.
func u32s(v ...uint32) []byte {
	var b []byte
	for _, x := range v {
		b = binary.BigEndian.AppendUint32(b, x)
	}
	return b
}

// demoMovie builds a one-track MP4 of secs seconds at rate bytes/s, moov
// first, one chunk per second of samples.
func demoMovie(secs, rate, fps int) []byte {
	const scale = 1000
	n := secs * fps
	size := uint32(rate / fps)
	sizes := make([]uint32, n)
	for i := range sizes {
		sizes[i] = size
	}
	moov := func(chunks []uint32) []byte {
		dur := uint32(secs * scale)
		mvhd := box("mvhd", u32s(0, 0, 0, scale, dur, 0x00010000), []byte{1, 0}, make([]byte, 10),
			u32s(0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000), make([]byte, 24), u32s(2))
		tkhd := box("tkhd", u32s(3, 0, 0, 1, 0, dur, 0, 0), make([]byte, 8),
			u32s(0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000), u32s(640<<16, 360<<16))
		mdhd := box("mdhd", u32s(0, 0, 0, scale, dur), []byte{0x55, 0xc4, 0, 0})
		hdlr := box("hdlr", u32s(0, 0), []byte("vide"), make([]byte, 12), []byte("sluice demo\x00"))
		stbl := box("stbl",
			box("stsd", u32s(0, 0)),
			box("stts", u32s(0, 1, uint32(n), scale/uint32(fps))),
			box("stsc", u32s(0, 1, 1, uint32(fps), 1)),
			box("stsz", u32s(0, 0, uint32(n)), u32s(sizes...)),
			box("stco", u32s(0, uint32(len(chunks))), u32s(chunks...)))
		return box("moov", mvhd, box("trak", tkhd, box("mdia", mdhd, hdlr, box("minf", stbl))))
	}
	ftyp := box("ftyp", []byte("isom"), u32s(512), []byte("isommp41"))
	chunks := make([]uint32, secs)
	head := len(ftyp) + len(moov(chunks)) + 8 // the mdat's header
	for i := range chunks {
		chunks[i] = uint32(head + i*fps*int(size))
	}
	media := make([]byte, n*int(size))
	for i := range media {
		media[i] = byte(i*7 + i>>9) // noise enough, and checkable
	}
	return bytes.Join([][]byte{ftyp, moov(chunks), box("mdat", media)}, nil)
}

// serveMovie serves the demo's video over HTTP/1.1, Range requests
// included, as a plain file server would.
func serveMovie(ln net.Listener, movie []byte) *http.Server {
	hs := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "video/mp4")
		http.ServeContent(w, r, "demo.mp4", time.Time{}, bytes.NewReader(movie))
	})}
	go func() { _ = hs.Serve(ln) }()
	return hs
}

// viewer is a player's download of the demo video through sluice: Range
// from 0, read as it comes, checked byte by byte, until the demo ends
// (the viewer quits).
type viewer struct {
	got   atomic.Int64
	burst atomic.Int64 // nanoseconds until the burst region had arrived
	err   error
}

func (v *viewer) watch(ctx context.Context, addr string, movie []byte, burstEnd int64) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		v.err = err
		return
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	start := time.Now()
	fmt.Fprintf(c, "GET /demo.mp4 HTTP/1.1\r\nHost: demo\r\nRange: bytes=0-\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		if ctx.Err() == nil {
			v.err = err
		}
		return
	}
	defer resp.Body.Close()
	buf := make([]byte, 32<<10)
	var off int64
	for {
		n, err := resp.Body.Read(buf)
		if off+int64(n) > int64(len(movie)) || !bytes.Equal(buf[:n], movie[off:off+int64(n)]) {
			v.err = fmt.Errorf("video bytes %d-%d differ from the origin's", off, off+int64(n))
			return
		}
		off += int64(n)
		v.got.Store(off)
		if off >= burstEnd && v.burst.Load() == 0 {
			v.burst.Store(int64(time.Since(start)))
		}
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, io.EOF) {
				v.err = err
			}
			return
		}
	}
}
