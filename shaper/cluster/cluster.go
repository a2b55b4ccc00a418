package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrClosed is returned by the methods of a closed [Cluster].
var ErrClosed = errors.New("cluster: closed")

// errLate reports a renewal that reached Redis after its caller gave up.
var errLate = errors.New("renewal reached redis after its deadline")

// State is where a [Cluster] gets its shares from.
type State int

const (
	// Starting: Redis has not answered yet. Links run at a small floor
	// until the first answer (normally within one Redis round trip), or
	// at their static fallback share once a call has failed.
	Starting State = iota
	// Leased: renewals succeed; links run at their leased shares.
	Leased
	// Fallback: renewals have failed for two periods (or the first one
	// failed): each link holds its last leased share, or its static
	// fallback share if it never had one, until Redis answers again.
	Fallback
	// Closed: [Cluster.Close] was called.
	Closed
)

func (s State) String() string {
	switch s {
	case Starting:
		return "starting"
	case Leased:
		return "leased"
	case Fallback:
		return "fallback"
	case Closed:
		return "closed"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// A Cluster is one instance's connection to the cluster's shared state in
// Redis: link leases ([Cluster.Link]), shared counters
// ([Cluster.Counter]) and bans ([Cluster.Bans]). It renews leases and
// flushes counters in one goroutine, once per [Options.Period], in one
// Redis call; bans go out at once, from a goroutine of their own. No
// method waits on Redis, except Close (at most one Timeout). A Cluster is
// safe for concurrent use. Close it to leave the cluster.
type Cluster struct {
	o         Options
	rdb       redis.UniversalClient
	ownClient bool
	inst      string // {P}:inst

	ctx     context.Context
	cancel  context.CancelFunc
	renewMu sync.Mutex // one renewal at a time
	kick    chan struct{}
	wg      sync.WaitGroup

	mu       sync.Mutex
	links    map[string]*Lease
	ctrs     map[string]*Counter
	state    State
	since    time.Time // of state
	lastOK   time.Time
	everOK   bool
	lastErr  error
	offsetMs int64 // Redis ms − local ms, from the last answer
	haveOff  bool

	calls, failures, fallbacks, late atomic.Int64

	bans *banHub
}

// New returns a Cluster under o and starts its renewal goroutine. It does
// not wait for Redis: a Cluster made while Redis is down starts in
// fallback and attaches when Redis answers. It returns an error wrapping
// [ErrBadOptions] if o is invalid or PasswordFile cannot be read.
func New(o Options) (*Cluster, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o = o.normalized()
	quietRedis.Do(func() { redis.SetLogger(redisLog{o.Logger}) })
	c := &Cluster{
		o:     o,
		rdb:   o.Client,
		kick:  make(chan struct{}, 1),
		links: map[string]*Lease{},
		ctrs:  map[string]*Counter{},
		since: o.Clock.Now(),
	}
	if c.rdb == nil {
		pw, err := o.readPassword()
		if err != nil {
			return nil, err
		}
		c.rdb = o.newClient(pw)
		c.ownClient = true
	}
	c.inst = c.key("inst")
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.bans = newBanHub(c)
	c.wg.Add(1)
	go c.renewLoop()
	return c, nil
}

// quietRedis sets go-redis's process-wide logger once.
var quietRedis sync.Once

// redisLog sends go-redis's own log lines (one per failed dial, many a
// second while Redis is down) to the first Cluster's logger at Debug: a
// Cluster logs one line on entering fallback and one on leaving it.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	if l.log.Enabled(ctx, slog.LevelDebug) {
		l.log.DebugContext(ctx, "redis client", slog.String("detail", fmt.Sprintf(format, v...)))
	}
}

// Instance returns the instance's name in the cluster.
func (c *Cluster) Instance() string { return c.o.Instance }

// Period returns the lease period.
func (c *Cluster) Period() time.Duration { return c.o.Period }

// key returns the Redis key "{prefix}:parts...".
func (c *Cluster) key(part string) string { return c.tag() + ":" + part }

func (c *Cluster) tag() string { return "{" + c.o.Prefix + "}" }

// Close leaves the cluster: it stops the renewals, gives the instance's
// leases back and zeroes its connection counts (one last Redis call, at
// most one Timeout), stops the ban subscription and closes the Redis
// client it made. Links keep their last shares. Close is idempotent.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.state == Closed {
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	c.bans.close()
	c.mu.Lock()
	for _, l := range c.links {
		l.closed = true
	}
	for _, k := range c.ctrs {
		k.closeLocked()
	}
	c.mu.Unlock()
	// One last call, on a fresh context: the cluster's is cancelled.
	c.renewMu.Lock()
	defer c.renewMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), c.o.Timeout)
	req, _ := c.request(c.o.Clock.Now())
	var err error
	if len(req.Links) > 0 || len(req.Ctrs) > 0 {
		_, err = c.call(ctx, req)
	}
	cancel()
	c.mu.Lock()
	c.setStateLocked(Closed, c.o.Clock.Now())
	c.mu.Unlock()
	if c.ownClient {
		if cerr := c.rdb.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}
	return err
}

// renewLoop renews once per period, or at once when kicked.
func (c *Cluster) renewLoop() {
	defer c.wg.Done()
	t, tc := c.o.Clock.NewTimer(c.o.Period)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-tc:
		case <-c.kick:
		}
		start := c.o.Clock.Now()
		_ = c.renew(start) // recorded in the status; Fallback says the rest
		next := c.o.Period - c.o.Clock.Now().Sub(start)
		if next < c.o.Period/2 {
			next = c.o.Period / 2
		}
		t.Stop()
		t.Reset(next)
	}
}

// kickRenew asks for a renewal now.
func (c *Cluster) kickRenew() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// The tick call's wire format (JSON both ways: see tickScript).
type tickRequest struct {
	ID    string        `json:"id"`
	DL    int64         `json:"dl"`    // Redis ms after which the call is void; 0: none
	TTL   int64         `json:"ttl"`   // ms
	Hold  int64         `json:"hold"`  // ms
	Floor float64       `json:"floor"` // fraction of the line
	Links []linkRequest `json:"links"`
	Ctrs  []ctrRequest  `json:"ctrs"`
}

type linkRequest struct {
	Name string `json:"n"`
	Line int64  `json:"line"`
	W    int64  `json:"w"`
	Want int64  `json:"want"`
	Have int64  `json:"have"`
	Bye  bool   `json:"bye"`
}

type ctrRequest struct {
	Name string       `json:"n"`
	Win  int64        `json:"win"` // ms
	Keys []ctrKeyItem `json:"keys"`
}

type ctrKeyItem struct {
	Key   string `json:"k"`
	Hits  int64  `json:"h"`
	Conns int64  `json:"c"`
}

type tickReply struct {
	Now   float64            `json:"now"`
	Late  bool               `json:"late"`
	Links luaList[linkReply] `json:"links"`
	Ctrs  luaList[ctrReply]  `json:"ctrs"`
}

type linkReply struct {
	Name  string  `json:"n"`
	Share float64 `json:"share"`
	Fair  float64 `json:"fair"`
	Inst  float64 `json:"inst"`
	W     float64 `json:"w"`
	Line  float64 `json:"line"`
}

type ctrReply struct {
	Name string              `json:"n"`
	WID  float64             `json:"wid"`
	V    luaList[[2]float64] `json:"v"`
}

// luaList is a JSON list that Redis's cjson writes as {} when empty.
type luaList[T any] []T

func (l *luaList[T]) UnmarshalJSON(b []byte) error {
	if string(b) == "{}" {
		*l = nil
		return nil
	}
	return json.Unmarshal(b, (*[]T)(l))
}

// snapshot is what a request carried, to settle its outcome.
type snapshot struct {
	links []*Lease
	ctrs  []ctrSnap
}

// request builds the renewal of every lease and counter. It calls the
// leases' Demand funcs without c.mu held.
func (c *Cluster) request(now time.Time) (tickRequest, snapshot) {
	c.mu.Lock()
	leases := make([]*Lease, 0, len(c.links))
	for _, l := range c.links {
		leases = append(leases, l)
	}
	req := tickRequest{
		ID:    c.o.Instance,
		TTL:   c.o.Expiry.Milliseconds(),
		Hold:  (c.o.Timeout + c.o.Timeout/2).Milliseconds(),
		Floor: c.o.Floor,
		Links: []linkRequest{},
		Ctrs:  []ctrRequest{},
	}
	if c.haveOff {
		req.DL = now.UnixMilli() + c.offsetMs + c.o.Timeout.Milliseconds()
	}
	c.mu.Unlock()

	var snap snapshot
	for _, l := range leases {
		lr := linkRequest{Name: l.name, Line: l.o.Line}
		c.mu.Lock()
		closed, have := l.closed, l.share
		c.mu.Unlock()
		if closed {
			lr.Bye = true
		} else {
			d := l.o.Demand()
			lr.W, lr.Want, lr.Have = int64(max(d.Conns, 0)), max(d.Want, 0), have
			c.mu.Lock()
			l.lastDemand = d
			c.mu.Unlock()
		}
		req.Links = append(req.Links, lr)
		snap.links = append(snap.links, l)
	}

	c.mu.Lock()
	nowMs := now.UnixMilli() + c.offsetMs
	for _, k := range c.ctrs {
		cr, cs := k.flushLocked(nowMs)
		req.Ctrs = append(req.Ctrs, cr)
		snap.ctrs = append(snap.ctrs, cs)
	}
	c.mu.Unlock()
	return req, snap
}

// call runs the tick script.
func (c *Cluster) call(ctx context.Context, req tickRequest) (tickReply, error) {
	var rep tickReply
	body, err := json.Marshal(req)
	if err != nil {
		return rep, err
	}
	c.calls.Add(1)
	raw, err := tickScript.Run(ctx, c.rdb, []string{c.inst}, c.tag(), body).Text()
	if err != nil {
		return rep, err
	}
	if err := json.Unmarshal([]byte(raw), &rep); err != nil {
		return rep, fmt.Errorf("decode renewal reply: %w", err)
	}
	if rep.Late {
		c.late.Add(1)
		return rep, errLate
	}
	return rep, nil
}

// Renew renews every lease and flushes every counter now, in one Redis
// call, as the renewal goroutine does once per period; tests and tools
// may call it to step the cluster. It returns the call's error.
func (c *Cluster) Renew() error {
	return c.renew(c.o.Clock.Now())
}

type applyCall struct {
	f     func(int64)
	share int64
}

func (c *Cluster) renew(start time.Time) error {
	c.renewMu.Lock()
	defer c.renewMu.Unlock()
	if c.ctx.Err() != nil {
		return ErrClosed
	}
	req, snap := c.request(start)
	if len(req.Links) == 0 && len(req.Ctrs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.o.Timeout)
	rep, err := c.call(ctx, req)
	cancel()
	end := c.o.Clock.Now()
	var applies []applyCall
	var onState State
	c.mu.Lock()
	if err != nil {
		applies, onState = c.failedLocked(err, snap, end)
	} else {
		applies, onState = c.succeededLocked(rep, snap, start, end)
	}
	c.mu.Unlock()
	for _, a := range applies {
		a.f(a.share)
	}
	if onState >= 0 && c.o.OnState != nil {
		c.o.OnState(onState)
	}
	return err
}

// failedLocked settles a failed renewal. Requires c.mu held.
func (c *Cluster) failedLocked(err error, snap snapshot, now time.Time) ([]applyCall, State) {
	c.failures.Add(1)
	c.lastErr = err
	for _, cs := range snap.ctrs {
		cs.ctr.failedLocked(cs)
	}
	var applies []applyCall
	for _, l := range snap.links {
		if !l.leased && !l.static && !l.closed {
			l.static = true
			l.share = l.fallbackShare(c.o.Instances)
			applies = append(applies, applyCall{l.o.Apply, l.share})
		}
	}
	if c.state == Fallback || c.state == Closed {
		return applies, -1
	}
	if c.everOK && now.Sub(c.lastOK) < 2*c.o.Period {
		return applies, -1
	}
	c.fallbacks.Add(1)
	c.setStateLocked(Fallback, now)
	c.o.Logger.Warn("cluster fallback", "err", err, "instance", c.o.Instance)
	return applies, Fallback
}

// succeededLocked settles a successful renewal. Requires c.mu held.
func (c *Cluster) succeededLocked(rep tickReply, snap snapshot, start, end time.Time) ([]applyCall, State) {
	mid := start.Add(end.Sub(start) / 2)
	c.offsetMs = int64(rep.Now) - mid.UnixMilli()
	c.haveOff = true
	c.lastOK = end
	c.everOK = true
	byName := make(map[string]linkReply, len(rep.Links))
	for _, lr := range rep.Links {
		byName[lr.Name] = lr
	}
	var applies []applyCall
	for _, l := range snap.links {
		if l.closed {
			if c.links[l.name] == l {
				delete(c.links, l.name)
			}
			continue
		}
		lr, ok := byName[l.name]
		if !ok {
			continue
		}
		share := int64(lr.Share)
		l.leased, l.static = true, false
		l.fair, l.instances, l.weight, l.line = int64(lr.Fair), int(lr.Inst), int64(lr.W), int64(lr.Line)
		l.renewed = end
		if share != l.share {
			l.share = share
			applies = append(applies, applyCall{l.o.Apply, share})
		}
	}
	for i, cr := range rep.Ctrs {
		if i < len(snap.ctrs) && snap.ctrs[i].ctr.name == cr.Name {
			snap.ctrs[i].ctr.succeededLocked(snap.ctrs[i], cr)
		}
	}
	if c.state == Leased || c.state == Closed {
		return applies, -1
	}
	if c.state == Fallback {
		c.o.Logger.Info("cluster leases resumed", "instance", c.o.Instance, "dur", end.Sub(c.since))
	}
	c.setStateLocked(Leased, end)
	return applies, Leased
}

// setStateLocked requires c.mu held.
func (c *Cluster) setStateLocked(s State, now time.Time) {
	c.state, c.since = s, now
}

// Status is a snapshot of a Cluster, for /readyz, `sluice top` and
// metrics. Counts are totals since [New].
type Status struct {
	Instance string
	State    State
	// Since is when State began.
	Since time.Time
	// LastOK is the last successful renewal; zero if none.
	LastOK time.Time
	// LastErr is the last renewal's error, if it failed; nil otherwise.
	LastErr error
	// Calls counts renewal calls; Failures the failed ones (Late among
	// them: reached Redis after the deadline, so void); Fallbacks the
	// entries into Fallback.
	Calls, Failures, Late, Fallbacks int64
	// Offset is Redis's clock minus the local one, as last measured.
	Offset time.Duration
	// Links, in no particular order.
	Links []LinkStatus
	// Bans counts ban operations sent, received from other instances,
	// and waiting to be sent (Redis unreachable), and bans dropped
	// because too many waited.
	BansSent, BansReceived, BansPending, BansDropped int64
}

// LinkStatus is one lease's state.
type LinkStatus struct {
	Name string
	// Line is the line's rate (the smallest any live instance reports),
	// bytes per second, as Redis last saw it.
	Line int64
	// Share is the rate applied now, bytes per second; Fair the
	// water-filling share Redis computed at the last renewal (Share
	// moves toward it as the others give up theirs).
	Share, Fair int64
	// Leased: Share comes from Redis (not the static fallback).
	Leased bool
	// Instances is the number of live instances sharing the link, and
	// Weight the sum of their reported connections, at the last renewal.
	Instances int
	Weight    int64
	// Demand is what this instance reported last.
	Demand Demand
	// Renewed is the last successful renewal.
	Renewed time.Time
}

// Status returns the Cluster's state. It does not call Redis.
func (c *Cluster) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Status{
		Instance:  c.o.Instance,
		State:     c.state,
		Since:     c.since,
		LastOK:    c.lastOK,
		Calls:     c.calls.Load(),
		Failures:  c.failures.Load(),
		Late:      c.late.Load(),
		Fallbacks: c.fallbacks.Load(),
		Offset:    time.Duration(c.offsetMs) * time.Millisecond,
	}
	if c.state != Leased {
		s.LastErr = c.lastErr
	}
	for _, l := range c.links {
		s.Links = append(s.Links, LinkStatus{
			Name: l.name, Line: l.line, Share: l.share, Fair: l.fair, Leased: l.leased,
			Instances: l.instances, Weight: l.weight, Demand: l.lastDemand, Renewed: l.renewed,
		})
	}
	s.BansSent, s.BansReceived, s.BansPending, s.BansDropped = c.bans.counts()
	return s
}
