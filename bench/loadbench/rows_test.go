package main

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

func TestFitRate(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const rate = 10_000_000 // bytes/s: grants of 100 KB every 10 ms
	tests := []struct {
		name   string
		reads  int           // reads a grant arrives in, 10 µs apart
		jitter time.Duration // each read up to this much late
		maxErr float64       // %
	}{
		{"one read a grant", 1, 0, 1e-9},
		{"three reads a grant", 3, 0, 0.001},
		{"reads up to 200 µs late", 2, 200 * time.Microsecond, 0.005},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			var rs []arrival
			grant := rate / 100
			for k := range 400 { // 4 s
				at := t0.Add(time.Duration(k) * 10 * time.Millisecond)
				for i := range tt.reads {
					late := time.Duration(rng.Int64N(int64(tt.jitter) + 1))
					rs = append(rs, arrival{at.Add(time.Duration(i)*10*time.Microsecond + late), grant / tt.reads})
				}
			}
			// Windows that cut grants anywhere: the fit does not care.
			got := fitRate(rs, t0.Add(1003*time.Millisecond), t0.Add(3997*time.Millisecond))
			if e := math.Abs(got/rate-1) * 100; e > tt.maxErr {
				t.Errorf("fitRate = %.1f B/s, %.5f%% off, want within %g%%", got, e, tt.maxErr)
			}
		})
	}
	if got := fitRate([]arrival{{t0, 1}}, t0, t0.Add(time.Second)); got != 0 {
		t.Errorf("fitRate(one read) = %g, want 0", got)
	}
}

func TestReadCoreEvents(t *testing.T) {
	log := `time=2026-12-05T19:49:41.122Z level=INFO msg=cores gomaxprocs=1 cpus=2 mode=auto reason=start
time=2026-12-05T19:49:41.300Z level=INFO msg="conn done" conn_id=1
time=2026-12-05T19:49:43.424Z level=INFO msg=cores gomaxprocs=2 cpus=2 mode=auto reason=busy busy_cores=0.546
`
	events := make(chan coreEvent, 4)
	readCoreEvents(strings.NewReader(log), events)
	close(events)
	var got []coreEvent
	for ev := range events {
		got = append(got, ev)
	}
	want := []coreEvent{
		{time.Date(2026, 12, 5, 19, 49, 41, 122e6, time.UTC), 1, "start", 0},
		{time.Date(2026, 12, 5, 19, 49, 43, 424e6, time.UTC), 2, "busy", 0.546},
	}
	if len(got) != len(want) {
		t.Fatalf("readCoreEvents sent %d events, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if !got[i].at.Equal(want[i].at) || got[i].procs != want[i].procs || got[i].reason != want[i].reason || got[i].busy != want[i].busy {
			t.Errorf("event %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}
