package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

func (f *adminFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&f.config, "config", "c", defaultConfigPath, "config file: where to find the admin API and its token")
	cmd.Flags().StringVar(&f.admin, "admin", "", "admin API address, e.g. 127.0.0.1:9901 (default: the config's admin.listen)")
	cmd.Flags().StringVar(&f.tokenFile, "token-file", "", "file holding the admin token (default: the config's admin.token_file or $SLUICE_ADMIN_TOKEN)")
}

func newReloadCmd(stdout io.Writer) *cobra.Command {
	var f adminFlags
	cmd := &cobra.Command{
		Use:   "reload",
		Short: "Ask a running sluice to re-read and apply its config (like SIGHUP, but reports the result)",
		Long: `Ask a running sluice to re-read and apply its config, through the admin API.
An invalid config is rejected with the reason, and the running config stays.
Needs the admin token; without one, send SIGHUP (systemctl reload sluice).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			if c.token == "" {
				return configError{errNoToken}
			}
			if err := c.do(cmd.Context(), "POST", "/v1/reload", nil, nil); err != nil {
				return err
			}
			fmt.Fprintln(stdout, "reloaded")
			return nil
		},
	}
	f.register(cmd)
	return cmd
}

func newTopCmd(stdout io.Writer) *cobra.Command {
	var f adminFlags
	var interval time.Duration
	var count, conns int
	cmd := &cobra.Command{
		Use:   "top",
		Short: "Live view of listeners and the busiest connections of a running sluice",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if interval < 100*time.Millisecond {
				return configError{fmt.Errorf("--interval: want at least 100ms, got %v", interval)}
			}
			c, err := f.client()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(ctxOrBackground(cmd.Context()), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runTop(ctx, c, stdout, interval, count, conns)
		},
	}
	f.register(cmd)
	cmd.Flags().DurationVarP(&interval, "interval", "i", time.Second, "refresh period")
	cmd.Flags().IntVarP(&count, "count", "n", 0, "frames to show, then exit (0: until interrupted)")
	cmd.Flags().IntVar(&conns, "conns", 20, "busiest connections to show")
	return cmd
}

func newDemoCmd(stdout io.Writer) *cobra.Command {
	var d time.Duration
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Show what sluice does: an origin, a shaping sluice and clients, live, on loopback",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if d < 4*time.Second {
				return configError{fmt.Errorf("--duration: want at least 4s, got %v", d)}
			}
			ctx, stop := signal.NotifyContext(ctxOrBackground(cmd.Context()), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runDemo(ctx, stdout, d)
		},
	}
	cmd.Flags().DurationVarP(&d, "duration", "d", 12*time.Second, "how long to run")
	cmd.AddCommand(newDemoFailoverCmd(stdout))
	return cmd
}

func ctxOrBackground(ctx context.Context) context.Context {
	if ctx == nil {
		return context.Background()
	}
	return ctx
}
