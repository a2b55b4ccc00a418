package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// MaxPendingBans bounds the ban operations an instance keeps while Redis
// is unreachable; beyond it the oldest are dropped (counted in
// [Status].BansDropped). The bans still hold on the instance that made
// them.
const MaxPendingBans = 100000

// BanOptions describe a cluster ban policy.
type BanOptions struct {
	// OnBan is called for a ban made by another instance, or found in
	// Redis when the subscription (re)starts, with its end on this
	// instance's clock. It may repeat a ban already known, and must be
	// idempotent; a ban only lengthens. It is called from the
	// subscription goroutine and must not block. Required.
	OnBan func(key string, until time.Time)
	// OnLift is called for a ban lifted early by another instance. nil
	// ignores lifts.
	OnLift func(key string)
}

// Bans shares one ban policy's bans (bans.NAME.cluster): a ban made on
// one instance holds on all, within a round trip. Bans live in a Redis
// sorted set (key → end, on Redis's clock, so the instances' clocks need
// not agree) and are announced on a pub/sub channel; an instance whose
// subscription (re)starts re-reads the set, so no ban is missed across a
// disconnect. Add and Lift never wait on Redis. Safe for concurrent use.
type Bans struct {
	h      *banHub
	policy string
	key    string // {P}:ban:POLICY, the set and the channel
	o      BanOptions
}

// Bans shares the ban policy named policy (unique in the cluster; every
// instance must use the same name). It returns an error wrapping
// [ErrBadOptions] if o is invalid, [ErrExists] if the policy is taken,
// or [ErrClosed].
func (c *Cluster) Bans(policy string, o BanOptions) (*Bans, error) {
	if policy == "" {
		return nil, fmt.Errorf("%w: bans: want a policy name", ErrBadOptions)
	}
	if o.OnBan == nil {
		return nil, fmt.Errorf("%w: bans %q: want an OnBan func", ErrBadOptions, policy)
	}
	b := &Bans{h: c.bans, policy: policy, key: c.key("ban:" + policy), o: o}
	if err := c.bans.add(b); err != nil {
		return nil, err
	}
	return b, nil
}

// Add bans key on every instance until the given time (on this
// instance's clock; it travels as the time left). A ban already longer
// in Redis stays as it is. A past until does nothing.
func (b *Bans) Add(key string, until time.Time) {
	b.h.enqueue(banOp{b: b, key: key, until: until})
}

// Lift ends key's ban on every instance.
func (b *Bans) Lift(key string) {
	b.h.enqueue(banOp{b: b, key: key, lift: true})
}

// Close stops receiving this policy's bans. Bans already sent stay.
func (b *Bans) Close() { b.h.remove(b) }

type banOp struct {
	b     *Bans
	key   string
	until time.Time
	lift  bool
}

// banHub is a Cluster's one subscription and one writer for all its ban
// policies.
type banHub struct {
	c *Cluster

	mu       sync.Mutex
	policies map[string]*Bans // by channel
	pending  []banOp
	reread   map[string]bool // channels whose set must be read again
	ps       *redis.PubSub
	started  bool
	closed   bool
	lost     bool // subscription down, logged

	sent, received, dropped int64

	wake chan struct{}
	done chan struct{}
	wg   sync.WaitGroup
}

func newBanHub(c *Cluster) *banHub {
	return &banHub{
		c:        c,
		policies: map[string]*Bans{},
		reread:   map[string]bool{},
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
}

func (h *banHub) add(b *Bans) error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return ErrClosed
	}
	if h.policies[b.key] != nil {
		h.mu.Unlock()
		return fmt.Errorf("%w: bans %q", ErrExists, b.policy)
	}
	h.policies[b.key] = b
	h.reread[b.key] = true
	if !h.started {
		h.started = true
		h.ps = h.c.rdb.Subscribe(h.c.ctx)
		h.wg.Add(2)
		go h.subscribeLoop()
		go h.writeLoop()
	}
	ps := h.ps
	h.mu.Unlock()
	// Recorded even if Redis is down: the PubSub subscribes again
	// whenever it reconnects.
	ctx, cancel := context.WithTimeout(h.c.ctx, h.c.o.Timeout)
	defer cancel()
	_ = ps.Subscribe(ctx, b.key)
	return nil
}

func (h *banHub) remove(b *Bans) {
	h.mu.Lock()
	if h.policies[b.key] != b {
		h.mu.Unlock()
		return
	}
	delete(h.policies, b.key)
	delete(h.reread, b.key)
	ps := h.ps
	h.mu.Unlock()
	ctx, cancel := context.WithTimeout(h.c.ctx, h.c.o.Timeout)
	defer cancel()
	_ = ps.Unsubscribe(ctx, b.key)
}

func (h *banHub) enqueue(op banOp) {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	if len(h.pending) >= MaxPendingBans {
		h.pending = h.pending[1:]
		h.dropped++
	}
	h.pending = append(h.pending, op)
	h.mu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

func (h *banHub) counts() (sent, received, pending, dropped int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sent, h.received, int64(len(h.pending)), h.dropped
}

func (h *banHub) close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	started, ps := h.started, h.ps
	h.mu.Unlock()
	close(h.done)
	if started {
		_ = ps.Close()
	}
	h.wg.Wait()
}

// writeLoop sends queued bans at once, one call per policy; what fails
// is retried every period.
func (h *banHub) writeLoop() {
	defer h.wg.Done()
	t, tc := h.c.o.Clock.NewTimer(h.c.o.Period)
	defer t.Stop()
	for {
		select {
		case <-h.done:
			return
		case <-h.wake:
		case <-tc:
		}
		h.send()
		t.Stop()
		t.Reset(h.c.o.Period)
	}
}

func (h *banHub) send() {
	h.mu.Lock()
	ops := h.pending
	h.pending = nil
	h.mu.Unlock()
	if len(ops) == 0 {
		return
	}
	now := h.c.o.Clock.Now()
	byKey := map[string][]any{}
	var order []string
	for _, op := range ops {
		ms := int64(0)
		if !op.lift {
			ms = op.until.Sub(now).Milliseconds()
			if ms <= 0 {
				continue
			}
		}
		args, ok := byKey[op.b.key]
		if !ok {
			order = append(order, op.b.key)
			args = []any{h.c.o.Instance}
		}
		kind := "b"
		if op.lift {
			kind = "l"
		}
		byKey[op.b.key] = append(args, op.key, kind, ms)
	}
	var failed []banOp
	for _, k := range order {
		ctx, cancel := context.WithTimeout(h.c.ctx, h.c.o.Timeout)
		err := banScript.Run(ctx, h.c.rdb, []string{k}, byKey[k]...).Err()
		cancel()
		if err != nil {
			for _, op := range ops {
				if op.b.key == k {
					failed = append(failed, op)
				}
			}
			continue
		}
		h.mu.Lock()
		h.sent += int64(len(byKey[k])-1) / 3
		h.mu.Unlock()
	}
	if len(failed) > 0 {
		h.mu.Lock()
		h.pending = append(failed, h.pending...)
		if n := len(h.pending) - MaxPendingBans; n > 0 {
			h.pending = h.pending[n:]
			h.dropped += int64(n)
		}
		h.mu.Unlock()
	}
}

// banMessage is what banScript publishes.
type banMessage struct {
	Instance string               `json:"i"`
	Bans     luaList[[3]banField] `json:"b"`
}

// banField is a string or a number of a published triple.
type banField string

func (f *banField) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*f = banField(s)
		return nil
	}
	var n float64
	if err := json.Unmarshal(b, &n); err != nil {
		return err
	}
	*f = banField(strconv.FormatInt(int64(n), 10))
	return nil
}

// subscribeLoop receives the policies' bans. Each (re)subscription to a
// channel is followed by a read of its set.
func (h *banHub) subscribeLoop() {
	defer h.wg.Done()
	backoff := h.c.o.Period
	for {
		select {
		case <-h.done:
			return
		default:
		}
		h.rereadDue()
		wait := time.Second
		h.mu.Lock()
		if len(h.reread) > 0 {
			wait = h.c.o.Period
		}
		ps := h.ps
		h.mu.Unlock()
		msg, err := ps.ReceiveTimeout(h.c.ctx, wait)
		if err != nil {
			if h.c.ctx.Err() != nil || errors.Is(err, redis.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			h.mu.Lock()
			if !h.lost {
				h.lost = true
				h.c.o.Logger.Warn("cluster ban subscription lost", "err", err, "instance", h.c.o.Instance)
			}
			h.mu.Unlock()
			t, tc := h.c.o.Clock.NewTimer(backoff)
			select {
			case <-h.done:
				t.Stop()
				return
			case <-tc:
			}
			continue
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" {
				continue
			}
			h.mu.Lock()
			if h.policies[m.Channel] != nil {
				h.reread[m.Channel] = true
			}
			if h.lost {
				h.lost = false
				h.c.o.Logger.Info("cluster ban subscription restored", "instance", h.c.o.Instance)
			}
			h.mu.Unlock()
		case *redis.Message:
			h.deliver(m)
		}
	}
}

// deliver hands a published message to its policy.
func (h *banHub) deliver(m *redis.Message) {
	var bm banMessage
	if err := json.Unmarshal([]byte(m.Payload), &bm); err != nil || bm.Instance == h.c.o.Instance {
		return
	}
	h.mu.Lock()
	b := h.policies[m.Channel]
	h.received += int64(len(bm.Bans))
	h.mu.Unlock()
	if b == nil {
		return
	}
	now := h.c.o.Clock.Now()
	for _, t := range bm.Bans {
		key, op := string(t[0]), string(t[1])
		ms, _ := strconv.ParseInt(string(t[2]), 10, 64)
		switch {
		case op == "l":
			if b.o.OnLift != nil {
				b.o.OnLift(key)
			}
		case ms > 0:
			b.o.OnBan(key, now.Add(time.Duration(ms)*time.Millisecond))
		}
	}
}

// rereadDue reads the sets of the channels that were (re)subscribed.
func (h *banHub) rereadDue() {
	h.mu.Lock()
	var due []*Bans
	for ch := range h.reread {
		if b := h.policies[ch]; b != nil {
			due = append(due, b)
		}
	}
	h.mu.Unlock()
	for _, b := range due {
		ctx, cancel := context.WithTimeout(h.c.ctx, h.c.o.Timeout)
		r, err := banReadScript.Run(ctx, h.c.rdb, []string{b.key}).StringSlice()
		cancel()
		if err != nil {
			continue
		}
		h.mu.Lock()
		delete(h.reread, b.key)
		h.mu.Unlock()
		now := h.c.o.Clock.Now()
		for i := 0; i+1 < len(r); i += 2 {
			ms, err := strconv.ParseInt(r[i+1], 10, 64)
			if err == nil && ms > 0 {
				b.o.OnBan(r[i], now.Add(time.Duration(ms)*time.Millisecond))
			}
		}
	}
}
