package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/sluiceproxy/sluice/config"
	"github.com/sluiceproxy/sluice/proxy"
	"github.com/sluiceproxy/sluice/proxy/admin"
	"github.com/sluiceproxy/sluice/proxy/admit"
	"github.com/sluiceproxy/sluice/shaper/cluster"
)

// clusterNode is this instance's place in a cluster (docs/cluster.md): the
// shaper/cluster Cluster built from the cluster: block, and what it shares
// of the running config: a lease per direction of each link with
// `cluster: true`, a shared counter per such limit, a ban channel per such
// ban policy. It is built before the proxy (limits take their counters at
// New) and attached to it once made (leases apply their shares to it).
type clusterNode struct {
	c   *cluster.Cluster
	log *slog.Logger
	srv atomic.Pointer[proxy.Server]

	mu       sync.Mutex
	leases   map[string]*linkLease     // by "link/dir"
	counters map[string]*sharedCounter // by counter name (limitCounterName)
	bans     map[string]*cluster.Bans  // by ban policy
}

// clusterOptions turns the cluster: block into shaper/cluster's options,
// reading the TLS files. It does not connect: `sluice check` calls it.
func clusterOptions(cc config.Cluster, log *slog.Logger) (cluster.Options, error) {
	o := cluster.Options{
		Addr: cc.Redis.Address, DB: cc.Redis.DB, Username: cc.Redis.Username, Password: cc.Redis.Password,
		Prefix: cc.Prefix, Instance: cc.Instance, Period: cc.Lease, Timeout: cc.Timeout, Instances: cc.Instances,
		Logger: log,
	}
	if s := cc.Redis.Sentinel; s != nil {
		o.Sentinel = &cluster.Sentinel{Master: s.Master, Addrs: s.Addresses, Password: s.Password}
	}
	var err error
	if o.TLS, err = clusterTLS(cc.Redis.TLS); err != nil {
		return o, err
	}
	if err := o.Validate(); err != nil {
		return o, fmt.Errorf("cluster: %w", err)
	}
	return o, nil
}

// clusterTLS builds the TLS configuration of cluster.redis.tls; nil when
// TLS is off.
func clusterTLS(t config.ClusterTLS) (*tls.Config, error) {
	if !t.Enabled {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName,
		InsecureSkipVerify: t.InsecureSkipVerify} // #nosec G402 -- the operator's explicit choice, documented as for tests
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("cluster.redis.tls.ca_file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("cluster.redis.tls.ca_file: want PEM certificates, found none in %s", t.CAFile)
		}
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("cluster.redis.tls.cert_file, key_file: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// newClusterNode joins the cluster the config names. Redis being down is
// no error: the instance starts in fallback.
func newClusterNode(cfg *config.Config, log *slog.Logger) (*clusterNode, error) {
	o, err := clusterOptions(cfg.Cluster, log)
	if err != nil {
		return nil, err
	}
	c, err := cluster.New(o)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	log.Info("cluster joined", slog.String("instance", c.Instance()), slog.String("redis", cfg.Cluster.Redis.String()),
		slog.Duration("lease", c.Period()))
	return &clusterNode{c: c, log: log, leases: map[string]*linkLease{},
		counters: map[string]*sharedCounter{}, bans: map[string]*cluster.Bans{}}, nil
}

// close leaves the cluster: the leases go back to the others and this
// instance's connection counts are zeroed (one Redis call).
func (n *clusterNode) close() {
	if n == nil {
		return
	}
	if err := n.c.Close(); err != nil {
		n.log.Warn("cluster close", slog.Any("err", err))
	}
}

// status returns the cluster's state for the admin API and metrics.
func (n *clusterNode) status() *admin.ClusterStatus {
	st := n.c.Status()
	out := &admin.ClusterStatus{
		Instance: st.Instance, State: st.State.String(), Since: st.Since, LastOK: st.LastOK,
		Calls: st.Calls, Failures: st.Failures, Late: st.Late, Fallbacks: st.Fallbacks,
		BansSent: st.BansSent, BansReceived: st.BansReceived, BansPending: st.BansPending, BansDropped: st.BansDropped,
	}
	if st.LastErr != nil {
		out.LastErr = st.LastErr.Error()
	}
	for _, l := range st.Links {
		link, dir, _ := cutLast(l.Name)
		out.Links = append(out.Links, admin.ClusterLink{
			Link: link, Dir: dir, Line: l.Line, Share: l.Share, Fair: l.Fair, Leased: l.Leased,
			Instances: l.Instances, Weight: l.Weight, Conns: l.Demand.Conns, Want: l.Demand.Want,
		})
	}
	slices.SortFunc(out.Links, func(x, y admin.ClusterLink) int { return strings.Compare(x.Link+"/"+x.Dir, y.Link+"/"+y.Dir) })
	return out
}

func cutLast(s string) (before, after string, found bool) {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '/' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// sharedCounter adapts a shaper/cluster Counter to admit.Shared.
type sharedCounter struct {
	k    *cluster.Counter
	rate bool // the limit has a rate: take the others' new hits
	used bool // named by the config being applied; guarded by clusterNode.mu
}

// Interface guard.
var _ admit.Shared = (*sharedCounter)(nil)

func (s *sharedCounter) Get(key string) admit.SharedCount {
	c := s.k.Get(key)
	sc := admit.SharedCount{RemoteConns: c.RemoteConns, Hits: c.Hits}
	if s.rate {
		sc.NewRemoteHits = s.k.TakeRemoteHits(key)
	}
	return sc
}

func (s *sharedCounter) Hit(key string) { s.k.Hit(key, 1) }

func (s *sharedCounter) AddConns(key string, delta int) { s.k.AddConns(key, int64(delta)) }

// counterWindow is the window a shared limit's counter counts hits in:
// its own window, or one second for a rate alone.
func counterWindow(l config.Limit) time.Duration {
	if l.Window.Max > 0 {
		return l.Window.Per
	}
	return time.Second
}

// limitCounterName names a limit's counter in Redis. The window is part
// of it: instances must agree on it, and a reload that changes it starts
// a new count.
func limitCounterName(l config.Limit) string {
	return fmt.Sprintf("limit/%s/%s", l.Name, counterWindow(l))
}

// shared returns the admit.Shared of a limit with `cluster: true`: its
// counter, made at first use and kept across reloads while its name
// stays; nil for others, or when n is nil (`sluice check`).
func (n *clusterNode) shared(l config.Limit) admit.Shared {
	if n == nil || !l.Cluster {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	name := limitCounterName(l)
	sc := n.counters[name]
	if sc == nil {
		k, err := n.c.Counter(name, cluster.CounterOptions{Window: counterWindow(l)})
		if err != nil {
			// config.Load checked the window; ErrClosed at shutdown.
			n.log.Warn("cluster counter", slog.String("limit", l.Name), slog.Any("err", err))
			return nil
		}
		sc = &sharedCounter{k: k}
		n.counters[name] = sc
	}
	sc.rate, sc.used = l.Rate.N > 0, true
	return sc
}

// linkLease is one direction of a cluster link: its lease, and the
// activity count its demand is measured from.
type linkLease struct {
	link  string
	dir   proxy.Dir
	line  int64
	lease *cluster.Lease

	// Guarded by being called from the renewal goroutine only.
	lastBytes int64
	lastAt    time.Time
}

// minWant is the least a link's demand asks for when it is not its
// bottleneck, so that a link that just went quiet can pick up again.
const minWant = 64 << 10

// demand measures what the direction wants of the line: its members that
// asked for bytes in the last period, and, when none had to wait (the
// link was not what held them back), 1.25 × the rate they moved, so that
// the rest goes to the instances that can use it.
func (l *linkLease) demand(srv *proxy.Server) cluster.Demand {
	if srv == nil {
		return cluster.Demand{}
	}
	a, ok := srv.LinkActivity(l.link, l.dir)
	if !ok {
		return cluster.Demand{}
	}
	now := time.Now()
	moved, dt := a.Bytes-l.lastBytes, now.Sub(l.lastAt)
	first := l.lastAt.IsZero()
	l.lastBytes, l.lastAt = a.Bytes, now
	d := cluster.Demand{Conns: a.Members}
	if !a.Waited && a.Members > 0 && !first && dt > 0 {
		d.Want = max(int64(1.25*float64(moved)/dt.Seconds()), minWant)
	}
	return d
}

// attach gives the node the running proxy and shares what cfg marks
// `cluster: true`.
func (n *clusterNode) attach(srv *proxy.Server, cfg *config.Config) {
	if n == nil {
		return
	}
	n.srv.Store(srv)
	n.sync(cfg)
}

// sync makes the shared set match cfg, after it was applied to the proxy:
// new cluster links get leases (a link whose rate changed gets a new one,
// at the new line), links no longer shared go back to their configured
// rate, ban policies subscribe or leave, and counters no limit uses any
// more close.
func (n *clusterNode) sync(cfg *config.Config) {
	if n == nil {
		return
	}
	srv := n.srv.Load()
	n.mu.Lock()
	defer n.mu.Unlock()

	want := map[string]*linkLease{}
	for _, l := range cfg.Links {
		if !l.Cluster {
			continue
		}
		for _, d := range []struct {
			dir  proxy.Dir
			rate config.Rate
		}{{proxy.Up, l.Up.Rate}, {proxy.Down, l.Down.Rate}} {
			if d.rate > 0 {
				want[l.Name+"/"+d.dir.String()] = &linkLease{link: l.Name, dir: d.dir, line: int64(d.rate)}
			}
		}
	}
	for name, old := range n.leases {
		if w := want[name]; w == nil || w.line != old.line {
			old.lease.Close()
			delete(n.leases, name)
			if w == nil {
				// Back to its configured rate, if it still limits.
				_ = srv.SetLinkShare(old.link, old.dir, 0)
			}
		}
	}
	for name, w := range want {
		if n.leases[name] != nil {
			continue
		}
		ll := w
		lease, err := n.c.Link(name, cluster.LinkOptions{
			Line:   w.line,
			Demand: func() cluster.Demand { return ll.demand(n.srv.Load()) },
			Apply: func(share int64) {
				if err := n.srv.Load().SetLinkShare(ll.link, ll.dir, share); err != nil {
					n.log.Warn("cluster share", slog.String("link", ll.link), slog.String("dir", ll.dir.String()), slog.Any("err", err))
				}
			},
		})
		if err != nil {
			n.log.Warn("cluster link", slog.String("link", w.link), slog.Any("err", err))
			continue
		}
		w.lease = lease
		n.leases[name] = w
	}

	wantBans := map[string]bool{}
	for _, b := range cfg.Bans {
		if b.Cluster {
			wantBans[b.Name] = true
		}
	}
	for name, b := range n.bans {
		if !wantBans[name] {
			b.Close()
			delete(n.bans, name)
		}
	}
	for name := range wantBans {
		if n.bans[name] != nil {
			continue
		}
		policy := name
		b, err := n.c.Bans(policy, cluster.BanOptions{
			OnBan:  func(key string, until time.Time) { n.importBan(policy, key, until) },
			OnLift: func(key string) { n.importLift(policy, key) },
		})
		if err != nil {
			n.log.Warn("cluster bans", slog.String("ban", policy), slog.Any("err", err))
			continue
		}
		n.bans[policy] = b
	}

	for name, sc := range n.counters {
		if !sc.used {
			sc.k.Close()
			delete(n.counters, name)
		}
		sc.used = false // until the next config names it
	}
}

// onBan hands a ban started here to the other instances, if its policy
// is shared. It runs in the deciding goroutine: it must not block, and
// Bans.Add only queues.
func (n *clusterNode) onBan(ban string, key netip.Prefix, until time.Time) {
	n.mu.Lock()
	b := n.bans[ban]
	n.mu.Unlock()
	if b != nil {
		b.Add(key.String(), until)
	}
}

// onLift hands a ban lifted here (by the admin API) to the others.
func (n *clusterNode) onLift(ban string, key netip.Prefix) {
	n.mu.Lock()
	b := n.bans[ban]
	n.mu.Unlock()
	if b != nil {
		b.Lift(key.String())
	}
}

// importBan installs a ban another instance made.
func (n *clusterNode) importBan(policy, key string, until time.Time) {
	p, err := netip.ParsePrefix(key)
	srv := n.srv.Load()
	if err != nil || srv == nil {
		return
	}
	if err := srv.ImportBan(policy, p, until); err != nil && !errors.Is(err, admit.ErrNoBan) {
		n.log.Warn("cluster ban import", slog.String("ban", policy), slog.String("key", key), slog.Any("err", err))
	}
}

// importLift lifts a ban another instance lifted.
func (n *clusterNode) importLift(policy, key string) {
	p, err := netip.ParsePrefix(key)
	srv := n.srv.Load()
	if err != nil || srv == nil {
		return
	}
	_, _ = srv.ImportLift(policy, p)
}

// wire gives the proxy's options the cluster's hooks: each limit with
// `cluster: true` its shared counter, and the ban hooks.
func (n *clusterNode) wire(cfg *config.Config, opts *proxy.Options) {
	if n == nil {
		return
	}
	for i := range opts.Limits {
		opts.Limits[i].Shared = n.shared(cfg.Limits[i]) // admissionRules keeps the config's order
	}
	opts.OnBan, opts.OnLift = n.onBan, n.onLift
}

// checkClusterReload refuses a reload that adds or removes the cluster:
// block (joining or leaving a cluster takes a restart), and warns that
// other changes of the block wait for one.
func (d *sluiced) checkClusterReload(cfg *config.Config) error {
	old := d.cfg.Cluster
	switch {
	case old.Enabled != cfg.Cluster.Enabled:
		return errors.New("cluster: the block was added or removed; joining or leaving a cluster takes a restart")
	case old.Enabled && !reflect.DeepEqual(old, cfg.Cluster):
		d.log.Warn("cluster: changes of the cluster: block apply on restart only; links, limits and bans follow the reload")
	}
	return nil
}

// checkCluster validates the cluster: block as `sluice run` would use it
// (TLS files included) without connecting to Redis.
func checkCluster(cfg *config.Config) error {
	if !cfg.Cluster.Enabled {
		return nil
	}
	_, err := clusterOptions(cfg.Cluster, nil)
	return err
}

// clusterSection renders the cluster's state and this instance's share
// of each cluster link, for `sluice top`; nothing for an instance in no
// cluster.
func (v *topView) clusterSection(ctx context.Context, b *strings.Builder) error {
	if v.noCluster {
		return nil
	}
	var st admin.ClusterStatus
	if err := v.c.do(ctx, "GET", "/v1/cluster", nil, &st); err != nil {
		if strings.Contains(err.Error(), " 404 ") {
			v.noCluster = true
			return nil
		}
		return err
	}
	fmt.Fprintf(b, "cluster: instance %s %s for %s", st.Instance, strings.ToUpper(st.State), time.Since(st.Since).Round(time.Second))
	fmt.Fprintf(b, ", renewals %d (failed %d), fallbacks %d, bans sent %d received %d", st.Calls, st.Failures, st.Fallbacks, st.BansSent, st.BansReceived)
	if st.LastErr != "" {
		fmt.Fprintf(b, "\n  last error: %s", st.LastErr)
	}
	fmt.Fprintln(b)
	if len(st.Links) > 0 {
		slices.SortFunc(st.Links, func(x, y admin.ClusterLink) int { return strings.Compare(x.Link+x.Dir, y.Link+y.Dir) })
		tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "CLUSTER LINK\tDIR\tSHARE\tOF LINE\tFAIR\tFROM\tINSTANCES\tCONNS HERE/ALL")
		for _, l := range st.Links {
			from := "lease"
			if !l.Leased {
				from = "fallback"
			}
			pct := 0.0
			if l.Line > 0 {
				pct = 100 * float64(l.Share) / float64(l.Line)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f%% of %s\t%s\t%s\t%d\t%d/%d\n", l.Link, l.Dir, fmtBits(float64(l.Share)), pct,
				fmtBits(float64(l.Line)), fmtBits(float64(l.Fair)), from, l.Instances, l.Conns, l.Weight)
		}
		_ = tw.Flush()
	}
	fmt.Fprintln(b)
	return nil
}
