package config

import (
	"strings"
	"testing"
)

func TestCores(t *testing.T) {
	const l = "\nlisteners: [{listen: ':1', upstream: 'a:1'}]"
	for _, tc := range []struct {
		yaml string
		want Cores
	}{
		{"", CoresAuto},
		{"cores: auto", CoresAuto},
		{"cores: All", CoresAll},
		{"cores: 1", 1},
		{"cores: '3'", 3},
		{"cores: 1024", MaxCores},
	} {
		cfg, err := Parse([]byte(tc.yaml + l))
		if err != nil {
			t.Fatalf("%q: %v", tc.yaml, err)
		}
		if cfg.Cores != tc.want {
			t.Errorf("%q: Cores = %v, want %v", tc.yaml, cfg.Cores, tc.want)
		}
	}
	for _, tc := range []struct{ yaml, want string }{
		{"cores: 0", `cores: want "auto", "all" or a whole number of cores from 1 to 1024, got 0`},
		{"cores: -1", "a whole number of cores from 1 to 1024, got -1"},
		{"cores: 1025", "a whole number of cores from 1 to 1024, got 1025"},
		{"cores: 1.5", "a whole number of cores from 1 to 1024, got 1.5"},
		{"cores: many", `cores: want "auto", "all" or a whole number of cores from 1 to 1024, got "many"`},
		{"cores: [1]", "cores: want \"auto\", \"all\" or a whole number of cores from 1 to 1024, got"},
	} {
		_, err := Parse([]byte(tc.yaml + l))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error = %v, want it to contain %q", tc.yaml, err, tc.want)
		}
	}
	t.Setenv("SLUICE_CORES", "2")
	cfg, err := Parse([]byte(l))
	if err != nil || cfg.Cores != 2 {
		t.Errorf("SLUICE_CORES=2: Cores = %v, %v; want 2", cfg, err)
	}
}
