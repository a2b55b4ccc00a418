// Command sluice is a TCP bandwidth-shaping proxy.
//
//	sluice run --config FILE     serve the listeners of FILE until SIGTERM/SIGINT
//	sluice check --config FILE   validate FILE and print the effective config
//	sluice reload                ask a running sluice to re-read its config
//	sluice top                   live view of listeners and connections
//	sluice demo                  show shaping live, with nothing else needed
//	sluice version               print version and build information
package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/sluiceproxy/sluice/config"
	"github.com/sluiceproxy/sluice/proxy"
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
			// What the proxy checks too (limits' and links' numbers),
			// without opening anything.
			if _, err := proxy.New((&sluiced{}).proxyOptions(cfg)); err != nil {
				return configError{fmt.Errorf("config %s is invalid:\n%w", checkConfig, err)}
			}
			if err := checkCluster(cfg); err != nil { // without connecting to Redis
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
	root.AddCommand(run, check, ver, newReloadCmd(stdout), newTopCmd(stdout), newDemoCmd(stdout))
	return root
}

func versionString() string {
	s := "sluice " + version + " " + goVersion()
	if r := revision(); r != "" {
		s += " " + r
	}
	return s
}

func goVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.GoVersion
	}
	return ""
}

func revision() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, kv := range bi.Settings {
			if kv.Key == "vcs.revision" {
				return kv.Value
			}
		}
	}
	return ""
}

func newLogger(format string, level slog.Leveler, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
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
