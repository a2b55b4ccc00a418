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
	type mp4 struct {
		Enabled      bool    `yaml:"enabled"`
		Mode         string  `yaml:"mode"`
		Factor       float64 `yaml:"factor"`
		BurstSeconds float64 `yaml:"burst_seconds"`
		Floor        string  `yaml:"floor"`
		Ceil         string  `yaml:"ceil"`
		DefaultRate  string  `yaml:"default_rate"`
		CacheEntries int     `yaml:"cache_entries"`
		Budget       string  `yaml:"metadata_budget"`
	}
	type listener struct {
		Name     string   `yaml:"name"`
		Listen   string   `yaml:"listen"`
		Upstream string   `yaml:"upstream"`
		Links    []string `yaml:"links,omitempty,flow"`
		Timeouts timeouts `yaml:"timeouts"`
		Chunk    string   `yaml:"chunk"`
		Conn     struct {
			Up   dir `yaml:"up"`
			Down dir `yaml:"down"`
		} `yaml:"conn"`
		MP4 *mp4 `yaml:"mp4,omitempty"`
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
	type linkDir struct {
		Rate  string `yaml:"rate,omitempty"`
		Burst string `yaml:"burst,omitempty"`
	}
	type override struct {
		Key    string `yaml:"key"`
		Rate   string `yaml:"rate,omitempty"`
		Ceil   string `yaml:"ceil,omitempty"`
		Weight int    `yaml:"weight"`
	}
	type keys struct {
		By        string     `yaml:"by"`
		Prefix    int        `yaml:"prefix,omitempty"`
		Prefix6   int        `yaml:"prefix6,omitempty"`
		Rate      string     `yaml:"rate,omitempty"`
		Ceil      string     `yaml:"ceil,omitempty"`
		Weight    int        `yaml:"weight"`
		Overrides []override `yaml:"overrides,omitempty"`
	}
	type link struct {
		Up   *linkDir `yaml:"up,omitempty"`
		Down *linkDir `yaml:"down,omitempty"`
		Keys keys     `yaml:"keys"`
	}
	rateOr := func(r Rate) string {
		if r == 0 {
			return ""
		}
		return r.String()
	}
	mkLinkDir := func(d LinkDir) *linkDir {
		if d.Rate == 0 {
			return nil
		}
		out := &linkDir{Rate: d.Rate.String()}
		if d.Burst != 0 {
			out.Burst = d.Burst.String()
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
		Links     map[string]link `yaml:"links,omitempty"`
		Listeners []listener      `yaml:"listeners"`
		Shutdown  struct {
			Drain string `yaml:"drain"`
		} `yaml:"shutdown"`
		Cores string `yaml:"cores"`
	}
	var o out
	o.Log.Level, o.Log.Format = c.Log.Level, c.Log.Format
	o.Shutdown.Drain = c.Shutdown.Drain.String()
	o.Cores = c.Cores.String()
	o.Admin.Listen, o.Admin.TokenFile = c.Admin.Listen, c.Admin.TokenFile
	if o.Admin.Listen == "" {
		o.Admin.Listen = "off"
	}
	if len(c.Links) > 0 {
		o.Links = map[string]link{}
	}
	for _, l := range c.Links {
		k := keys{By: l.Keys.By, Rate: rateOr(l.Keys.Rate), Ceil: rateOr(l.Keys.Ceil), Weight: l.Keys.Weight}
		if l.Keys.By == KeysCIDR {
			k.Prefix, k.Prefix6 = l.Keys.Prefix, l.Keys.Prefix6
		}
		for _, ov := range l.Keys.Overrides {
			k.Overrides = append(k.Overrides, override{Key: ov.Key, Rate: rateOr(ov.Rate), Ceil: rateOr(ov.Ceil), Weight: ov.Weight})
		}
		o.Links[l.Name] = link{Up: mkLinkDir(l.Up), Down: mkLinkDir(l.Down), Keys: k}
	}
	for _, l := range c.Listeners {
		ol := listener{
			Name: l.Name, Listen: l.Listen, Upstream: l.Upstream, Links: l.Links,
			Timeouts: timeouts{Connect: l.Timeouts.Connect.String(), Idle: l.Timeouts.Idle.String()},
			Chunk:    l.Chunk.String(),
		}
		ol.Conn.Up, ol.Conn.Down = mkDir(l.Conn.Up, false), mkDir(l.Conn.Down, true)
		if l.MP4 != (MP4{}) {
			ol.MP4 = &mp4{
				Enabled: l.MP4.Enabled, Mode: l.MP4.Mode, Factor: l.MP4.Factor, BurstSeconds: l.MP4.Burst.Seconds(),
				Floor: l.MP4.Floor.String(), Ceil: l.MP4.Ceil.String(), DefaultRate: l.MP4.DefaultRate.String(),
				CacheEntries: l.MP4.CacheEntries, Budget: l.MP4.MetadataBudget.String(),
			}
		}
		o.Listeners = append(o.Listeners, ol)
	}
	return yaml.Marshal(o)
}
