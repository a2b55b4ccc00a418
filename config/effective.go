package config

import (
	"go.yaml.in/yaml/v3"
)

// YAML renders c as the YAML that [Parse] reads back into an equal Config,
// with every default written out: what `sluice check` prints.
func (c *Config) YAML() ([]byte, error) {
	type timeouts struct {
		Connect string `yaml:"connect"`
		Idle    string `yaml:"idle"`
	}
	type listener struct {
		Name     string   `yaml:"name"`
		Listen   string   `yaml:"listen"`
		Upstream string   `yaml:"upstream"`
		Timeouts timeouts `yaml:"timeouts"`
	}
	type out struct {
		Log struct {
			Level  string `yaml:"level"`
			Format string `yaml:"format"`
		} `yaml:"log"`
		Listeners []listener `yaml:"listeners"`
		Shutdown  struct {
			Drain string `yaml:"drain"`
		} `yaml:"shutdown"`
	}
	var o out
	o.Log.Level, o.Log.Format = c.Log.Level, c.Log.Format
	o.Shutdown.Drain = c.Shutdown.Drain.String()
	for _, l := range c.Listeners {
		o.Listeners = append(o.Listeners, listener{
			Name: l.Name, Listen: l.Listen, Upstream: l.Upstream,
			Timeouts: timeouts{Connect: l.Timeouts.Connect.String(), Idle: l.Timeouts.Idle.String()},
		})
	}
	return yaml.Marshal(o)
}
