// Command sluice is a TCP bandwidth-shaping proxy.
//
//	sluice run --config FILE     serve the listeners of FILE until SIGTERM/SIGINT
//	sluice check --config FILE   validate FILE and print the effective config
//	sluice version               print version and build information
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluiceproxy/sluice/config"
	"github.com/sluiceproxy/sluice/proxy"
	"github.com/sluiceproxy/sluice/shaper"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = "dev"

// Exit codes.
const (
	exitOK     = 0
	exitFail   = 1 // runtime failure: a listener could not bind, ...
	exitConfig = 2 // the command line or the config is wrong
)

// configError marks errors that exit with exitConfig.
type configError struct{ err error }

func (e configError) Error() string { return e.err.Error() }
func (e configError) Unwrap() error { return e.err }

func main() {
	os.Exit(execute(os.Args[1:], os.Stdout, os.Stderr))
}

func execute(args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "sluice: %v\n", err)
	var ce configError
	if errors.As(err, &ce) {
		return exitConfig
	}
	return exitFail
}

const defaultConfigPath = "/etc/sluice/sluice.yaml"

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "sluice",
		Short:         "sluice is a TCP proxy that shapes the bytes it forwards",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return configError{err} })

	var runConfig, checkConfig string
	run := &cobra.Command{
		Use:   "run",
		Short: "Serve the listeners of a config file until SIGTERM or SIGINT",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServer(cmd.Context(), runConfig, stderr)
		},
	}
	run.Flags().StringVarP(&runConfig, "config", "c", defaultConfigPath, "config file (YAML)")

	check := &cobra.Command{
		Use:   "check",
		Short: "Validate a config file and print the effective config, defaults filled in",
		Args:  cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			cfg, err := config.Load(checkConfig)
			if err != nil {
				return configError{fmt.Errorf("config %s is invalid:\n%w", checkConfig, err)}
			}
			out, err := cfg.YAML()
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "# config %s is valid; effective config:\n%s", checkConfig, out)
			return nil
		},
	}
	check.Flags().StringVarP(&checkConfig, "config", "c", defaultConfigPath, "config file (YAML)")

	ver := &cobra.Command{
		Use:   "version",
		Short: "Print version and build information",
		Args:  cobra.NoArgs,
		Run: func(_ *cobra.Command, _ []string) {
			fmt.Fprintln(stdout, versionString())
		},
	}
	root.AddCommand(run, check, ver)
	return root
}

func versionString() string {
	s := "sluice " + version
	if bi, ok := debug.ReadBuildInfo(); ok {
		s += " " + bi.GoVersion
		for _, kv := range bi.Settings {
			if kv.Key == "vcs.revision" {
				s += " " + kv.Value
			}
		}
	}
	return s
}

// runServer serves cfg until a stop signal, then drains. A second stop
// signal during the drain closes everything at once.
func runServer(ctx context.Context, path string, stderr io.Writer) error {
	cfg, err := config.Load(path)
	if err != nil {
		return configError{fmt.Errorf("config %s is invalid:\n%w", path, err)}
	}
	log := newLogger(cfg.Log, stderr)
	raiseFileLimit(log)

	srv, err := proxy.New(proxy.Options{Listeners: listenerConfigs(cfg), Logger: log})
	if err != nil {
		return configError{err}
	}
	if ctx == nil {
		ctx = context.Background()
	}
	// Catch signals before binding, so none is lost in between.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)

	if err := srv.Start(ctx); err != nil {
		return err
	}
	for _, l := range cfg.Listeners {
		log.Info("listening", slog.String("listener", l.Name), slog.String("addr", srv.Addr(l.Name).String()),
			slog.String("upstream", l.Upstream))
	}
	log.Info("started", slog.String("version", version), slog.Int("listeners", len(cfg.Listeners)))

	for {
		sig := <-sigs
		if sig == syscall.SIGHUP {
			log.Warn("sighup ignored: this version does not reload; restart to apply a new config")
			continue
		}
		log.Info("shutting down", slog.String("signal", sig.String()), slog.Duration("drain", cfg.Shutdown.Drain),
			slog.Int("conns", srv.ActiveConns()))
		break
	}

	start := time.Now()
	dctx, cancel := context.WithTimeout(context.Background(), cfg.Shutdown.Drain)
	defer cancel()
	go func() {
		for sig := range sigs {
			if sig != syscall.SIGHUP {
				log.Warn("second stop signal: closing every connection now", slog.String("signal", sig.String()))
				cancel()
				return
			}
		}
	}()
	left := srv.ActiveConns()
	if err := srv.Shutdown(dctx); err != nil {
		log.Warn("drain timed out: closed connections still open",
			slog.Duration("dur", time.Since(start)), slog.Int("conns", left))
	}
	log.Info("stopped", slog.Duration("dur", time.Since(start)))
	return nil
}

func listenerConfigs(cfg *config.Config) []proxy.ListenerConfig {
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
		})
	}
	return out
}

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.Level)); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// raiseFileLimit lifts the soft open-files limit to the hard one: each
// proxied connection holds two descriptors.
func raiseFileLimit(log *slog.Logger) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("read open files limit", slog.Any("err", err))
		return
	}
	if lim.Cur < lim.Max {
		raised := syscall.Rlimit{Cur: lim.Max, Max: lim.Max}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
			log.Warn("raise open files limit", slog.Any("err", err),
				slog.Uint64("soft", lim.Cur), slog.Uint64("hard", lim.Max))
		} else {
			lim = raised
		}
	}
	// Each proxied connection holds two descriptors; keep a few for
	// listeners, logs and the runtime.
	log.Info("open files limit", slog.Uint64("limit", lim.Cur),
		slog.Uint64("max_conns", max(lim.Cur, 64)/2-32))
}
