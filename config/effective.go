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
	type dir struct {
		Rate         string `yaml:"rate"`
		Burst        string `yaml:"burst,omitempty"`
		KernelPacing *bool  `yaml:"kernel_pacing,omitempty"`
	}
	type listener struct {
		Name     string   `yaml:"name"`
		Listen   string   `yaml:"listen"`
		Upstream string   `yaml:"upstream"`
		Timeouts timeouts `yaml:"timeouts"`
		Chunk    string   `yaml:"chunk"`
		Conn     struct {
			Up   dir `yaml:"up"`
			Down dir `yaml:"down"`
		} `yaml:"conn"`
	}
	mkDir := func(d DirLimit, down bool) dir {
		out := dir{Rate: d.Rate.String()}
		if d.Rate != 0 {
			out.Burst = d.Burst.String()
		}
		if down {
			kp := d.KernelPacing
			out.KernelPacing = &kp
		}
		return out
	}
	type out struct {
		Log struct {
			Level  string `yaml:"level"`
			Format string `yaml:"format"`
		} `yaml:"log"`
		Admin struct {
			Listen    string `yaml:"listen"`
			TokenFile string `yaml:"token_file,omitempty"`
		} `yaml:"admin"`
		Listeners []listener `yaml:"listeners"`
		Shutdown  struct {
			Drain string `yaml:"drain"`
		} `yaml:"shutdown"`
	}
	var o out
	o.Log.Level, o.Log.Format = c.Log.Level, c.Log.Format
	o.Shutdown.Drain = c.Shutdown.Drain.String()
	o.Admin.Listen, o.Admin.TokenFile = c.Admin.Listen, c.Admin.TokenFile
	if o.Admin.Listen == "" {
		o.Admin.Listen = "off"
	}
	for _, l := range c.Listeners {
		ol := listener{
			Name: l.Name, Listen: l.Listen, Upstream: l.Upstream,
			Timeouts: timeouts{Connect: l.Timeouts.Connect.String(), Idle: l.Timeouts.Idle.String()},
			Chunk:    l.Chunk.String(),
		}
		ol.Conn.Up, ol.Conn.Down = mkDir(l.Conn.Up, false), mkDir(l.Conn.Down, true)
		o.Listeners = append(o.Listeners, ol)
	}
	return yaml.Marshal(o)
}
