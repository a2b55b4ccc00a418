// Package config loads sluice's configuration: a YAML file with SLUICE_*
// environment overrides, read through viper, checked strictly (unknown keys
// are errors), with every unit converted once into base units: [Rate] in
// bytes per second, [Size] in bytes, durations as [time.Duration]. Each
// YAML block has a file of its own (listeners.go, links.go, admin.go,
// mp4.go, process.go for log, cores and shutdown); decode.go holds the
// readers they share. It must not import proxy, shaper or mp4probe: cmd
// turns a Config into their plain structs.
//
// Typical usage:
//
//	cfg, err := config.Load("/etc/sluice/sluice.yaml")
//	if err != nil {
//		// err names every bad key and the form it wants, e.g.
//		// listeners[0].timeouts.idle: want a duration like "5m" or "30s", got "soon"
//	}
//	for _, l := range cfg.Listeners { ... }
package config

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spf13/viper"
)

// Config is a whole, validated sluice configuration with defaults filled in.
type Config struct {
	Log       Log
	Admin     Admin
	Links     []Link     // sorted by name
	Limits    []Limit    // sorted by name
	Bans      []Ban      // sorted by name
	Upstreams []Upstream // sorted by name
	Listeners []Listener
	Shutdown  Shutdown
	Cores     Cores
	Cluster   Cluster
}

// EnvPrefix prefixes environment overrides: SLUICE_LOG_LEVEL=debug overrides
// log.level. Dots and dashes in key paths become underscores.
const EnvPrefix = "SLUICE"

// Load reads the YAML file at path, applies SLUICE_* environment overrides,
// fills in defaults and validates the result. The error names every bad key
// with the form it wants; unknown keys are errors.
func Load(path string) (*Config, error) {
	v := newViper()
	v.SetConfigFile(path)
	if err := v.ReadInConfig(); err != nil {
		return nil, fmt.Errorf("read config %q: %w", path, err)
	}
	return decode(v.AllSettings(), filepath.Dir(path))
}

// Parse is [Load] for YAML text already in memory; relative file paths in
// it are read from the working directory.
func Parse(yamlText []byte) (*Config, error) {
	v := newViper()
	if err := v.ReadConfig(bytes.NewReader(yamlText)); err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return decode(v.AllSettings(), "")
}

func newViper() *viper.Viper {
	v := viper.New()
	v.SetConfigType("yaml")
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_", "-", "_"))
	v.AutomaticEnv()
	// Keys with defaults are overridable from the environment even when
	// the file does not mention them. A block with such keys sets their
	// defaults here.
	v.SetDefault("log.level", "info")
	v.SetDefault("log.format", "text")
	v.SetDefault("shutdown.drain", DefaultDrain.String())
	v.SetDefault("admin.listen", DefaultAdminListen)
	v.SetDefault("cores", CoresAuto.String())
	return v
}

// topLevelKeys are the keys allowed at the top of the file; any other is an
// error. Each block has a file of its own with its types and the decoder
// method that reads it (process.go has log, shutdown and cores); a new block
// adds its key here and one line to decode.
var topLevelKeys = []string{"log", "admin", "links", "limits", "bans", "upstreams", "listeners", "shutdown", "cores", "cluster"}

// decode reads each block in turn. Listeners come after links, limits and
// bans, whose names they refer to.
func decode(settings map[string]any, base string) (*Config, error) {
	d := &decoder{base: base}
	c := &Config{}
	top := d.object("", settings, topLevelKeys...)

	c.Log = d.log(top["log"])
	c.Shutdown = d.shutdown(top["shutdown"])
	c.Cores = d.cores("cores", top["cores"])
	c.Admin = d.admin(top["admin"])
	c.Links = d.links(top["links"])
	c.Limits = d.limits(top["limits"])
	c.Bans = d.bans(top["bans"])
	c.Upstreams = d.upstreams(top["upstreams"])
	c.Listeners = d.listeners(top["listeners"], c.Links, c.Limits, c.Bans, c.Upstreams)
	c.Cluster = d.cluster(top["cluster"])
	d.checkCluster(c)

	if len(d.errs) > 0 {
		return nil, errors.Join(d.errs...)
	}
	return c, nil
}
