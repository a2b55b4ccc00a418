//go:build ignore

// co64 rewrites the stco boxes of a moov-first MP4 as co64 boxes (64-bit
// chunk offsets), moving the offsets by what the moov grew. Used by make.sh:
// go run co64.go in.mp4 out.mp4
package main

import (
	"encoding/binary"
	"log"
	"os"
)

var containers = map[string]bool{"moov": true, "trak": true, "mdia": true, "minf": true, "stbl": true}

// rewrite returns the boxes of p with every stco inside containers made a
// co64, offsets plus delta.
func rewrite(p []byte, delta uint64) []byte {
	var out []byte
	for len(p) > 0 {
		size := binary.BigEndian.Uint32(p)
		typ, body := string(p[4:8]), p[8:size]
		switch {
		case containers[typ]:
			out = appendBox(out, typ, rewrite(body, delta))
		case typ == "stco":
			n := binary.BigEndian.Uint32(body[4:])
			co := append([]byte(nil), body[:8]...)
			for i := range n {
				co = binary.BigEndian.AppendUint64(co, uint64(binary.BigEndian.Uint32(body[8+4*i:]))+delta)
			}
			out = appendBox(out, "co64", co)
		default:
			out = append(out, p[:size]...)
		}
		p = p[size:]
	}
	return out
}

func appendBox(out []byte, typ string, body []byte) []byte {
	out = binary.BigEndian.AppendUint32(out, uint32(8+len(body)))
	return append(append(out, typ...), body...)
}

func main() {
	in, err := os.ReadFile(os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	// The moov grows by 4 bytes per chunk offset; every offset moves by as
	// much, which the first pass measures.
	grown := uint64(len(rewrite(in, 0)) - len(in))
	if err := os.WriteFile(os.Args[2], rewrite(in, grown), 0o644); err != nil {
		log.Fatal(err)
	}
}
