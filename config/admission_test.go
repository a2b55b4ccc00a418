package config

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

const protectYAML = `
limits:
  per-ip:
    by: source_ip
    conns: 10
    queue: {size: 20, timeout: 2s}
    rate: 100/s
    burst: 20
    delay: 8
    window: {max: 1000, per: 1m}
    borrow: global
  per-net: {by: cidr, prefix: 16, rate: 30/m}
  global: {by: global, conns: 5000, rate: 2000/s, burst: 500}
bans:
  scanners:
    by: source_ip
    count: refusals
    tiers:
      - {over: 5, per: 10s, ban: 10m}
      - {over: 50, per: 10m, ban: 6h}
    repeat: {factor: 2, max: 7d}
    table: 100000
listeners:
  - name: api
    listen: 127.0.0.1:8443
    upstream: 127.0.0.1:9443
    allow: [10.0.0.0/8, "::1"]
    deny: [192.0.2.0/24, "file:testdata/deny.txt"]
    limits: [per-ip, global]
    bans: scanners
    refuse: overflow
    overflow: {respond_file: testdata/busy.http}
  - name: tar
    listen: 127.0.0.1:8444
    upstream: 127.0.0.1:9444
    limits: [per-net]
    refuse: tarpit
    tarpit: {hold: 10s, max: 50}
`

func TestAdmissionConfig(t *testing.T) {
	cfg, err := Parse([]byte(protectYAML))
	if err != nil {
		t.Fatal(err)
	}
	wantLimits := []Limit{
		{Name: "global", By: ByGlobal, Prefix: 24, Prefix6: 64, Table: DefaultLimitTable, Conns: 5000, Queue: Queue{Timeout: DefaultQueueWait},
			Rate: ConnRate{2000, time.Second}, Burst: 500, Delay: 500},
		{Name: "per-ip", By: BySourceIP, Prefix: 24, Prefix6: 64, Table: DefaultLimitTable, Conns: 10, Queue: Queue{Size: 20, Timeout: 2 * time.Second},
			Rate: ConnRate{100, time.Second}, Burst: 20, Delay: 8, Window: Window{Max: 1000, Per: time.Minute}, Borrow: "global"},
		{Name: "per-net", By: ByCIDR, Prefix: 16, Prefix6: 64, Table: DefaultLimitTable, Queue: Queue{Timeout: DefaultQueueWait}, Rate: ConnRate{30, time.Minute}},
	}
	if !reflect.DeepEqual(cfg.Limits, wantLimits) {
		t.Errorf("Limits = %+v\nwant %+v", cfg.Limits, wantLimits)
	}
	wantBans := []Ban{{Name: "scanners", By: BySourceIP, Prefix: 24, Prefix6: 64, Count: CountRefusals,
		Tiers:  []BanTier{{5, 10 * time.Second, 10 * time.Minute}, {50, 10 * time.Minute, 6 * time.Hour}},
		Repeat: Repeat{Factor: 2, Max: 7 * 24 * time.Hour}, Table: 100000}}
	if !reflect.DeepEqual(cfg.Bans, wantBans) {
		t.Errorf("Bans = %+v\nwant %+v", cfg.Bans, wantBans)
	}
	api := cfg.Listeners[0]
	wantDeny := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("198.51.100.0/24"),
		netip.MustParsePrefix("203.0.113.7/32"), netip.MustParsePrefix("2001:db8:bad::/48")}
	if !reflect.DeepEqual(api.Deny.Prefixes, wantDeny) || !reflect.DeepEqual(api.Deny.Entries, []string{"192.0.2.0/24", "file:testdata/deny.txt"}) {
		t.Errorf("deny = %+v, want %v from two entries", api.Deny, wantDeny)
	}
	if !reflect.DeepEqual(api.Allow.Prefixes, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}) {
		t.Errorf("allow = %v", api.Allow.Prefixes)
	}
	if !reflect.DeepEqual(api.Limits, []string{"per-ip", "global"}) || api.Bans != "scanners" || api.Refuse != RefuseOverflow ||
		!strings.HasPrefix(string(api.Overflow.Respond), "HTTP/1.1 503") {
		t.Errorf("api = limits %v, bans %q, refuse %q, overflow %q", api.Limits, api.Bans, api.Refuse, api.Overflow.Respond)
	}
	if tar := cfg.Listeners[1]; tar.Refuse != RefuseTarpit || tar.Tarpit != (Tarpit{Hold: 10 * time.Second, Max: 50}) {
		t.Errorf("tar = refuse %q, tarpit %+v", tar.Refuse, tar.Tarpit)
	}

	// What `sluice check` prints loads back to the same config.
	out, err := cfg.YAML()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(out)
	if err != nil {
		t.Fatalf("Parse(YAML()) = %v\n%s", err, out)
	}
	if !reflect.DeepEqual(cfg, back) {
		t.Fatalf("round trip changed the config:\n%s", out)
	}

	// A reload's diff names what changed.
	next, err := Parse([]byte(strings.Replace(strings.Replace(protectYAML, "conns: 10", "conns: 5", 1), "hold: 10s", "hold: 20s", 1)))
	if err != nil {
		t.Fatal(err)
	}
	diff := strings.Join(Diff(cfg, next), "\n")
	for _, want := range []string{"limit per-ip", "Conns:10", "Conns:5", "listener tar: tarpit {Hold:10s Max:50} → {Hold:20s Max:50}"} {
		if !strings.Contains(diff, want) {
			t.Errorf("Diff lacks %q:\n%s", want, diff)
		}
	}
}

func TestAdmissionErrors(t *testing.T) {
	lst := func(extra string) string {
		return "listeners: [{listen: '127.0.0.1:1', upstream: 'a:1'" + extra + "}]\n"
	}
	for _, c := range []struct {
		name, yaml, want string
	}{
		{"rate without unit", "limits: {a: {rate: 5}}\n" + lst(""), `limits.a.rate: want a connection rate like "100/s" or "30/m"`},
		{"rate string without unit", "limits: {a: {rate: '5'}}\n" + lst(""), `limits.a.rate: want a connection rate like "100/s" or "30/m" (a whole number of connections per second, minute or hour, up to 1000000000), got "5"`},
		{"rate bad unit", "limits: {a: {rate: 5/d}}\n" + lst(""), `got "5/d"`},
		{"delay above burst", "limits: {a: {rate: 5/s, burst: 4, delay: 8}}\n" + lst(""), "limits.a.delay: want at most burst (4)"},
		{"burst without rate", "limits: {a: {burst: 4}}\n" + lst(""), "limits.a.burst: burst and delay shape a rate"},
		{"queue without conns", "limits: {a: {queue: {size: 3}}}\n" + lst(""), "limits.a.queue: a queue waits for a connection slot"},
		{"window incomplete", "limits: {a: {window: {max: 3}}}\n" + lst(""), "limits.a.window: want {max: N, per: DURATION}"},
		{"borrow unknown", "limits: {a: {rate: 1/s, borrow: b}}\n" + lst(""), `limits.a.borrow: no limit "b" under limits:`},
		{"borrow without own rate", "limits: {a: {conns: 1, borrow: b}, b: {rate: 1/s}}\n" + lst(""), "limits.a.borrow: borrowing lends room above this limit's own rate"},
		{"borrow from no rate", "limits: {a: {rate: 1/s, borrow: b}, b: {conns: 3}}\n" + lst(""), `limits.a.borrow: limit "b" has no rate to lend from`},
		{"unknown by", "limits: {a: {by: upstream}}\n" + lst(""), "limits.a.by: want one of source_ip, cidr, listener, global"},
		{"prefix without cidr", "limits: {a: {prefix: 16}}\n" + lst(""), "limits.a.prefix: prefix lengths go with by: cidr"},
		{"cluster", "limits: {a: {conns: 1, cluster: true}}\n" + lst(""), "limits.a.cluster: needs a cluster: block"},
		{"negative conns", "limits: {a: {conns: -1}}\n" + lst(""), "limits.a.conns: want a whole number from 0 to"},
		{"bad limit name", "limits: {'A b': {conns: 1}}\n" + lst(""), "a limit name is lower case"},
		{"table on global", "limits: {a: {by: global, conns: 1, table: 1000}}\n" + lst(""), "limits.a.table: a global limit tracks few keys"},
		{"table too small", "limits: {a: {conns: 1, table: 10}}\n" + lst(""), "limits.a.table: want a whole number from 64 to"},
		{"empty limit", "limits: {a: {by: global}}\n" + lst(""), "limits.a: want at least one of conns, rate and window"},
		{"ban without tiers", "bans: {s: {by: source_ip}}\n" + lst(""), "bans.s.tiers: want a list of tiers like"},
		{"tier missing ban", "bans: {s: {tiers: [{over: 5, per: 10s}]}}\n" + lst(""), "bans.s.tiers[0].ban: is required"},
		{"tier longer than max", "bans: {s: {tiers: [{over: 5, per: 10s, ban: 8d}]}}\n" + lst(""), "bans.s.tiers[0].ban: is longer than repeat.max"},
		{"ban by listener", "bans: {s: {by: listener, tiers: [{over: 5, per: 10s, ban: 1m}]}}\n" + lst(""), "bans.s.by: want one of source_ip, cidr"},
		{"ban bad count", "bans: {s: {count: bytes, tiers: [{over: 5, per: 10s, ban: 1m}]}}\n" + lst(""), "bans.s.count: want one of refusals, connections"},
		{"repeat factor below 1", "bans: {s: {repeat: {factor: 0.5}, tiers: [{over: 5, per: 10s, ban: 1m}]}}\n" + lst(""), "bans.s.repeat.factor"},
		{"unknown limit ref", lst(", limits: [nope]"), `listeners[0].limits[0]: no limits entry "nope"`},
		{"limit listed twice", "limits: {a: {conns: 1}}\n" + lst(", limits: [a, a]"), `listeners[0].limits[1]: "a" is listed twice`},
		{"unknown ban ref", lst(", bans: nope"), `listeners[0].bans: no ban policy "nope"`},
		{"bad cidr", lst(", deny: [10.0.0.0/33]"), `listeners[0].deny[0]: want an address or a prefix like "192.0.2.0/24", got "10.0.0.0/33"`},
		{"missing deny file", lst(", deny: ['file:testdata/nope.txt']"), `listeners[0].deny[0]: read "testdata/nope.txt"`},
		{"bad refuse", lst(", refuse: drop"), "listeners[0].refuse: want one of close, reset, tarpit, overflow"},
		{"overflow without target", lst(", refuse: overflow"), "listeners[0].refuse: overflow needs a target"},
		{"overflow with both", lst(", overflow: {upstream: 'b:1', respond_file: testdata/busy.http}"), "listeners[0].overflow: want one of upstream and respond_file, not both"},
		{"missing respond file", lst(", refuse: overflow, overflow: {respond_file: testdata/nope.http}"), `listeners[0].overflow.respond_file: read "testdata/nope.http"`},
		{"tarpit without refuse", lst(", tarpit: {hold: 1s}"), "listeners[0].tarpit: has no effect unless refuse is tarpit"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.yaml))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Parse error = %v\nwant one containing %q", err, c.want)
			}
		})
	}
}

func TestParseConnRate(t *testing.T) {
	for _, c := range []struct {
		name, in string
		want     ConnRate
		ok       bool
	}{
		{"per second", "100/s", ConnRate{100, time.Second}, true},
		{"per minute", "30/m", ConnRate{30, time.Minute}, true},
		{"per hour, spaced", " 7 / hour ", ConnRate{7, time.Hour}, true},
		{"zero", "0", ConnRate{}, true},
		{"zero per second", "0/s", ConnRate{}, true},
		{"no unit", "5", ConnRate{}, false},
		{"decimal", "1.5/s", ConnRate{}, false},
		{"negative", "-1/s", ConnRate{}, false},
		{"too many", "1000000001/s", ConnRate{}, false},
		{"per day", "5/d", ConnRate{}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseConnRate(c.in)
			if (err == nil) != c.ok || got != c.want {
				t.Errorf("ParseConnRate(%q) = %v, %v; want %v, ok %v", c.in, got, err, c.want, c.ok)
			}
			if err != nil && !errors.Is(err, ErrBadConnRate) {
				t.Errorf("ParseConnRate(%q) error %v does not wrap ErrBadConnRate", c.in, err)
			}
			if err == nil && c.want.N > 0 {
				if back, err := ParseConnRate(got.String()); err != nil || back != got {
					t.Errorf("ParseConnRate(%q.String() = %q) = %v, %v", c.in, got.String(), back, err)
				}
			}
		})
	}
}

func TestParseCIDRList(t *testing.T) {
	got, err := ParseCIDRList(strings.NewReader("# header\n\n10.1.2.3/8\n::ffff:192.0.2.1\n2001:db8::/32 # docs\n"))
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("2001:db8::/32")}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseCIDRList = %v, %v; want %v", got, err, want)
	}
	for _, c := range []struct{ name, in, want string }{
		{"bad line", "10.0.0.0/8\nfoo\n", `line 2: "foo"`},
		{"bad prefix", "10.0.0.0/40", `line 1: "10.0.0.0/40"`},
		{"zone", "fe80::1%eth0", `line 1: "fe80::1%eth0"`},
		{"long line", strings.Repeat("1", MaxCIDRLine+1), "a line longer than"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseCIDRList(strings.NewReader(c.in))
			if err == nil || !errors.Is(err, ErrBadCIDRList) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("ParseCIDRList error = %v, want one wrapping ErrBadCIDRList with %q", err, c.want)
			}
		})
	}
}

func TestDaysInDurations(t *testing.T) {
	for _, c := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{{"7d", 7 * 24 * time.Hour, true}, {"1d12h", 36 * time.Hour, true}, {"90s", 90 * time.Second, true},
		{"d", 0, false}, {"1.5d", 0, false}, {"-1d", 0, false}, {"1d-1h", 0, false}} {
		got, err := parseDuration(c.in)
		if (err == nil) != c.ok || (c.ok && got != c.want) {
			t.Errorf("parseDuration(%q) = %v, %v; want %v, ok %v", c.in, got, err, c.want, c.ok)
		}
	}
}

// FuzzParseCIDRList: any input parses or fails with ErrBadCIDRList, never
// panics; what parses is masked and round-trips through its text form.
func FuzzParseCIDRList(f *testing.F) {
	f.Add([]byte("# header\n10.0.0.0/8\n192.0.2.7\n2001:db8::/32 # x\n"))
	f.Add([]byte("::ffff:10.0.0.0/104\n"))
	f.Add([]byte("fe80::1%eth0\n\n\n#"))
	f.Add([]byte("10.0.0.0/33\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ps, err := ParseCIDRList(strings.NewReader(string(b)))
		if err != nil {
			if !errors.Is(err, ErrBadCIDRList) {
				t.Fatalf("error %v does not wrap ErrBadCIDRList", err)
			}
			return
		}
		for _, p := range ps {
			if !p.IsValid() || p != p.Masked() {
				t.Fatalf("prefix %v is not valid and masked", p)
			}
			back, err := parseCIDR(p.String())
			if err != nil || back != p {
				t.Fatalf("%v does not round-trip: %v, %v", p, back, err)
			}
		}
	})
}

// FuzzParseConnRate: any input parses or fails with ErrBadConnRate, and
// what parses round-trips through String.
func FuzzParseConnRate(f *testing.F) {
	for _, s := range []string{"100/s", "30/m", "7/h", "0", "5", "1.5/s", "-1/s", " 3 / min "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseConnRate(s)
		if err != nil {
			if !errors.Is(err, ErrBadConnRate) {
				t.Fatalf("error %v does not wrap ErrBadConnRate", err)
			}
			return
		}
		if r.N < 0 || r.N > MaxConnRate || (r.N > 0) != (r.Per > 0) {
			t.Fatalf("ParseConnRate(%q) = %+v out of range", s, r)
		}
		if r.N > 0 {
			if back, err := ParseConnRate(r.String()); err != nil || back != r {
				t.Fatalf("%+v does not round-trip: %v, %v", r, back, err)
			}
		}
	})
}
