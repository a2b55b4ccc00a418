package proxy

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluiceproxy/sluice/mp4probe"
	"github.com/sluiceproxy/sluice/shaper"
)

// MP4Config paces MP4 video in the downstream bytes of a listener's
// connections (see [mp4probe.Plan]): the metadata and the first seconds of
// media at full speed, then each byte by the time the video needs it. The
// zero value paces nothing. A change applies to connections accepted after
// it; live ones keep the pace they started with.
type MP4Config struct {
	Enabled bool
	// Mode is what the upstream sends: HTTP/1.x responses, a raw file, or
	// either (Auto).
	Mode mp4probe.Mode
	// Pace sets factor, burst, floor, ceil and the default rate.
	Pace mp4probe.Pace
	// CacheEntries bounds the movies a listener keeps to pace later Range
	// requests for the same file; zero keeps none.
	CacheEntries int
	// MetadataBudget bounds the moov and moof bytes the listener's
	// connections buffer at once; zero means no bound beyond 16 MiB per
	// connection.
	MetadataBudget int64
}

func (m MP4Config) validate() error {
	switch {
	case !m.Enabled:
		return nil
	case m.Pace.Factor != 0 && m.Pace.Factor < 1:
		return fmt.Errorf("mp4 factor %g: want at least 1", m.Pace.Factor)
	case m.Pace.Burst < 0 || m.Pace.Floor < 0 || m.Pace.Ceil < 0 || m.Pace.Default < 0:
		return errors.New("mp4 burst, floor, ceil and default rate must not be negative")
	case m.Pace.Floor > 0 && m.Pace.Ceil > 0 && m.Pace.Floor > m.Pace.Ceil:
		return fmt.Errorf("mp4 floor %d B/s is above ceil %d B/s", m.Pace.Floor, m.Pace.Ceil)
	case m.CacheEntries < 0 || m.MetadataBudget < 0:
		return errors.New("mp4 cache entries and metadata budget must not be negative")
	}
	return nil
}

// mp4State is a listener name's MP4 counters and movie cache; like its
// other counters, it outlives reconfigurations that keep the name.
type mp4State struct {
	stats    mp4probe.Stats
	mu       sync.Mutex
	cache    *mp4probe.Cache // guarded by mu; nil when CacheEntries is 0
	cacheMax int             // guarded by mu
	budget   *mp4probe.Budget
	budgetN  int64        // guarded by mu
	waited   atomic.Int64 // nanoseconds ended connections waited for the pace
	paced    atomic.Int64 // bytes ended connections sent under a plan
}

// observer returns a new connection's Observer, or nil when cfg disables
// MP4 pacing.
func (m *mp4State) observer(cfg MP4Config) *mp4probe.Observer {
	if !cfg.Enabled {
		return nil
	}
	m.mu.Lock()
	if m.cacheMax != cfg.CacheEntries {
		m.cache, m.cacheMax = mp4probe.NewCache(cfg.CacheEntries), cfg.CacheEntries
	}
	if m.budgetN != cfg.MetadataBudget {
		m.budget, m.budgetN = nil, cfg.MetadataBudget
		if cfg.MetadataBudget > 0 {
			m.budget = mp4probe.NewBudget(cfg.MetadataBudget)
		}
	}
	cache, budget := m.cache, m.budget
	m.mu.Unlock()
	return mp4probe.NewObserver(mp4probe.Options{Mode: cfg.Mode, Pace: cfg.Pace, Cache: cache, Stats: &m.stats, Budget: budget})
}

func (m *mp4State) cached() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cache.Len()
}

// MP4Stats are a listener's MP4 counters, live connections included.
type MP4Stats struct {
	// Videos counts MP4 bodies seen; Plans those paced from their metadata.
	Videos, Plans int64
	// BurstBytes sums the plans' full-speed regions; PlannedRate their
	// videos' average rates (bytes/s), so PlannedRate/Plans is the mean.
	BurstBytes, PlannedRate int64
	// Fallbacks counts videos paced at the default rate (moov_unknown) or
	// forwarded at the normal limits only, by reason
	// ([mp4probe.FallbackReasons]).
	Fallbacks map[string]int64
	// Cached is the number of movies kept for later Range requests.
	Cached int
	// Waited is the time pumps held bytes back to follow a plan.
	Waited time.Duration
	// PacedBytes were sent while a plan was in force.
	PacedBytes int64
}

func (m *mp4State) snapshot() MP4Stats {
	s := MP4Stats{
		Videos: m.stats.Videos.Load(), Plans: m.stats.Plans.Load(), BurstBytes: m.stats.BurstBytes.Load(),
		PlannedRate: m.stats.PlannedRate.Load(),
		Fallbacks:   map[string]int64{}, Cached: m.cached(),
		Waited: time.Duration(m.waited.Load()), PacedBytes: m.paced.Load(),
	}
	for _, r := range mp4probe.FallbackReasons {
		s.Fallbacks[r] = m.stats.Fallbacks(r)
	}
	return s
}

// pacer is the MP4 state of a pump.
type pacer struct {
	obs   *mp4probe.Observer
	plan  *mp4probe.Plan // the plan followed; its clock started at start
	start time.Time
	timer shaper.Timer // made at the first wait, on the Server's clock
	wake  <-chan time.Time
	// waited and paced are read by Stats while the pump runs.
	waited atomic.Int64 // nanoseconds held back
	paced  atomic.Int64 // bytes moved under a plan
	// plans followed, for the conn's log line (read after the pump ended).
	plans int
	last  *mp4probe.Plan
}

// Pacing grants: each is the bytes due within paceStep of the schedule,
// and at least paceMin bytes (one packet) unless fewer are ready.
const (
	paceStep = 50 * time.Millisecond
	paceMin  = 1448
)

// pace returns how many of the want bytes ready to move downstream may go
// now under the current plan, after waiting until they are due. Without a
// plan it returns want at once. The wait ends early when the conn is
// aborted.
func (p *pump) pace(want int) (int, error) {
	pc := p.pacer
	plan := pc.obs.Plan()
	if plan == nil {
		pc.plan = nil
		return want, nil
	}
	now := p.c.srv.clock.Now()
	if plan != pc.plan {
		pc.plan, pc.start = plan, now
		pc.plans++
		pc.last = plan
	}
	pos := pc.obs.Pos()
	elapsed := now.Sub(pc.start)
	// The most of the want bytes that are due by limit (Due never
	// decreases, so bisection finds it).
	dueBy := func(limit time.Duration) int {
		if plan.Due(pos+int64(want)) <= limit {
			return want // the usual case in the burst region: no search
		}
		lo, hi := 0, want
		for lo < hi {
			mid := lo + (hi-lo+1)/2
			if plan.Due(pos+int64(mid)) <= limit {
				lo = mid
			} else {
				hi = mid - 1
			}
		}
		return lo
	}
	// Bytes already due go at once (the burst region, or a pump that fell
	// behind); else the next paceStep's worth, when the last of them is due.
	g := dueBy(elapsed)
	if g >= min(want, paceMin) {
		return g, nil
	}
	g = max(dueBy(max(elapsed, plan.Due(pos))+paceStep), min(want, paceMin))
	wait := plan.Due(pos+int64(g)) - elapsed
	if wait <= 0 {
		return g, nil
	}
	if pc.timer == nil {
		pc.timer, pc.wake = p.c.srv.clock.NewTimer(wait)
	} else {
		pc.timer.Reset(wait)
	}
	select {
	case <-pc.wake:
	case <-p.c.Done():
		pc.timer.Stop()
		return 0, p.c.Err()
	}
	pc.waited.Add(int64(wait))
	return g, nil
}

// copyObserved is the path of a direction an Observer watches: upstream,
// the requests it pairs responses with; downstream, the responses or the
// raw file it learns each plan from, which pace then follows. Bytes the
// Observer needs not see (the rest of an mdat) are moved like any others,
// spliced when large; the rest go through a pooled buffer and are shown to
// the Observer before they are written. Once the Observer has nothing more
// to learn or pace, the rest of the stream takes the plain path.
func (p *pump) copyObserved() error {
	obs := p.pacer.obs
	for {
		if p.dir == Up && !obs.WantsUp() || p.dir == Down && obs.Done() && obs.Plan() == nil {
			if p.srcRaw != nil {
				return p.copySplice()
			}
			return p.copyBuffer()
		}
		want := maxCopy
		if p.srcRaw != nil {
			avail, err := p.waitReadable()
			if err != nil {
				if errors.Is(err, io.EOF) {
					if p.dir == Down {
						obs.EOF()
					}
					return nil
				}
				return err
			}
			want = min(avail, maxMove)
		}
		opaque := int64(0)
		if p.dir == Up {
			want = min(want, maxCopy) // requests go through a buffer to be shown
		} else {
			opaque = obs.Opaque()
			if opaque == 0 {
				want = min(want, maxCopy) // bytes to show go through a buffer
				if need := obs.Need(); need > 0 {
					want = int(min(int64(want), need)) // a moof first, then its mdat
				}
			} else if opaque > 0 {
				want = int(min(int64(want), opaque))
			}
			var err error
			if want, err = p.pace(want); err != nil {
				return err
			}
		}
		want, err := p.grant(want)
		if err != nil {
			return err
		}
		var n int64
		switch {
		case opaque != 0 && p.srcRaw != nil && want > maxCopy:
			p.lr.N = int64(want)
			n, err = p.dstTCP.ReadFrom(&p.lr) // splice(2)
		case opaque != 0:
			n, err = p.copyGrant(want, nil)
		case p.dir == Down:
			n, err = p.copyGrant(want, obs.Observe)
		default:
			n, err = p.copyGrant(want, obs.Up)
		}
		if n > 0 {
			p.moved(n)
			if opaque != 0 {
				obs.Skip(n)
			}
			if p.pacer.plan != nil {
				p.pacer.paced.Add(n)
			}
		}
		if n < int64(want) {
			p.refund(want - int(n))
		}
		if err != nil {
			return err
		}
		if n == 0 && p.srcRaw == nil {
			if p.dir == Down {
				obs.EOF()
			}
			return nil // copyGrant met the end of src
		}
	}
}
