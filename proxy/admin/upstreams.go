package admin

import (
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluiceproxy/sluice/proxy"
	"github.com/sluiceproxy/sluice/proxy/upstream"
)

// PoolJSON is an upstream pool in GET /v1/upstreams.
type PoolJSON struct {
	Name    string `json:"name"`
	Balance string `json:"balance"`
	// Picks counts connections given a server (first tries and retries);
	// Retries the tries of another server after a failed one; NoServer
	// the connections no server could take (sent to overflow).
	Picks        uint64       `json:"picks"`
	Retries      uint64       `json:"retries"`
	NoServer     uint64       `json:"no_server"`
	EjectedPicks uint64       `json:"ejected_picks"`
	Servers      []ServerJSON `json:"servers"`
}

// ServerJSON is a server of a pool.
type ServerJSON struct {
	Address string `json:"address"`
	Weight  int    `json:"weight"`
	Backup  bool   `json:"backup,omitempty"`
	// State is up, down, ejected, cooling or draining.
	State               string     `json:"state"`
	Active              int64      `json:"active"`
	Total               uint64     `json:"total"`
	Failures            uint64     `json:"failures"`
	ConsecutiveFailures int        `json:"consecutive_failures"`
	Quota               *QuotaJSON `json:"quota,omitempty"`
	CoolingUntil        *time.Time `json:"cooling_until,omitempty"`
	EjectedUntil        *time.Time `json:"ejected_until,omitempty"`
	LastCheck           *time.Time `json:"last_check,omitempty"`
	LastCheckError      string     `json:"last_check_error,omitempty"`
}

// QuotaJSON is a server's use of its quota in the current window.
type QuotaJSON struct {
	Conns      int64      `json:"conns"`
	ConnsLimit int64      `json:"conns_limit,omitempty"`
	Bytes      int64      `json:"bytes"`
	BytesLimit int64      `json:"bytes_limit,omitempty"`
	Reset      *time.Time `json:"reset,omitempty"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func poolJSON(st upstream.Stats) PoolJSON {
	p := PoolJSON{Name: st.Name, Balance: st.Balance.String(), Picks: st.Picks, Retries: st.Retries,
		NoServer: st.NoServer, EjectedPicks: st.EjectedPicks, Servers: make([]ServerJSON, 0, len(st.Servers))}
	for _, s := range st.Servers {
		j := ServerJSON{Address: s.Address, Weight: s.Weight, Backup: s.Backup, State: s.State.String(), Active: s.Active,
			Total: s.Total, Failures: s.Failures, ConsecutiveFailures: s.ConsecutiveFailures,
			CoolingUntil: timePtr(s.CoolingUntil), EjectedUntil: timePtr(s.EjectedUntil), LastCheck: timePtr(s.LastCheck),
			LastCheckError: s.LastCheckErr}
		if q := s.Quota; q.ConnsLimit > 0 || q.BytesLimit > 0 {
			j.Quota = &QuotaJSON{Conns: q.Conns, ConnsLimit: q.ConnsLimit, Bytes: q.Bytes, BytesLimit: q.BytesLimit, Reset: timePtr(q.Reset)}
		}
		p.Servers = append(p.Servers, j)
	}
	return p
}

// upstreams lists the pools: GET /v1/upstreams.
func (h *Handler) upstreams(*http.Request) (any, error) {
	out := []PoolJSON{}
	for _, st := range h.p.Pools() {
		out = append(out, poolJSON(st))
	}
	return out, nil
}

// upstreamPool shows one pool: GET /v1/upstreams/NAME.
func (h *Handler) upstreamPool(r *http.Request) (any, error) {
	name := r.PathValue("pool")
	for _, st := range h.p.Pools() {
		if st.Name == name {
			return poolJSON(st), nil
		}
	}
	return nil, errorf(http.StatusNotFound, "no upstream pool %q", name)
}

// drainServer and enableServer: POST
// /v1/upstreams/POOL/servers/ADDR/drain and .../enable.
func (h *Handler) drainServer(r *http.Request) (any, error) {
	return h.serverOp(r, "drain", h.p.DrainServer)
}

func (h *Handler) enableServer(r *http.Request) (any, error) {
	return h.serverOp(r, "enable", h.p.EnableServer)
}

func (h *Handler) serverOp(r *http.Request, op string, do func(pool, addr string) error) (any, error) {
	pool, addr := r.PathValue("pool"), r.PathValue("addr")
	if err := do(pool, addr); err != nil {
		if errors.Is(err, proxy.ErrNoPool) || errors.Is(err, upstream.ErrUnknownServer) {
			return nil, errorf(http.StatusNotFound, "%v", err)
		}
		return nil, errorf(http.StatusConflict, "%v", err)
	}
	h.log.Info("admin: upstream server", slog.String("op", op), slog.String("pool", pool), slog.String("server", addr), slog.String("remote", r.RemoteAddr))
	st, _ := h.upstreamPool(r)
	return st, nil
}

// upstreamStates are the states a server's state gauge has a series for.
var upstreamStates = []upstream.State{upstream.Up, upstream.Down, upstream.Ejected, upstream.Cooling, upstream.Draining}

// upstreamDescs are the pools' metrics.
type upstreamDescs struct {
	picks, retries, noServer, state, active, total, failures, quotaUsed *prometheus.Desc
}

func newUpstreamDescs(d func(name, help string, labels ...string) *prometheus.Desc) upstreamDescs {
	return upstreamDescs{
		picks:     d("upstream_picks_total", "Connections a pool gave a server (first tries and retries).", "pool"),
		retries:   d("upstream_retries_total", "Tries of another server after a failed one, before the client's first byte.", "pool"),
		noServer:  d("upstream_no_server_total", "Connections no server of a pool could take (sent to the overflow target, or reset).", "pool"),
		state:     d("upstream_server_state", "1 for a server's current state (up, down, ejected, cooling, draining), 0 for the others.", "pool", "server", "state"),
		active:    d("upstream_server_connections", "Connections a server has now.", "pool", "server"),
		total:     d("upstream_server_connections_total", "Connections a server was given, failed dials included.", "pool", "server"),
		failures:  d("upstream_server_failures_total", "Passive failures of a server: failed dials and connections that ended before their first byte.", "pool", "server"),
		quotaUsed: d("upstream_server_quota_used_ratio", "How much of its quota a server spent in the current window (the larger of conns and bytes); absent without a quota.", "pool", "server"),
	}
}

func (u *upstreamDescs) list() []*prometheus.Desc {
	return []*prometheus.Desc{u.picks, u.retries, u.noServer, u.state, u.active, u.total, u.failures, u.quotaUsed}
}

// collectUpstreams exports the pools' counters and their servers' state.
func (c *Collector) collectUpstreams(ch chan<- prometheus.Metric) {
	u := &c.up
	for _, p := range c.p.Pools() {
		ch <- prometheus.MustNewConstMetric(u.picks, prometheus.CounterValue, float64(p.Picks), p.Name)
		ch <- prometheus.MustNewConstMetric(u.retries, prometheus.CounterValue, float64(p.Retries), p.Name)
		ch <- prometheus.MustNewConstMetric(u.noServer, prometheus.CounterValue, float64(p.NoServer), p.Name)
		for _, s := range p.Servers {
			for _, st := range upstreamStates {
				v := 0.0
				if s.State == st {
					v = 1
				}
				ch <- prometheus.MustNewConstMetric(u.state, prometheus.GaugeValue, v, p.Name, s.Address, st.String())
			}
			ch <- prometheus.MustNewConstMetric(u.active, prometheus.GaugeValue, float64(s.Active), p.Name, s.Address)
			ch <- prometheus.MustNewConstMetric(u.total, prometheus.CounterValue, float64(s.Total), p.Name, s.Address)
			ch <- prometheus.MustNewConstMetric(u.failures, prometheus.CounterValue, float64(s.Failures), p.Name, s.Address)
			if q := s.Quota; q.ConnsLimit > 0 || q.BytesLimit > 0 {
				used := 0.0
				if q.ConnsLimit > 0 {
					used = float64(q.Conns) / float64(q.ConnsLimit)
				}
				if q.BytesLimit > 0 {
					used = max(used, float64(q.Bytes)/float64(q.BytesLimit))
				}
				ch <- prometheus.MustNewConstMetric(u.quotaUsed, prometheus.GaugeValue, used, p.Name, s.Address)
			}
		}
	}
}
