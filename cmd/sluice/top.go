package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sluiceproxy/sluice/proxy/admin"
)

// topView polls the admin API and renders listeners and the busiest
// connections, with rates measured between two polls.
type topView struct {
	c     *adminClient
	conns int // how many connections to show

	last      time.Time
	lastLink  map[string]int64
	lastLis   map[string][2]int64
	lastConn  map[uint64][2]int64
	lastMP4   map[string]int64 // paced bytes per listener
	noCluster bool             // the instance is in no cluster: /v1/cluster answered 404
}

// frame polls once and renders a frame. Rates need two polls: the first
// frame shows them as "-".
func (v *topView) frame(ctx context.Context) (string, error) {
	var ls []admin.ListenerJSON
	if err := v.c.do(ctx, "GET", "/v1/listeners", nil, &ls); err != nil {
		return "", err
	}
	var cs struct {
		Total int              `json:"total"`
		Conns []admin.ConnJSON `json:"conns"`
	}
	if err := v.c.do(ctx, "GET", "/v1/conns?limit=0", nil, &cs); err != nil {
		return "", err
	}
	var links []admin.LinkJSON
	if err := v.c.do(ctx, "GET", "/v1/links", nil, &links); err != nil {
		return "", err
	}
	now := time.Now()
	dt := now.Sub(v.last).Seconds()
	first := v.last.IsZero()
	rate := func(prev map[string][2]int64, key string, cur [2]int64, d int) string {
		p, ok := prev[key]
		if first || !ok || dt <= 0 {
			return "-"
		}
		return fmtBits(float64(cur[d]-p[d]) / dt)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "sluice top  %s  %s  %d connections\n\n", v.c.base, now.Format("15:04:05"), cs.Total)
	lk := map[string]int64{}
	if len(links) > 0 {
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "LINK\tDIR\tRATE\tLIMIT\tBORROWED\tKEYS\tCONNS\tWAITING")
		for _, l := range links {
			for _, d := range []struct {
				name string
				j    *admin.LinkDirJSON
			}{{"down", l.Down}, {"up", l.Up}} {
				if d.j == nil {
					continue
				}
				id := l.Name + "/" + d.name
				lk[id] = d.j.Bytes
				r := "-"
				if p, ok := v.lastLink[id]; ok && !first && dt > 0 {
					r = fmtBits(float64(d.j.Bytes-p) / dt)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d by %s\t%d\t%d\n", l.Name, d.name, r, fmtBits(float64(d.j.Rate)),
					fmtBytes(d.j.Borrowed), d.j.Keys, l.KeyBy, d.j.Members, d.j.Waiting)
			}
		}
		_ = tw.Flush()
		fmt.Fprintln(&b)
	}
	if err := v.clusterSection(ctx, &b); err != nil {
		return "", err
	}
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "LISTENER\tADDR\tCONNS\tDOWN\tLIMIT/CONN\tUP\tLIMIT/CONN\tWAITING ↓/↑\tENDED")
	lis := map[string][2]int64{}
	for _, l := range ls {
		cur := [2]int64{l.BytesUp, l.BytesDown}
		lis[l.Name] = cur
		addr := l.Addr
		if l.Removed {
			addr = "(removed)"
		}
		var ended uint64
		for _, n := range l.Ended {
			ended += n
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%d/%d\t%d\n", l.Name, addr, l.Active,
			rate(v.lastLis, l.Name, cur, 1), fmtLimit(l.Limits.Down), rate(v.lastLis, l.Name, cur, 0), fmtLimit(l.Limits.Up),
			l.WaitingDown, l.WaitingUp, ended)
	}
	_ = tw.Flush()

	// MP4 pacing, for listeners that do it.
	mp4 := map[string]int64{}
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, l := range ls {
		m := l.MP4
		if m == nil {
			continue
		}
		if len(mp4) == 0 {
			fmt.Fprintln(tw, "\nMP4\tVIDEOS\tPLANS\tMEAN VIDEO\tPACED NOW\tHELD BACK\tFALLBACKS\tCACHED")
		}
		mp4[l.Name] = m.PacedBytes
		paced := "-"
		if p, ok := v.lastMP4[l.Name]; ok && !first && dt > 0 {
			paced = fmtBits(float64(m.PacedBytes-p) / dt)
		}
		var fb []string
		for _, r := range slices.Sorted(maps.Keys(m.Fallbacks)) {
			if m.Fallbacks[r] > 0 {
				fb = append(fb, fmt.Sprintf("%s %d", r, m.Fallbacks[r]))
			}
		}
		if len(fb) == 0 {
			fb = []string{"0"}
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%.1fs\t%s\t%d\n", l.Name, m.Videos, m.Plans, fmtBits(float64(m.MeanRate)),
			paced, m.WaitedSec, strings.Join(fb, ", "), m.Cached)
	}
	_ = tw.Flush()

	// Admission, for listeners with a policy: refusals by reason, and the
	// bans in force.
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	header := false
	for _, l := range ls {
		a := l.Admission
		if a == nil {
			continue
		}
		if !header {
			fmt.Fprintln(tw, "\nADMISSION\tADMITTED\tDELAYED\tQUEUED\tREFUSED\tBY REASON\tTARPIT\tOVERFLOWED")
			header = true
		}
		sum := func(verdict string) uint64 {
			var n uint64
			for _, x := range a.Decisions[verdict] {
				n += x
			}
			return n
		}
		var why []string
		for _, r := range slices.Sorted(maps.Keys(a.Refused)) {
			why = append(why, fmt.Sprintf("%s %d", r, a.Refused[r]))
		}
		if a.QueueTimeouts > 0 {
			why = append(why, fmt.Sprintf("queue timeout %d", a.QueueTimeouts))
		}
		if len(why) == 0 {
			why = []string{"-"}
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t%d\t%d\n", l.Name, sum("admit"), sum("delay"), sum("queue"), sum("refuse"),
			strings.Join(why, ", "), a.Tarpitted, a.Overflowed)
	}
	_ = tw.Flush()
	if header {
		var bans struct {
			Total int             `json:"total"`
			Bans  []admin.BanJSON `json:"bans"`
		}
		if err := v.c.do(ctx, "GET", "/v1/bans?limit=5", nil, &bans); err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "bans in force: %d", bans.Total)
		for i, bn := range bans.Bans {
			sep := ", "
			if i == 0 {
				sep = " ("
			}
			fmt.Fprintf(&b, "%s%s %s for %s", sep, bn.Ban, bn.Key, bn.Until.Sub(now).Round(time.Second))
		}
		if len(bans.Bans) > 0 {
			b.WriteString(", lifting soonest first)")
		}
		fmt.Fprintln(&b)
	}
	if err := v.upstreams(ctx, &b, now); err != nil {
		return "", err
	}

	// The busiest connections by current down rate, then up rate.
	type row struct {
		c      admin.ConnJSON
		dn, up float64
	}
	rows := make([]row, 0, len(cs.Conns))
	conns := map[uint64][2]int64{}
	for _, c := range cs.Conns {
		cur := [2]int64{c.BytesUp, c.BytesDown}
		conns[c.ID] = cur
		r := row{c: c}
		if p, ok := v.lastConn[c.ID]; ok && dt > 0 {
			r.up, r.dn = float64(cur[0]-p[0])/dt, float64(cur[1]-p[1])/dt
		}
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(a, b row) int {
		if a.dn+a.up != b.dn+b.up {
			if a.dn+a.up > b.dn+b.up {
				return -1
			}
			return 1
		}
		return int(b.c.ID) - int(a.c.ID)
	})
	if len(rows) > v.conns {
		rows = rows[:v.conns]
	}
	fmt.Fprintf(&b, "\n")
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CONN\tLISTENER\tCLIENT\tDOWN\tLIMIT\tUP\tLIMIT\tAGE\tBYTES ↓/↑")
	for _, r := range rows {
		c := r.c
		dn, up := "-", "-"
		if _, ok := v.lastConn[c.ID]; ok {
			dn, up = fmtBits(r.dn), fmtBits(r.up)
		}
		wait := func(w bool) string {
			if w {
				return "*"
			}
			return ""
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s%s\t%s\t%s%s\t%s\t%s\t%s/%s\n", c.ID, c.Listener, c.Client,
			dn, wait(c.WaitingDown), fmtLimit(c.Limits.Down), up, wait(c.WaitingUp), fmtLimit(c.Limits.Up),
			now.Sub(c.Start).Truncate(time.Second), fmtBytes(c.BytesDown), fmtBytes(c.BytesUp))
	}
	_ = tw.Flush()
	fmt.Fprintf(&b, "\n* waiting for tokens: held at its own limit or a link's. Rates in bits per second.\n")
	v.last, v.lastLis, v.lastConn, v.lastLink, v.lastMP4 = now, lis, conns, lk, mp4
	return b.String(), nil
}

// runTop refreshes the view every interval until ctx ends or count frames
// are shown (0: no end). On a terminal each frame replaces the last.
func runTop(ctx context.Context, c *adminClient, w io.Writer, interval time.Duration, count, conns int) error {
	v := &topView{c: c, conns: conns}
	tty := isTerminal(w)
	if _, err := v.frame(ctx); err != nil { // the baseline for rates
		return err
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for n := 0; count == 0 || n < count; n++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		f, err := v.frame(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if tty {
			fmt.Fprint(w, "\x1b[H\x1b[2J"+f)
		} else {
			fmt.Fprintln(w, f)
		}
	}
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// fmtBits formats bytes per second as bits per second.
func fmtBits(bytesPerSec float64) string {
	bits := bytesPerSec * 8
	switch {
	case bits >= 1e9:
		return strconv.FormatFloat(bits/1e9, 'f', 2, 64) + " Gbit/s"
	case bits >= 1e6:
		return strconv.FormatFloat(bits/1e6, 'f', 2, 64) + " Mbit/s"
	case bits >= 1e3:
		return strconv.FormatFloat(bits/1e3, 'f', 1, 64) + " Kbit/s"
	}
	return strconv.FormatFloat(bits, 'f', 0, 64) + " bit/s"
}

func fmtLimit(l admin.LimitJSON) string {
	if l.Rate == 0 {
		return "none"
	}
	return fmtBits(float64(l.Rate))
}

func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return strconv.FormatFloat(float64(n)/(1<<30), 'f', 1, 64) + "GiB"
	case n >= 1<<20:
		return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + "MiB"
	case n >= 1<<10:
		return strconv.FormatFloat(float64(n)/(1<<10), 'f', 1, 64) + "KiB"
	}
	return strconv.FormatInt(n, 10) + "B"
}
