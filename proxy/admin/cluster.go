package admin

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ClusterStatus is what the admin API and the metrics show of the cluster
// an instance belongs to (docs/cluster.md): GET /v1/cluster, /readyz and
// the sluice_cluster_* metrics. Rates are bytes per second.
type ClusterStatus struct {
	Instance string `json:"instance"`
	// State is "starting", "leased", "fallback" or "closed".
	State string    `json:"state"`
	Since time.Time `json:"since"`
	// LastOK is the last successful renewal; zero if none.
	LastOK time.Time `json:"last_ok,omitzero"`
	// LastErr is the last renewal's error while not leased.
	LastErr string `json:"last_error,omitempty"`
	// Renewal calls, failed ones (late among them), entries into
	// fallback, since start.
	Calls     int64 `json:"renewals"`
	Failures  int64 `json:"failures"`
	Late      int64 `json:"late"`
	Fallbacks int64 `json:"fallbacks"`
	// Ban operations sent to and received from the other instances,
	// waiting to be sent, dropped for lack of room.
	BansSent     int64 `json:"bans_sent"`
	BansReceived int64 `json:"bans_received"`
	BansPending  int64 `json:"bans_pending"`
	BansDropped  int64 `json:"bans_dropped"`
	// Links are the leased link directions.
	Links []ClusterLink `json:"links"`
}

// ClusterLink is one direction of a link shared by the cluster.
type ClusterLink struct {
	Link string `json:"link"`
	Dir  string `json:"dir"`
	// Line is the whole line's rate; Share this instance's now; Fair the
	// share Redis computed last (Share moves toward it).
	Line  int64 `json:"line"`
	Share int64 `json:"share"`
	Fair  int64 `json:"fair"`
	// Leased: Share comes from Redis, not the static fallback.
	Leased bool `json:"leased"`
	// Instances sharing the line, and the sum of their busy connections.
	Instances int   `json:"instances"`
	Weight    int64 `json:"weight"`
	// This instance's demand: busy connections, and the rate it could
	// use (0: as much as it gets).
	Conns int   `json:"conns"`
	Want  int64 `json:"want"`
}

// cluster answers GET /v1/cluster: 404 when the instance is in no cluster.
func (h *Handler) cluster(*http.Request) (any, error) {
	if h.opts.Cluster == nil {
		return nil, errorf(http.StatusNotFound, "not in a cluster: the config has no cluster: block")
	}
	return h.opts.Cluster(), nil
}

// readyCluster is the cluster's line of /readyz; empty outside a cluster.
// A fallback does not make the instance unready: it serves at its last
// share.
func (h *Handler) readyCluster() string {
	if h.opts.Cluster == nil {
		return ""
	}
	st := h.opts.Cluster()
	line := "cluster " + st.State + " instance " + st.Instance
	if st.LastErr != "" {
		line += ": " + st.LastErr
	}
	return line
}

// ClusterCollector exports a cluster's state as Prometheus metrics, read
// at scrape time. Labels are link names and directions from the config.
type ClusterCollector struct {
	status func() *ClusterStatus

	state, renewals, failures, fallbacks, share, line, leased, instances, bansSent, bansReceived, bansPending *prometheus.Desc
}

// clusterStates are the values of sluice_cluster_state's state label.
var clusterStates = []string{"starting", "leased", "fallback", "closed"}

// NewClusterCollector returns a collector of status; register it on a
// registry.
func NewClusterCollector(status func() *ClusterStatus) *ClusterCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("sluice_cluster_"+name, help, labels, nil)
	}
	return &ClusterCollector{
		status:       status,
		state:        d("state", "1 for the cluster state the instance is in (starting, leased, fallback: Redis unreachable, running at its last share; closed), 0 for the others.", "state"),
		renewals:     d("renewals_total", "Lease renewal calls to Redis (one per lease period, for every link and counter)."),
		failures:     d("renewal_failures_total", "Lease renewal calls that failed or came back too late."),
		fallbacks:    d("fallbacks_total", "Times the instance lost Redis and fell back to its last shares."),
		share:        d("link_share_bytes_per_second", "This instance's share of a cluster link's line, per direction.", "link", "direction"),
		line:         d("link_line_bytes_per_second", "A cluster link's whole line, shared by every instance, per direction.", "link", "direction"),
		leased:       d("link_leased", "1 if the share of a cluster link comes from Redis, 0 if it is the static fallback share.", "link", "direction"),
		instances:    d("link_instances", "Instances sharing a cluster link, as Redis last counted them.", "link", "direction"),
		bansSent:     d("bans_sent_total", "Ban operations this instance sent to the cluster."),
		bansReceived: d("bans_received_total", "Ban operations this instance received from the others."),
		bansPending:  d("bans_pending", "Ban operations waiting for Redis to be sent."),
	}
}

// Describe implements prometheus.Collector.
func (c *ClusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.state, c.renewals, c.failures, c.fallbacks, c.share, c.line, c.leased, c.instances,
		c.bansSent, c.bansReceived, c.bansPending} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *ClusterCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.status()
	for _, s := range clusterStates {
		v := 0.0
		if s == st.State {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, v, s)
	}
	ch <- prometheus.MustNewConstMetric(c.renewals, prometheus.CounterValue, float64(st.Calls))
	ch <- prometheus.MustNewConstMetric(c.failures, prometheus.CounterValue, float64(st.Failures))
	ch <- prometheus.MustNewConstMetric(c.fallbacks, prometheus.CounterValue, float64(st.Fallbacks))
	ch <- prometheus.MustNewConstMetric(c.bansSent, prometheus.CounterValue, float64(st.BansSent))
	ch <- prometheus.MustNewConstMetric(c.bansReceived, prometheus.CounterValue, float64(st.BansReceived))
	ch <- prometheus.MustNewConstMetric(c.bansPending, prometheus.GaugeValue, float64(st.BansPending))
	for _, l := range st.Links {
		leased := 0.0
		if l.Leased {
			leased = 1
		}
		ch <- prometheus.MustNewConstMetric(c.share, prometheus.GaugeValue, float64(l.Share), l.Link, l.Dir)
		ch <- prometheus.MustNewConstMetric(c.line, prometheus.GaugeValue, float64(l.Line), l.Link, l.Dir)
		ch <- prometheus.MustNewConstMetric(c.leased, prometheus.GaugeValue, leased, l.Link, l.Dir)
		ch <- prometheus.MustNewConstMetric(c.instances, prometheus.GaugeValue, float64(l.Instances), l.Link, l.Dir)
	}
}
