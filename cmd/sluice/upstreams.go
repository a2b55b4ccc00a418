package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sluiceproxy/sluice/config"
	"github.com/sluiceproxy/sluice/proxy/admin"
	"github.com/sluiceproxy/sluice/proxy/upstream"
)

// upstreamPools maps the config's pools to the proxy's. Config has
// validated every value; a mapping error is a bug, reported with the
// pool's path.
func upstreamPools(cfg *config.Config) []upstream.PoolConfig {
	out := make([]upstream.PoolConfig, 0, len(cfg.Upstreams))
	for _, u := range cfg.Upstreams {
		bal, err := upstream.ParseBalance(u.Balance)
		if err != nil {
			panic(fmt.Sprintf("upstreams.%s: %v", u.Name, err))
		}
		ct, err := upstream.ParseCheckType(u.Check.Type)
		if err != nil {
			panic(fmt.Sprintf("upstreams.%s: %v", u.Name, err))
		}
		p := upstream.PoolConfig{
			Name: u.Name, Balance: bal, Retry: u.Retry, HTTPRetryAfter: u.HTTPRetryAfter,
			RetryAfterDefault: u.RetryAfter, RetryAfterMax: u.RetryAfterMax,
			Check: upstream.Check{Type: ct, Interval: u.Check.Interval, Timeout: u.Check.Timeout,
				Rise: u.Check.Rise, Fall: u.Check.Fall, Send: u.Check.Send, Expect: u.Check.Expect},
			Passive: upstream.Passive{Failures: u.Passive.Failures, Eject: u.Passive.Eject, MaxEject: u.Passive.MaxEject},
		}
		for _, s := range u.Servers {
			p.Servers = append(p.Servers, upstream.ServerConfig{Address: s.Address, Weight: s.Weight, Backup: s.Backup,
				Quota: upstream.Quota{Conns: s.Quota.Conns, Bytes: int64(s.Quota.Bytes), Per: s.Quota.Per}})
		}
		out = append(out, p)
	}
	return out
}

// upstreams writes top's pools section: a line per server with its
// state, connections, failures and quota; nothing without pools.
func (v *topView) upstreams(ctx context.Context, b *strings.Builder, now time.Time) error {
	var pools []admin.PoolJSON
	if err := v.c.do(ctx, "GET", "/v1/upstreams", nil, &pools); err != nil {
		return err
	}
	if len(pools) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nUPSTREAM\tSERVER\tSTATE\tCONNS\tTOTAL\tFAILURES\tQUOTA\tUNTIL")
	for _, p := range pools {
		for _, s := range p.Servers {
			quota := "-"
			if q := s.Quota; q != nil {
				switch {
				case q.ConnsLimit > 0:
					quota = fmt.Sprintf("%d/%d conns", q.Conns, q.ConnsLimit)
				case q.BytesLimit > 0:
					quota = fmt.Sprintf("%s/%s", fmtBytes(q.Bytes), fmtBytes(q.BytesLimit))
				}
			}
			until := "-"
			for _, t := range []*time.Time{s.CoolingUntil, s.EjectedUntil} {
				if t != nil {
					until = t.Sub(now).Round(time.Second).String()
				}
			}
			state := s.State
			if s.Backup {
				state += " (backup)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", p.Name, s.Address, state, s.Active, s.Total, s.Failures, quota, until)
		}
		if p.NoServer > 0 || p.Retries > 0 {
			fmt.Fprintf(tw, "%s\t(pool)\t\t\t%d picks\t%d retries\t%d without a server\t\n", p.Name, p.Picks, p.Retries, p.NoServer)
		}
	}
	return tw.Flush()
}
