package config

import (
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Listener is one listening socket and where its connections go.
type Listener struct {
	// Name labels the listener in logs and metrics. Default: the listen
	// address. Names are unique within a config.
	Name string
	// Listen is the local address, "host:port"; an empty host means all
	// addresses and port 0 picks a free port.
	Listen string
	// Upstream is where connections are forwarded: a "host:port", or
	// the name of a pool of upstreams: (see Config.Pool).
	Upstream string
	// Timeouts bound dialing and idleness.
	Timeouts Timeouts
	// Chunk is the most a shaped connection moves per grant. Default
	// DefaultChunk; from MinChunk to MaxChunk.
	Chunk Size
	// Conn limits each connection, per direction.
	Conn ConnLimits
	// Links names the links every connection of this listener crosses.
	Links []string
	// MP4 paces MP4 video downloads.
	MP4 MP4
	// Allow lists clients that are never limited or banned.
	Allow CIDRList
	// Deny lists clients refused at once.
	Deny CIDRList
	// Limits names the admission limits (of limits:) a connection must
	// pass, all of them; a connection one refuses takes nothing from the
	// others.
	Limits []string
	// Bans names the ban policy (of bans:) the listener applies; empty
	// means none.
	Bans string
	// Refuse is what a refused connection gets: "close" (default: closed
	// at once, nothing read or sent), "reset" (an RST), "tarpit" (held
	// open without reading for Tarpit.Hold, then closed) or "overflow"
	// (handed to Overflow).
	Refuse string
	// Tarpit bounds refuse: tarpit.
	Tarpit Tarpit
	// Overflow is where refused connections go with refuse: overflow.
	Overflow Overflow
}

// Refuse actions.
const (
	RefuseClose    = "close"
	RefuseReset    = "reset"
	RefuseTarpit   = "tarpit"
	RefuseOverflow = "overflow"
)

// Tarpit holds refused connections open, reading nothing.
type Tarpit struct {
	// Hold is how long each is held before it is closed (default 30s).
	Hold time.Duration
	// Max is the most held at once by the listener (default 1000); past
	// it, refused connections are closed at once.
	Max int
}

// Overflow is a listener's target for refused connections: an upstream
// or a response written verbatim. Exactly one is set when configured.
type Overflow struct {
	// Upstream is a "host:port" the connection is forwarded to instead.
	Upstream string
	// RespondFile is a file whose bytes are written to the client, which
	// is then closed (e.g. an HTTP 503 page with Retry-After); a relative
	// path is read from the config file's directory.
	RespondFile string
	// Respond is RespondFile's content, read at load (and at reload).
	Respond []byte
}

// Admission defaults and bounds.
const (
	DefaultTarpitHold = 30 * time.Second
	DefaultTarpitMax  = 1000
	MaxTarpit         = 100_000
	MaxRespondFile    = 1 << 20
)

// ConnLimits are the per-connection limits of a listener.
type ConnLimits struct {
	// Up is client → upstream.
	Up DirLimit
	// Down is upstream → client.
	Down DirLimit
}

// DirLimit limits one direction of a connection.
type DirLimit struct {
	// Rate is the sustained limit; zero means no limit.
	Rate Rate
	// Burst is the most a connection may send at once after a pause.
	// Default: the listener's chunk.
	Burst Size
	// KernelPacing (down only) also asks the kernel to pace the client
	// socket at Rate (SO_MAX_PACING_RATE), smoothing packets within a
	// chunk. Default true.
	KernelPacing bool
}

// Timeouts are a listener's connection time limits.
type Timeouts struct {
	// Connect bounds the dial to the upstream. Default 5s; must be > 0.
	Connect time.Duration
	// Idle closes a connection after this long with no byte moved in either
	// direction. Default 5m; 0 disables the idle timeout.
	Idle time.Duration
}

// Listener defaults and bounds. MaxBurst bounds links' bursts too.
const (
	DefaultChunk          = 8 << 10
	MinChunk              = 512
	MaxChunk              = 4 << 20
	MaxBurst              = 1 << 30
	DefaultConnectTimeout = 5 * time.Second
	DefaultIdleTimeout    = 5 * time.Minute
)

// listeners reads the listeners: list. links are the links already read,
// which the listeners may name.
func (d *decoder) listeners(v any, links []Link, limits []Limit, bans []Ban, pools []Upstream) []Listener {
	list, ok := v.([]any)
	if v == nil || (ok && len(list) == 0) {
		d.failf("listeners", "want at least one listener, like [{name: web, listen: \"0.0.0.0:8080\", upstream: \"10.0.0.1:80\"}]")
		return nil
	}
	if !ok {
		d.failf("listeners", "want a list of listeners, got %s", describe(v))
		return nil
	}
	out := make([]Listener, 0, len(list))
	names := map[string]string{}
	addrs := map[string]string{}
	for i, item := range list {
		path := "listeners[" + strconv.Itoa(i) + "]"
		m := d.object(path, item, "name", "listen", "upstream", "links", "timeouts", "chunk", "conn", "mp4",
			"allow", "deny", "limits", "bans", "refuse", "tarpit", "overflow")
		if m == nil {
			continue
		}
		l := Listener{
			Listen:   d.hostPort(path+".listen", m["listen"], true),
			Upstream: d.upstreamRef(path+".upstream", m["upstream"], pools),
		}
		l.Name = d.str(path+".name", m["name"], l.Listen)
		to := d.object(path+".timeouts", m["timeouts"], "connect", "idle")
		l.Timeouts.Connect = d.duration(path+".timeouts.connect", to["connect"], DefaultConnectTimeout, true)
		l.Timeouts.Idle = d.duration(path+".timeouts.idle", to["idle"], DefaultIdleTimeout, false)
		l.Chunk = d.size(path+".chunk", m["chunk"], DefaultChunk, MinChunk, MaxChunk)
		cl := d.object(path+".conn", m["conn"], "up", "down")
		l.Conn.Up = d.dirLimit(path+".conn.up", cl["up"], l.Chunk, false)
		l.Conn.Down = d.dirLimit(path+".conn.down", cl["down"], l.Chunk, true)
		l.Links = d.linkRefs(path+".links", m["links"], links)
		l.MP4 = d.mp4(path+".mp4", m["mp4"])
		d.admission(path, m, &l, limits, bans)

		if prev, dup := names[l.Name]; dup && l.Name != "" {
			d.failf(path+".name", "%q is already the name of %s", l.Name, prev)
		}
		names[l.Name] = path
		if prev, dup := addrs[l.Listen]; dup && l.Listen != "" && !strings.HasSuffix(l.Listen, ":0") {
			d.failf(path+".listen", "%q is already the address of %s", l.Listen, prev)
		}
		addrs[l.Listen] = path
		out = append(out, l)
	}
	return out
}

// linkRefs reads a listener's list of link names, which must exist.
func (d *decoder) linkRefs(path string, v any, links []Link) []string {
	if v == nil {
		return nil
	}
	list, ok := v.([]any)
	if !ok {
		d.failf(path, "want a list of link names, like [hk-line], got %s", describe(v))
		return nil
	}
	var out []string
	for i, item := range list {
		name, ok := item.(string)
		p := path + "[" + strconv.Itoa(i) + "]"
		if !ok {
			d.failf(p, "want a link name, got %s", describe(item))
			continue
		}
		name = strings.ToLower(name)
		if !slices.ContainsFunc(links, func(l Link) bool { return l.Name == name }) {
			d.failf(p, "no link %q under links:", name)
			continue
		}
		if slices.Contains(out, name) {
			d.failf(p, "link %q is listed twice", name)
			continue
		}
		out = append(out, name)
	}
	return out
}

// dirLimit reads {rate, burst, kernel_pacing}. kernel_pacing is only
// allowed downstream, where sluice writes to the client.
func (d *decoder) dirLimit(path string, v any, chunk Size, down bool) DirLimit {
	keys := []string{"rate", "burst"}
	if down {
		keys = append(keys, "kernel_pacing")
	}
	m := d.object(path, v, keys...)
	l := DirLimit{
		Rate:         d.rate(path+".rate", m["rate"]),
		KernelPacing: d.boolean(path+".kernel_pacing", m["kernel_pacing"], down),
	}
	l.Burst = d.size(path+".burst", m["burst"], chunk, 1, MaxBurst)
	if m["burst"] != nil && l.Rate == 0 {
		d.failf(path+".burst", "has no effect without a rate; set %s.rate too", path)
	}
	return l
}

// admission reads a listener's allow, deny, limits, bans, refuse, tarpit
// and overflow.
func (d *decoder) admission(path string, m map[string]any, l *Listener, limits []Limit, bans []Ban) {
	l.Allow = d.cidrList(path+".allow", m["allow"])
	l.Deny = d.cidrList(path+".deny", m["deny"])
	l.Limits = d.nameRefs(path+".limits", m["limits"], "limits", func(name string) bool {
		return slices.ContainsFunc(limits, func(x Limit) bool { return x.Name == name })
	})
	if v := m["bans"]; v != nil {
		name, ok := v.(string)
		name = strings.ToLower(strings.TrimSpace(name))
		switch {
		case !ok:
			d.failf(path+".bans", "want the name of a ban policy under bans:, got %s", describe(v))
		case !slices.ContainsFunc(bans, func(b Ban) bool { return b.Name == name }):
			d.failf(path+".bans", "no ban policy %q under bans:", name)
		default:
			l.Bans = name
		}
	}
	l.Refuse = d.oneOf(path+".refuse", m["refuse"], RefuseClose, RefuseClose, RefuseReset, RefuseTarpit, RefuseOverflow)
	tp := d.object(path+".tarpit", m["tarpit"], "hold", "max")
	l.Tarpit.Hold = d.duration(path+".tarpit.hold", tp["hold"], DefaultTarpitHold, true)
	l.Tarpit.Max = d.integer(path+".tarpit.max", tp["max"], DefaultTarpitMax, 1, MaxTarpit)
	if m["tarpit"] != nil && l.Refuse != RefuseTarpit {
		d.failf(path+".tarpit", "has no effect unless refuse is tarpit")
	}
	if v := m["overflow"]; v != nil {
		om := d.object(path+".overflow", v, "upstream", "respond_file")
		switch {
		case om["upstream"] != nil && om["respond_file"] != nil:
			d.failf(path+".overflow", "want one of upstream and respond_file, not both")
		case om["upstream"] != nil:
			l.Overflow.Upstream = d.hostPort(path+".overflow.upstream", om["upstream"], false)
		case om["respond_file"] != nil:
			l.Overflow.RespondFile = d.path(d.str(path+".overflow.respond_file", om["respond_file"], ""))
			l.Overflow.Respond = d.respondFile(path+".overflow.respond_file", l.Overflow.RespondFile)
		default:
			d.failf(path+".overflow", `want {upstream: "host:port"} or {respond_file: PATH}`)
		}
	}
	if l.Refuse == RefuseOverflow && l.Overflow.Upstream == "" && l.Overflow.RespondFile == "" {
		d.failf(path+".refuse", `overflow needs a target: set %s.overflow to {upstream: "host:port"} or {respond_file: PATH}`, path)
	}
}

// respondFile reads a file written verbatim to refused clients.
func (d *decoder) respondFile(path, file string) []byte {
	if file == "" {
		d.failf(path, "want a file path")
		return nil
	}
	f, err := os.Open(file)
	if err != nil {
		d.failf(path, "read %q: %v", file, err)
		return nil
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxRespondFile+1))
	switch {
	case err != nil:
		d.failf(path, "read %q: %v", file, err)
		return nil
	case len(b) > MaxRespondFile:
		d.failf(path, "%q is larger than %d bytes", file, MaxRespondFile)
		return nil
	case len(b) == 0:
		d.failf(path, "%q is empty", file)
		return nil
	}
	return b
}

// nameRefs reads a list of names that must exist under block (exists).
func (d *decoder) nameRefs(path string, v any, block string, exists func(string) bool) []string {
	if v == nil {
		return nil
	}
	list, ok := v.([]any)
	if !ok {
		d.failf(path, "want a list of names under %s:, like [per-ip, global], got %s", block, describe(v))
		return nil
	}
	var out []string
	for i, item := range list {
		p := path + "[" + strconv.Itoa(i) + "]"
		name, ok := item.(string)
		if !ok {
			d.failf(p, "want a name under %s:, got %s", block, describe(item))
			continue
		}
		name = strings.ToLower(strings.TrimSpace(name))
		switch {
		case !exists(name):
			d.failf(p, "no %s entry %q", block, name)
		case slices.Contains(out, name):
			d.failf(p, "%q is listed twice", name)
		default:
			out = append(out, name)
		}
	}
	return out
}
