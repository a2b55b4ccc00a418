package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// oneListener is the smallest valid config, one listener; tests of other
// blocks append it.
const oneListener = "listeners: [{listen: ':1', upstream: 'a:1'}]\n"

func TestLoadExample(t *testing.T) {
	cfg, err := Load("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Log:   Log{Level: "info", Format: "text"},
		Admin: Admin{Listen: DefaultAdminListen},
		Listeners: []Listener{{
			Name: "web", Listen: "127.0.0.1:8080", Upstream: "127.0.0.1:8081",
			Timeouts: Timeouts{Connect: 5 * time.Second, Idle: 5 * time.Minute},
			Chunk:    8192,
			Conn: ConnLimits{
				Up:   DirLimit{Burst: 8192},
				Down: DirLimit{Rate: 12_500_000, Burst: 64 << 10, KernelPacing: true},
			},
			MP4:    MP4{Mode: "auto", Factor: DefaultMP4Factor, Burst: DefaultMP4Burst, CacheEntries: DefaultMP4CacheEntries, MetadataBudget: DefaultMP4Budget},
			Refuse: RefuseClose,
			Tarpit: Tarpit{Hold: DefaultTarpitHold, Max: DefaultTarpitMax},
		}},
		Shutdown: Shutdown{Drain: 30 * time.Second},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("Load = %+v\nwant %+v", cfg, want)
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := Parse([]byte("listeners: [{listen: ':8080', upstream: 'origin:80'}]"))
	if err != nil {
		t.Fatal(err)
	}
	l := cfg.Listeners[0]
	if l.Name != ":8080" || l.Timeouts.Connect != DefaultConnectTimeout || l.Timeouts.Idle != DefaultIdleTimeout {
		t.Errorf("listener defaults = %+v", l)
	}
	if cfg.Shutdown.Drain != DefaultDrain || cfg.Log.Level != "info" || cfg.Log.Format != "text" {
		t.Errorf("defaults = %+v", cfg)
	}
}

func TestErrorsNameKeyAndForm(t *testing.T) {
	_, err := Load("testdata/bad.yaml")
	if err == nil {
		t.Fatal("Load(bad.yaml) = nil error")
	}
	for _, want := range []string{
		`listeners[0].listen: want "host:port", like "0.0.0.0:8080" or "127.0.0.1:8080" with a port from 1 to 65535, got "0.0.0.0:99999"`,
		`listeners[0].upstream: want "host:port" or the name of a pool under upstreams:, got "nohost"`,
		`listeners[0].timeouts.connect: want a duration like "5m" or "30s" greater than zero, got "0s"`,
		`listeners[0].timeouts.idle: want a duration like "5m" or "30s", got a negative "-5s"`,
		`listeners[0].rate: unknown key (known keys here: name, listen, upstream, links, timeouts, chunk, conn, mp4, allow, deny, limits, bans, refuse, tarpit, overflow)`,
		`shutdown.drain: want a duration like "5m" or "30s", got "forever"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q; got:\n%v", want, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"empty", "", "listeners: want at least one listener"},
		{"listeners not a list", "listeners: 5", "listeners: want a list of listeners, got 5"},
		{"listener not a mapping", "listeners: [5]", "listeners[0]: want a mapping of keys"},
		{"unknown top-level key", "listners: []\nlisteners: [{listen: ':1', upstream: 'a:1'}]", "listners: unknown key"},
		{"missing upstream", "listeners: [{listen: ':1'}]", `listeners[0].upstream: required: want "host:port"`},
		{"upstream port zero", "listeners: [{listen: ':1', upstream: 'a:0'}]", "with a port from 1 to 65535"},
		{"upstream without host", "listeners: [{listen: ':1', upstream: ':80'}]", "with a host"},
		{"duration without unit", "listeners: [{listen: ':1', upstream: 'a:1', timeouts: {idle: 30}}]", `listeners[0].timeouts.idle: want a duration like "5m" or "30s" (with a unit), got 30`},
		{"bad log level", "log: {level: loud}\nlisteners: [{listen: ':1', upstream: 'a:1'}]", `log.level: want one of debug, info, warn, error, got "loud"`},
		{"duplicate names", "listeners: [{name: a, listen: ':1', upstream: 'a:1'}, {name: a, listen: ':2', upstream: 'a:1'}]", `listeners[1].name: "a" is already the name of listeners[0]`},
		{"duplicate addresses", "listeners: [{listen: ':1', upstream: 'a:1'}, {name: b, listen: ':1', upstream: 'a:1'}]", `listeners[1].listen: ":1" is already the address of listeners[0]`},
		{"bad yaml", "listeners: [", "read config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestEnvOverrides(t *testing.T) {
	t.Setenv("SLUICE_LOG_LEVEL", "debug")
	t.Setenv("SLUICE_SHUTDOWN_DRAIN", "2s")
	cfg, err := Load("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Log.Level != "debug" || cfg.Shutdown.Drain != 2*time.Second {
		t.Errorf("env overrides not applied: log.level=%q shutdown.drain=%v", cfg.Log.Level, cfg.Shutdown.Drain)
	}
	t.Setenv("SLUICE_SHUTDOWN_DRAIN", "later")
	if _, err := Load("testdata/example.yaml"); err == nil || !strings.Contains(err.Error(), `shutdown.drain: want a duration`) {
		t.Errorf("bad env value: error = %v, want it to name shutdown.drain", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Fatalf("Load(missing) = %v, want an error naming the file", err)
	}
}

// TestYAMLRoundTrip checks that what `sluice check` prints loads back to the
// same config.
func TestYAMLRoundTrip(t *testing.T) {
	for _, f := range []string{"testdata/example.yaml", "testdata/upstreams.yaml"} {
		cfg, err := Load(f)
		if err != nil {
			t.Fatal(err)
		}
		out, err := cfg.YAML()
		if err != nil {
			t.Fatal(err)
		}
		back, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse(YAML()) = %v\n%s", err, out)
		}
		if !reflect.DeepEqual(cfg, back) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v", cfg, back)
		}
	}
}

// FuzzParse checks config parsing never panics on any input and that every
// accepted config round-trips through YAML.
func FuzzParse(f *testing.F) {
	for _, name := range []string{"testdata/example.yaml", "testdata/bad.yaml", "testdata/upstreams.yaml"} {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("listeners: [{listen: ':1', upstream: 'a:1', timeouts: {idle: 0}}]"))
	f.Add([]byte("listeners: {a: b}"))
	f.Add([]byte("listeners: [{listen: ':1', upstream: 'a:1', chunk: 1KiB, conn: {up: {rate: 1Mbit, burst: 2KiB}, down: {rate: '5MB/s', kernel_pacing: false}}}]"))
	f.Add([]byte("&a [*a]"))
	f.Add([]byte("cores: 2\nlisteners: [{listen: ':1', upstream: 'a:1'}]"))
	f.Add([]byte("cores: [all]\nlisteners: [{listen: ':1', upstream: 'a:1'}]"))
	f.Add([]byte(linksYAML))
	f.Add([]byte(protectYAML))
	f.Add([]byte(clusterYAMLText))
	f.Add([]byte("listeners: [{listen: ':1', upstream: 'a:1', mp4: {enabled: true, factor: 1.5, burst_seconds: 0.5, floor: 1Mbit, default_rate: 2Mbit}}]"))
	f.Add([]byte("admin: {listen: off}\nlinks: {a: {up: {rate: 1Mbit}, keys: {by: listener, weight: 2}}}\nlisteners: [{listen: ':1', upstream: 'a:1', links: [a]}]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := Parse(b)
		if err != nil {
			return
		}
		out, err := cfg.YAML()
		if err != nil {
			t.Fatal(err)
		}
		back, err := Parse(out)
		if err != nil {
			t.Fatalf("accepted config does not round-trip: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(cfg, back) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v", cfg, back)
		}
	})
}
