// Package config loads sluice's configuration: a YAML file with SLUICE_*
// environment overrides, read through viper, checked strictly (unknown keys
// are errors), with every unit converted once into base units: [Rate] in
// bytes per second, [Size] in bytes, durations as [time.Duration].
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
	"io"
	"net"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/viper"
)

// Config is a whole, validated sluice configuration with defaults filled in.
type Config struct {
	Log       Log
	Admin     Admin
	Links     []Link // sorted by name
	Listeners []Listener
	Shutdown  Shutdown
	Cores     Cores
}

// Cores says how many cores Go schedules sluice's goroutines on (its
// GOMAXPROCS): CoresAuto, CoresAll, or a fixed count from 1 to MaxCores.
// The GOMAXPROCS environment variable, when set, overrides it.
type Cores int

const (
	// CoresAuto (the default, "auto") runs on one core while sluice needs
	// less than about half of one, and on every core beyond that: one
	// core costs far less CPU per shaped byte, every core carries more.
	CoresAuto Cores = 0
	// CoresAll ("all") is Go's default: every core sluice may use.
	CoresAll Cores = -1
	// MaxCores bounds a fixed count.
	MaxCores = 1024
)

// String is the config form: "auto", "all" or the count.
func (c Cores) String() string {
	switch c {
	case CoresAuto:
		return "auto"
	case CoresAll:
		return "all"
	}
	return strconv.Itoa(int(c))
}

// Log configures the process logger.
type Log struct {
	// Level is one of "debug", "info", "warn", "error". Default "info".
	Level string
	// Format is "text" (logfmt-like) or "json". Default "text".
	Format string
}

// Admin configures the admin HTTP API (/metrics, /healthz, /readyz, /v1/...).
type Admin struct {
	// Listen is the admin address, "host:port". Default DefaultAdminListen
	// (loopback); "off" disables the admin API.
	Listen string
	// TokenFile holds the bearer token that state-changing calls need (its
	// content, surrounding white space trimmed). "${CREDENTIALS_DIRECTORY}"
	// in it is expanded, for systemd's LoadCredential=. The SLUICE_ADMIN_TOKEN
	// environment variable, when set, is used instead. A non-loopback
	// Listen requires a token.
	TokenFile string
	// Token is the token read from TokenFile or SLUICE_ADMIN_TOKEN; empty
	// when none is set. It is never printed.
	Token string
}

// Enabled reports whether the admin API listens at all.
func (a Admin) Enabled() bool { return a.Listen != "" }

// Listener is one listening socket and where its connections go.
type Listener struct {
	// Name labels the listener in logs and metrics. Default: the listen
	// address. Names are unique within a config.
	Name string
	// Listen is the local address, "host:port"; an empty host means all
	// addresses and port 0 picks a free port.
	Listen string
	// Upstream is the address connections are forwarded to, "host:port".
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
}

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

// Shutdown configures the graceful stop on SIGTERM/SIGINT.
type Shutdown struct {
	// Drain is how long live connections may run on after sluice stops
	// accepting; what is still open then is closed. Default 30s; 0 closes
	// at once.
	Drain time.Duration
}

// Defaults.
const (
	DefaultChunk          = 8 << 10
	MinChunk              = 512
	MaxChunk              = 4 << 20
	MaxBurst              = 1 << 30
	DefaultConnectTimeout = 5 * time.Second
	DefaultIdleTimeout    = 5 * time.Minute
	DefaultDrain          = 30 * time.Second
	DefaultAdminListen    = "127.0.0.1:9901"
	// MaxTokenLen bounds the admin token file.
	MaxTokenLen = 4096
)

// AdminTokenEnv names the environment variable that carries the admin token.
const AdminTokenEnv = EnvPrefix + "_ADMIN_TOKEN"

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
	return decode(v.AllSettings())
}

// Parse is [Load] for YAML text already in memory.
func Parse(yamlText []byte) (*Config, error) {
	v := newViper()
	if err := v.ReadConfig(bytes.NewReader(yamlText)); err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return decode(v.AllSettings())
}

func newViper() *viper.Viper {
	v := viper.New()
	v.SetConfigType("yaml")
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_", "-", "_"))
	v.AutomaticEnv()
	// Keys with defaults are overridable from the environment even when
	// the file does not mention them.
	v.SetDefault("log.level", "info")
	v.SetDefault("log.format", "text")
	v.SetDefault("shutdown.drain", DefaultDrain.String())
	v.SetDefault("admin.listen", DefaultAdminListen)
	v.SetDefault("cores", CoresAuto.String())
	return v
}

// decoder walks the generic settings tree, collecting every error.
type decoder struct {
	errs []error
}

func (d *decoder) failf(path, format string, args ...any) {
	d.errs = append(d.errs, fmt.Errorf("%s: "+format, append([]any{path}, args...)...))
}

func decode(settings map[string]any) (*Config, error) {
	d := &decoder{}
	c := &Config{}
	top := d.object("", settings, "log", "admin", "links", "listeners", "shutdown", "cores")

	lg := d.object("log", top["log"], "level", "format")
	c.Log.Level = d.oneOf("log.level", lg["level"], "info", "debug", "info", "warn", "error")
	c.Log.Format = d.oneOf("log.format", lg["format"], "text", "text", "json")

	sd := d.object("shutdown", top["shutdown"], "drain")
	c.Shutdown.Drain = d.duration("shutdown.drain", sd["drain"], DefaultDrain, false)

	c.Cores = d.cores("cores", top["cores"])
	c.Admin = d.admin(top["admin"])
	c.Links = d.links(top["links"])
	c.Listeners = d.listeners(top["listeners"], c.Links)
	if len(d.errs) > 0 {
		return nil, errors.Join(d.errs...)
	}
	return c, nil
}

// cores reads "auto", "all" or a count of cores.
func (d *decoder) cores(path string, v any) Cores {
	if v == nil {
		return CoresAuto
	}
	if s, ok := v.(string); ok {
		switch s = strings.ToLower(strings.TrimSpace(s)); s {
		case "auto":
			return CoresAuto
		case "all":
			return CoresAll
		}
		v = s
	}
	n, ok := wholeNumber(v)
	if !ok || n < 1 || n > MaxCores {
		d.failf(path, `want "auto", "all" or a whole number of cores from 1 to %d, got %s`, MaxCores, describe(v))
		return CoresAuto
	}
	return Cores(n)
}

// admin reads {listen, token_file} and the token itself.
func (d *decoder) admin(v any) Admin {
	m := d.object("admin", v, "listen", "token_file")
	var a Admin
	if s, ok := m["listen"].(string); ok && s == "off" {
		a.Listen = ""
	} else {
		a.Listen = d.hostPort("admin.listen", orDefault(m["listen"], DefaultAdminListen), true)
	}
	a.TokenFile = d.str("admin.token_file", m["token_file"], "")
	if a.TokenFile != "" {
		tok, err := readToken(expandCredentials(a.TokenFile))
		if err != nil {
			d.failf("admin.token_file", "%v", err)
		}
		a.Token = tok
	}
	if env, ok := os.LookupEnv(AdminTokenEnv); ok {
		if a.Token = strings.TrimSpace(env); a.Token == "" {
			d.failf(AdminTokenEnv, "set but empty: want the admin token, or unset it")
		}
	}
	if a.Listen != "" && a.Token == "" && !isLoopback(a.Listen) {
		d.failf("admin.listen", "%q is not a loopback address: set admin.token_file (or %s) so only holders of the token can use it, or listen on 127.0.0.1", a.Listen, AdminTokenEnv)
	}
	return a
}

// expandCredentials replaces ${CREDENTIALS_DIRECTORY} in a path with the
// directory systemd's LoadCredential= puts secrets in; nothing else is
// expanded.
func expandCredentials(path string) string {
	return os.Expand(path, func(name string) string {
		if name == "CREDENTIALS_DIRECTORY" {
			return os.Getenv(name)
		}
		return "$" + name
	})
}

// readToken reads a token file: at most MaxTokenLen bytes, white space
// trimmed, not empty.
func readToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxTokenLen+1))
	if err != nil {
		return "", err
	}
	if len(b) > MaxTokenLen {
		return "", fmt.Errorf("%s: longer than %d bytes: want a token file, like 32 random hex characters", path, MaxTokenLen)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("%s is empty: want the admin token", path)
	}
	return tok, nil
}

// isLoopback reports whether a listen address only accepts local peers:
// a loopback IP or "localhost". An empty host means every address.
func isLoopback(hostPort string) bool {
	host, _, err := net.SplitHostPort(hostPort)
	if err != nil || host == "" {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func orDefault(v any, def string) any {
	if v == nil {
		return def
	}
	return v
}

func (d *decoder) listeners(v any, links []Link) []Listener {
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
		m := d.object(path, item, "name", "listen", "upstream", "links", "timeouts", "chunk", "conn", "mp4")
		if m == nil {
			continue
		}
		l := Listener{
			Listen:   d.hostPort(path+".listen", m["listen"], true),
			Upstream: d.hostPort(path+".upstream", m["upstream"], false),
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

func (d *decoder) rate(path string, v any) Rate {
	const form = `want a rate like "10Mbit" or "1.5MB/s"`
	switch x := v.(type) {
	case nil:
		return 0
	case string:
		r, err := ParseRate(x)
		if err != nil {
			d.failf(path, "%s, got %q: %s", form, x, unitReason(err))
			return 0
		}
		return r
	default:
		d.failf(path, "%s (with a unit: bits or bytes?), got %s", form, describe(v))
		return 0
	}
}

func (d *decoder) size(path string, v any, def, lo, hi Size) Size {
	const form = `want a size like "64KiB" or "8192"`
	var s Size
	switch x := v.(type) {
	case nil:
		return def
	case int:
		s = Size(x)
	case int64:
		s = Size(x)
	case string:
		var err error
		if s, err = ParseSize(x); err != nil {
			d.failf(path, "%s, got %q: %s", form, x, unitReason(err))
			return def
		}
	default:
		d.failf(path, "%s, got %s", form, describe(v))
		return def
	}
	if s < lo || s > hi {
		d.failf(path, "%s from %v to %v, got %v", form, lo, hi, s)
		return def
	}
	return s
}

func unitReason(err error) string {
	var ue *UnitError
	if errors.As(err, &ue) {
		return ue.Reason
	}
	return err.Error()
}

func (d *decoder) boolean(path string, v any, def bool) bool {
	switch x := v.(type) {
	case nil:
		return def
	case bool:
		return x
	case string:
		switch strings.ToLower(x) {
		case "true":
			return true
		case "false":
			return false
		}
	}
	d.failf(path, "want true or false, got %s", describe(v))
	return def
}

// asMap returns v as a map with string keys, if it is a mapping.
func asMap(v any) (map[string]any, bool) {
	switch m := v.(type) {
	case map[string]any:
		return m, true
	case map[any]any:
		out := make(map[string]any, len(m))
		for k, val := range m {
			out[fmt.Sprint(k)] = val
		}
		return out, true
	}
	return nil, false
}

// object returns v as a map with lower-cased keys, refusing keys not in
// allowed. A nil v is an empty object.
func (d *decoder) object(path string, v any, allowed ...string) map[string]any {
	if v == nil {
		return map[string]any{}
	}
	m, ok := asMap(v)
	if !ok {
		d.failf(orTop(path), "want a mapping of keys (%s), got %s", strings.Join(allowed, ", "), describe(v))
		return nil
	}
	out := make(map[string]any, len(m))
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		lk := strings.ToLower(k)
		if !slices.Contains(allowed, lk) {
			d.failf(join(path, k), "unknown key (known keys here: %s)", strings.Join(allowed, ", "))
			continue
		}
		out[lk] = m[k]
	}
	return out
}

func (d *decoder) str(path string, v any, def string) string {
	switch x := v.(type) {
	case nil:
		return def
	case string:
		return x
	default:
		d.failf(path, "want a string, got %s", describe(v))
		return def
	}
}

func (d *decoder) oneOf(path string, v any, def string, allowed ...string) string {
	s := strings.ToLower(d.str(path, v, def))
	if !slices.Contains(allowed, s) {
		d.failf(path, "want one of %s, got %q", strings.Join(allowed, ", "), s)
		return def
	}
	return s
}

// duration parses a Go duration ("5s", "1m30s"). Zero is allowed unless
// positive is set.
func (d *decoder) duration(path string, v any, def time.Duration, positive bool) time.Duration {
	const form = `want a duration like "5m" or "30s"`
	switch x := v.(type) {
	case nil:
		return def
	case string:
		dur, err := time.ParseDuration(strings.TrimSpace(x))
		switch {
		case err != nil:
			d.failf(path, "%s, got %q", form, x)
		case dur < 0:
			d.failf(path, "%s, got a negative %q", form, x)
		case positive && dur == 0:
			d.failf(path, "%s greater than zero, got %q", form, x)
		default:
			return dur
		}
	case int, int64, float64:
		if fmt.Sprint(x) == "0" && !positive {
			return 0
		}
		d.failf(path, "%s (with a unit), got %v", form, x)
	default:
		d.failf(path, "%s, got %s", form, describe(v))
	}
	return def
}

// hostPort checks a "host:port" address. For a listen address the host may
// be empty and the port 0; an upstream needs both.
func (d *decoder) hostPort(path string, v any, listen bool) string {
	form := `want "host:port", like "10.0.0.1:80"`
	if listen {
		form = `want "host:port", like "0.0.0.0:8080" or "127.0.0.1:8080"`
	}
	s, ok := v.(string)
	if v == nil {
		d.failf(path, "required: %s", form)
		return ""
	}
	if !ok {
		d.failf(path, "%s, got %s", form, describe(v))
		return ""
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		d.failf(path, "%s, got %q", form, s)
		return ""
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || (!listen && p == 0) {
		d.failf(path, "%s with a port from 1 to 65535, got %q", form, s)
		return ""
	}
	if !listen && host == "" {
		d.failf(path, "%s with a host, got %q", form, s)
		return ""
	}
	return s
}

func describe(v any) string {
	switch x := v.(type) {
	case string:
		return strconv.Quote(x)
	case []any:
		return "a list"
	case map[string]any, map[any]any:
		return "a mapping"
	default:
		return fmt.Sprintf("%v", x)
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func orTop(path string) string {
	if path == "" {
		return "(top level)"
	}
	return path
}
