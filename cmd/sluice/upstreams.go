package main

import (
	"fmt"

	"github.com/sluiceproxy/sluice/config"
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
