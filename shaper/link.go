package shaper

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// A Link is a budget that many connections share: one direction of a
// costly line. Connections join it as [Member]s under a key (a tenant: a
// source address, a listener, ...) and take bytes from it in grants, as
// from a [Gate]; the Link decides who goes next.
//
// The model, after HTB:
//
//   - The Link is a token bucket at Limit.Rate with Limit.Burst.
//   - Each key has an assured Rate and a Ceil ([KeyLimit]), each a token
//     bucket of its own. While the link has tokens, a waiting key whose
//     assured bucket has tokens goes first ("green"); among green keys,
//     the one that has been served least, relative to its weight, goes
//     first. A key beyond its assured rate may borrow spare tokens up to its
//     Ceil; borrowers share the spare by weight, least-served first.
//   - So under contention every active key gets at least its Rate (when the
//     Rates fit in the link), the rest is split by Weight, no key exceeds its
//     Ceil, and the link never exceeds its own Rate.
//   - Inside a key, waiting connections are served in turn (one grant each,
//     in arrival order), so a key with fifty connections gets no more than
//     a key with one, and its connections share its part equally.
//   - A key or connection that does not ask leaves its share to the others
//     at once; an idle key saves nothing (its place in the fair order is
//     brought up to the present when it returns).
//
// Cost: one mutex and one timer per Link, whatever the number of members;
// a grant costs O(log k) for k waiting keys. A Member holds one small
// channel. Time comes from the Link's [Clock].
type Link struct {
	clock Clock

	mu      sync.Mutex
	lim     LinkLimit
	bucket  bucket
	keys    map[string]*linkKey
	assured indexHeap[*linkKey] // waiting keys that may be served from their assured rate, by vt
	borrow  indexHeap[*linkKey] // waiting keys beyond their assured rate, by vtb
	timed   indexHeap[*linkKey] // keys held back by their own buckets, by wakeAt
	vt, vtb int64               // virtual time of the last green and borrowed grant
	waiting int                 // members waiting
	blocked int                 // of them, waiting in Take (not an Ask)
	timer   Timer
	timerAt time.Time
	drive   func(at time.Time) // set: a driver dispatches, not the timer
	last    time.Time          // last grant, for the busy catch-up

	granted, borrowed, grants int64

	// Activity's count (activity.go).
	period uint64 // the count's number; a member counted in it has seen == period+1
	active int    // members that asked in this period
	waited bool   // a member waited in this period
}

// KeyLimit is a key's share of a Link.
type KeyLimit struct {
	// Rate is the assured rate in bytes per second; 0 means none (the key
	// only borrows).
	Rate int64
	// Ceil is the most the key may take, in bytes per second, borrowing
	// included; 0 means the link's rate.
	Ceil int64
	// Weight is the key's share of spare capacity relative to other
	// borrowing keys; 0 means 1.
	Weight int
}

// LinkLimit is a Link's budget and its key policy.
type LinkLimit struct {
	// Limit is the link's own rate and burst. Rate must be positive; Burst
	// 0 means [DefaultLinkBurst] worth of rate, at least DefaultBurst.
	Limit
	// Key applies to every key without an override.
	Key KeyLimit
	// Overrides give some keys their own KeyLimit.
	Overrides map[string]KeyLimit
}

// DefaultLinkBurst is the default link burst, as time at the link's rate.
const DefaultLinkBurst = 5 * time.Millisecond

// MaxWeight bounds KeyLimit.Weight.
const MaxWeight = 1000

// Validate reports whether l is usable, wrapping [ErrBadLimit] if not.
func (l LinkLimit) Validate() error {
	if l.Rate <= 0 {
		return fmt.Errorf("%w: a link needs a positive rate", ErrBadLimit)
	}
	if err := l.Limit.Validate(); err != nil {
		return err
	}
	check := func(name string, k KeyLimit) error {
		if k.Rate < 0 || k.Rate > MaxRate || k.Ceil < 0 || k.Ceil > MaxRate {
			return fmt.Errorf("%w: key %s: rate and ceil must be in [0, %d]", ErrBadLimit, name, int64(MaxRate))
		}
		if k.Ceil > 0 && k.Rate > k.Ceil {
			return fmt.Errorf("%w: key %s: rate %d above ceil %d", ErrBadLimit, name, k.Rate, k.Ceil)
		}
		if k.Weight < 0 || k.Weight > MaxWeight {
			return fmt.Errorf("%w: key %s: weight %d outside [0, %d]", ErrBadLimit, name, k.Weight, MaxWeight)
		}
		return nil
	}
	if err := check("default", l.Key); err != nil {
		return err
	}
	for name, k := range l.Overrides {
		if err := check(fmt.Sprintf("%q", name), k); err != nil {
			return err
		}
	}
	return nil
}

func (l LinkLimit) normalize() LinkLimit {
	if l.Burst == 0 {
		l.Burst = max(DefaultBurst, min(l.Rate*int64(DefaultLinkBurst)/int64(time.Second), MaxBurst))
	}
	return l
}

// keyLimit returns the effective limit of a key.
func (l *LinkLimit) keyLimit(name string) KeyLimit {
	k, ok := l.Overrides[name]
	if !ok {
		k = l.Key
	}
	if k.Ceil == 0 || k.Ceil > l.Rate {
		k.Ceil = l.Rate
	}
	k.Rate = min(k.Rate, k.Ceil)
	if k.Weight == 0 {
		k.Weight = 1
	}
	return k
}

// keyBurst is the burst of a key's assured and ceil buckets: enough for a
// few grants, so a key's own rate is smooth at the grant size.
func keyBurst(rate int64) int64 {
	return max(4*DefaultBurst, min(rate*int64(DefaultLinkBurst)/int64(time.Second), MaxBurst))
}

// NewLink returns a Link at l, on clock (nil means the real clock). It
// panics if l is invalid; check it first with [LinkLimit.Validate].
func NewLink(l LinkLimit, clock Clock) *Link {
	if err := l.Validate(); err != nil {
		panic(err)
	}
	if clock == nil {
		clock = realClock{}
	}
	l = l.normalize()
	now := clock.Now()
	return &Link{
		clock:   clock,
		lim:     l,
		bucket:  bucket{rate: l.Rate, burst: l.Burst, nt: l.Burst * nano, last: now},
		keys:    map[string]*linkKey{},
		assured: newIndexHeap(byVT, setMainIdx),
		borrow:  newIndexHeap(byVTB, setMainIdx),
		timed:   newIndexHeap(func(a, b *linkKey) bool { return a.wakeAt.Before(b.wakeAt) }, func(k *linkKey, i int) { k.timeIdx = i }),
	}
}

// SetLimit changes the link's rate, burst and key policy, for members
// already waiting too. Tokens saved are kept up to the new bursts. It
// returns an error wrapping [ErrBadLimit], and changes nothing, if l is
// invalid.
func (l *Link) SetLimit(ll LinkLimit) error {
	if err := ll.Validate(); err != nil {
		return err
	}
	ll = ll.normalize()
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	l.bucket.advance(now, l.catchUp(now))
	l.lim = ll
	l.bucket.set(ll.Rate, ll.Burst)
	for _, k := range l.keys {
		k.setLimit(ll.keyLimit(k.name), ll.Rate, now)
	}
	// Waiting keys were placed by their old rates: place them again.
	for _, k := range l.keys {
		if k.state != idle {
			l.park(k)
			l.pushAssured(k)
		}
	}
	l.dispatch(now)
	return nil
}

// Limit returns the link's current limit.
func (l *Link) Limit() LinkLimit {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lim
}

// LinkStats are a Link's counters.
type LinkStats struct {
	// Bytes granted since the Link was made, net of refunds.
	Bytes int64
	// Borrowed is the part of Bytes keys took beyond their assured rate.
	Borrowed int64
	// Grants is the number of grants made (refunds do not lower it):
	// Bytes ÷ Grants is the average grant.
	Grants int64
	// Tokens is the link bucket's fill now, in bytes.
	Tokens int64
	// Waiting is the number of members waiting for a grant now.
	Waiting int
	// Keys is the number of keys with members; Members the members.
	Keys, Members int
}

// Stats returns the Link's counters.
func (l *Link) Stats() LinkStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	l.bucket.advance(now, l.catchUp(now))
	s := LinkStats{Bytes: l.granted, Borrowed: l.borrowed, Grants: l.grants, Tokens: l.bucket.nt / nano, Waiting: l.waiting, Keys: len(l.keys)}
	for _, k := range l.keys {
		s.Members += k.members
	}
	return s
}

// KeyStats are one key's counters.
type KeyStats struct {
	Key      string
	Limit    KeyLimit
	Members  int
	Waiting  int
	Bytes    int64
	Borrowed int64
}

// Keys returns the counters of the keys that have members.
func (l *Link) Keys() []KeyStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]KeyStats, 0, len(l.keys))
	for _, k := range l.keys {
		out = append(out, KeyStats{Key: k.name, Limit: k.lim, Members: k.members, Waiting: k.q.n, Bytes: k.granted, Borrowed: k.borrowed})
	}
	return out
}

// Join adds a member under key. The member must Leave when done.
func (l *Link) Join(key string) *Member {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := l.keys[key]
	if k == nil {
		now := l.clock.Now()
		k = &linkKey{name: key, mainIdx: -1, timeIdx: -1}
		k.setLimit(l.lim.keyLimit(key), l.lim.Rate, now)
		k.assured.nt, k.ceil.nt = k.assured.burst*nano, k.ceil.burst*nano
		l.keys[key] = k
	}
	k.members++
	return &Member{l: l, k: k, ch: make(chan int, 1)}
}

// A Member is one connection's seat on a Link. Its methods are not safe
// for concurrent use with each other (one pump per member), but Leave may
// come from another goroutine after Take returned.
type Member struct {
	l          *Link
	k          *linkKey
	ch         chan int // receives the grant
	want       int
	upTo       int   // the most this ask may be granted, with credit
	size       int64 // what the head of its key's queue will be granted
	queued     bool
	prev, next *Member
	left       atomic.Bool // written under l.mu; read without it by Share

	// An Ask's: the grant goes to notify, or, granted while the Ask
	// itself dispatches (inAsk), to got for the Ask to return.
	notify func(int)
	got    int
	inAsk  bool

	seen uint64 // Link.period+1 of the last period it was counted in; under l.mu
}

// ErrLeft is returned by Take on a member that has left.
var ErrLeft = errors.New("shaper: member has left the link")

// Take blocks until the Link grants min(n, burst) bytes to this member in
// its fair turn, and returns that count. It returns 0 and nil for n <= 0,
// and 0 and ctx.Err() if ctx ends first (nothing is taken then).
func (m *Member) Take(ctx context.Context, n int) (int, error) {
	return m.TakeUpTo(ctx, n, n)
}

// TakeUpTo is Take for a caller that could use up to upTo bytes: a member
// whose key fell behind its fair share while it was busy moving its last
// grant (its turn came and went) is granted the bytes it is owed on top of
// n, up to MaxCredit grants' worth, so a key with one latency-bound
// connection still gets its share.
func (m *Member) TakeUpTo(ctx context.Context, n, upTo int) (int, error) {
	if n <= 0 {
		return 0, nil
	}
	if got, err := m.ask(n, upTo, nil); got > 0 || err != nil {
		return got, err
	}
	select {
	case got := <-m.ch:
		return got, nil
	case <-ctx.Done():
		m.cancel(true)
		return 0, ctx.Err()
	}
}

// Ask is TakeUpTo for a caller that serves many members from one
// goroutine and must not block: it grants at once if it can and returns
// the count, as TakeUpTo would; else it queues the member, returns 0, and
// the grant comes later, in the member's fair turn, as a call of notify
// with the count. The Link calls notify with its own lock held, from
// whichever goroutine dispatched the grant: notify must hand the count on
// and return, and must not call into the Link. A member has at most one
// Take or Ask outstanding; [Member.Withdraw] takes back an Ask that is.
func (m *Member) Ask(n, upTo int, notify func(int)) (int, error) {
	if n <= 0 {
		return 0, nil
	}
	return m.ask(n, upTo, notify)
}

// Withdraw takes back an outstanding Ask and returns the bytes granted to
// it meanwhile, which the caller then holds, to move or Refund: 0 if the
// Ask was still queued (it is no longer).
func (m *Member) Withdraw() int {
	l := m.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if m.queued {
		l.dequeue(m)
		m.notify = nil
		return 0
	}
	n := m.got
	m.got = 0
	return n
}

// cancel takes back a queued ask: it leaves the queue, or, if its grant
// came meanwhile, the grant goes back to the link. With granted, the
// grant is known to be on its way (the ask was made), so it waits for it.
func (m *Member) cancel(granted bool) {
	l := m.l
	l.mu.Lock()
	if m.queued {
		l.dequeue(m)
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	if granted {
		m.Refund(<-m.ch)
		return
	}
	select {
	case n := <-m.ch:
		m.Refund(n)
	default:
	}
}

// ask grants n at once if it can (nobody waits and the buckets have the
// tokens), else queues m; the grant then goes to notify, or, if notify is
// nil, arrives on m.ch.
func (m *Member) ask(n, upTo int, notify func(int)) (int, error) {
	l := m.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if m.left.Load() {
		return 0, ErrLeft
	}
	l.count(m)
	now := l.clock.Now()
	most := l.lim.Burst // the most one grant can be
	if m.k.ceil.rate != 0 {
		most = min(most, m.k.ceil.burst)
	}
	m.want = int(min(int64(n), most))
	m.size = 0
	m.upTo = max(m.want, int(min(int64(upTo), most, int64(m.want)*(1+MaxCredit))))
	if l.waiting == 0 && l.serveNow(m.k, int64(m.want), now) {
		return m.want, nil
	}
	m.notify = notify
	l.enqueue(m)
	if notify == nil {
		l.dispatch(now)
		return 0, nil
	}
	m.got, m.inAsk = 0, true
	l.dispatch(now)
	m.inAsk = false
	if m.queued || m.notify != nil {
		return 0, nil
	}
	got := m.got // granted by this dispatch
	m.got = 0
	return got, nil
}

// Refund gives back n granted bytes that were not moved, to the link and
// the member's key.
func (m *Member) Refund(n int) {
	if n <= 0 {
		return
	}
	l := m.l
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	l.bucket.advance(now, l.catchUp(now))
	l.bucket.refund(int64(n), 0)
	m.k.ceil.advance(now, m.k.catchUp(now, m.k.ceil.rate))
	m.k.ceil.refund(int64(n), 0)
	l.granted -= int64(n)
	m.k.granted -= int64(n)
	l.dispatch(now)
}

// Leave removes the member from the link. A Take waiting in another
// goroutine must have returned first (cancel its context).
func (m *Member) Leave() {
	l := m.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if m.left.Load() {
		return
	}
	m.left.Store(true)
	if m.queued {
		l.dequeue(m)
	}
	k := m.k
	k.members--
	if k.members == 0 && k.q.n == 0 {
		delete(l.keys, k.name)
	}
}

// Key returns the member's key.
func (m *Member) Key() string { return m.k.name }

// ShareWindow is the time over which Member.Share measures its key's rate.
const ShareWindow = 100 * time.Millisecond

// Share returns the member's share of the link as it stands, in bytes per
// second: what its key was granted per second over its last measure of at
// least ShareWindow, split evenly among the key's members (which the link
// serves equally). It is 0 until the key has been measured, and for a
// member that left. A caller sizes its grants from it: a connection's
// share of a link is not set anywhere but found by the link's fair order,
// so it is measured. The link measures as it grants; Share takes no lock
// and reads no clock, so a caller may ask it for every grant.
func (m *Member) Share() int64 {
	if m.left.Load() {
		return 0
	}
	return m.k.share.Load()
}

// measure ends the key's share window at a grant at now once ShareWindow
// is over, and publishes the share of each of its members. Requires l.mu.
func (k *linkKey) measure(now time.Time) {
	switch d := now.Sub(k.shareAt); {
	case k.shareAt.IsZero():
		k.shareAt, k.shareBase = now, k.granted
	case d >= ShareWindow:
		rate := int64(float64(max(k.granted-k.shareBase, 0)) / d.Seconds())
		k.share.Store(rate / int64(max(k.members, 1)))
		k.shareAt, k.shareBase = now, k.granted
	}
}

// catchUp is how much beyond burst the link bucket may hold now: like a
// Gate's busy caller, a link with waiters keeps MaxCatchUp's worth of rate
// that late timers would otherwise lose.
func (l *Link) catchUp(now time.Time) int64 {
	if l.waiting > 0 || now.Sub(l.last) <= MaxCatchUp {
		return catchUp(l.lim.Rate)
	}
	return 0
}

// serveNow grants want to key k at once if nobody waits and every bucket
// has the tokens. Requires l.mu.
func (l *Link) serveNow(k *linkKey, want int64, now time.Time) bool {
	l.bucket.advance(now, l.catchUp(now))
	k.advance(now)
	if !l.bucket.has(want) || !k.ceil.has(want) {
		return false
	}
	l.grant(k, want, k.lim.Rate > 0 && k.assured.has(want), now)
	return true
}

// grant takes want from the link and key k. Requires l.mu.
func (l *Link) grant(k *linkKey, want int64, green bool, now time.Time) {
	l.bucket.take(want)
	k.ceil.take(want)
	// The system's virtual time is the start of the latest grant: a key
	// that returns from idle starts there, level with the keys being served.
	if green {
		k.assured.take(want)
		l.vt = max(l.vt, k.vt)
		k.vt += want * vtScale / int64(k.lim.Weight)
	} else {
		l.vtb = max(l.vtb, k.vtb)
		k.vtb += want * vtScale / int64(k.lim.Weight)
		k.borrowed += want
		l.borrowed += want
	}
	k.granted += want
	k.lastGrant = now
	k.measure(now)
	l.granted += want
	l.grants++
	l.last = now
}

// LinkTick is the shortest wait a Link's timer (or its driver's) is armed
// for. 4 ms: at 50 connections sharing 50 MB/s it cost a quarter less CPU
// than 1 ms, with the same fairness (docs/links.md).
const LinkTick = 4 * time.Millisecond

// MaxCredit bounds the credit a key behind its share gets on one grant, in
// grants (of the size asked for).
const MaxCredit = 15

// withCredit returns what to grant the head m of key k: its ask, plus what
// the key is owed if it fell behind the others (its virtual time lags the
// link's), within what m can use and the buckets hold. Requires l.mu.
func (l *Link) withCredit(k *linkKey, m *Member, green bool) int64 {
	want := int64(m.want)
	if m.upTo <= m.want {
		return want
	}
	lag := l.vtb - k.vtb
	if green {
		lag = l.vt - k.vt
	}
	if lag <= 0 {
		return want
	}
	owed := lag * int64(k.lim.Weight) / vtScale
	n := min(want+owed, int64(m.upTo))
	if k.ceil.rate != 0 {
		n = min(n, k.ceil.nt/nano)
	}
	if green && k.assured.rate != 0 {
		n = min(n, k.assured.nt/nano)
	}
	return max(n, want)
}

// vtScale keeps virtual times integral for weights up to MaxWeight.
const vtScale = 1 << 12

// enqueue puts m at the back of its key's queue, and the key in the fair
// order if it was not waiting. Requires l.mu.
func (l *Link) enqueue(m *Member) {
	k := m.k
	k.q.push(m)
	m.queued = true
	l.waiting++
	l.waited = true
	if m.notify == nil {
		l.blocked++
	}
	if k.state == idle {
		// A key that was idle starts at the present: no credit for idle
		// time. One back from moving its last grant keeps what it is
		// owed, up to MaxCatchUp's worth of the link's rate.
		if now := l.clock.Now(); now.Sub(k.lastGrant) > MaxCatchUp {
			k.vt, k.vtb = max(k.vt, l.vt), max(k.vtb, l.vtb)
		} else {
			owed := l.lim.Rate * int64(MaxCatchUp/time.Millisecond) / 1000 * vtScale / int64(k.lim.Weight)
			k.vt, k.vtb = max(k.vt, l.vt-owed), max(k.vtb, l.vtb-owed)
		}
		l.pushAssured(k)
	}
}

// dequeue takes a waiting m out, and its key out of the order if it has
// no other waiter. Requires l.mu.
func (l *Link) dequeue(m *Member) {
	k := m.k
	k.q.remove(m)
	m.queued = false
	l.waiting--
	if m.notify == nil {
		l.blocked--
	}
	if k.q.n == 0 {
		l.park(k)
		if k.members == 0 {
			delete(l.keys, k.name)
		}
	}
	if l.waiting == 0 {
		l.disarm()
	}
}

// park takes a key with no waiter out of every heap. Requires l.mu.
func (l *Link) park(k *linkKey) {
	switch k.state {
	case inAssured:
		l.assured.Remove(k.mainIdx)
	case inBorrow:
		l.borrow.Remove(k.mainIdx)
	}
	l.untime(k)
	k.state = idle
}

func (l *Link) pushAssured(k *linkKey) {
	k.state = inAssured
	l.assured.Push(k)
}

// untime takes k out of the timed heap, if it is there.
func (l *Link) untime(k *linkKey) {
	if k.timeIdx >= 0 {
		l.timed.Remove(k.timeIdx)
	}
}

func (l *Link) pushTimed(k *linkKey, at time.Time) {
	l.untime(k)
	k.wakeAt = at
	l.timed.Push(k)
}

// dispatch grants to waiting members in fair order while the link has
// tokens, then arms the timer for the next moment something can change.
// Requires l.mu.
func (l *Link) dispatch(now time.Time) {
	l.bucket.advance(now, l.catchUp(now))
	// Keys whose refill time has come go back to the assured order.
	for l.timed.Len() > 0 && !l.timed.Peek().wakeAt.After(now) {
		k := l.timed.Peek()
		l.untime(k)
		// A key held back by its own bucket was not eligible meanwhile: as
		// for a key back from idle, that time earns it no credit.
		switch k.state {
		case inBorrow: // its assured bucket has refilled
			l.borrow.Remove(k.mainIdx)
			k.vt = max(k.vt, l.vt)
			l.pushAssured(k)
		case inTimed: // its ceil bucket has refilled
			k.vt, k.vtb = max(k.vt, l.vt), max(k.vtb, l.vtb)
			l.pushAssured(k)
		}
	}
	for l.waiting > 0 {
		k, green := l.next(now)
		if k == nil {
			break
		}
		m := k.q.head
		want := l.withCredit(k, m, green)
		k.q.head.size = want
		if !l.bucket.has(want) {
			break // the timer is armed for the head's size
		}
		l.grant(k, want, green, now)
		k.q.remove(m)
		m.queued = false
		l.waiting--
		if f := m.notify; f != nil {
			m.notify, m.got = nil, int(want)
			if !m.inAsk {
				f(int(want))
			}
		} else {
			l.blocked--
			m.ch <- int(want)
		}
		if k.q.n == 0 {
			l.park(k)
			if k.members == 0 {
				delete(l.keys, k.name)
			}
		} else if green {
			l.assured.Fix(k.mainIdx)
		} else {
			l.borrow.Fix(k.mainIdx)
		}
	}
	l.arm(now)
}

// next returns the key to serve now and whether from its assured rate, or
// nil if no key may be served before a refill. It moves keys between the
// orders as their buckets require. Requires l.mu.
func (l *Link) next(now time.Time) (*linkKey, bool) {
	for l.assured.Len() > 0 {
		k := l.assured.Peek()
		want := int64(k.q.head.want)
		k.advance(now)
		if !k.ceil.has(want) {
			l.assured.Pop()
			k.state = inTimed
			l.pushTimed(k, now.Add(k.ceil.readyIn(want)))
			continue
		}
		if k.lim.Rate > 0 && k.assured.has(want) {
			return k, true
		}
		// Beyond its assured rate: borrow, and come back when it refills.
		l.assured.Pop()
		k.state = inBorrow
		l.borrow.Push(k)
		if k.lim.Rate > 0 {
			l.pushTimed(k, now.Add(k.assured.readyIn(want)))
		}
	}
	for l.borrow.Len() > 0 {
		k := l.borrow.Peek()
		want := int64(k.q.head.want)
		k.advance(now)
		if k.ceil.has(want) {
			return k, false
		}
		l.borrow.Pop()
		k.state = inTimed
		l.pushTimed(k, now.Add(k.ceil.readyIn(want)))
	}
	return nil, false
}

// arm sets the one timer to the next moment a grant may become possible:
// when the link has the head's tokens, or a key's refill time. Requires
// l.mu.
func (l *Link) arm(now time.Time) {
	var at time.Time
	if l.assured.Len() > 0 || l.borrow.Len() > 0 {
		var k *linkKey
		if l.assured.Len() > 0 {
			k = l.assured.Peek()
		} else {
			k = l.borrow.Peek()
		}
		at = now.Add(l.bucket.readyIn(max(int64(k.q.head.want), k.q.head.size)))
	}
	if l.timed.Len() > 0 && (at.IsZero() || l.timed.Peek().wakeAt.Before(at)) {
		at = l.timed.Peek().wakeAt
	}
	if at.IsZero() {
		l.disarm()
		return
	}
	if !l.timerAt.IsZero() && !at.Before(l.timerAt) && l.timerAt.After(now) {
		return // armed early enough already
	}
	// Wake at most every LinkTick: the grants due meanwhile are served
	// together (the bucket's catch-up keeps their tokens), so a busy link
	// costs 250 timer wake-ups a second, not one per grant.
	d := max(at.Sub(now), 0)
	if d > 0 && d < LinkTick {
		d = LinkTick
		at = now.Add(d)
	}
	l.timerAt = at
	switch {
	case l.drive != nil && l.blocked == 0:
		l.drive(at)
	case l.timer == nil:
		l.timer = l.clock.AfterFunc(d, l.fire)
	default:
		l.timer.Reset(d)
	}
}

// disarm tells a driver that no Dispatch is needed any more: nobody
// waits. The Link's own timer is left to fire: it finds nothing to do.
// Requires l.mu.
func (l *Link) disarm() {
	if l.drive != nil && !l.timerAt.IsZero() {
		l.timerAt = time.Time{}
		l.drive(time.Time{})
	}
}

func (l *Link) fire() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.timerAt = time.Time{}
	l.dispatch(l.clock.Now())
}

// SetDriver hands the Link's timer to a caller that has one of its own,
// such as a loop that serves many members through Ask: while every member
// waiting asked with Ask, instead of arming its timer, the Link calls
// drive with the time it next needs to make grants, and the
// driver calls [Link.Dispatch] at that time (or later: grants wait), or,
// once the Link calls drive with the zero time, no more: nobody waits.
// The Link calls drive with its own lock held: drive must note the time
// and return, and must not call into the Link. SetDriver must come before
// the Link's first member joins; nil gives the Link its own timer back.
// While a member waits
// in Take, the Link's own timer makes the grants: a driver busy moving the
// bytes of its own members would keep those waiting, and a Take's wake
// costs a goroutine wake-up anyway.
func (l *Link) SetDriver(drive func(at time.Time)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.drive = drive
}

// Dispatch makes the grants due now, as the Link's own timer would, for a
// driver (see [Link.SetDriver]).
func (l *Link) Dispatch() { l.fire() }

// Key states.
const (
	idle      = iota // no member waits
	inAssured        // in the assured order
	inBorrow         // in the borrow order (and timed, for its assured refill)
	inTimed          // waiting for its ceil to refill, in no order
)

// linkKey is a key's state in a Link.
type linkKey struct {
	name      string
	lim       KeyLimit
	assured   bucket
	ceil      bucket
	vt, vtb   int64
	q         memberQueue
	members   int
	state     int
	mainIdx   int // in assured or borrow
	timeIdx   int // in timed
	wakeAt    time.Time
	granted   int64
	borrowed  int64
	lastGrant time.Time

	// Member.Share's measure (measure): granted-shareBase bytes since
	// shareAt, and each member's share of the last window's rate.
	shareAt   time.Time
	shareBase int64
	share     atomic.Int64
}

// advance refills the key's buckets up to now; a busy key keeps, like the
// link, MaxCatchUp's worth beyond burst that late timers would lose.
func (k *linkKey) advance(now time.Time) {
	k.assured.advance(now, k.catchUp(now, k.assured.rate))
	k.ceil.advance(now, k.catchUp(now, k.ceil.rate))
}

// catchUp is the extra a bucket at rate may hold for this key now, in
// nano-bytes: MaxCatchUp's worth while the key waits or was just served.
func (k *linkKey) catchUp(now time.Time, rate int64) int64 {
	if k.q.n > 0 || now.Sub(k.lastGrant) <= MaxCatchUp {
		return catchUp(rate)
	}
	return 0
}

// setLimit applies kl; linkRate is the link's rate: a ceil at or above it
// adds nothing to the link's own bucket, so the key then has none.
func (k *linkKey) setLimit(kl KeyLimit, linkRate int64, now time.Time) {
	k.advance(now)
	k.lim = kl
	k.assured.set(kl.Rate, keyBurst(kl.Rate))
	ceil := kl.Ceil
	if ceil >= linkRate {
		ceil = 0 // unlimited: the link's bucket is the ceil
	}
	k.ceil.set(ceil, keyBurst(ceil))
	if k.assured.last.IsZero() {
		k.assured.last, k.ceil.last = now, now
	}
}

// memberQueue is a FIFO of waiting members, linked through them: O(1)
// push, pop and removal, no allocation.
type memberQueue struct {
	head, tail *Member
	n          int
}

func (q *memberQueue) push(m *Member) {
	m.prev, m.next = q.tail, nil
	if q.tail != nil {
		q.tail.next = m
	} else {
		q.head = m
	}
	q.tail = m
	q.n++
}

func (q *memberQueue) remove(m *Member) {
	if m.prev != nil {
		m.prev.next = m.next
	} else {
		q.head = m.next
	}
	if m.next != nil {
		m.next.prev = m.prev
	} else {
		q.tail = m.prev
	}
	m.prev, m.next = nil, nil
	q.n--
}

// The fair orders: by virtual time in the assured order, by borrowed
// virtual time in the borrow order, ties by name for determinism.
func byVT(a, b *linkKey) bool {
	if a.vt != b.vt {
		return a.vt < b.vt
	}
	return a.name < b.name
}

func byVTB(a, b *linkKey) bool {
	if a.vtb != b.vtb {
		return a.vtb < b.vtb
	}
	return a.name < b.name
}

func setMainIdx(k *linkKey, i int) { k.mainIdx = i }
