package admin

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/sluiceproxy/sluice/proxy"
	"github.com/sluiceproxy/sluice/proxy/admit"
)

// AdmissionJSON are a listener's admission counters in GET /v1/listeners.
type AdmissionJSON struct {
	// Decisions counts decisions by verdict ("admit", "delay", "queue",
	// "refuse") and the limit that decided ("-" when none did alone).
	Decisions map[string]map[string]uint64 `json:"decisions"`
	// Refused counts refusals by reason ("deny", "ban", "conns", "rate",
	// "window", "queue_full").
	Refused       map[string]uint64 `json:"refused"`
	QueueTimeouts uint64            `json:"queue_timeouts"`
	Tarpitted     int64             `json:"tarpitted"`
	Overflowed    uint64            `json:"overflowed"`
	AcceptPaused  uint64            `json:"accept_paused"`
}

func admissionJSON(a proxy.AdmissionStats) *AdmissionJSON {
	if len(a.Decisions) == 0 && a.Tarpitted == 0 && a.Overflowed == 0 {
		return nil
	}
	out := &AdmissionJSON{Decisions: map[string]map[string]uint64{}, Refused: a.Refused,
		QueueTimeouts: a.QueueTimeouts, Tarpitted: a.Tarpitted, Overflowed: a.Overflowed, AcceptPaused: a.AcceptPaused}
	for k, n := range a.Decisions {
		limit, verdict := k[0], k[1]
		if limit == "" {
			limit = "-"
		}
		if out.Decisions[verdict] == nil {
			out.Decisions[verdict] = map[string]uint64{}
		}
		out.Decisions[verdict][limit] = n
	}
	return out
}

// BanJSON is an active ban in GET /v1/bans.
type BanJSON struct {
	Ban     string    `json:"ban"`
	Key     string    `json:"key"`
	Since   time.Time `json:"since"`
	Until   time.Time `json:"until"`
	Tier    int       `json:"tier"`
	Repeats int       `json:"repeats"`
	Manual  bool      `json:"manual,omitempty"`
}

// bans lists the active bans, those lifting soonest first; ?ban= filters
// by policy, ?limit= caps the list (default DefaultConnList, 0 for all).
func (h *Handler) bans(r *http.Request) (any, error) {
	limit, err := listLimit(r.URL.Query().Get("limit"))
	if err != nil {
		return nil, err
	}
	all := h.p.Bans()
	total := len(all)
	if name := r.URL.Query().Get("ban"); name != "" {
		all = slices.DeleteFunc(all, func(b admit.BanInfo) bool { return b.Ban != name })
	}
	slices.SortFunc(all, func(a, b admit.BanInfo) int { return a.Until.Compare(b.Until) })
	if limit > 0 && len(all) > limit {
		all = all[:limit]
	}
	out := make([]BanJSON, 0, len(all))
	for _, b := range all {
		out = append(out, BanJSON{Ban: b.Ban, Key: b.Key, Since: b.Since, Until: b.Until, Tier: b.Tier, Repeats: b.Repeats, Manual: b.Manual})
	}
	return map[string]any{"total": total, "bans": out}, nil
}

// banChange is the body of POST /v1/bans.
type banChange struct {
	Ban string `json:"ban"`
	Key string `json:"key"`
	For string `json:"for"`
}

// addBan bans a key by hand: {"ban": "scanners", "key": "192.0.2.7",
// "for": "1h"}. key is an address or a prefix.
func (h *Handler) addBan(r *http.Request) (any, error) {
	var ch banChange
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, MaxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ch); err != nil {
		return nil, errorf(http.StatusBadRequest, `body: want JSON like {"ban": "scanners", "key": "192.0.2.7", "for": "1h"}: %v`, err)
	}
	key, err := parseKey(ch.Key)
	if err != nil {
		return nil, err
	}
	d, err := time.ParseDuration(ch.For)
	if err != nil || d <= 0 {
		return nil, errorf(http.StatusBadRequest, `for: want a duration like "10m" or "6h", got %q`, ch.For)
	}
	if err := h.p.AddBan(ch.Ban, key, d); err != nil {
		return nil, errorf(http.StatusNotFound, "%v", err)
	}
	h.log.Info("admin: ban added", slog.String("ban", ch.Ban), slog.String("key", key.String()), slog.Duration("dur", d),
		slog.String("remote", r.RemoteAddr))
	return map[string]any{"ban": ch.Ban, "key": key.String(), "for": d.String()}, nil
}

// liftBan lifts a ban: DELETE /v1/bans/NAME?key=192.0.2.7.
func (h *Handler) liftBan(r *http.Request) (any, error) {
	name := r.PathValue("ban")
	key, err := parseKey(r.URL.Query().Get("key"))
	if err != nil {
		return nil, err
	}
	lifted, err := h.p.LiftBan(name, key)
	switch {
	case err != nil:
		return nil, errorf(http.StatusNotFound, "%v", err)
	case !lifted:
		return nil, errorf(http.StatusNotFound, "%s is not banned under %q", key, name)
	}
	h.log.Info("admin: ban lifted", slog.String("ban", name), slog.String("key", key.String()), slog.String("remote", r.RemoteAddr))
	return map[string]any{"lifted": key.String(), "ban": name}, nil
}

// parseKey reads a ban's key: an address (its /32 or /128) or a prefix.
func parseKey(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		if p, err := netip.ParsePrefix(s); err == nil {
			return p.Masked(), nil
		}
	} else if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	return netip.Prefix{}, errorf(http.StatusBadRequest, `key: want an address or a prefix like "192.0.2.7" or "192.0.2.0/24", got %q`, s)
}

// KeyStateJSON is one of a client's keys in GET /v1/clients/ADDR.
type KeyStateJSON struct {
	Limit       string     `json:"limit"`
	Key         string     `json:"key"`
	Conns       int        `json:"conns"`
	Queued      int        `json:"queued"`
	Excess      float64    `json:"excess"`
	WindowCount int64      `json:"window_count"`
	Banned      bool       `json:"banned"`
	BanUntil    *time.Time `json:"ban_until,omitempty"`
}

// client shows an address's state in every limit and ban:
// GET /v1/clients/192.0.2.7?listener=api.
func (h *Handler) client(r *http.Request) (any, error) {
	addr, err := netip.ParseAddr(r.PathValue("addr"))
	if err != nil || addr.Zone() != "" {
		return nil, errorf(http.StatusBadRequest, "address: want an IP address like 192.0.2.7, got %q", r.PathValue("addr"))
	}
	ks := h.p.Client(addr.Unmap(), r.URL.Query().Get("listener"))
	out := make([]KeyStateJSON, 0, len(ks))
	for _, k := range ks {
		j := KeyStateJSON{Limit: k.Limit, Key: k.Key, Conns: k.Conns, Queued: k.Queued, Excess: k.Excess, WindowCount: k.WindowCount, Banned: k.Banned}
		if k.Banned {
			until := k.BanUntil
			j.BanUntil = &until
		}
		out = append(out, j)
	}
	return map[string]any{"addr": addr.Unmap().String(), "keys": out}, nil
}
