package admin

import (
	"slices"
	"time"

	"github.com/sluiceproxy/sluice/proxy"
)

// The JSON the API reads and writes. Rates are bytes per second and sizes
// bytes, as numbers.

// LimitJSON is one direction's limit as the admin API shows it: rate in
// bytes per second (0 = none), burst in bytes.
type LimitJSON struct {
	Rate  int64 `json:"rate"`
	Burst int64 `json:"burst,omitempty"`
}

// LimitsJSON are per-connection limits as the admin API shows them.
type LimitsJSON struct {
	Up           LimitJSON `json:"up"`
	Down         LimitJSON `json:"down"`
	KernelPacing bool      `json:"kernel_pacing"`
}

func limitsJSON(l proxy.ConnLimits) LimitsJSON {
	return LimitsJSON{Up: LimitJSON{l.Up.Rate, l.Up.Burst}, Down: LimitJSON{l.Down.Rate, l.Down.Burst}, KernelPacing: l.KernelPacing}
}

// ListenerJSON is a listener in GET /v1/listeners.
type ListenerJSON struct {
	Name     string            `json:"name"`
	Addr     string            `json:"addr,omitempty"`
	Upstream string            `json:"upstream,omitempty"`
	Removed  bool              `json:"removed,omitempty"`
	Limits   LimitsJSON        `json:"limits"`
	Active   int               `json:"active"`
	Accepted uint64            `json:"accepted"`
	Ended    map[string]uint64 `json:"ended"`
	// Bytes and waited seconds per direction.
	BytesUp       int64   `json:"bytes_up"`
	BytesDown     int64   `json:"bytes_down"`
	WaitedUpSec   float64 `json:"waited_up_seconds"`
	WaitedDownSec float64 `json:"waited_down_seconds"`
	WaitingUp     int     `json:"waiting_up"`
	WaitingDown   int     `json:"waiting_down"`
	// MP4 is present for a listener that paces MP4 or once did.
	MP4 *MP4JSON `json:"mp4,omitempty"`
	// Admission is present for a listener with an admission policy.
	Admission *AdmissionJSON `json:"admission,omitempty"`
}

// MP4JSON are a listener's MP4 pacing counters.
type MP4JSON struct {
	Enabled    bool  `json:"enabled"`
	Videos     int64 `json:"videos"`
	Plans      int64 `json:"plans"`
	BurstBytes int64 `json:"burst_bytes"`
	// MeanRate is the mean of the planned videos' rates, bytes/s.
	MeanRate   int64            `json:"mean_video_rate"`
	Fallbacks  map[string]int64 `json:"fallbacks"`
	Cached     int              `json:"cached_movies"`
	WaitedSec  float64          `json:"pace_wait_seconds"`
	PacedBytes int64            `json:"paced_bytes"`
}

func meanRate(m proxy.MP4Stats) int64 {
	if m.Plans == 0 {
		return 0
	}
	return m.PlannedRate / m.Plans
}

func listenerJSON(s proxy.ListenerStats) ListenerJSON {
	up, down := proxy.Up, proxy.Down
	j := ListenerJSON{
		Name: s.Name, Addr: s.Addr, Upstream: s.Upstream, Removed: s.Addr == "",
		Limits: limitsJSON(s.Limits), Active: s.Active, Accepted: s.Accepted, Ended: s.Ended,
		BytesUp: s.Bytes[up], BytesDown: s.Bytes[down],
		WaitedUpSec: s.Waited[up].Seconds(), WaitedDownSec: s.Waited[down].Seconds(),
		WaitingUp: s.Waiting[up], WaitingDown: s.Waiting[down],
	}
	if m := s.MP4; s.MP4Enabled || m.Videos > 0 {
		j.MP4 = &MP4JSON{
			Enabled: s.MP4Enabled, Videos: m.Videos, Plans: m.Plans, BurstBytes: m.BurstBytes, MeanRate: meanRate(m),
			Fallbacks: m.Fallbacks, Cached: m.Cached, WaitedSec: m.Waited.Seconds(), PacedBytes: m.PacedBytes,
		}
	}
	j.Admission = admissionJSON(s.Admission)
	return j
}

// ConnJSON is a connection in GET /v1/conns.
type ConnJSON struct {
	ID          uint64     `json:"id"`
	Listener    string     `json:"listener"`
	Client      string     `json:"client"`
	Upstream    string     `json:"upstream"`
	Start       time.Time  `json:"start"`
	BytesUp     int64      `json:"bytes_up"`
	BytesDown   int64      `json:"bytes_down"`
	Limits      LimitsJSON `json:"limits"`
	WaitingUp   bool       `json:"waiting_up"`
	WaitingDown bool       `json:"waiting_down"`
}

func connJSON(c proxy.ConnInfo) ConnJSON {
	return ConnJSON{ID: c.ID, Listener: c.Listener, Client: c.Client, Upstream: c.Upstream, Start: c.Start,
		BytesUp: c.Bytes[proxy.Up], BytesDown: c.Bytes[proxy.Down], Limits: limitsJSON(c.Limits),
		WaitingUp: c.Waiting[proxy.Up], WaitingDown: c.Waiting[proxy.Down]}
}

// LinkDirJSON is one direction of a link in GET /v1/links.
type LinkDirJSON struct {
	Rate     int64         `json:"rate"`  // bytes per second
	Burst    int64         `json:"burst"` // bytes
	Key      KeyLimitJSON  `json:"key"`   // each key's default share
	Bytes    int64         `json:"bytes"`
	Borrowed int64         `json:"borrowed"` // bytes keys took beyond their assured rate
	Grants   int64         `json:"grants"`   // grants made: bytes ÷ grants is the average grant
	Tokens   int64         `json:"tokens"`   // the bucket's fill now, bytes
	Waiting  int           `json:"waiting"`  // connections waiting for a grant now
	Keys     int           `json:"keys"`     // keys with connections
	Members  int           `json:"conns"`
	KeyStats []KeyStatJSON `json:"key_stats,omitempty"`
}

// KeyLimitJSON is a key's share: rates in bytes per second (0: none, or
// the link's rate for ceil).
type KeyLimitJSON struct {
	Rate   int64 `json:"rate"`
	Ceil   int64 `json:"ceil"`
	Weight int   `json:"weight"`
}

// KeyStatJSON is one key of a link direction.
type KeyStatJSON struct {
	Key      string       `json:"key"`
	Limit    KeyLimitJSON `json:"limit"`
	Conns    int          `json:"conns"`
	Waiting  int          `json:"waiting"`
	Bytes    int64        `json:"bytes"`
	Borrowed int64        `json:"borrowed"`
}

// LinkJSON is a link in GET /v1/links.
type LinkJSON struct {
	Name  string       `json:"name"`
	KeyBy string       `json:"key_by"`
	Up    *LinkDirJSON `json:"up,omitempty"`
	Down  *LinkDirJSON `json:"down,omitempty"`
}

func linkJSON(ls proxy.LinkStats) LinkJSON {
	out := LinkJSON{Name: ls.Name, KeyBy: ls.KeyBy.String()}
	for d, ds := range ls.Dirs {
		if ds == nil {
			continue
		}
		j := &LinkDirJSON{Rate: ds.Limit.Rate, Burst: ds.Limit.Burst,
			Key:   KeyLimitJSON{ds.Limit.Key.Rate, ds.Limit.Key.Ceil, ds.Limit.Key.Weight},
			Bytes: ds.Bytes, Borrowed: ds.Borrowed, Grants: ds.Grants, Tokens: ds.Tokens, Waiting: ds.Waiting, Keys: ds.LinkStats.Keys, Members: ds.Members}
		for _, k := range ds.Keys {
			j.KeyStats = append(j.KeyStats, KeyStatJSON{Key: k.Key, Limit: KeyLimitJSON{k.Limit.Rate, k.Limit.Ceil, k.Limit.Weight},
				Conns: k.Members, Waiting: k.Waiting, Bytes: k.Bytes, Borrowed: k.Borrowed})
		}
		slices.SortFunc(j.KeyStats, func(a, b KeyStatJSON) int { return cmpDesc(a.Bytes, b.Bytes) })
		if proxy.Dir(d) == proxy.Up {
			out.Up = j
		} else {
			out.Down = j
		}
	}
	return out
}
