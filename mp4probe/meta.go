package mp4probe

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"
)

// The moov and moof decoders below read only the boxes pacing needs, in
// place: every count a box claims is checked against the bytes the box
// holds before it is used, so memory and work are bounded by the payload
// whatever it claims.

// children calls fn with the type and payload of each box in p, a
// container's payload. It fails on a box whose size does not fit.
func children(p []byte, fn func(typ string, body []byte) error) error {
	for len(p) > 0 {
		if len(p) < 8 {
			return fmt.Errorf("%w: %d stray bytes in a container", ErrBadMovie, len(p))
		}
		size, hdr := uint64(binary.BigEndian.Uint32(p)), uint64(8)
		typ := string(p[4:8])
		switch size {
		case 0:
			size = uint64(len(p))
		case 1:
			if len(p) < 16 {
				return fmt.Errorf("%w: %q: short 64-bit size", ErrBadMovie, typ)
			}
			size, hdr = binary.BigEndian.Uint64(p[8:]), 16
		}
		if size < hdr || size > uint64(len(p)) {
			return fmt.Errorf("%w: %q: size %d in %d bytes", ErrBadMovie, typ, size, len(p))
		}
		if err := fn(typ, p[hdr:size]); err != nil {
			return err
		}
		p = p[size:]
	}
	return nil
}

// fullBox splits a full box's payload into version, flags and the rest.
func fullBox(typ string, p []byte) (version byte, flags uint32, rest []byte, err error) {
	if len(p) < 4 {
		return 0, 0, nil, fmt.Errorf("%w: %q: %d bytes", ErrBadMovie, typ, len(p))
	}
	return p[0], binary.BigEndian.Uint32(p) & 0xffffff, p[4:], nil
}

// table checks that a full box's rest holds a 32-bit entry count and that
// many entries of size bytes after skip bytes, and returns the count and
// the entries.
func table(typ string, rest []byte, skip, size int) (int, []byte, error) {
	if len(rest) < skip+4 {
		return 0, nil, fmt.Errorf("%w: %q: %d bytes", ErrBadMovie, typ, len(rest))
	}
	n := uint64(binary.BigEndian.Uint32(rest[skip:]))
	body := rest[skip+4:]
	if n*uint64(size) > uint64(len(body)) {
		return 0, nil, fmt.Errorf("%w: %q: %d entries of %d bytes in %d bytes", ErrBadMovie, typ, n, size, len(body))
	}
	return int(n), body, nil
}

// timing reads the timescale and duration of an mvhd or mdhd.
func timing(typ string, p []byte) (scale uint32, dur uint64, err error) {
	v, _, rest, err := fullBox(typ, p)
	if err != nil {
		return 0, 0, err
	}
	if v == 1 {
		if len(rest) < 28 {
			return 0, 0, fmt.Errorf("%w: %q: short", ErrBadMovie, typ)
		}
		return binary.BigEndian.Uint32(rest[16:]), binary.BigEndian.Uint64(rest[20:]), nil
	}
	if len(rest) < 16 {
		return 0, 0, fmt.Errorf("%w: %q: short", ErrBadMovie, typ)
	}
	return binary.BigEndian.Uint32(rest[8:]), uint64(binary.BigEndian.Uint32(rest[12:])), nil
}

// trex holds a track's fragment defaults (ISO/IEC 14496-12 §8.8.3).
type trex struct {
	dur, size uint32
}

// trak is what a trak box says, as far as pacing needs.
type trak struct {
	id        uint32
	handler   string
	scale     uint32
	dur       uint64
	encrypted bool
	shift     int64 // decode time (track timescale) shown at time 0
	emptyDur  uint64
	hasElst   bool
	stts      []byte // entries, count checked
	sttsN     int
	stsc      []byte
	stscN     int
	stszSize  uint32 // uniform sample size, or 0
	stsz      []byte
	stszN     int
	chunks    []byte
	chunksN   int
	chunk64   bool
}

// DecodeMoov reads a moov box's payload (without its 8- or 16-byte header)
// found at file offset off with a header of hdr bytes. It returns an error
// wrapping [ErrBadMovie], [ErrEncrypted] or [ErrNoMedia] when the moov
// cannot be used for pacing. Memory and work are bounded by the payload's
// size (and MaxSamples), whatever its boxes claim.
func DecodeMoov(payload []byte, off int64, hdr int) (*Movie, error) {
	m := &Movie{
		MoovEnd: off + int64(hdr) + int64(len(payload)),
		trex:    map[uint32]trex{},
		scale:   map[uint32]uint32{},
	}
	var movieScale uint32
	var traks []*trak
	err := children(payload, func(typ string, body []byte) error {
		switch typ {
		case "mvhd":
			s, _, err := timing(typ, body)
			movieScale = s
			return err
		case "pssh":
			return ErrEncrypted
		case "mvex":
			m.Fragmented = true
			return children(body, func(typ string, body []byte) error {
				if typ != "trex" {
					return nil
				}
				_, _, r, err := fullBox(typ, body)
				if err != nil || len(r) < 20 {
					return fmt.Errorf("%w: short trex", ErrBadMovie)
				}
				id := binary.BigEndian.Uint32(r)
				m.trex[id] = trex{dur: binary.BigEndian.Uint32(r[8:]), size: binary.BigEndian.Uint32(r[12:])}
				return nil
			})
		case "trak":
			t, err := decodeTrak(body)
			if err != nil {
				return err
			}
			traks = append(traks, t)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	chunks := 0
	for _, t := range traks {
		chunks += t.chunksN
	}
	all := make([]sample, 0, min(chunks, MaxSamples))
	for _, t := range traks {
		if t.handler != "vide" && t.handler != "soun" {
			continue // text, hints, metadata: players don't wait for them
		}
		if t.encrypted {
			return nil, ErrEncrypted
		}
		if t.scale == 0 {
			return nil, fmt.Errorf("%w: track %d has timescale 0", ErrBadMovie, t.id)
		}
		if t.hasElst && movieScale > 0 {
			t.shift -= int64(float64(t.emptyDur) * float64(t.scale) / float64(movieScale))
		}
		m.scale[t.id] = t.scale
		// The presented duration: the edit list's start (AAC priming, B-frame
		// delay) is not shown.
		dur := t.dur
		if t.shift > 0 && uint64(t.shift) < dur {
			dur -= uint64(t.shift)
		}
		tr := Track{ID: t.id, Handler: t.handler, Timescale: t.scale, Samples: t.stszN, Duration: ticks(dur, t.scale)}
		n := len(all)
		if all, err = t.appendSamples(all); err != nil {
			return nil, fmt.Errorf("track %d: %w", t.id, err)
		}
		for _, s := range all[n:] {
			tr.Bytes += s.size
		}
		m.Tracks = append(m.Tracks, tr)
		m.Duration = max(m.Duration, tr.Duration)
	}
	if len(m.Tracks) == 0 || (!m.Fragmented && len(all) == 0) {
		return nil, ErrNoMedia
	}
	m.addSamples(all)
	return m, nil
}

// decodeTrak reads the boxes of a trak that pacing needs.
func decodeTrak(p []byte) (*trak, error) {
	t := new(trak)
	var walk func(typ string, body []byte) error
	walk = func(typ string, body []byte) error {
		switch typ {
		case "mdia", "minf", "stbl", "edts":
			return children(body, walk)
		case "tkhd":
			v, _, r, err := fullBox(typ, body)
			if err != nil {
				return err
			}
			at := 8 // creation and modification times
			if v == 1 {
				at = 16
			}
			if len(r) < at+4 {
				return fmt.Errorf("%w: short tkhd", ErrBadMovie)
			}
			t.id = binary.BigEndian.Uint32(r[at:])
		case "mdhd":
			var err error
			t.scale, t.dur, err = timing(typ, body)
			return err
		case "hdlr":
			_, _, r, err := fullBox(typ, body)
			if err != nil || len(r) < 8 {
				return fmt.Errorf("%w: short hdlr", ErrBadMovie)
			}
			t.handler = string(r[4:8])
		case "elst":
			return t.decodeElst(body)
		case "stsd":
			_, _, r, err := fullBox(typ, body)
			if err != nil || len(r) < 4 {
				return fmt.Errorf("%w: short stsd", ErrBadMovie)
			}
			return children(r[4:], func(typ string, _ []byte) error {
				switch typ {
				case "encv", "enca", "enct", "encs":
					t.encrypted = true
				}
				return nil
			})
		case "stts":
			_, _, r, err := fullBox(typ, body)
			if err == nil {
				t.sttsN, t.stts, err = table(typ, r, 0, 8)
			}
			return err
		case "stsc":
			_, _, r, err := fullBox(typ, body)
			if err == nil {
				t.stscN, t.stsc, err = table(typ, r, 0, 12)
			}
			return err
		case "stsz":
			_, _, r, err := fullBox(typ, body)
			if err != nil || len(r) < 8 {
				return fmt.Errorf("%w: short stsz", ErrBadMovie)
			}
			t.stszSize = binary.BigEndian.Uint32(r)
			if t.stszSize != 0 {
				t.stszN = int(binary.BigEndian.Uint32(r[4:]))
				return nil
			}
			t.stszN, t.stsz, err = table(typ, r, 4, 4)
			return err
		case "stz2":
			return fmt.Errorf("%w: compact sample sizes (stz2) are not followed", ErrBadMovie)
		case "stco", "co64":
			_, _, r, err := fullBox(typ, body)
			size := 4
			if t.chunk64 = typ == "co64"; t.chunk64 {
				size = 8
			}
			if err == nil {
				t.chunksN, t.chunks, err = table(typ, r, 0, size)
			}
			return err
		}
		return nil
	}
	if err := children(p, walk); err != nil {
		return nil, err
	}
	return t, nil
}

// decodeElst reads an edit list: leading empty edits delay the track; the
// first real edit's media time is the decode time shown at its start.
func (t *trak) decodeElst(body []byte) error {
	v, _, r, err := fullBox("elst", body)
	if err != nil {
		return err
	}
	size := 12
	if v == 1 {
		size = 20
	}
	n, r, err := table("elst", r, 0, size)
	if err != nil {
		return err
	}
	t.hasElst = true
	for i := range n {
		e := r[i*size:]
		var dur uint64
		var mediaTime int64
		if v == 1 {
			dur, mediaTime = binary.BigEndian.Uint64(e), int64(binary.BigEndian.Uint64(e[8:]))
		} else {
			dur, mediaTime = uint64(binary.BigEndian.Uint32(e)), int64(int32(binary.BigEndian.Uint32(e[4:])))
		}
		if mediaTime == -1 {
			t.emptyDur += dur
			continue
		}
		t.shift = mediaTime
		return nil
	}
	return nil
}

// appendSamples appends the track's chunks to all, as samples: a chunk's
// samples are contiguous, so one curve sample per chunk, due by its first
// sample's decode time, keeps memory to the chunk table's size. Work is
// bounded by MaxSamples.
func (t *trak) appendSamples(all []sample) ([]sample, error) {
	count := t.stszN
	if count == 0 {
		return all, nil // no samples: a fragmented movie's empty table
	}
	if count > MaxSamples {
		return nil, fmt.Errorf("%w: more than %d samples", ErrBadMovie, MaxSamples)
	}
	if t.stscN == 0 || t.chunksN == 0 || t.sttsN == 0 {
		return nil, fmt.Errorf("%w: sample table lacks stts, stsc or stco", ErrBadMovie)
	}
	size := func(i int) int64 {
		if t.stszSize != 0 {
			return int64(t.stszSize)
		}
		return int64(binary.BigEndian.Uint32(t.stsz[4*i:]))
	}
	chunk := func(i int) int64 {
		if t.chunk64 {
			return int64(min(binary.BigEndian.Uint64(t.chunks[8*i:]), math.MaxInt64/2))
		}
		return int64(binary.BigEndian.Uint32(t.chunks[4*i:]))
	}
	// Decode times, run by run through stts.
	run, left := 0, binary.BigEndian.Uint32(t.stts)
	var dts int64
	nextTime := func() (time.Duration, error) {
		for left == 0 {
			if run++; run >= t.sttsN {
				return 0, fmt.Errorf("%w: stts covers fewer samples than stsz", ErrBadMovie)
			}
			left = binary.BigEndian.Uint32(t.stts[8*run:])
		}
		left--
		at := dts - t.shift
		dts += int64(binary.BigEndian.Uint32(t.stts[8*run+4:]))
		return ticks(uint64(max(at, 0)), t.scale), nil
	}
	s := 0
	for e := 0; e < t.stscN && s < count; e++ {
		first := int(binary.BigEndian.Uint32(t.stsc[12*e:])) - 1
		perChunk := binary.BigEndian.Uint32(t.stsc[12*e+4:])
		last := t.chunksN // chunks of this entry: [first, last)
		if e+1 < t.stscN {
			last = int(binary.BigEndian.Uint32(t.stsc[12*(e+1):])) - 1
		}
		if first < 0 || last > t.chunksN || last < first || (e == 0 && first != 0) {
			return nil, fmt.Errorf("%w: stsc entry %d names chunks %d-%d of %d", ErrBadMovie, e, first+1, last, t.chunksN)
		}
		for c := first; c < last && s < count; c++ {
			ch := sample{off: chunk(c)}
			for k := uint32(0); k < perChunk && s < count; k++ {
				at, err := nextTime()
				if err != nil {
					return nil, err
				}
				if k == 0 {
					ch.at = at
				}
				ch.size += size(s)
				s++
			}
			all = append(all, ch)
		}
	}
	if s < count {
		return nil, fmt.Errorf("%w: chunks hold %d of %d samples", ErrBadMovie, s, count)
	}
	return all, nil
}

// AddMoof adds the samples a moof box describes (its payload, found at file
// offset off) to a fragmented Movie's curve and to its tracks' totals.
// Memory and work are bounded by the payload's size.
func (m *Movie) AddMoof(payload []byte, off int64) error {
	var all []sample
	err := children(payload, func(typ string, body []byte) error {
		switch typ {
		case "pssh":
			return ErrEncrypted
		case "traf":
			var err error
			all, err = m.decodeTraf(body, off, all)
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	m.addSamples(all)
	return nil
}

// Track fragment header flags (ISO/IEC 14496-12 §8.8.7).
const (
	tfhdBaseDataOffset   = 0x01
	tfhdSampleDescIndex  = 0x02
	tfhdDefaultDuration  = 0x08
	tfhdDefaultSize      = 0x10
	tfhdDefaultFlags     = 0x20
	trunDataOffset       = 0x01
	trunFirstSampleFlags = 0x04
	trunDuration         = 0x100
	trunSize             = 0x200
	trunFlags            = 0x400
	trunCTO              = 0x800
)

// decodeTraf appends the samples of one track fragment.
func (m *Movie) decodeTraf(p []byte, moofOff int64, all []sample) ([]sample, error) {
	var (
		id       uint32
		haveTfhd bool
		base     = moofOff // default-base-is-moof, and the usual default
		def      trex
		t        uint64
		truns    [][]byte
	)
	err := children(p, func(typ string, body []byte) error {
		switch typ {
		case "senc":
			return ErrEncrypted
		case "tfhd":
			_, flags, r, err := fullBox(typ, body)
			if err != nil || len(r) < 4 {
				return fmt.Errorf("%w: short tfhd", ErrBadMovie)
			}
			id, haveTfhd = binary.BigEndian.Uint32(r), true
			def = m.trex[id]
			r = r[4:]
			read := func(n int) ([]byte, error) {
				if len(r) < n {
					return nil, fmt.Errorf("%w: short tfhd", ErrBadMovie)
				}
				v := r[:n]
				r = r[n:]
				return v, nil
			}
			for _, f := range []struct {
				bit uint32
				n   int
			}{{tfhdBaseDataOffset, 8}, {tfhdSampleDescIndex, 4}, {tfhdDefaultDuration, 4}, {tfhdDefaultSize, 4}, {tfhdDefaultFlags, 4}} {
				if flags&f.bit == 0 {
					continue
				}
				v, err := read(f.n)
				if err != nil {
					return err
				}
				switch f.bit {
				case tfhdBaseDataOffset:
					base = int64(min(binary.BigEndian.Uint64(v), math.MaxInt64/2))
				case tfhdDefaultDuration:
					def.dur = binary.BigEndian.Uint32(v)
				case tfhdDefaultSize:
					def.size = binary.BigEndian.Uint32(v)
				}
			}
		case "tfdt":
			v, _, r, err := fullBox(typ, body)
			switch {
			case err != nil:
				return err
			case v == 1 && len(r) >= 8:
				t = binary.BigEndian.Uint64(r)
			case v == 0 && len(r) >= 4:
				t = uint64(binary.BigEndian.Uint32(r))
			default:
				return fmt.Errorf("%w: short tfdt", ErrBadMovie)
			}
		case "trun":
			truns = append(truns, body)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !haveTfhd {
		return nil, fmt.Errorf("%w: traf without tfhd", ErrBadMovie)
	}
	scale, ok := m.scale[id]
	if !ok {
		return all, nil // a track we don't follow
	}
	n, next := len(all), base
	for _, body := range truns {
		_, flags, r, err := fullBox("trun", body)
		if err != nil || len(r) < 4 {
			return nil, fmt.Errorf("%w: short trun", ErrBadMovie)
		}
		count := uint64(binary.BigEndian.Uint32(r))
		r = r[4:]
		if flags&trunDataOffset != 0 {
			if len(r) < 4 {
				return nil, fmt.Errorf("%w: short trun", ErrBadMovie)
			}
			next = base + int64(int32(binary.BigEndian.Uint32(r)))
			r = r[4:]
		}
		if flags&trunFirstSampleFlags != 0 {
			if len(r) < 4 {
				return nil, fmt.Errorf("%w: short trun", ErrBadMovie)
			}
			r = r[4:]
		}
		per := 0
		for _, bit := range []uint32{trunDuration, trunSize, trunFlags, trunCTO} {
			if flags&bit != 0 {
				per += 4
			}
		}
		switch {
		case per > 0 && count*uint64(per) > uint64(len(r)):
			return nil, fmt.Errorf("%w: trun: %d samples of %d bytes in %d bytes", ErrBadMovie, count, per, len(r))
		case per == 0 && count > 1<<16:
			return nil, fmt.Errorf("%w: trun: %d samples with no fields", ErrBadMovie, count)
		case uint64(len(all))+count > MaxSamples:
			return nil, fmt.Errorf("%w: more than %d samples", ErrBadMovie, MaxSamples)
		}
		for range count {
			dur, size := def.dur, def.size
			if flags&trunDuration != 0 {
				dur, r = binary.BigEndian.Uint32(r), r[4:]
			}
			if flags&trunSize != 0 {
				size, r = binary.BigEndian.Uint32(r), r[4:]
			}
			if flags&trunFlags != 0 {
				r = r[4:]
			}
			if flags&trunCTO != 0 {
				r = r[4:]
			}
			all = append(all, sample{off: next, size: int64(size), at: ticks(t, scale)})
			next += int64(size)
			t += uint64(dur)
		}
	}
	for i := range m.Tracks {
		if m.Tracks[i].ID != id {
			continue
		}
		tr := &m.Tracks[i]
		tr.Samples += len(all) - n
		for _, s := range all[n:] {
			tr.Bytes += s.size
		}
		if d := ticks(t, scale); d > tr.Duration {
			tr.Duration = d
			m.Duration = max(m.Duration, d)
		}
	}
	return all, nil
}
