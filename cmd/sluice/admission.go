package main

import (
	"fmt"

	"github.com/sluiceproxy/sluice/config"
	"github.com/sluiceproxy/sluice/proxy"
	"github.com/sluiceproxy/sluice/proxy/admit"
)

// admissionRules turns the config's limits and bans into admission rules.
func admissionRules(cfg *config.Config) ([]admit.Limit, []admit.Ban) {
	limits := make([]admit.Limit, 0, len(cfg.Limits))
	for _, l := range cfg.Limits {
		if l.Queue.Size == 0 {
			l.Queue.Timeout = 0 // no queue, no wait
		}
		limits = append(limits, admit.Limit{
			Name: l.Name, By: by("limits."+l.Name+".by", l.By), Prefix: l.Prefix, Prefix6: l.Prefix6, Table: l.Table,
			Conns: l.Conns, QueueSize: l.Queue.Size, QueueTimeout: l.Queue.Timeout,
			Rate: admit.Every{N: l.Rate.N, Per: l.Rate.Per}, Burst: l.Burst, Delay: l.Delay,
			Window: admit.Every{N: l.Window.Max, Per: l.Window.Per},
			Borrow: l.Borrow,
		})
	}
	bans := make([]admit.Ban, 0, len(cfg.Bans))
	for _, b := range cfg.Bans {
		ab := admit.Ban{
			Name: b.Name, By: by("bans."+b.Name+".by", b.By), Prefix: b.Prefix, Prefix6: b.Prefix6,
			Count:        admit.CountRefusals,
			RepeatFactor: b.Repeat.Factor, RepeatMax: b.Repeat.Max, Table: b.Table,
		}
		if b.Count == config.CountConnections {
			ab.Count = admit.CountConnections
		}
		for _, t := range b.Tiers {
			ab.Tiers = append(ab.Tiers, admit.Tier{Over: t.Over, Per: t.Per, Ban: t.Ban})
		}
		bans = append(bans, ab)
	}
	return limits, bans
}

// by reads a limit's or ban's key mode; config.Load allows only the forms
// admit.ParseBy reads.
func by(path, s string) admit.By {
	b, err := admit.ParseBy(s)
	if err != nil {
		panic(fmt.Sprintf("%s: %v", path, err))
	}
	return b
}

// admission turns a listener's admission keys into the proxy's.
func admission(l config.Listener) proxy.Admission {
	refuse, err := proxy.ParseRefuse(l.Refuse)
	if err != nil {
		panic(fmt.Sprintf("listener %q: %v", l.Name, err)) // config.Load allows only these forms
	}
	return proxy.Admission{
		Allow: l.Allow.Prefixes, Deny: l.Deny.Prefixes, Limits: l.Limits, Ban: l.Bans,
		Refuse: refuse, TarpitHold: l.Tarpit.Hold, TarpitMax: l.Tarpit.Max,
		Overflow: proxy.Overflow{Upstream: l.Overflow.Upstream, Respond: l.Overflow.Respond},
	}
}
