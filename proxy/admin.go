package proxy

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sluiceproxy/sluice/shaper"
)

// AdminOptions configure the admin API handler.
type AdminOptions struct {
	// Token is the bearer token that state-changing calls need. Empty
	// disables them (they answer 403). [Admin.SetToken] changes it.
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
}

// Admin is the admin HTTP API of a Server. See docs/operating.md for the
// endpoints.
type Admin struct {
	srv   *Server
	opts  AdminOptions
	log   *slog.Logger
	token atomic.Pointer[string]
	mux   *http.ServeMux
}

// NewAdmin returns the admin API of srv.
func NewAdmin(srv *Server, opts AdminOptions) *Admin {
	a := &Admin{srv: srv, opts: opts, log: opts.Logger, mux: http.NewServeMux()}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	a.SetToken(opts.Token)
	a.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	a.mux.HandleFunc("GET /readyz", a.readyz)
	if opts.Gatherer != nil {
		a.mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{}))
	}
	a.mux.HandleFunc("GET /v1/listeners", a.read(a.listeners))
	a.mux.HandleFunc("PUT /v1/listeners/{name}/limits", a.write(a.setListenerLimits))
	a.mux.HandleFunc("GET /v1/links", a.read(a.links))
	a.mux.HandleFunc("GET /v1/links/{name}", a.read(a.link))
	a.mux.HandleFunc("PUT /v1/links/{name}/limits", a.write(a.setLinkLimits))
	a.mux.HandleFunc("GET /v1/conns", a.read(a.conns))
	a.mux.HandleFunc("GET /v1/conns/{id}", a.read(a.getConn))
	a.mux.HandleFunc("PUT /v1/conns/{id}/limits", a.write(a.setConnLimits))
	a.mux.HandleFunc("DELETE /v1/conns/{id}", a.write(a.closeConn))
	a.mux.HandleFunc("POST /v1/reload", a.write(a.reload))
	return a
}

// SetToken replaces the bearer token; empty disables state-changing calls.
func (a *Admin) SetToken(tok string) { a.token.Store(&tok) }

// ServeHTTP implements http.Handler.
func (a *Admin) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

// apiError is an error with its HTTP status.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func errorf(status int, format string, args ...any) error {
	return &apiError{status: status, msg: fmt.Sprintf(format, args...)}
}

type handler func(r *http.Request) (any, error)

func (a *Admin) read(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if a.opts.AuthReads && !a.authorized(w, r) {
			return
		}
		a.serve(w, r, h)
	}
}

func (a *Admin) write(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !a.authorized(w, r) {
			return
		}
		a.serve(w, r, h)
	}
}

func (a *Admin) serve(w http.ResponseWriter, r *http.Request, h handler) {
	v, err := h(r)
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
func (a *Admin) authorized(w http.ResponseWriter, r *http.Request) bool {
	tok := *a.token.Load()
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
		a.log.Warn("admin: wrong token", slog.String("remote", r.RemoteAddr), slog.String("path", r.URL.Path))
		return fail(http.StatusUnauthorized, "wrong token")
	}
	return true
}

func (a *Admin) readyz(w http.ResponseWriter, _ *http.Request) {
	if a.opts.Ready != nil && !a.opts.Ready() {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

// LimitJSON is one direction's limit as the admin API shows it: rate in
// bytes per second (0 = none), burst in bytes.
type LimitJSON struct {
	Rate  int64 `json:"rate"`
	Burst int64 `json:"burst,omitempty"`
}

// LimitsJSON are per-connection limits as the admin API shows them.
type LimitsJSON struct {
	Up           LimitJSON `json:"up"`
	Down         LimitJSON `json:"down"`
	KernelPacing bool      `json:"kernel_pacing"`
}

func limitsJSON(l ConnLimits) LimitsJSON {
	return LimitsJSON{Up: LimitJSON{l.Up.Rate, l.Up.Burst}, Down: LimitJSON{l.Down.Rate, l.Down.Burst}, KernelPacing: l.KernelPacing}
}

// ListenerJSON is a listener in GET /v1/listeners.
type ListenerJSON struct {
	Name     string            `json:"name"`
	Addr     string            `json:"addr,omitempty"`
	Upstream string            `json:"upstream,omitempty"`
	Removed  bool              `json:"removed,omitempty"`
	Limits   LimitsJSON        `json:"limits"`
	Active   int               `json:"active"`
	Accepted uint64            `json:"accepted"`
	Ended    map[string]uint64 `json:"ended"`
	// Bytes and waited seconds per direction.
	BytesUp       int64   `json:"bytes_up"`
	BytesDown     int64   `json:"bytes_down"`
	WaitedUpSec   float64 `json:"waited_up_seconds"`
	WaitedDownSec float64 `json:"waited_down_seconds"`
	WaitingUp     int     `json:"waiting_up"`
	WaitingDown   int     `json:"waiting_down"`
	// MP4 is present for a listener that paces MP4 or once did.
	MP4 *MP4JSON `json:"mp4,omitempty"`
}

// MP4JSON are a listener's MP4 pacing counters.
type MP4JSON struct {
	Enabled    bool  `json:"enabled"`
	Videos     int64 `json:"videos"`
	Plans      int64 `json:"plans"`
	BurstBytes int64 `json:"burst_bytes"`
	// MeanRate is the mean of the planned videos' rates, bytes/s.
	MeanRate   int64            `json:"mean_video_rate"`
	Fallbacks  map[string]int64 `json:"fallbacks"`
	Cached     int              `json:"cached_movies"`
	WaitedSec  float64          `json:"pace_wait_seconds"`
	PacedBytes int64            `json:"paced_bytes"`
}

func meanRate(m MP4Stats) int64 {
	if m.Plans == 0 {
		return 0
	}
	return m.PlannedRate / m.Plans
}

func (a *Admin) listeners(*http.Request) (any, error) {
	stats := a.srv.Stats()
	out := make([]ListenerJSON, 0, len(stats))
	for _, s := range stats {
		out = append(out, ListenerJSON{
			Name: s.Name, Addr: s.Addr, Upstream: s.Upstream, Removed: s.Addr == "",
			Limits: limitsJSON(s.Limits), Active: s.Active, Accepted: s.Accepted, Ended: s.Ended,
			BytesUp: s.Bytes[Up], BytesDown: s.Bytes[Down],
			WaitedUpSec: s.Waited[Up].Seconds(), WaitedDownSec: s.Waited[Down].Seconds(),
			WaitingUp: s.Waiting[Up], WaitingDown: s.Waiting[Down],
		})
		if m := s.MP4; s.MP4Enabled || m.Videos > 0 {
			out[len(out)-1].MP4 = &MP4JSON{
				Enabled: s.MP4Enabled, Videos: m.Videos, Plans: m.Plans, BurstBytes: m.BurstBytes, MeanRate: meanRate(m),
				Fallbacks: m.Fallbacks, Cached: m.Cached, WaitedSec: m.Waited.Seconds(), PacedBytes: m.PacedBytes,
			}
		}
	}
	return out, nil
}

// ConnJSON is a connection in GET /v1/conns.
type ConnJSON struct {
	ID          uint64     `json:"id"`
	Listener    string     `json:"listener"`
	Client      string     `json:"client"`
	Upstream    string     `json:"upstream"`
	Start       time.Time  `json:"start"`
	BytesUp     int64      `json:"bytes_up"`
	BytesDown   int64      `json:"bytes_down"`
	Limits      LimitsJSON `json:"limits"`
	WaitingUp   bool       `json:"waiting_up"`
	WaitingDown bool       `json:"waiting_down"`
}

func connJSON(c ConnInfo) ConnJSON {
	return ConnJSON{ID: c.ID, Listener: c.Listener, Client: c.Client, Upstream: c.Upstream, Start: c.Start,
		BytesUp: c.Bytes[Up], BytesDown: c.Bytes[Down], Limits: limitsJSON(c.Limits),
		WaitingUp: c.Waiting[Up], WaitingDown: c.Waiting[Down]}
}

// DefaultConnList is how many connections GET /v1/conns lists without ?limit.
const DefaultConnList = 100

// conns lists live connections: ?listener= filters, ?sort=bytes_down
// (default), bytes_up, id or start orders (largest and newest first), and
// ?limit= caps the list (default DefaultConnList, 0 for all).
func (a *Admin) conns(r *http.Request) (any, error) {
	q := r.URL.Query()
	limit := DefaultConnList
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return nil, errorf(http.StatusBadRequest, "limit: want a count >= 0 (0 for all), got %q", s)
		}
		limit = n
	}
	var less func(a, b ConnInfo) int
	switch sortBy := q.Get("sort"); sortBy {
	case "", "bytes_down":
		less = func(a, b ConnInfo) int { return cmpDesc(a.Bytes[Down], b.Bytes[Down]) }
	case "bytes_up":
		less = func(a, b ConnInfo) int { return cmpDesc(a.Bytes[Up], b.Bytes[Up]) }
	case "id":
		less = func(a, b ConnInfo) int { return cmpDesc(a.ID, b.ID) }
	case "start":
		less = func(a, b ConnInfo) int { return b.Start.Compare(a.Start) }
	default:
		return nil, errorf(http.StatusBadRequest, "sort: want bytes_down, bytes_up, id or start, got %q", sortBy)
	}
	all := a.srv.Conns()
	total := len(all)
	if l := q.Get("listener"); l != "" {
		all = slices.DeleteFunc(all, func(c ConnInfo) bool { return c.Listener != l })
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

func (a *Admin) getConn(r *http.Request) (any, error) {
	id, err := connID(r)
	if err != nil {
		return nil, err
	}
	c := a.srv.conn(id)
	if c == nil {
		return nil, errorf(http.StatusNotFound, "no live connection %d", id)
	}
	return connJSON(c.info()), nil
}

func (a *Admin) closeConn(r *http.Request) (any, error) {
	id, err := connID(r)
	if err != nil {
		return nil, err
	}
	if err := a.srv.CloseConn(id); err != nil {
		return nil, errorf(http.StatusNotFound, "no live connection %d", id)
	}
	a.log.Info("admin: connection closed", slog.Uint64(keyConnID, id), slog.String("remote", r.RemoteAddr))
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

// MaxAdminBody bounds request bodies.
const MaxAdminBody = 64 << 10

func (a *Admin) decodeLimits(r *http.Request, cur ConnLimits, chunk int) (ConnLimits, error) {
	var ch limitsChange
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, MaxAdminBody))
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
		rate, err := a.number(d.ch.Rate, a.opts.ParseRate, true)
		if err != nil {
			return cur, errorf(http.StatusBadRequest, "%s.rate: want bytes per second or a rate like \"10Mbit\" (0 or \"none\" for no limit): %v", d.name, err)
		}
		burst, err := a.number(d.ch.Burst, a.opts.ParseSize, false)
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
func (a *Admin) number(raw json.RawMessage, parse func(string) (int64, error), rate bool) (int64, error) {
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

func (a *Admin) setListenerLimits(r *http.Request) (any, error) {
	name := r.PathValue("name")
	var l *listener
	a.srv.mu.Lock()
	for _, x := range a.srv.listeners {
		if x.name() == name {
			l = x
		}
	}
	a.srv.mu.Unlock()
	if l == nil {
		return nil, errorf(http.StatusNotFound, "no listener %q", name)
	}
	next, err := a.decodeLimits(r, *l.limits.Load(), l.config().Chunk)
	if err != nil {
		return nil, err
	}
	if err := a.srv.SetLimits(name, next); err != nil {
		return nil, errorf(http.StatusConflict, "%v", err)
	}
	a.log.Info("admin: listener limits set", slog.String(keyListener, name), slog.Int64("up_rate", next.Up.Rate),
		slog.Int64("down_rate", next.Down.Rate), slog.String("remote", r.RemoteAddr))
	return limitsJSON(next), nil
}

func (a *Admin) setConnLimits(r *http.Request) (any, error) {
	id, err := connID(r)
	if err != nil {
		return nil, err
	}
	c := a.srv.conn(id)
	if c == nil {
		return nil, errorf(http.StatusNotFound, "no live connection %d", id)
	}
	next, err := a.decodeLimits(r, c.info().Limits, c.cfg.Chunk)
	if err != nil {
		return nil, err
	}
	if err := a.srv.SetConnLimits(id, next); err != nil {
		return nil, errorf(http.StatusNotFound, "no live connection %d", id)
	}
	a.log.Info("admin: connection limits set", slog.Uint64(keyConnID, id), slog.Int64("up_rate", next.Up.Rate),
		slog.Int64("down_rate", next.Down.Rate), slog.String("remote", r.RemoteAddr))
	return limitsJSON(next), nil
}

func (a *Admin) reload(r *http.Request) (any, error) {
	if a.opts.Reload == nil {
		return nil, errorf(http.StatusNotImplemented, "reload is not available here")
	}
	if err := a.opts.Reload(r.Context()); err != nil {
		return nil, errorf(http.StatusUnprocessableEntity, "reload failed, the running config stays: %v", err)
	}
	return map[string]string{"status": "reloaded"}, nil
}

// LinkDirJSON is one direction of a link in GET /v1/links.
type LinkDirJSON struct {
	Rate     int64         `json:"rate"`  // bytes per second
	Burst    int64         `json:"burst"` // bytes
	Key      KeyLimitJSON  `json:"key"`   // each key's default share
	Bytes    int64         `json:"bytes"`
	Borrowed int64         `json:"borrowed"` // bytes keys took beyond their assured rate
	Grants   int64         `json:"grants"`   // grants made: bytes ÷ grants is the average grant
	Tokens   int64         `json:"tokens"`   // the bucket's fill now, bytes
	Waiting  int           `json:"waiting"`  // connections waiting for a grant now
	Keys     int           `json:"keys"`     // keys with connections
	Members  int           `json:"conns"`
	KeyStats []KeyStatJSON `json:"key_stats,omitempty"`
}

// KeyLimitJSON is a key's share: rates in bytes per second (0: none, or
// the link's rate for ceil).
type KeyLimitJSON struct {
	Rate   int64 `json:"rate"`
	Ceil   int64 `json:"ceil"`
	Weight int   `json:"weight"`
}

// KeyStatJSON is one key of a link direction.
type KeyStatJSON struct {
	Key      string       `json:"key"`
	Limit    KeyLimitJSON `json:"limit"`
	Conns    int          `json:"conns"`
	Waiting  int          `json:"waiting"`
	Bytes    int64        `json:"bytes"`
	Borrowed int64        `json:"borrowed"`
}

// LinkJSON is a link in GET /v1/links.
type LinkJSON struct {
	Name  string       `json:"name"`
	KeyBy string       `json:"key_by"`
	Up    *LinkDirJSON `json:"up,omitempty"`
	Down  *LinkDirJSON `json:"down,omitempty"`
}

func linkJSON(ls LinkStats) LinkJSON {
	out := LinkJSON{Name: ls.Name, KeyBy: ls.KeyBy.String()}
	for d, ds := range ls.Dirs {
		if ds == nil {
			continue
		}
		j := &LinkDirJSON{Rate: ds.Limit.Rate, Burst: ds.Limit.Burst,
			Key:   KeyLimitJSON{ds.Limit.Key.Rate, ds.Limit.Key.Ceil, ds.Limit.Key.Weight},
			Bytes: ds.Bytes, Borrowed: ds.Borrowed, Grants: ds.Grants, Tokens: ds.Tokens, Waiting: ds.Waiting, Keys: ds.LinkStats.Keys, Members: ds.Members}
		for _, k := range ds.Keys {
			j.KeyStats = append(j.KeyStats, KeyStatJSON{Key: k.Key, Limit: KeyLimitJSON{k.Limit.Rate, k.Limit.Ceil, k.Limit.Weight},
				Conns: k.Members, Waiting: k.Waiting, Bytes: k.Bytes, Borrowed: k.Borrowed})
		}
		slices.SortFunc(j.KeyStats, func(a, b KeyStatJSON) int { return cmpDesc(a.Bytes, b.Bytes) })
		if Dir(d) == Up {
			out.Up = j
		} else {
			out.Down = j
		}
	}
	return out
}

func (a *Admin) links(*http.Request) (any, error) {
	ls := a.srv.Links(false)
	out := make([]LinkJSON, 0, len(ls))
	for _, l := range ls {
		out = append(out, linkJSON(l))
	}
	return out, nil
}

// link shows one link with its keys, busiest first (?limit=, default
// DefaultConnList, 0 for all).
func (a *Admin) link(r *http.Request) (any, error) {
	limit := DefaultConnList
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return nil, errorf(http.StatusBadRequest, "limit: want a count >= 0 (0 for all), got %q", s)
		}
		limit = n
	}
	for _, l := range a.srv.Links(true) {
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
func (a *Admin) setLinkLimits(r *http.Request) (any, error) {
	name := r.PathValue("name")
	var cur *LinkStats
	for _, l := range a.srv.Links(false) {
		if l.Name == name {
			cur = &l
		}
	}
	if cur == nil {
		return nil, errorf(http.StatusNotFound, "no link %q", name)
	}
	var ch limitsChange
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, MaxAdminBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ch); err != nil || ch.KernelPacing != nil {
		return nil, errorf(http.StatusBadRequest, "body: want JSON like {\"down\": {\"rate\": \"500Mbit\", \"burst\": \"1MiB\"}}")
	}
	if ch.Up == nil && ch.Down == nil {
		return nil, errorf(http.StatusBadRequest, "body: want up, down or both")
	}
	type change struct {
		d  Dir
		ll shaper.LinkLimit
	}
	var changes []change
	for d, dc := range [2]*dirChange{Up: ch.Up, Down: ch.Down} {
		if dc == nil {
			continue
		}
		if cur.Dirs[d] == nil {
			return nil, errorf(http.StatusConflict, "link %q does not limit %s; add it in the config", name, Dir(d))
		}
		rate, err := a.number(dc.Rate, a.opts.ParseRate, true)
		if err != nil || rate == 0 {
			return nil, errorf(http.StatusBadRequest, "%s.rate: want a positive rate, bytes per second or like \"500Mbit\"", Dir(d))
		}
		burst, err := a.number(dc.Burst, a.opts.ParseSize, false)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, "%s.burst: want bytes or a size like \"1MiB\": %v", Dir(d), err)
		}
		ll := cur.Dirs[d].Limit
		ll.Rate, ll.Burst = rate, burst
		if err := ll.Validate(); err != nil {
			return nil, errorf(http.StatusBadRequest, "%s: %v", Dir(d), err)
		}
		changes = append(changes, change{Dir(d), ll})
	}
	for _, c := range changes {
		if err := a.srv.SetLinkLimit(name, c.d, c.ll); err != nil {
			return nil, errorf(http.StatusConflict, "%v", err)
		}
		a.log.Info("admin: link limit set", slog.String("link", name), slog.String("direction", c.d.String()),
			slog.Int64("rate", c.ll.Rate), slog.String("remote", r.RemoteAddr))
	}
	for _, l := range a.srv.Links(false) {
		if l.Name == name {
			return linkJSON(l), nil
		}
	}
	return nil, errorf(http.StatusNotFound, "no link %q", name)
}
