package config

import (
	"strings"
	"testing"
)

func TestIdleZeroDisables(t *testing.T) {
	for _, v := range []string{"0", "0s"} {
		cfg, err := Parse([]byte("listeners: [{listen: ':1', upstream: 'a:1', timeouts: {idle: " + v + "}}]"))
		if err != nil {
			t.Fatalf("idle: %s: %v", v, err)
		}
		if cfg.Listeners[0].Timeouts.Idle != 0 {
			t.Errorf("idle: %s gave %v, want 0", v, cfg.Listeners[0].Timeouts.Idle)
		}
	}
}

func TestConnLimits(t *testing.T) {
	cfg, err := Parse([]byte(`
listeners:
  - listen: ":1"
    upstream: "a:1"
    chunk: 16KiB
    conn:
      up: {rate: 2Mbit}
      down: {rate: 1.5MB/s, burst: 1MiB, kernel_pacing: false}
`))
	if err != nil {
		t.Fatal(err)
	}
	l := cfg.Listeners[0]
	want := ConnLimits{
		Up:   DirLimit{Rate: 250_000, Burst: 16 << 10},
		Down: DirLimit{Rate: 1_500_000, Burst: 1 << 20},
	}
	if l.Chunk != 16<<10 || l.Conn != want {
		t.Errorf("chunk %v, conn %+v; want 16KiB, %+v", l.Chunk, l.Conn, want)
	}
}

func TestConnLimitErrors(t *testing.T) {
	const head = "listeners: [{listen: ':1', upstream: 'a:1', "
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"bare number rate", head + "conn: {down: {rate: 1000}}}]", `listeners[0].conn.down.rate: want a rate like "10Mbit" or "1.5MB/s" (with a unit: bits or bytes?), got 1000`},
		{"word rate", head + "conn: {down: {rate: fast}}}]", `listeners[0].conn.down.rate: want a rate like "10Mbit" or "1.5MB/s", got "fast"`},
		{"ambiguous unit", head + "conn: {up: {rate: 10Mb}}}]", `listeners[0].conn.up.rate: want a rate like "10Mbit" or "1.5MB/s", got "10Mb": has unknown unit "Mb"`},
		{"zero rate", head + "conn: {up: {rate: 0Mbit}}}]", `got "0Mbit": is below 1 byte per second (write "unlimited" for no limit)`},
		{"burst without rate", head + "conn: {down: {burst: 64KiB}}}]", "listeners[0].conn.down.burst: has no effect without a rate"},
		{"pacing upstream", head + "conn: {up: {rate: 1Mbit, kernel_pacing: true}}}]", "listeners[0].conn.up.kernel_pacing: unknown key (known keys here: rate, burst)"},
		{"pacing not bool", head + "conn: {down: {rate: 1Mbit, kernel_pacing: maybe}}}]", `listeners[0].conn.down.kernel_pacing: want true or false, got "maybe"`},
		{"chunk too small", head + "chunk: 100}]", `listeners[0].chunk: want a size like "64KiB" or "8192" from 512B to 4MiB, got 100B`},
		{"burst too big", head + "conn: {down: {rate: 1Mbit, burst: 2GiB}}}]", "listeners[0].conn.down.burst: want a size"},
		{"unknown direction", head + "conn: {upload: {rate: 1Mbit}}}]", "listeners[0].conn.upload: unknown key (known keys here: up, down)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
