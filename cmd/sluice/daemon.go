package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sluiceproxy/sluice/config"
	"github.com/sluiceproxy/sluice/mp4probe"
	"github.com/sluiceproxy/sluice/proxy"
	"github.com/sluiceproxy/sluice/proxy/admin"
	"github.com/sluiceproxy/sluice/shaper"
)

// sluiced is a running sluice: the proxy, its admin API and metrics, and
// the config it was last (re)loaded from.
type sluiced struct {
	path  string
	log   *slog.Logger
	level *slog.LevelVar

	srv      *proxy.Server
	admin    *admin.Handler
	adminSrv *http.Server
	adminLn  net.Listener
	reg      *prometheus.Registry

	// activated are sockets passed by systemd, by the name they matched.
	activated map[string]*net.TCPListener

	mu  sync.Mutex // serializes reloads; guards cfg
	cfg *config.Config

	ready    atomic.Bool
	stopping atomic.Bool

	cores     *coreGovernor
	stopCores context.CancelFunc

	cluster *clusterNode // nil without a cluster: block

	reloads       *prometheus.CounterVec
	reloadOK      prometheus.Gauge
	reloadSuccess prometheus.Gauge
}

// notify sends a state to systemd when sluice runs under it (NOTIFY_SOCKET);
// elsewhere it does nothing.
func (d *sluiced) notify(state string) {
	if ok, err := daemon.SdNotify(false, state); err != nil {
		d.log.Warn("sd_notify", slog.String("state", strings.TrimSpace(state)), slog.Any("err", err))
	} else if ok {
		d.log.Debug("sd_notify", slog.String("state", strings.TrimSpace(state)))
	}
}

// startDaemon loads the config at path and starts everything it names.
func startDaemon(ctx context.Context, path string, stderr io.Writer) (_ *sluiced, err error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, configError{fmt.Errorf("config %s is invalid:\n%w", path, err)}
	}
	d := &sluiced{path: path, cfg: cfg, level: new(slog.LevelVar)}
	d.level.Set(parseLevel(cfg.Log.Level))
	d.log = newLogger(cfg.Log.Format, d.level, stderr)
	raiseFileLimit(d.log)
	// The cores Go schedules on (docs/operating.md#cores); logged.
	d.cores = newCoreGovernor(d.log, cfg.Cores)
	defer func() {
		if err != nil {
			d.cores.restore()
		}
	}()

	if d.activated, err = activatedSockets(cfg, d.log); err != nil {
		return nil, err
	}
	if cfg.Cluster.Enabled {
		if d.cluster, err = newClusterNode(cfg, d.log); err != nil {
			return nil, configError{err}
		}
		defer func() {
			if err != nil {
				d.cluster.close()
			}
		}()
	}
	opts := d.proxyOptions(cfg)
	opts.Logger = d.log
	d.srv, err = proxy.New(opts)
	if err != nil {
		return nil, configError{err}
	}
	d.cluster.attach(d.srv, cfg)
	d.initMetrics()
	if err := d.srv.Start(ctx); err != nil {
		return nil, err
	}
	if cfg.Admin.Enabled() {
		if err := d.startAdmin(cfg); err != nil {
			_ = d.srv.Close()
			return nil, err
		}
	}
	for _, st := range d.srv.Stats() {
		d.log.Info("listening", slog.String("listener", st.Name), slog.String("addr", st.Addr),
			slog.String("upstream", st.Upstream))
	}
	d.ready.Store(true)
	d.log.Info("started", slog.String("version", version), slog.Int("listeners", len(cfg.Listeners)))
	d.notify(daemon.SdNotifyReady + "\nSTATUS=serving")
	go d.watchdog()
	gctx, stop := context.WithCancel(context.Background())
	d.stopCores = stop
	go d.cores.run(gctx)
	return d, nil
}

func (d *sluiced) initMetrics() {
	d.reg = prometheus.NewRegistry()
	d.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_config_reloads_total",
		Help: "Config reloads by result: ok, or invalid (the running config stayed).",
	}, []string{"result"})
	d.reloads.WithLabelValues("ok")
	d.reloads.WithLabelValues("invalid")
	d.reloadOK = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "sluice_config_last_reload_successful",
		Help: "1 if the last reload applied, 0 if it was rejected.",
	})
	d.reloadOK.Set(1)
	d.reloadSuccess = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "sluice_config_last_reload_success_timestamp_seconds",
		Help: "When the config was last loaded, in Unix seconds.",
	})
	d.reloadSuccess.SetToCurrentTime()
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "sluice_build_info",
		Help:        "Build information; the value is always 1.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": goVersion(), "revision": revision()},
	})
	build.Set(1)
	d.reg.MustRegister(d.reloads, d.reloadOK, d.reloadSuccess, build, admin.NewCollector(d.srv),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d.reg.MustRegister(d.cores.collectors()...)
	if d.cluster != nil {
		d.reg.MustRegister(admin.NewClusterCollector(d.cluster.status))
	}
}

func (d *sluiced) startAdmin(cfg *config.Config) error {
	ln, err := net.Listen("tcp", cfg.Admin.Listen)
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	d.adminLn = ln
	opts := admin.Options{
		Token:     cfg.Admin.Token,
		AuthReads: !isLoopbackAddr(ln.Addr()),
		Gatherer:  d.reg,
		Reload:    d.reload,
		Ready:     func() bool { return d.ready.Load() && !d.stopping.Load() },
		ParseRate: func(s string) (int64, error) { r, err := config.ParseRate(s); return int64(r), err },
		ParseSize: func(s string) (int64, error) { z, err := config.ParseSize(s); return int64(z), err },
		Logger:    d.log,
	}
	if d.cluster != nil {
		opts.Cluster = d.cluster.status
	}
	d.admin = admin.New(d.srv, opts)
	d.adminSrv = &http.Server{
		Handler:           d.admin,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
	}
	go func() {
		if err := d.adminSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("admin api stopped", slog.Any("err", err))
		}
	}()
	d.log.Info("admin api listening", slog.String("addr", ln.Addr().String()),
		slog.Bool("token", cfg.Admin.Token != ""))
	return nil
}

func isLoopbackAddr(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// reload re-reads the config file and applies it; on any error the running
// config stays and the error is logged, counted and returned.
func (d *sluiced) reload(context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.notify(daemon.SdNotifyReloading + "\n" + daemon.SdNotifyMonotonicUsec() + "STATUS=reloading")
	defer d.notify(daemon.SdNotifyReady + "\nSTATUS=serving")
	fail := func(err error) error {
		d.reloads.WithLabelValues("invalid").Inc()
		d.reloadOK.Set(0)
		d.log.Error("reload rejected: the running config stays", slog.String("config", d.path), slog.Any("err", err))
		return err
	}
	cfg, err := config.Load(d.path)
	if err != nil {
		return fail(err)
	}
	if cfg.Admin.Listen != d.cfg.Admin.Listen {
		return fail(fmt.Errorf("admin.listen: changed from %q to %q; the admin address changes on restart only",
			d.cfg.Admin.Listen, cfg.Admin.Listen))
	}
	if err := d.checkClusterReload(cfg); err != nil {
		return fail(err)
	}
	if err := d.srv.Reload(d.proxyOptions(cfg), cfg.Shutdown.Drain); err != nil {
		return fail(err)
	}
	d.cluster.sync(cfg)
	changes := config.Diff(d.cfg, cfg)
	if cfg.Log.Format != d.cfg.Log.Format {
		d.log.Warn("log.format changes on restart only", slog.String("running", d.cfg.Log.Format))
	}
	d.level.Set(parseLevel(cfg.Log.Level))
	if cfg.Cores != d.cfg.Cores {
		d.cores.setMode(cfg.Cores, "reload")
	}
	if d.admin != nil {
		d.admin.SetToken(cfg.Admin.Token)
	}
	d.cfg = cfg
	d.reloads.WithLabelValues("ok").Inc()
	d.reloadOK.Set(1)
	d.reloadSuccess.SetToCurrentTime()
	d.log.Info("reloaded", slog.String("config", d.path), slog.Int("changes", len(changes)),
		slog.String("diff", strings.Join(changes, "; ")))
	return nil
}

// watchdog pings systemd at half the WatchdogSec interval while the proxy
// answers (Stats takes the server's lock, so a wedged server stops the pings).
func (d *sluiced) watchdog() {
	every, err := daemon.SdWatchdogEnabled(false)
	if err != nil || every <= 0 {
		return
	}
	t := time.NewTicker(every / 2)
	defer t.Stop()
	for range t.C {
		if d.stopping.Load() {
			return
		}
		_ = d.srv.Stats()
		d.notify(daemon.SdNotifyWatchdog)
	}
}

// serve runs until a stop signal, reloading on SIGHUP, then drains. A
// second stop signal during the drain closes everything at once.
func (d *sluiced) serve(sigs <-chan os.Signal) {
	for {
		sig := <-sigs
		if sig == syscall.SIGHUP {
			d.log.Info("sighup: reloading", slog.String("config", d.path))
			_ = d.reload(context.Background()) // logged and counted inside
			continue
		}
		d.mu.Lock()
		drain := d.cfg.Shutdown.Drain
		d.mu.Unlock()
		d.log.Info("shutting down", slog.String("signal", sig.String()), slog.Duration("drain", drain),
			slog.Int("conns", d.srv.ActiveConns()))
		d.stopping.Store(true)
		d.notify(daemon.SdNotifyStopping + "\nSTATUS=draining")
		d.drain(drain, sigs)
		return
	}
}

func (d *sluiced) drain(drain time.Duration, sigs <-chan os.Signal) {
	start := time.Now()
	dctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	go func() {
		for sig := range sigs {
			if sig != syscall.SIGHUP {
				d.log.Warn("second stop signal: closing every connection now", slog.String("signal", sig.String()))
				cancel()
				return
			}
		}
	}()
	left := d.srv.ActiveConns()
	if err := d.srv.Shutdown(dctx); err != nil {
		d.log.Warn("drain timed out: closed connections still open",
			slog.Duration("dur", time.Since(start)), slog.Int("conns", left))
	}
	if d.adminSrv != nil {
		actx, acancel := context.WithTimeout(context.Background(), time.Second)
		_ = d.adminSrv.Shutdown(actx)
		acancel()
	}
	d.cluster.close() // gives the leases back once no connection uses them
	d.log.Info("stopped", slog.Duration("dur", time.Since(start)))
}

// runServer serves the config at path until a stop signal.
func runServer(ctx context.Context, path string, stderr io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	// Catch signals before binding, so none is lost in between.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	d, err := startDaemon(ctx, path, stderr)
	if err != nil {
		return err
	}
	d.serve(sigs)
	d.stopCores()
	d.cores.restore()
	return nil
}

// proxyOptions turns the config into the proxy's listeners, links,
// limits and bans.
func (d *sluiced) proxyOptions(cfg *config.Config) proxy.Options {
	limits, bans := admissionRules(cfg)
	opts := proxy.Options{Listeners: d.listenerConfigs(cfg), Links: linkConfigs(cfg), Limits: limits, Bans: bans, Upstreams: upstreamPools(cfg)}
	d.cluster.wire(cfg, &opts)
	return opts
}

// listenerConfigs turns the config's listeners into the proxy's, handing
// over the socket systemd passed for a listener, if any.
func (d *sluiced) listenerConfigs(cfg *config.Config) []proxy.ListenerConfig {
	out := make([]proxy.ListenerConfig, 0, len(cfg.Listeners))
	for _, l := range cfg.Listeners {
		out = append(out, proxy.ListenerConfig{
			Name:           l.Name,
			Addr:           l.Listen,
			Upstream:       l.Upstream,
			ConnectTimeout: l.Timeouts.Connect,
			IdleTimeout:    l.Timeouts.Idle,
			Chunk:          int(l.Chunk),
			Limits: proxy.ConnLimits{
				Up:           shaper.Limit{Rate: int64(l.Conn.Up.Rate), Burst: int64(l.Conn.Up.Burst)},
				Down:         shaper.Limit{Rate: int64(l.Conn.Down.Rate), Burst: int64(l.Conn.Down.Burst)},
				KernelPacing: l.Conn.Down.KernelPacing,
			},
			Links:     l.Links,
			MP4:       mp4Config(l.MP4),
			Admission: admission(l),
			Listener:  d.activated[l.Name],
		})
	}
	return out
}

// mp4Config turns a listener's mp4 block into the proxy's.
func mp4Config(m config.MP4) proxy.MP4Config {
	mode := map[string]mp4probe.Mode{"auto": mp4probe.Auto, "http": mp4probe.HTTP, "raw": mp4probe.Raw}[m.Mode]
	return proxy.MP4Config{
		Enabled: m.Enabled,
		Mode:    mode,
		Pace: mp4probe.Pace{
			Factor: m.Factor, Burst: m.Burst,
			Floor: int64(m.Floor), Ceil: int64(m.Ceil), Default: int64(m.DefaultRate),
		},
		CacheEntries:   m.CacheEntries,
		MetadataBudget: int64(m.MetadataBudget),
	}
}

// linkConfigs turns the config's links into the proxy's.
func linkConfigs(cfg *config.Config) []proxy.LinkConfig {
	out := make([]proxy.LinkConfig, 0, len(cfg.Links))
	for _, l := range cfg.Links {
		k := l.Keys
		share := func(rate, ceil config.Rate, weight int) shaper.KeyLimit {
			return shaper.KeyLimit{Rate: int64(rate), Ceil: int64(ceil), Weight: weight}
		}
		var overrides map[string]shaper.KeyLimit
		if len(k.Overrides) > 0 {
			overrides = map[string]shaper.KeyLimit{}
			for _, o := range k.Overrides {
				overrides[o.Key] = share(o.Rate, o.Ceil, o.Weight)
			}
		}
		dir := func(d config.LinkDir) shaper.LinkLimit {
			if d.Rate == 0 {
				return shaper.LinkLimit{}
			}
			return shaper.LinkLimit{
				Limit:     shaper.Limit{Rate: int64(d.Rate), Burst: int64(d.Burst)},
				Key:       share(k.Rate, k.Ceil, k.Weight),
				Overrides: overrides,
			}
		}
		by, err := proxy.ParseKeyBy(k.By)
		if err != nil {
			panic(fmt.Sprintf("links.%s.keys.by: %v", l.Name, err)) // config.Load allows only the forms ParseKeyBy reads
		}
		out = append(out, proxy.LinkConfig{Name: l.Name, Up: dir(l.Up), Down: dir(l.Down),
			KeyBy: by, Prefix: k.Prefix, Prefix6: k.Prefix6})
	}
	return out
}

// activatedSockets takes the listening sockets systemd passed (LISTEN_FDS)
// and matches each to a listener: by its FileDescriptorName= first, else
// by its address. A socket that matches no listener is an error: a
// .socket unit and a config that disagree should not start half-served.
func activatedSockets(cfg *config.Config, log *slog.Logger) (map[string]*net.TCPListener, error) {
	files := activation.Files(true)
	if len(files) == 0 {
		return nil, nil
	}
	out := map[string]*net.TCPListener{}
	var errs []error
	for _, f := range files {
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("socket activation: fd %s: %w", f.Name(), err))
			continue
		}
		tl, ok := ln.(*net.TCPListener)
		if !ok {
			ln.Close()
			errs = append(errs, fmt.Errorf("socket activation: fd %s is not a TCP listening socket", f.Name()))
			continue
		}
		name := matchListener(cfg, f.Name(), tl.Addr())
		if name == "" || out[name] != nil {
			tl.Close()
			errs = append(errs, fmt.Errorf("socket activation: socket %s (%s) matches no listener by name or address",
				f.Name(), tl.Addr()))
			continue
		}
		out[name] = tl
		log.Info("socket activation", slog.String("listener", name), slog.String("addr", tl.Addr().String()))
	}
	if len(errs) > 0 {
		for _, l := range out {
			l.Close()
		}
		return nil, configError{errors.Join(errs...)}
	}
	return out, nil
}

func matchListener(cfg *config.Config, fdName string, addr net.Addr) string {
	for _, l := range cfg.Listeners {
		if l.Name == fdName {
			return l.Name
		}
	}
	for _, l := range cfg.Listeners {
		if want, err := net.ResolveTCPAddr("tcp", l.Listen); err == nil && sameAddr(want, addr) {
			return l.Name
		}
	}
	return ""
}

func sameAddr(want *net.TCPAddr, got net.Addr) bool {
	g, ok := got.(*net.TCPAddr)
	if !ok || want.Port != g.Port {
		return false
	}
	if want.IP == nil || want.IP.IsUnspecified() {
		return g.IP.IsUnspecified()
	}
	return want.IP.Equal(g.IP)
}

func parseLevel(s string) slog.Level {
	var level slog.Level
	if err := level.UnmarshalText([]byte(s)); err != nil {
		return slog.LevelInfo
	}
	return level
}
