#!/usr/bin/env bash
# Makes the MP4 fixtures of mp4probe's tests, and ffprobe's view of each
# (*.ffprobe.json), which the tests check the probe against. Needs ffmpeg
# and ffprobe (Debian: apt-get install ffmpeg) and Go. The fixtures are
# committed; run this only to change them.
set -euo pipefail
cd "$(dirname "$0")"

V=(-f lavfi -i "testsrc2=size=160x90:rate=15")
A=(-f lavfi -i "sine=frequency=440:sample_rate=22050")
X264=(-c:v libx264 -preset veryfast -profile:v baseline -pix_fmt yuv420p -g 15 -keyint_min 15 -sc_threshold 0)
AAC=(-c:a aac -b:a 32k -ac 1)
T=(-t 8)
q=(-hide_banner -loglevel error -y)

# H.264 + AAC, moov first (what "faststart" web files look like).
ffmpeg "${q[@]}" "${V[@]}" "${A[@]}" "${T[@]}" "${X264[@]}" -b:v 200k -maxrate 200k -bufsize 100k "${AAC[@]}" \
	-movflags +faststart faststart.mp4
# The same, moov at the end (ffmpeg's default).
ffmpeg "${q[@]}" "${V[@]}" "${A[@]}" "${T[@]}" "${X264[@]}" -b:v 200k -maxrate 200k -bufsize 100k "${AAC[@]}" \
	moovend.mp4
# Fragmented: an empty moov, then a moof+mdat per second.
ffmpeg "${q[@]}" "${V[@]}" "${A[@]}" "${T[@]}" "${X264[@]}" -b:v 200k -maxrate 200k -bufsize 100k "${AAC[@]}" \
	-movflags +frag_keyframe+empty_moov+default_base_moof fragmented.mp4
# Audio only.
ffmpeg "${q[@]}" "${A[@]}" "${T[@]}" "${AAC[@]}" -movflags +faststart audio.mp4
# Strong VBR: a still picture but for 3 s of noise (2 s to 5 s) at a
# constant quality, so the bitrate jumps a hundred times over, early enough
# that pacing at the average rate would stall.
ffmpeg "${q[@]}" -f lavfi -i "color=c=gray:size=160x90:rate=15,format=yuv420p,noise=alls=80:allf=t+u:enable='between(t,2,5)'" \
	"${A[@]}" "${T[@]}" "${X264[@]}" -crf 30 "${AAC[@]}" -movflags +faststart vbr.mp4
# 64-bit chunk offsets (co64): faststart.mp4 with its stco boxes rewritten.
go run ./co64.go faststart.mp4 co64.mp4

for f in faststart moovend fragmented audio vbr co64; do
	ffprobe -v error -show_format -show_streams -of json "$f.mp4" |
		python3 -c 'import json,sys; d=json.load(sys.stdin)
out={"duration":d["format"]["duration"],"bit_rate":d["format"]["bit_rate"],"size":d["format"]["size"],
 "streams":[{"codec_type":s["codec_type"],"duration":s.get("duration"),"bit_rate":s.get("bit_rate"),"nb_frames":s.get("nb_frames")} for s in d["streams"]]}
json.dump(out,sys.stdout,indent=1)' >"$f.ffprobe.json"
done
ls -l ./*.mp4
