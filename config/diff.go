package config

import (
	"fmt"
	"slices"
)

// Diff describes what changes from old to next, one line per change, for
// the log line of a reload: "listener web added", "listener web:
// conn.down.rate 10Mbit → 20Mbit", "log.level info → debug". It is empty
// when nothing changes.
func Diff(old, next *Config) []string {
	var out []string
	field := func(path, a, b string) {
		if a != b {
			out = append(out, fmt.Sprintf("%s %s → %s", path, a, b))
		}
	}
	field("log.level", old.Log.Level, next.Log.Level)
	field("log.format", old.Log.Format, next.Log.Format)
	field("admin.listen", old.Admin.Listen, next.Admin.Listen)
	field("admin.token_file", old.Admin.TokenFile, next.Admin.TokenFile)
	if old.Admin.Token != next.Admin.Token && old.Admin.TokenFile == next.Admin.TokenFile {
		out = append(out, "admin token changed")
	}
	field("shutdown.drain", old.Shutdown.Drain.String(), next.Shutdown.Drain.String())
	field("cores", old.Cores.String(), next.Cores.String())
	out = append(out, diffCluster(old.Cluster, next.Cluster)...)
	diffNamed(&out, "link", old.Links, next.Links, func(l Link) string { return l.Name }, func(o, n *Link) {
		p := "link " + n.Name + ": "
		field(p+"up.rate", o.Up.Rate.String(), n.Up.Rate.String())
		field(p+"up.burst", o.Up.Burst.String(), n.Up.Burst.String())
		field(p+"down.rate", o.Down.Rate.String(), n.Down.Rate.String())
		field(p+"down.burst", o.Down.Burst.String(), n.Down.Burst.String())
		field(p+"keys", fmt.Sprintf("%+v", o.Keys), fmt.Sprintf("%+v", n.Keys))
		field(p+"cluster", fmt.Sprint(o.Cluster), fmt.Sprint(n.Cluster))
	})
	diffNamed(&out, "limit", old.Limits, next.Limits, func(l Limit) string { return l.Name }, func(o, n *Limit) {
		field("limit "+n.Name, fmt.Sprintf("%+v", *o), fmt.Sprintf("%+v", *n))
	})
	diffNamed(&out, "ban policy", old.Bans, next.Bans, func(b Ban) string { return b.Name }, func(o, n *Ban) {
		field("ban policy "+n.Name, fmt.Sprintf("%+v", *o), fmt.Sprintf("%+v", *n))
	})
	diffNamed(&out, "upstream", old.Upstreams, next.Upstreams, func(u Upstream) string { return u.Name }, func(o, n *Upstream) {
		p := "upstream " + n.Name + ": "
		field(p+"balance", o.Balance, n.Balance)
		field(p+"servers", fmt.Sprintf("%+v", o.Servers), fmt.Sprintf("%+v", n.Servers))
		field(p+"check", fmt.Sprintf("%+v", o.Check), fmt.Sprintf("%+v", n.Check))
		field(p+"passive", fmt.Sprintf("%+v", o.Passive), fmt.Sprintf("%+v", n.Passive))
		field(p+"retry", fmt.Sprint(o.Retry), fmt.Sprint(n.Retry))
		field(p+"http_retry_after", fmt.Sprint(o.HTTPRetryAfter), fmt.Sprint(n.HTTPRetryAfter))
		field(p+"retry_after", o.RetryAfter.String(), n.RetryAfter.String())
		field(p+"retry_after_max", o.RetryAfterMax.String(), n.RetryAfterMax.String())
	})
	diffNamed(&out, "listener", old.Listeners, next.Listeners, func(l Listener) string { return l.Name }, func(o, n *Listener) {
		p := "listener " + n.Name + ": "
		field(p+"listen", o.Listen, n.Listen)
		field(p+"upstream", o.Upstream, n.Upstream)
		field(p+"links", fmt.Sprint(o.Links), fmt.Sprint(n.Links))
		field(p+"timeouts.connect", o.Timeouts.Connect.String(), n.Timeouts.Connect.String())
		field(p+"timeouts.idle", o.Timeouts.Idle.String(), n.Timeouts.Idle.String())
		field(p+"chunk", o.Chunk.String(), n.Chunk.String())
		field(p+"mp4", fmt.Sprintf("%+v", o.MP4), fmt.Sprintf("%+v", n.MP4))
		field(p+"allow", fmt.Sprint(o.Allow.Prefixes), fmt.Sprint(n.Allow.Prefixes))
		field(p+"deny", fmt.Sprintf("%d entries %v", len(o.Deny.Prefixes), o.Deny.Entries), fmt.Sprintf("%d entries %v", len(n.Deny.Prefixes), n.Deny.Entries))
		field(p+"limits", fmt.Sprint(o.Limits), fmt.Sprint(n.Limits))
		field(p+"bans", o.Bans, n.Bans)
		field(p+"refuse", o.Refuse, n.Refuse)
		field(p+"tarpit", fmt.Sprintf("%+v", o.Tarpit), fmt.Sprintf("%+v", n.Tarpit))
		field(p+"overflow", o.Overflow.Upstream+o.Overflow.RespondFile, n.Overflow.Upstream+n.Overflow.RespondFile)
		if o.Overflow.RespondFile != "" && o.Overflow.RespondFile == n.Overflow.RespondFile && string(o.Overflow.Respond) != string(n.Overflow.Respond) {
			out = append(out, p+"overflow.respond_file content changed")
		}
		for _, d := range []struct {
			name string
			a, b DirLimit
		}{{"up", o.Conn.Up, n.Conn.Up}, {"down", o.Conn.Down, n.Conn.Down}} {
			field(p+"conn."+d.name+".rate", d.a.Rate.String(), d.b.Rate.String())
			field(p+"conn."+d.name+".burst", d.a.Burst.String(), d.b.Burst.String())
			if d.name == "down" {
				field(p+"conn.down.kernel_pacing", fmt.Sprint(d.a.KernelPacing), fmt.Sprint(d.b.KernelPacing))
			}
		}
	})
	return out
}

// diffNamed adds to out a line for each element of old that next lacks
// ("KIND NAME removed") and each new one ("KIND NAME added"), and calls
// changed for each kept, to describe its changes.
func diffNamed[T any](out *[]string, kind string, old, next []T, nameOf func(T) string, changed func(o, n *T)) {
	for _, o := range old {
		if named(next, nameOf(o), nameOf) == nil {
			*out = append(*out, fmt.Sprintf("%s %s removed", kind, nameOf(o)))
		}
	}
	for i := range next {
		n := &next[i]
		if o := named(old, nameOf(*n), nameOf); o == nil {
			*out = append(*out, fmt.Sprintf("%s %s added", kind, nameOf(*n)))
		} else {
			changed(o, n)
		}
	}
}

// named returns the element of ls called name, or nil.
func named[T any](ls []T, name string, nameOf func(T) string) *T {
	i := slices.IndexFunc(ls, func(x T) bool { return nameOf(x) == name })
	if i < 0 {
		return nil
	}
	return &ls[i]
}
