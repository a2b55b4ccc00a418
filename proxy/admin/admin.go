package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sluiceproxy/sluice/proxy"
	"github.com/sluiceproxy/sluice/proxy/admit"
	"github.com/sluiceproxy/sluice/proxy/upstream"
	"github.com/sluiceproxy/sluice/shaper"
)

// Proxy is what the admin API and the collector need of a running proxy;
// [*proxy.Server] implements it. Its methods must be safe for concurrent
// use. The setters return an error, and change nothing, for an unknown
// name or id or an invalid limit.
type Proxy interface {
	// Stats returns every listener name's counters and current limits
	// (see [proxy.Server.Stats]).
	Stats() []proxy.ListenerStats
	// Conns returns the live connections, in no particular order.
	Conns() []proxy.ConnInfo
	// Conn returns one live connection, and false if there is none.
	Conn(id uint64) (proxy.ConnInfo, bool)
	// Links returns the links in service, by name; with keys, each
	// direction's keys too.
	Links(keys bool) []proxy.LinkStats
	// Process returns the gauges shared by the whole process.
	Process() proxy.ProcessStats

	// SetLimits changes a listener's per-connection limits, for its live
	// connections too.
	SetLimits(listener string, lim proxy.ConnLimits) error
	// SetConnLimits changes one live connection's limits.
	SetConnLimits(id uint64, lim proxy.ConnLimits) error
	// CloseConn closes a live connection at once.
	CloseConn(id uint64) error
	// SetLinkLimit changes one direction of a link in service.
	SetLinkLimit(link string, d proxy.Dir, ll shaper.LinkLimit) error

	// Pools returns every upstream pool's state, by name.
	Pools() []upstream.Stats
	// DrainServer stops giving a pool's server new connections;
	// EnableServer undoes it.
	DrainServer(pool, addr string) error
	EnableServer(pool, addr string) error

	// Bans returns the active bans of every ban policy.
	Bans() []admit.BanInfo
	// AddBan bans key under the named policy for d, from now.
	AddBan(ban string, key netip.Prefix, d time.Duration) error
	// LiftBan lifts key's ban under the named policy; it reports whether
	// there was one.
	LiftBan(ban string, key netip.Prefix) (bool, error)
	// Client returns addr's state in every limit and ban, as the named
	// listener's policy sees it.
	Client(addr netip.Addr, listener string) []admit.KeyState
	// AdmissionSet returns the counters of the limits and ban policies.
	AdmissionSet() ([]admit.LimitStats, []admit.BanStats)
}

// Interface guards
var (
	_ Proxy                = (*proxy.Server)(nil)
	_ http.Handler         = (*Handler)(nil)
	_ prometheus.Collector = (*Collector)(nil)
)

// Log keys, as package proxy names them.
const (
	keyConnID   = "conn_id"
	keyListener = "listener"
)

// Options configure a [Handler]. The zero value serves the read calls,
// /healthz and /readyz, and refuses every state-changing call.
type Options struct {
	// Token is the bearer token that state-changing calls need. Empty
	// disables them (they answer 403). [Handler.SetToken] changes it.
	Token string
	// AuthReads makes read calls under /v1/ need the token too (for an
	// admin API reachable from other machines). /metrics, /healthz and
	// /readyz never need it.
	AuthReads bool
	// Gatherer serves /metrics; nil serves no /metrics.
	Gatherer prometheus.Gatherer
	// Reload re-reads and applies the config (POST /v1/reload). It returns
	// an error, and changes nothing, for an invalid config. Nil answers 501.
	Reload func(ctx context.Context) error
	// Ready reports whether sluice serves traffic (/readyz). Nil means yes.
	Ready func() bool
	// ParseRate and ParseSize turn strings like "10Mbit" and "64KiB" into
	// bytes per second and bytes; nil accepts numbers only.
	ParseRate, ParseSize func(string) (int64, error)
	// Logger receives a line per state change. Nil means no logging.
	Logger *slog.Logger
	// Cluster, if set, returns the state of the cluster the instance
	// belongs to: GET /v1/cluster, and a line of /readyz. Nil: in none.
	Cluster func() *ClusterStatus
}

// Handler is the admin HTTP API of a running proxy. See docs/operating.md
// for the endpoints. Its methods are safe for concurrent use.
type Handler struct {
	p     Proxy
	opts  Options
	log   *slog.Logger
	token atomic.Pointer[string]
	mux   *http.ServeMux
}

// New returns the admin API of p.
func New(p Proxy, opts Options) *Handler {
	h := &Handler{p: p, opts: opts, log: opts.Logger, mux: http.NewServeMux()}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	h.SetToken(opts.Token)
	h.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	h.mux.HandleFunc("GET /readyz", h.readyz)
	if opts.Gatherer != nil {
		h.mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{}))
	}
	h.mux.HandleFunc("GET /v1/listeners", h.read(h.listeners))
	h.mux.HandleFunc("PUT /v1/listeners/{name}/limits", h.write(h.setListenerLimits))
	h.mux.HandleFunc("GET /v1/links", h.read(h.links))
	h.mux.HandleFunc("GET /v1/links/{name}", h.read(h.link))
	h.mux.HandleFunc("PUT /v1/links/{name}/limits", h.write(h.setLinkLimits))
	h.mux.HandleFunc("GET /v1/conns", h.read(h.conns))
	h.mux.HandleFunc("GET /v1/conns/{id}", h.read(h.getConn))
	h.mux.HandleFunc("PUT /v1/conns/{id}/limits", h.write(h.setConnLimits))
	h.mux.HandleFunc("DELETE /v1/conns/{id}", h.write(h.closeConn))
	h.mux.HandleFunc("POST /v1/reload", h.write(h.reload))
	h.mux.HandleFunc("GET /v1/bans", h.read(h.bans))
	h.mux.HandleFunc("POST /v1/bans", h.write(h.addBan))
	h.mux.HandleFunc("DELETE /v1/bans/{ban}", h.write(h.liftBan))
	h.mux.HandleFunc("GET /v1/clients/{addr}", h.read(h.client))
	h.mux.HandleFunc("GET /v1/upstreams", h.read(h.upstreams))
	h.mux.HandleFunc("GET /v1/upstreams/{pool}", h.read(h.upstreamPool))
	h.mux.HandleFunc("POST /v1/upstreams/{pool}/servers/{addr}/drain", h.write(h.drainServer))
	h.mux.HandleFunc("POST /v1/upstreams/{pool}/servers/{addr}/enable", h.write(h.enableServer))
	h.mux.HandleFunc("GET /v1/cluster", h.read(h.cluster))
	return h
}

// SetToken replaces the bearer token; empty disables state-changing calls.
func (h *Handler) SetToken(tok string) { h.token.Store(&tok) }

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// apiError is an error with its HTTP status.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func errorf(status int, format string, args ...any) error {
	return &apiError{status: status, msg: fmt.Sprintf(format, args...)}
}

type call func(r *http.Request) (any, error)

func (h *Handler) read(c call) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if h.opts.AuthReads && !h.authorized(w, r) {
			return
		}
		h.serve(w, r, c)
	}
}

func (h *Handler) write(c call) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !h.authorized(w, r) {
			return
		}
		h.serve(w, r, c)
	}
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request, c call) {
	v, err := c(r)
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		status := http.StatusInternalServerError
		var ae *apiError
		if errors.As(err, &ae) {
			status = ae.status
		}
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
		return
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// authorized checks the bearer token in constant time, answering 401 or
// 403 itself when it fails.
func (h *Handler) authorized(w http.ResponseWriter, r *http.Request) bool {
	tok := *h.token.Load()
	fail := func(status int, msg string) bool {
		if status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="sluice"`)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
		return false
	}
	if tok == "" {
		return fail(http.StatusForbidden, "this call changes state and needs the admin token, but none is configured: set admin.token_file or SLUICE_ADMIN_TOKEN")
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return fail(http.StatusUnauthorized, "missing token: send the header \"Authorization: Bearer <admin token>\"")
	}
	if subtle.ConstantTimeCompare([]byte(got), []byte(tok)) != 1 {
		h.log.Warn("admin: wrong token", slog.String("remote", r.RemoteAddr), slog.String("path", r.URL.Path))
		return fail(http.StatusUnauthorized, "wrong token")
	}
	return true
}

func (h *Handler) readyz(w http.ResponseWriter, _ *http.Request) {
	if h.opts.Ready != nil && !h.opts.Ready() {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
	if line := h.readyCluster(); line != "" {
		fmt.Fprintln(w, line)
	}
}

func (h *Handler) listeners(*http.Request) (any, error) {
	stats := h.p.Stats()
	out := make([]ListenerJSON, 0, len(stats))
	for _, s := range stats {
		out = append(out, listenerJSON(s))
	}
	return out, nil
}

// DefaultConnList is how many connections GET /v1/conns lists without ?limit.
const DefaultConnList = 100

// conns lists live connections: ?listener= filters, ?sort=bytes_down
// (default), bytes_up, id or start orders (largest and newest first), and
// ?limit= caps the list (default DefaultConnList, 0 for all).
func (h *Handler) conns(r *http.Request) (any, error) {
	q := r.URL.Query()
	limit, err := listLimit(q.Get("limit"))
	if err != nil {
		return nil, err
	}
	var less func(a, b proxy.ConnInfo) int
	switch sortBy := q.Get("sort"); sortBy {
	case "", "bytes_down":
		less = func(a, b proxy.ConnInfo) int { return cmpDesc(a.Bytes[proxy.Down], b.Bytes[proxy.Down]) }
	case "bytes_up":
		less = func(a, b proxy.ConnInfo) int { return cmpDesc(a.Bytes[proxy.Up], b.Bytes[proxy.Up]) }
	case "id":
		less = func(a, b proxy.ConnInfo) int { return cmpDesc(a.ID, b.ID) }
	case "start":
		less = func(a, b proxy.ConnInfo) int { return b.Start.Compare(a.Start) }
	default:
		return nil, errorf(http.StatusBadRequest, "sort: want bytes_down, bytes_up, id or start, got %q", sortBy)
	}
	all := h.p.Conns()
	total := len(all)
	if l := q.Get("listener"); l != "" {
		all = slices.DeleteFunc(all, func(c proxy.ConnInfo) bool { return c.Listener != l })
	}
	slices.SortFunc(all, less)
	if limit > 0 && len(all) > limit {
		all = all[:limit]
	}
	out := make([]ConnJSON, 0, len(all))
	for _, c := range all {
		out = append(out, connJSON(c))
	}
	return map[string]any{"total": total, "conns": out}, nil
}

// listLimit reads ?limit=: a count >= 0, 0 for all; empty means
// DefaultConnList.
func listLimit(s string) (int, error) {
	if s == "" {
		return DefaultConnList, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, errorf(http.StatusBadRequest, "limit: want a count >= 0 (0 for all), got %q", s)
	}
	return n, nil
}

func cmpDesc[T int64 | uint64](a, b T) int {
	switch {
	case a > b:
		return -1
	case a < b:
		return 1
	}
	return 0
}

func connID(r *http.Request) (uint64, error) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil {
		return 0, errorf(http.StatusBadRequest, "connection id: want a number, got %q", r.PathValue("id"))
	}
	return id, nil
}

func (h *Handler) getConn(r *http.Request) (any, error) {
	id, err := connID(r)
	if err != nil {
		return nil, err
	}
	c, ok := h.p.Conn(id)
	if !ok {
		return nil, errorf(http.StatusNotFound, "no live connection %d", id)
	}
	return connJSON(c), nil
}

func (h *Handler) closeConn(r *http.Request) (any, error) {
	id, err := connID(r)
	if err != nil {
		return nil, err
	}
	if err := h.p.CloseConn(id); err != nil {
		return nil, errorf(http.StatusNotFound, "no live connection %d", id)
	}
	h.log.Info("admin: connection closed", slog.Uint64(keyConnID, id), slog.String("remote", r.RemoteAddr))
	return map[string]any{"closed": id}, nil
}

// limitsChange is the body of PUT .../limits. A direction that is present
// replaces that direction's limit; one that is absent stays.
type limitsChange struct {
	Up           *dirChange `json:"up"`
	Down         *dirChange `json:"down"`
	KernelPacing *bool      `json:"kernel_pacing"`
}

// dirChange is one direction: rate as bytes per second (a number) or a
// string with a unit ("10Mbit", "1.5MB/s"); 0 or "none" removes the limit.
// Burst as bytes or a string ("64KiB"); absent means the default (one
// chunk).
type dirChange struct {
	Rate  json.RawMessage `json:"rate"`
	Burst json.RawMessage `json:"burst"`
}

// MaxBody bounds request bodies, in bytes.
const MaxBody = 64 << 10

func (h *Handler) decodeLimits(r *http.Request, cur proxy.ConnLimits, chunk int) (proxy.ConnLimits, error) {
	var ch limitsChange
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, MaxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ch); err != nil {
		return cur, errorf(http.StatusBadRequest, "body: want JSON like {\"down\": {\"rate\": \"10Mbit\", \"burst\": \"64KiB\"}}: %v", err)
	}
	if dec.More() {
		return cur, errorf(http.StatusBadRequest, "body: want one JSON object")
	}
	if ch.Up == nil && ch.Down == nil && ch.KernelPacing == nil {
		return cur, errorf(http.StatusBadRequest, "body: want at least one of up, down, kernel_pacing")
	}
	next := cur
	for _, d := range []struct {
		name string
		ch   *dirChange
		dst  *shaper.Limit
	}{{"up", ch.Up, &next.Up}, {"down", ch.Down, &next.Down}} {
		if d.ch == nil {
			continue
		}
		rate, err := h.number(d.ch.Rate, h.opts.ParseRate, true)
		if err != nil {
			return cur, errorf(http.StatusBadRequest, "%s.rate: want bytes per second or a rate like \"10Mbit\" (0 or \"none\" for no limit): %v", d.name, err)
		}
		burst, err := h.number(d.ch.Burst, h.opts.ParseSize, false)
		if err != nil {
			return cur, errorf(http.StatusBadRequest, "%s.burst: want bytes or a size like \"64KiB\": %v", d.name, err)
		}
		if rate > 0 && burst == 0 {
			burst = int64(chunk)
		}
		if rate == 0 {
			burst = 0
		}
		*d.dst = shaper.Limit{Rate: rate, Burst: burst}
		if err := d.dst.Validate(); err != nil {
			return cur, errorf(http.StatusBadRequest, "%s: %v", d.name, err)
		}
	}
	if ch.KernelPacing != nil {
		next.KernelPacing = *ch.KernelPacing
	}
	return next, nil
}

// number reads a JSON number or a string with a unit. A missing value is
// 0; a rate also accepts "none".
func (h *Handler) number(raw json.RawMessage, parse func(string) (int64, error), rate bool) (int64, error) {
	if len(raw) == 0 || string(raw) == "null" {
		if rate {
			return 0, errors.New("required")
		}
		return 0, nil
	}
	var n int64
	if err := json.Unmarshal(raw, &n); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("negative: %d", n)
		}
		return n, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return 0, fmt.Errorf("got %s", raw)
	}
	if rate && (s == "none" || s == "0") {
		return 0, nil
	}
	if parse == nil {
		return 0, fmt.Errorf("this server takes numbers only, got %q", s)
	}
	return parse(s)
}

func (h *Handler) setListenerLimits(r *http.Request) (any, error) {
	name := r.PathValue("name")
	var cur *proxy.ListenerStats
	for _, s := range h.p.Stats() {
		if s.Name == name && s.Addr != "" { // a listener in service, not a removed one
			cur = &s
		}
	}
	if cur == nil {
		return nil, errorf(http.StatusNotFound, "no listener %q", name)
	}
	next, err := h.decodeLimits(r, cur.Limits, cur.Chunk)
	if err != nil {
		return nil, err
	}
	if err := h.p.SetLimits(name, next); err != nil {
		return nil, errorf(http.StatusConflict, "%v", err)
	}
	h.log.Info("admin: listener limits set", slog.String(keyListener, name), slog.Int64("up_rate", next.Up.Rate),
		slog.Int64("down_rate", next.Down.Rate), slog.String("remote", r.RemoteAddr))
	return limitsJSON(next), nil
}

func (h *Handler) setConnLimits(r *http.Request) (any, error) {
	id, err := connID(r)
	if err != nil {
		return nil, err
	}
	c, ok := h.p.Conn(id)
	if !ok {
		return nil, errorf(http.StatusNotFound, "no live connection %d", id)
	}
	next, err := h.decodeLimits(r, c.Limits, c.Chunk)
	if err != nil {
		return nil, err
	}
	if err := h.p.SetConnLimits(id, next); err != nil {
		return nil, errorf(http.StatusNotFound, "no live connection %d", id)
	}
	h.log.Info("admin: connection limits set", slog.Uint64(keyConnID, id), slog.Int64("up_rate", next.Up.Rate),
		slog.Int64("down_rate", next.Down.Rate), slog.String("remote", r.RemoteAddr))
	return limitsJSON(next), nil
}

func (h *Handler) reload(r *http.Request) (any, error) {
	if h.opts.Reload == nil {
		return nil, errorf(http.StatusNotImplemented, "reload is not available here")
	}
	if err := h.opts.Reload(r.Context()); err != nil {
		return nil, errorf(http.StatusUnprocessableEntity, "reload failed, the running config stays: %v", err)
	}
	return map[string]string{"status": "reloaded"}, nil
}

func (h *Handler) links(*http.Request) (any, error) {
	ls := h.p.Links(false)
	out := make([]LinkJSON, 0, len(ls))
	for _, l := range ls {
		out = append(out, linkJSON(l))
	}
	return out, nil
}

// link shows one link with its keys, busiest first (?limit=, default
// DefaultConnList, 0 for all).
func (h *Handler) link(r *http.Request) (any, error) {
	limit, err := listLimit(r.URL.Query().Get("limit"))
	if err != nil {
		return nil, err
	}
	for _, l := range h.p.Links(true) {
		if l.Name != r.PathValue("name") {
			continue
		}
		j := linkJSON(l)
		for _, d := range []*LinkDirJSON{j.Up, j.Down} {
			if d != nil && limit > 0 && len(d.KeyStats) > limit {
				d.KeyStats = d.KeyStats[:limit]
			}
		}
		return j, nil
	}
	return nil, errorf(http.StatusNotFound, "no link %q", r.PathValue("name"))
}

// setLinkLimits changes a link's rate and burst per direction, live, until
// the next reload: {"down": {"rate": "500Mbit", "burst": "1MiB"}}.
func (h *Handler) setLinkLimits(r *http.Request) (any, error) {
	name := r.PathValue("name")
	var cur *proxy.LinkStats
	for _, l := range h.p.Links(false) {
		if l.Name == name {
			cur = &l
		}
	}
	if cur == nil {
		return nil, errorf(http.StatusNotFound, "no link %q", name)
	}
	var ch limitsChange
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, MaxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ch); err != nil || ch.KernelPacing != nil {
		return nil, errorf(http.StatusBadRequest, "body: want JSON like {\"down\": {\"rate\": \"500Mbit\", \"burst\": \"1MiB\"}}")
	}
	if ch.Up == nil && ch.Down == nil {
		return nil, errorf(http.StatusBadRequest, "body: want up, down or both")
	}
	type change struct {
		d  proxy.Dir
		ll shaper.LinkLimit
	}
	var changes []change
	for d, dc := range [2]*dirChange{proxy.Up: ch.Up, proxy.Down: ch.Down} {
		if dc == nil {
			continue
		}
		dir := proxy.Dir(d)
		if cur.Dirs[d] == nil {
			return nil, errorf(http.StatusConflict, "link %q does not limit %s; add it in the config", name, dir)
		}
		rate, err := h.number(dc.Rate, h.opts.ParseRate, true)
		if err != nil || rate == 0 {
			return nil, errorf(http.StatusBadRequest, "%s.rate: want a positive rate, bytes per second or like \"500Mbit\"", dir)
		}
		burst, err := h.number(dc.Burst, h.opts.ParseSize, false)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, "%s.burst: want bytes or a size like \"1MiB\": %v", dir, err)
		}
		ll := cur.Dirs[d].Limit
		ll.Rate, ll.Burst = rate, burst
		if err := ll.Validate(); err != nil {
			return nil, errorf(http.StatusBadRequest, "%s: %v", dir, err)
		}
		changes = append(changes, change{dir, ll})
	}
	for _, c := range changes {
		if err := h.p.SetLinkLimit(name, c.d, c.ll); err != nil {
			return nil, errorf(http.StatusConflict, "%v", err)
		}
		h.log.Info("admin: link limit set", slog.String("link", name), slog.String("direction", c.d.String()),
			slog.Int64("rate", c.ll.Rate), slog.String("remote", r.RemoteAddr))
	}
	for _, l := range h.p.Links(false) {
		if l.Name == name {
			return linkJSON(l), nil
		}
	}
	return nil, errorf(http.StatusNotFound, "no link %q", name)
}
