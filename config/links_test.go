package config

import (
	"reflect"
	"strings"
	"testing"
)

const linksYAML = `
links:
  hk-line:
    up:   {rate: 200Mbit, burst: 1MiB}
    down: {rate: 1Gbit}
    keys:
      by: cidr
      prefix: 16
      rate: 10Mbit
      ceil: 100Mbit
      overrides:
        - {key: 10.1.0.0/16, rate: 50Mbit, ceil: 500Mbit, weight: 3}
  eu-line:
    down: {rate: 100MB/s}
listeners:
  - {name: video, listen: ':8080', upstream: 'a:80', links: [hk-line, EU-line]}
  - {name: plain, listen: ':8081', upstream: 'a:80'}
`

func TestLinks(t *testing.T) {
	cfg, err := Parse([]byte(linksYAML))
	if err != nil {
		t.Fatal(err)
	}
	want := []Link{
		{Name: "eu-line", Down: LinkDir{Rate: 100_000_000}, Keys: Keys{By: KeysNone, Prefix: 24, Prefix6: 64, Weight: 1}},
		{Name: "hk-line", Up: LinkDir{Rate: 25_000_000, Burst: 1 << 20}, Down: LinkDir{Rate: 125_000_000},
			Keys: Keys{By: KeysCIDR, Prefix: 16, Prefix6: 64, Rate: 1_250_000, Ceil: 12_500_000, Weight: 1,
				Overrides: []KeyOverride{{Key: "10.1.0.0/16", Rate: 6_250_000, Ceil: 62_500_000, Weight: 3}}}},
	}
	if !reflect.DeepEqual(cfg.Links, want) {
		t.Errorf("links =\n%+v\nwant\n%+v", cfg.Links, want)
	}
	if got := cfg.Listeners[0].Links; !reflect.DeepEqual(got, []string{"hk-line", "eu-line"}) {
		t.Errorf("listener links = %q", got)
	}
	out, err := cfg.YAML()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(out)
	if err != nil || !reflect.DeepEqual(back, cfg) {
		t.Fatalf("round trip: %v\n%s\n%+v\n%+v", err, out, back, cfg)
	}
	next, _ := Parse([]byte(strings.Replace(linksYAML, "down: {rate: 100MB/s}", "down: {rate: 50MB/s}", 1)))
	if d := strings.Join(Diff(cfg, next), "; "); d != "link eu-line: down.rate 800Mbit → 400Mbit" {
		t.Errorf("Diff = %q", d)
	}
}

func TestLinkErrors(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"not a mapping", "links: [a]", "links: want a mapping of link names"},
		{"no rate", "links: {a: {up: {burst: 1MiB}}}", "links.a: want a rate in up, down or both"},
		{"burst without rate", "links: {a: {down: {rate: 1Mbit}, up: {burst: 1MiB}}}", "links.a.up.burst: has no effect without a rate"},
		{"bad name", "links: {'a b': {down: {rate: 1Mbit}}}", `links.a b: a link name takes lower-case letters`},
		{"unknown key", "links: {a: {down: {rate: 1Mbit}, ceil: 5Mbit}}", "links.a.ceil: unknown key"},
		{"rate above ceil", "links: {a: {down: {rate: 1Gbit}, keys: {by: source_ip, rate: 20Mbit, ceil: 10Mbit}}}", "links.a.keys.rate: 20Mbit is above ceil 10Mbit"},
		{"shares without keys", "links: {a: {down: {rate: 1Gbit}, keys: {rate: 20Mbit}}}", "links.a.keys.by: rate, ceil and overrides need keys"},
		{"bad by", "links: {a: {down: {rate: 1Gbit}, keys: {by: tenant}}}", "links.a.keys.by: want one of none, source_ip, cidr, listener, upstream"},
		{"prefix without cidr", "links: {a: {down: {rate: 1Gbit}, keys: {by: source_ip, prefix: 8}}}", "links.a.keys.prefix: only applies with by: cidr"},
		{"prefix out of range", "links: {a: {down: {rate: 1Gbit}, keys: {by: cidr, prefix: 33}}}", "links.a.keys.prefix: want a whole number from 1 to 32"},
		{"weight zero", "links: {a: {down: {rate: 1Gbit}, keys: {by: source_ip, weight: 0}}}", "links.a.keys.weight: want a whole number from 1 to 1000"},
		{"override without key", "links: {a: {down: {rate: 1Gbit}, keys: {by: source_ip, overrides: [{rate: 1Mbit}]}}}", "links.a.keys.overrides[0].key: required"},
		{"override twice", "links: {a: {down: {rate: 1Gbit}, keys: {by: source_ip, overrides: [{key: x}, {key: x}]}}}", `overrides[1].key: "x" is overridden twice`},
		{"overrides not a list", "links: {a: {down: {rate: 1Gbit}, keys: {by: source_ip, overrides: {x: 1}}}}", "links.a.keys.overrides: want a list"},
		{"unknown link", "links: {a: {down: {rate: 1Gbit}}}\nlisteners: [{listen: ':1', upstream: 'a:1', links: [b]}]", `listeners[0].links[0]: no link "b" under links:`},
		{"link twice", "links: {a: {down: {rate: 1Gbit}}}\nlisteners: [{listen: ':1', upstream: 'a:1', links: [a, a]}]", `listeners[0].links[1]: link "a" is listed twice`},
		{"links not a list", "listeners: [{listen: ':1', upstream: 'a:1', links: a}]", "listeners[0].links: want a list of link names"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			y := tc.yaml
			if !strings.Contains(y, "listeners:") {
				y += "\n" + oneListener
			}
			_, err := Parse([]byte(y))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestLinkOverrideInherits(t *testing.T) {
	cfg, err := Parse([]byte("links: {a: {down: {rate: 1Gbit}, keys: {by: source_ip, rate: 8Mbit, ceil: 80Mbit, weight: 3, overrides: [{key: x, ceil: 16Mbit}]}}}\n" + oneListener))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Links[0].Keys.Overrides[0], (KeyOverride{Key: "x", Rate: 1_000_000, Ceil: 2_000_000, Weight: 3}); got != want {
		t.Errorf("override = %+v, want %+v (rate and weight from the defaults)", got, want)
	}
	if _, err := Parse([]byte("links: {a: {down: {rate: 1Gbit}, keys: {by: source_ip, rate: 8Mbit, overrides: [{key: x, ceil: 4Mbit}]}}}\n" + oneListener)); err == nil ||
		!strings.Contains(err.Error(), "links.a.keys.overrides[0]: rate 8Mbit is above ceil 4Mbit") {
		t.Errorf("inherited rate above the override's ceil: %v", err)
	}
}
