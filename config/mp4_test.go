package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestMP4(t *testing.T) {
	cfg, err := Parse([]byte(`listeners:
  - {name: video, listen: ':8080', upstream: 'a:80',
     mp4: {enabled: true, factor: 1.5, burst_seconds: 2.5, floor: 256Kbit, ceil: 50Mbit, default_rate: 2Mbit, cache_entries: 10, mode: http, metadata_budget: 8MiB}}
  - {name: plain, listen: ':8081', upstream: 'a:80'}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := MP4{Enabled: true, Mode: "http", Factor: 1.5, Burst: 2500 * time.Millisecond,
		Floor: 32_000, Ceil: 6_250_000, DefaultRate: 250_000, CacheEntries: 10, MetadataBudget: 8 << 20}
	if got := cfg.Listeners[0].MP4; got != want {
		t.Errorf("mp4 = %+v, want %+v", got, want)
	}
	def := MP4{Mode: "auto", Factor: DefaultMP4Factor, Burst: DefaultMP4Burst, CacheEntries: DefaultMP4CacheEntries, MetadataBudget: DefaultMP4Budget}
	if got := cfg.Listeners[1].MP4; got != def {
		t.Errorf("default mp4 = %+v, want %+v", got, def)
	}
	out, err := cfg.YAML()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(out)
	if err != nil || !reflect.DeepEqual(back, cfg) {
		t.Fatalf("round trip: %v\n%s", err, out)
	}
}

func TestMP4Errors(t *testing.T) {
	const head = "listeners: [{listen: ':1', upstream: 'a:1', mp4: "
	for _, tc := range []struct{ name, yaml, want string }{
		{"factor below 1", head + "{enabled: true, factor: 0.5}}]", "listeners[0].mp4.factor: want a number from 1 to 10, got 0.5"},
		{"factor word", head + "{factor: fast}}]", `listeners[0].mp4.factor: want a number from 1 to 10, got "fast"`},
		{"burst with unit", head + "{burst_seconds: 2s}}]", `listeners[0].mp4.burst_seconds: want a number from 0 to 600, got "2s"`},
		{"mode", head + "{mode: dash}}]", `listeners[0].mp4.mode: want one of auto, http, raw, got "dash"`},
		{"floor above ceil", head + "{floor: 10Mbit, ceil: 1Mbit}}]", "listeners[0].mp4.floor: 10Mbit is above ceil 1Mbit: want floor <= ceil"},
		{"floor without unit", head + "{floor: 100}}]", "listeners[0].mp4.floor: want a rate"},
		{"unknown key", head + "{enable: true}}]", "listeners[0].mp4.enable: unknown key"},
		{"budget too small", head + "{metadata_budget: 1KiB}}]", "listeners[0].mp4.metadata_budget: want a size"},
		{"cache negative", head + "{cache_entries: -1}}]", "listeners[0].mp4.cache_entries: want a whole number from 0 to 100000, got -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
