package admin

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluiceproxy/sluice/mp4probe"
	"github.com/sluiceproxy/sluice/proxy"
)

// Collector exports a proxy's counters as Prometheus metrics, read at
// scrape time (the pumps keep plain atomics; nothing is pushed per byte).
// Labels are bounded: listener and link names from the config, directions,
// results and reasons; never a client address. It is safe for concurrent
// use.
type Collector struct {
	p Proxy

	bytes, accepted, ended, active, waited, waiting, rate, burst *prometheus.Desc

	linkBytes, linkBorrowed, linkGrants, linkRate, linkTokens, linkWaiting, linkKeys, linkConns *prometheus.Desc

	mp4Videos, mp4Plans, mp4Burst, mp4Fallbacks, mp4Cached, mp4Waited, mp4Paced, mp4Rate *prometheus.Desc

	readAhead, shapedPipes, loopDirs *prometheus.Desc
	parked, detached                 *prometheus.Desc

	admissions, refusals, queueTimeouts, tarpitted, overflowed, acceptPaused *prometheus.Desc
	limitKeys, limitQueued, banActive, banKeys, banStarted, banLifted        *prometheus.Desc

	up upstreamDescs
}

// NewCollector returns a Collector for p; register it on a registry.
func NewCollector(p Proxy) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("sluice_"+name, help, labels, nil)
	}
	return &Collector{
		p:        p,
		bytes:    d("listener_bytes_total", "Bytes forwarded by a listener's connections, per direction (up: client to upstream).", "listener", "direction"),
		accepted: d("listener_connections_accepted_total", "Connections accepted by a listener.", "listener"),
		ended:    d("listener_connections_ended_total", "Connections ended, by result (ok, reset, idle_timeout, shutdown, upstream_error, error, closed, refused).", "listener", "result"),
		active:   d("listener_connections_active", "Live connections of a listener.", "listener"),
		waited:   d("listener_token_wait_seconds_total", "Time connections spent waiting for tokens of their own limits, per direction.", "listener", "direction"),
		waiting:  d("listener_connections_waiting", "Connection directions waiting for tokens now.", "listener", "direction"),
		rate:     d("listener_conn_rate_limit_bytes_per_second", "Per-connection rate limit of a listener, per direction; absent when unlimited.", "listener", "direction"),
		burst:    d("listener_conn_burst_bytes", "Per-connection burst of a listener, per direction; absent when unlimited.", "listener", "direction"),

		linkBytes:    d("link_bytes_total", "Bytes granted on a link, per direction.", "link", "direction"),
		linkBorrowed: d("link_borrowed_bytes_total", "Bytes keys took on a link beyond their assured rate.", "link", "direction"),
		linkGrants:   d("link_grants_total", "Grants a link made, per direction: link_bytes_total over this is the average grant.", "link", "direction"),
		linkRate:     d("link_rate_limit_bytes_per_second", "A link's rate, per direction.", "link", "direction"),
		linkTokens:   d("link_tokens_bytes", "A link's bucket fill now: unused budget, up to its burst.", "link", "direction"),
		linkWaiting:  d("link_connections_waiting", "Connections waiting for a link's grant now.", "link", "direction"),
		linkKeys:     d("link_keys_active", "Keys with connections on a link.", "link", "direction"),
		linkConns:    d("link_connections", "Connections seated on a link.", "link", "direction"),

		mp4Videos:    d("mp4_videos_total", "MP4 bodies (responses or raw streams) a listener saw.", "listener"),
		mp4Plans:     d("mp4_plans_total", "MP4 bodies paced from their own metadata.", "listener"),
		mp4Burst:     d("mp4_burst_bytes_total", "Bytes MP4 plans let through at full speed (metadata and the first seconds).", "listener"),
		mp4Fallbacks: d("mp4_fallbacks_total", "MP4 bodies not paced from their metadata, by reason (moov_unknown: paced at the default rate; others: the normal limits).", "listener", "reason"),
		mp4Cached:    d("mp4_cached_movies", "Movies a listener keeps to pace later Range requests.", "listener"),
		mp4Waited:    d("mp4_pace_wait_seconds_total", "Time connections held bytes back to follow MP4 plans.", "listener"),
		mp4Paced:     d("mp4_paced_bytes_total", "Bytes sent while an MP4 plan was in force.", "listener"),
		mp4Rate:      d("mp4_plan_video_rate_bytes_per_second", "Average rates of the videos MP4 plans were made for (sum and count: their mean).", "listener"),

		readAhead:   d("read_ahead_bytes", "Memory shaped connections hold in bytes read ahead of their grants, process-wide (at most 32 MiB)."),
		shapedPipes: d("shaped_pipes", "Pipes shaped connections hold now, process-wide (at most 256; two descriptors each)."),
		loopDirs:    d("shaping_loop_directions", "Connection directions the shaping loops serve now (those waiting for a link grant included), process-wide."),
		parked:      d("parked_directions", "Idle connection directions parked now: no goroutine of their own, a shared watcher waits for their bytes."),
		detached:    d("detached_connections", "Idle connections whose sockets are detached from Go now (both directions parked for a second): two descriptors and the connection record are all they hold."),

		admissions:    d("admissions_total", "Admission decisions of a listener with a policy, by the limit that decided (empty when none did alone) and verdict (admit, delay, queue, refuse).", "listener", "limit", "verdict"),
		refusals:      d("admission_refusals_total", "Connections a listener refused at accept, by reason (deny, ban, conns, rate, window, queue_full).", "listener", "reason"),
		queueTimeouts: d("admission_queue_timeouts_total", "Connections refused after waiting in a limit's queue for its timeout.", "listener"),
		tarpitted:     d("admission_tarpitted_connections", "Refused connections a listener holds in its tarpit, or writes an overflow response to, now.", "listener"),
		overflowed:    d("admission_overflowed_total", "Connections handed to the listener's overflow target: refused by admission, or taken by no server of its pool.", "listener"),
		acceptPaused:  d("admission_accept_paused_total", "Times a listener stopped accepting because a global connection limit was full.", "listener"),
		limitKeys:     d("limit_keys", "Keys (client addresses, networks, listeners) a limit tracks now.", "limit"),
		limitQueued:   d("limit_queued_connections", "Connections waiting in a limit's queues now.", "limit"),
		banActive:     d("bans_active", "Keys banned now by a ban policy.", "ban"),
		banKeys:       d("ban_keys", "Keys a ban policy tracks now (bounded by its table).", "ban"),
		banStarted:    d("bans_started_total", "Bans a policy started (manual ones included).", "ban"),
		banLifted:     d("bans_lifted_total", "Bans a policy lifted (on time or by hand).", "ban"),

		up: newUpstreamDescs(d),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.bytes, c.accepted, c.ended, c.active, c.waited, c.waiting, c.rate, c.burst,
		c.linkBytes, c.linkBorrowed, c.linkGrants, c.linkRate, c.linkTokens, c.linkWaiting, c.linkKeys, c.linkConns,
		c.mp4Videos, c.mp4Plans, c.mp4Burst, c.mp4Fallbacks, c.mp4Cached, c.mp4Waited, c.mp4Paced, c.mp4Rate, c.readAhead, c.shapedPipes, c.loopDirs, c.parked, c.detached,
		c.admissions, c.refusals, c.queueTimeouts, c.tarpitted, c.overflowed, c.acceptPaused,
		c.limitKeys, c.limitQueued, c.banActive, c.banKeys, c.banStarted, c.banLifted} {
		ch <- d
	}
	for _, d := range c.up.list() {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.collectAdmission(ch)
	c.collectUpstreams(ch)
	ps := c.p.Process()
	ch <- prometheus.MustNewConstMetric(c.readAhead, prometheus.GaugeValue, float64(ps.ReadAhead))
	ch <- prometheus.MustNewConstMetric(c.shapedPipes, prometheus.GaugeValue, float64(ps.Pipes))
	ch <- prometheus.MustNewConstMetric(c.loopDirs, prometheus.GaugeValue, float64(ps.LoopDirs))
	ch <- prometheus.MustNewConstMetric(c.parked, prometheus.GaugeValue, float64(ps.Parked))
	ch <- prometheus.MustNewConstMetric(c.detached, prometheus.GaugeValue, float64(ps.Detached))
	for _, l := range c.p.Links(false) {
		for d, ds := range l.Dirs {
			if ds == nil {
				continue
			}
			dir := proxy.Dir(d).String()
			ch <- prometheus.MustNewConstMetric(c.linkBytes, prometheus.CounterValue, float64(ds.Bytes), l.Name, dir)
			ch <- prometheus.MustNewConstMetric(c.linkBorrowed, prometheus.CounterValue, float64(ds.Borrowed), l.Name, dir)
			ch <- prometheus.MustNewConstMetric(c.linkGrants, prometheus.CounterValue, float64(ds.Grants), l.Name, dir)
			ch <- prometheus.MustNewConstMetric(c.linkRate, prometheus.GaugeValue, float64(ds.Limit.Rate), l.Name, dir)
			ch <- prometheus.MustNewConstMetric(c.linkTokens, prometheus.GaugeValue, float64(ds.Tokens), l.Name, dir)
			ch <- prometheus.MustNewConstMetric(c.linkWaiting, prometheus.GaugeValue, float64(ds.Waiting), l.Name, dir)
			ch <- prometheus.MustNewConstMetric(c.linkKeys, prometheus.GaugeValue, float64(ds.LinkStats.Keys), l.Name, dir)
			ch <- prometheus.MustNewConstMetric(c.linkConns, prometheus.GaugeValue, float64(ds.Members), l.Name, dir)
		}
	}
	for _, ls := range c.p.Stats() {
		ch <- prometheus.MustNewConstMetric(c.accepted, prometheus.CounterValue, float64(ls.Accepted), ls.Name)
		ch <- prometheus.MustNewConstMetric(c.active, prometheus.GaugeValue, float64(ls.Active), ls.Name)
		for r, n := range ls.Ended { // every result, 0 for none yet
			ch <- prometheus.MustNewConstMetric(c.ended, prometheus.CounterValue, float64(n), ls.Name, r)
		}
		if m := ls.MP4; ls.MP4Enabled || m.Videos > 0 {
			ch <- prometheus.MustNewConstMetric(c.mp4Videos, prometheus.CounterValue, float64(m.Videos), ls.Name)
			ch <- prometheus.MustNewConstMetric(c.mp4Plans, prometheus.CounterValue, float64(m.Plans), ls.Name)
			ch <- prometheus.MustNewConstMetric(c.mp4Burst, prometheus.CounterValue, float64(m.BurstBytes), ls.Name)
			for _, r := range mp4probe.FallbackReasons {
				ch <- prometheus.MustNewConstMetric(c.mp4Fallbacks, prometheus.CounterValue, float64(m.Fallbacks[r]), ls.Name, r)
			}
			ch <- prometheus.MustNewConstMetric(c.mp4Cached, prometheus.GaugeValue, float64(m.Cached), ls.Name)
			ch <- prometheus.MustNewConstMetric(c.mp4Waited, prometheus.CounterValue, m.Waited.Seconds(), ls.Name)
			ch <- prometheus.MustNewConstMetric(c.mp4Paced, prometheus.CounterValue, float64(m.PacedBytes), ls.Name)
			ch <- prometheus.MustNewConstSummary(c.mp4Rate, uint64(m.Plans), float64(m.PlannedRate), nil, ls.Name)
		}
		lims := [2]struct{ rate, burst int64 }{{ls.Limits.Up.Rate, ls.Limits.Up.Burst}, {ls.Limits.Down.Rate, ls.Limits.Down.Burst}}
		for d := range ls.Bytes {
			dir := proxy.Dir(d).String()
			ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(ls.Bytes[d]), ls.Name, dir)
			ch <- prometheus.MustNewConstMetric(c.waited, prometheus.CounterValue, ls.Waited[d].Seconds(), ls.Name, dir)
			ch <- prometheus.MustNewConstMetric(c.waiting, prometheus.GaugeValue, float64(ls.Waiting[d]), ls.Name, dir)
			if ls.Addr != "" && lims[d].rate > 0 {
				ch <- prometheus.MustNewConstMetric(c.rate, prometheus.GaugeValue, float64(lims[d].rate), ls.Name, dir)
				ch <- prometheus.MustNewConstMetric(c.burst, prometheus.GaugeValue, float64(lims[d].burst), ls.Name, dir)
			}
		}
	}
}

// collectAdmission exports the listeners' admission counters and the
// limits' and ban policies' state.
func (c *Collector) collectAdmission(ch chan<- prometheus.Metric) {
	for _, ls := range c.p.Stats() {
		a := ls.Admission
		if len(a.Decisions) == 0 && a.Tarpitted == 0 && a.Overflowed == 0 {
			continue // no admission policy, nothing overflowed
		}
		for k, n := range a.Decisions {
			ch <- prometheus.MustNewConstMetric(c.admissions, prometheus.CounterValue, float64(n), ls.Name, k[0], k[1])
		}
		for reason, n := range a.Refused {
			ch <- prometheus.MustNewConstMetric(c.refusals, prometheus.CounterValue, float64(n), ls.Name, reason)
		}
		ch <- prometheus.MustNewConstMetric(c.queueTimeouts, prometheus.CounterValue, float64(a.QueueTimeouts), ls.Name)
		ch <- prometheus.MustNewConstMetric(c.tarpitted, prometheus.GaugeValue, float64(a.Tarpitted), ls.Name)
		ch <- prometheus.MustNewConstMetric(c.overflowed, prometheus.CounterValue, float64(a.Overflowed), ls.Name)
		ch <- prometheus.MustNewConstMetric(c.acceptPaused, prometheus.CounterValue, float64(a.AcceptPaused), ls.Name)
	}
	limits, bans := c.p.AdmissionSet()
	for _, l := range limits {
		ch <- prometheus.MustNewConstMetric(c.limitKeys, prometheus.GaugeValue, float64(l.Keys), l.Name)
		ch <- prometheus.MustNewConstMetric(c.limitQueued, prometheus.GaugeValue, float64(l.Waiting), l.Name)
	}
	for _, b := range bans {
		ch <- prometheus.MustNewConstMetric(c.banActive, prometheus.GaugeValue, float64(b.Active), b.Name)
		ch <- prometheus.MustNewConstMetric(c.banKeys, prometheus.GaugeValue, float64(b.Keys), b.Name)
		ch <- prometheus.MustNewConstMetric(c.banStarted, prometheus.CounterValue, float64(b.Started), b.Name)
		ch <- prometheus.MustNewConstMetric(c.banLifted, prometheus.CounterValue, float64(b.Lifted), b.Name)
	}
}
