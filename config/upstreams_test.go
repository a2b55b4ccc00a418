package config

import (
	"strings"
	"testing"
	"time"
)

func TestUpstreams(t *testing.T) {
	cfg, err := Load("testdata/upstreams.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Upstreams) != 2 || cfg.Upstreams[0].Name != "api" || cfg.Upstreams[1].Name != "plain" {
		t.Fatalf("Upstreams = %+v, want api and plain, sorted", cfg.Upstreams)
	}
	api := cfg.Pool("api")
	want := []Server{
		{Address: "127.0.0.1:9001", Weight: 2, Quota: Quota{Conns: 100, Per: time.Minute}},
		{Address: "127.0.0.1:9002", Weight: 1, Quota: Quota{Bytes: 10 * 1000 * 1000 * 1000, Per: 24 * time.Hour}},
		{Address: "127.0.0.1:9003", Weight: 1},
		{Address: "127.0.0.1:9009", Weight: 1, Backup: true},
	}
	for i, s := range api.Servers {
		if s != want[i] {
			t.Errorf("servers[%d] = %+v, want %+v", i, s, want[i])
		}
	}
	wantCheck := Check{Type: "http", Interval: 2 * time.Second, Timeout: 500 * time.Millisecond, Rise: 2, Fall: 3, Send: DefaultCheckSend, Expect: "2xx"}
	if api.Check != wantCheck || api.Passive != (Passive{3, 10 * time.Second, 5 * time.Minute}) || api.Retry != 2 || !api.HTTPRetryAfter {
		t.Errorf("api = %+v", *api)
	}
	if api.RetryAfter != DefaultRetryAfter || api.RetryAfterMax != DefaultRetryAfterMax {
		t.Errorf("retry_after defaults = %s, %s", api.RetryAfter, api.RetryAfterMax)
	}
	plain := cfg.Pool("plain")
	if plain.Balance != "source_hash" || plain.Check.Type != "tcp" || plain.Check.Interval != DefaultCheckInterval || plain.Check.Timeout != DefaultCheckTimeout {
		t.Errorf("plain = %+v", *plain)
	}
	if cfg.Listeners[0].Upstream != "api" || cfg.Pool("nope") != nil {
		t.Errorf("listener upstream %q; Pool(nope) = %v", cfg.Listeners[0].Upstream, cfg.Pool("nope"))
	}
}

func TestUpstreamErrors(t *testing.T) {
	lst := func(up string) string {
		return "listeners: [{listen: '127.0.0.1:1', upstream: " + up + "}]\n"
	}
	for _, c := range []struct{ name, yaml, want string }{
		{"unknown pool", lst("api"), `listeners[0].upstream: want "host:port" or the name of a pool under upstreams:, got "api"`},
		{"no servers", "upstreams: {api: {balance: round_robin}}\n" + lst("api"), "upstreams.api.servers: want a list of servers"},
		{"bad balance", "upstreams: {api: {balance: random, servers: ['a:1']}}\n" + lst("api"), "upstreams.api.balance: want one of least_conn, round_robin, source_hash"},
		{"bad address", "upstreams: {api: {servers: [{address: 'a'}]}}\n" + lst("api"), `upstreams.api.servers[0].address: want "host:port"`},
		{"weight", "upstreams: {api: {servers: [{address: 'a:1', weight: 0}]}}\n" + lst("api"), "upstreams.api.servers[0].weight: want a whole number from 1 to 1000"},
		{"duplicate", "upstreams: {api: {servers: ['a:1', 'a:1']}}\n" + lst("api"), `upstreams.api.servers[1].address: "a:1" is already upstreams.api.servers[0]`},
		{"all backups", "upstreams: {api: {servers: [{address: 'a:1', backup: true}]}}\n" + lst("api"), "upstreams.api.servers: want at least one server that is not a backup"},
		{"quota without per", "upstreams: {api: {servers: [{address: 'a:1', quota: {conns: 100}}]}}\n" + lst("api"), "upstreams.api.servers[0].quota.per: required"},
		{"quota empty", "upstreams: {api: {servers: [{address: 'a:1', quota: {per: 1m}}]}}\n" + lst("api"), "upstreams.api.servers[0].quota: want conns or bytes"},
		{"quota of no conns", "upstreams: {api: {servers: [{address: 'a:1', quota: {conns: 0, per: 1m}}]}}\n" + lst("api"), "upstreams.api.servers[0].quota.conns"},
		{"quota of no bytes", "upstreams: {api: {servers: [{address: 'a:1', quota: {bytes: 0, per: 1d}}]}}\n" + lst("api"), "upstreams.api.servers[0].quota.bytes"},
		{"quota bytes unit", "upstreams: {api: {servers: [{address: 'a:1', quota: {bytes: lots, per: 1m}}]}}\n" + lst("api"), "upstreams.api.servers[0].quota.bytes"},
		{"check type", "upstreams: {api: {servers: ['a:1'], check: {type: icmp}}}\n" + lst("api"), "upstreams.api.check.type: want one of tcp, http"},
		{"check no type", "upstreams: {api: {servers: ['a:1'], check: {interval: 1s}}}\n" + lst("api"), "upstreams.api.check.type: required"},
		{"check timeout", "upstreams: {api: {servers: ['a:1'], check: {type: tcp, interval: 1s, timeout: 2s}}}\n" + lst("api"), "upstreams.api.check.timeout: want at most the interval"},
		{"tcp expect", "upstreams: {api: {servers: ['a:1'], check: {type: tcp, expect: 200}}}\n" + lst("api"), "upstreams.api.check: send and expect go with type: http"},
		{"bad expect", "upstreams: {api: {servers: ['a:1'], check: {type: http, expect: 2x}}}\n" + lst("api"), `upstreams.api.check.expect: want a status code like 200 or a class like 2xx, got "2x"`},
		{"passive without failures", "upstreams: {api: {servers: ['a:1'], passive: {eject: 1s}}}\n" + lst("api"), "upstreams.api.passive.failures: want how many failures"},
		{"max eject", "upstreams: {api: {servers: ['a:1'], passive: {failures: 1, eject: 1m, max_eject: 10s}}}\n" + lst("api"), "upstreams.api.passive.max_eject: want at least eject"},
		{"retry", "upstreams: {api: {servers: ['a:1'], retry: 11}}\n" + lst("api"), "upstreams.api.retry: want a whole number from 0 to 10"},
		{"pool name", "upstreams: {'A b': {servers: ['a:1']}}\n" + lst("'a:1'"), "a pool name is lower case letters"},
		{"unknown key", "upstreams: {api: {servers: ['a:1'], weight: 3}}\n" + lst("api"), "upstreams.api.weight: unknown key"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.yaml))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Parse error = %v\nwant one containing %q", err, c.want)
			}
		})
	}
}
