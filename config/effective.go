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
	type tarpit struct {
		Hold string `yaml:"hold"`
		Max  int    `yaml:"max"`
	}
	type overflow struct {
		Upstream    string `yaml:"upstream,omitempty"`
		RespondFile string `yaml:"respond_file,omitempty"`
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
		MP4      *mp4      `yaml:"mp4,omitempty"`
		Allow    []string  `yaml:"allow,omitempty,flow"`
		Deny     []string  `yaml:"deny,omitempty,flow"`
		Limits   []string  `yaml:"limits,omitempty,flow"`
		Bans     string    `yaml:"bans,omitempty"`
		Refuse   string    `yaml:"refuse"`
		Tarpit   *tarpit   `yaml:"tarpit,omitempty"`
		Overflow *overflow `yaml:"overflow,omitempty"`
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
		Up      *linkDir `yaml:"up,omitempty"`
		Down    *linkDir `yaml:"down,omitempty"`
		Keys    keys     `yaml:"keys"`
		Cluster bool     `yaml:"cluster,omitempty"`
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
	type queue struct {
		Size    int    `yaml:"size"`
		Timeout string `yaml:"timeout"`
	}
	type window struct {
		Max int64  `yaml:"max"`
		Per string `yaml:"per"`
	}
	type limit struct {
		By      string  `yaml:"by"`
		Prefix  int     `yaml:"prefix,omitempty"`
		Prefix6 int     `yaml:"prefix6,omitempty"`
		Table   int     `yaml:"table,omitempty"`
		Conns   int     `yaml:"conns,omitempty"`
		Queue   *queue  `yaml:"queue,omitempty"`
		Rate    string  `yaml:"rate,omitempty"`
		Burst   *int    `yaml:"burst,omitempty"`
		Delay   *int    `yaml:"delay,omitempty"`
		Window  *window `yaml:"window,omitempty"`
		Borrow  string  `yaml:"borrow,omitempty"`
		Cluster bool    `yaml:"cluster,omitempty"`
	}
	type tier struct {
		Over int    `yaml:"over"`
		Per  string `yaml:"per"`
		Ban  string `yaml:"ban"`
	}
	type repeat struct {
		Factor float64 `yaml:"factor"`
		Max    string  `yaml:"max"`
	}
	type ban struct {
		By      string `yaml:"by"`
		Prefix  int    `yaml:"prefix,omitempty"`
		Prefix6 int    `yaml:"prefix6,omitempty"`
		Count   string `yaml:"count"`
		Tiers   []tier `yaml:"tiers"`
		Repeat  repeat `yaml:"repeat"`
		Table   int    `yaml:"table"`
		Cluster bool   `yaml:"cluster,omitempty"`
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
		Links     map[string]link  `yaml:"links,omitempty"`
		Limits    map[string]limit `yaml:"limits,omitempty"`
		Bans      map[string]ban   `yaml:"bans,omitempty"`
		Upstreams map[string]any   `yaml:"upstreams,omitempty"`
		Listeners []listener       `yaml:"listeners"`
		Shutdown  struct {
			Drain string `yaml:"drain"`
		} `yaml:"shutdown"`
		Cores   string       `yaml:"cores"`
		Cluster *clusterYAML `yaml:"cluster,omitempty"`
	}
	var o out
	o.Cluster = c.Cluster.yaml()
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
		o.Links[l.Name] = link{Up: mkLinkDir(l.Up), Down: mkLinkDir(l.Down), Keys: k, Cluster: l.Cluster}
	}
	if len(c.Limits) > 0 {
		o.Limits = map[string]limit{}
	}
	for _, l := range c.Limits {
		ol := limit{By: l.By, Conns: l.Conns, Borrow: l.Borrow, Cluster: l.Cluster}
		if l.By == ByCIDR {
			ol.Prefix, ol.Prefix6 = l.Prefix, l.Prefix6
		}
		if l.By == BySourceIP || l.By == ByCIDR {
			ol.Table = l.Table
		}
		if l.Queue.Size > 0 {
			ol.Queue = &queue{Size: l.Queue.Size, Timeout: l.Queue.Timeout.String()}
		}
		if l.Rate.N > 0 {
			burst, delay := l.Burst, l.Delay
			ol.Rate, ol.Burst, ol.Delay = l.Rate.String(), &burst, &delay
		}
		if l.Window.Max > 0 {
			ol.Window = &window{Max: l.Window.Max, Per: l.Window.Per.String()}
		}
		o.Limits[l.Name] = ol
	}
	if len(c.Bans) > 0 {
		o.Bans = map[string]ban{}
	}
	for _, b := range c.Bans {
		ob := ban{By: b.By, Count: b.Count, Repeat: repeat{Factor: b.Repeat.Factor, Max: b.Repeat.Max.String()}, Table: b.Table, Cluster: b.Cluster}
		if b.By == ByCIDR {
			ob.Prefix, ob.Prefix6 = b.Prefix, b.Prefix6
		}
		for _, t := range b.Tiers {
			ob.Tiers = append(ob.Tiers, tier{Over: t.Over, Per: t.Per.String(), Ban: t.Ban.String()})
		}
		o.Bans[b.Name] = ob
	}
	o.Upstreams = c.upstreamsYAML()
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
		ol.Allow, ol.Deny, ol.Limits, ol.Bans, ol.Refuse = l.Allow.Entries, l.Deny.Entries, l.Limits, l.Bans, l.Refuse
		if l.Refuse == RefuseTarpit {
			ol.Tarpit = &tarpit{Hold: l.Tarpit.Hold.String(), Max: l.Tarpit.Max}
		}
		if l.Overflow.Upstream != "" || l.Overflow.RespondFile != "" {
			ol.Overflow = &overflow{Upstream: l.Overflow.Upstream, RespondFile: l.Overflow.RespondFile}
		}
		o.Listeners = append(o.Listeners, ol)
	}
	return yaml.Marshal(o)
}
