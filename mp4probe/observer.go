package mp4probe

import (
	"bytes"
	"container/list"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
)

// Mode is what an Observer expects in the server's bytes.
type Mode int

// Modes.
const (
	// Auto treats the stream as HTTP/1.x if it starts with "HTTP/", else as
	// a raw file.
	Auto Mode = iota
	// Raw treats the whole stream as one file.
	Raw
	// HTTP treats the stream as HTTP/1.x responses.
	HTTP
)

// Fallback reasons: why a video is forwarded at the normal limits only (or
// at the default rate, for MoovUnknown).
const (
	FallbackMalformed   = "malformed"    // boxes or metadata that do not parse
	FallbackEncrypted   = "encrypted"    // protected samples (cenc)
	FallbackTooLarge    = "too_large"    // a moov or moof above MaxKeep
	FallbackNoMedia     = "no_media"     // no audio or video samples
	FallbackMoovUnknown = "moov_unknown" // moov after the media, not learned before
	FallbackBusy        = "busy"         // the shared metadata Budget was spent
)

// FallbackReasons lists every fallback reason, for metrics.
var FallbackReasons = []string{FallbackMalformed, FallbackEncrypted, FallbackTooLarge, FallbackNoMedia, FallbackMoovUnknown, FallbackBusy}

// Stats count what the Observers that share them saw. Safe for concurrent
// use; the zero value is ready.
type Stats struct {
	Videos     atomic.Int64 // MP4 bodies seen
	Plans      atomic.Int64 // plans made from a movie's metadata
	BurstBytes atomic.Int64 // bytes planned at full speed, all plans
	// PlannedRate sums the bitrates (bytes/s) of the plans made, so
	// PlannedRate/Plans is their average. A fragmented movie's burst and
	// rate are counted when its plan ends (they grow with its fragments).
	PlannedRate atomic.Int64
	fallbacks   sync.Map // reason → *atomic.Int64
}

// Fallbacks returns the count of fallbacks for reason.
func (s *Stats) Fallbacks(reason string) int64 {
	if v, ok := s.fallbacks.Load(reason); ok {
		return v.(*atomic.Int64).Load()
	}
	return 0
}

func (s *Stats) fallback(reason string) {
	v, _ := s.fallbacks.LoadOrStore(reason, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

// Options configure an Observer.
type Options struct {
	Mode Mode
	Pace Pace
	// Cache keeps movies learned from earlier responses (moov at the end,
	// fetched by a player's tail Range request). Nil keeps none.
	Cache *Cache
	// Stats are counted into; nil counts nothing.
	Stats *Stats
	// MaxKeep bounds a moov or moof buffered; 0 means DefaultMaxKeep.
	MaxKeep int64
	// Budget, if not nil, bounds what all the Observers sharing it buffer
	// at once.
	Budget *Budget
}

// Observer watches the two directions of one proxied connection and plans
// how to pace the server's bytes: see [Plan]. It is passive: it is shown
// bytes after they were forwarded and never changes them. Up and Observe
// may be called from two goroutines; every other method belongs to the
// goroutine that calls Observe.
type Observer struct {
	opts  Options
	stats *Stats

	mu   sync.Mutex // guards http, whose pairing queue both directions touch
	http *HTTPStream
	mode Mode // set by the Observe goroutine under mu

	pos  int64       // server bytes observed or skipped
	body *body       // the body being walked, nil outside one
	plan *Plan       // the current plan, nil when unpaced
	done atomic.Bool // nothing more to learn
	held int64       // bytes of opts.Budget held for the box being kept
}

// body is one MP4 candidate: a response body, or the raw stream.
type body struct {
	w     Walker
	base  int64 // stream offset of its first byte
	start int64 // file offset of its first byte
	key   string
	size  int64 // the file's size, -1 if unknown
	movie *Movie
	video bool // counted as a video
	mp4ct bool // the response said it is MP4
	ended bool // walker done (failed, or nothing more to learn)
	media bool // an mdat came before any moov
}

// NewObserver returns an Observer for one connection.
func NewObserver(o Options) *Observer {
	ob := &Observer{opts: o, stats: o.Stats, mode: o.Mode}
	if ob.stats == nil {
		ob.stats = new(Stats)
	}
	return ob
}

// Plan returns how the server's next bytes are paced, or nil for no pace.
func (o *Observer) Plan() *Plan { return o.plan }

// Pos returns how many server bytes were observed or skipped.
func (o *Observer) Pos() int64 { return o.pos }

// Done reports that the Observer has nothing more to learn from this
// connection (not MP4, not HTTP, or it gave up): the caller may stop
// showing it bytes. A plan in force stays in force.
func (o *Observer) Done() bool { return o.done.Load() }

// WantsUp reports whether the Observer still needs the client's bytes: not
// for a raw stream, nor once it is done. Safe to call with Up.
func (o *Observer) WantsUp() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.mode != Raw && !o.done.Load()
}

// Up observes bytes the client sent (requests, for an HTTP stream).
func (o *Observer) Up(p []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.mode == Raw || o.done.Load() {
		return
	}
	if o.http == nil {
		o.http = o.newHTTP()
	}
	o.http.Upstream(p)
}

// Observe observes the server's next bytes, after they were forwarded.
func (o *Observer) Observe(p []byte) {
	if len(p) == 0 || o.done.Load() {
		o.pos += int64(len(p))
		return
	}
	if o.mode == Auto {
		m := Raw
		if bytes.HasPrefix([]byte("HTTP/"), p[:min(len(p), 5)]) {
			m = HTTP
		}
		o.mu.Lock()
		o.mode = m
		o.mu.Unlock()
	}
	if o.mode == Raw {
		if o.body == nil {
			o.body = o.newBody(0, 0, "", -1, false)
		}
		o.feed(p)
		o.pos += int64(len(p))
		if o.body.ended {
			o.done.Store(true)
		}
		return
	}
	o.mu.Lock()
	if o.http == nil {
		o.http = o.newHTTP()
	}
	o.http.Downstream(p) // calls back into onResponse, onBody, onEnd
	failed := o.http.Failed() != nil
	o.mu.Unlock()
	o.pos += int64(len(p))
	if failed {
		o.done.Store(true)
		o.body = nil
	}
}

// Close gives back what the Observer holds of its Budget. Call it once the
// connection ended; the Observer must not be used after.
func (o *Observer) Close() {
	o.release()
	o.setPlan(nil)
}

// release gives back the Budget held for a kept box.
func (o *Observer) release() {
	o.opts.Budget.give(o.held)
	o.held = 0
}

// EOF tells the Observer the server closed its side.
func (o *Observer) EOF() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.http != nil {
		o.http.EOF()
	}
}

// Opaque returns how many of the server's next bytes the Observer needs
// not see (the rest of an mdat): the caller may forward them without
// copying them through user space and report them with Skip. -1 means
// it needs no more bytes at all; 0 that it must see the next ones.
func (o *Observer) Opaque() int64 {
	if o.done.Load() {
		return -1
	}
	if o.body == nil {
		return 0
	}
	walk := int64(-1)
	if !o.body.ended {
		walk = o.body.w.Opaque()
	}
	if o.mode == Raw {
		return walk
	}
	o.mu.Lock()
	left := o.http.BodyLeft()
	o.mu.Unlock()
	switch {
	case left == 0 || walk == 0:
		return 0
	case left < 0:
		return walk
	case walk < 0:
		return left
	}
	return min(left, walk)
}

// Need returns how many of the server's next bytes the Observer must see
// before it can plan further (the rest of a moov or moof, or of a box
// header), or 0 if it cannot tell. A caller that paces moves at most these
// before asking the plan again, so no media bytes go under a plan that the
// box before them would have changed.
func (o *Observer) Need() int64 {
	switch {
	case o.done.Load():
		return 0
	case o.body == nil && (o.mode != HTTP || o.pos == 0):
		return 8 // the first box header (or "HTTP/")
	case o.body == nil:
		return 1024 // a response head, most of one or all
	case o.body.ended:
		return 0
	}
	n := o.body.w.Need()
	if o.mode == HTTP {
		o.mu.Lock()
		left := o.http.BodyLeft()
		o.mu.Unlock()
		if left > 0 {
			n = min(n, left)
		}
	}
	return n
}

// Skip accounts for n server bytes forwarded without being shown; n must
// not exceed Opaque (unless Opaque is -1).
func (o *Observer) Skip(n int64) {
	if n <= 0 {
		return
	}
	if !o.done.Load() && o.body != nil {
		if !o.body.ended {
			o.body.w.Skip(n)
		}
		if o.mode == HTTP {
			o.mu.Lock()
			o.http.SkipBody(n)
			o.mu.Unlock()
		}
	}
	o.pos += n
}

func (o *Observer) newHTTP() *HTTPStream {
	return &HTTPStream{OnResponse: o.onResponse, OnBody: o.onBody, OnEnd: o.onEnd}
}

// onResponse starts following a response body. Requires o.mu held.
func (o *Observer) onResponse(r *Response) {
	o.release()
	o.setPlan(nil)
	o.body = nil
	if r.NoBody() || (r.Status != 200 && r.Status != 206) {
		return
	}
	start, size := int64(0), r.Length
	if r.Status == 206 {
		if r.RangeStart < 0 {
			return
		}
		start, size = r.RangeStart, r.RangeTotal
	}
	key := resourceKey(r.Request)
	ct := strings.ToLower(r.ContentType)
	mp4ct := strings.HasPrefix(ct, "video/mp4") || strings.HasPrefix(ct, "audio/mp4") ||
		strings.HasPrefix(ct, "application/mp4") || strings.HasPrefix(ct, "video/quicktime")
	o.body = o.newBody(r.BodyOffset, start, key, size, mp4ct)
	if m := o.opts.Cache.Get(key, size); m != nil {
		o.body.movie = m
		o.startPlan(o.body)
		return
	}
	// A Range inside the media of a file whose moov comes after it (a
	// player's tail request, aligned to its own blocks rather than to the
	// moov): walk from where the media ends, as an earlier response showed.
	if h := o.opts.Cache.Hint(key, size); start > 0 && h > start {
		o.body.w.Resume("mdat", h-start)
		o.body.media = true
	}
}

// onBody feeds a body piece. Requires o.mu held.
func (o *Observer) onBody(r *Response, off int64, data []byte) {
	b := o.body
	if b == nil {
		return
	}
	o.feed(data)
}

// onEnd ends a response body. Requires o.mu held.
func (o *Observer) onEnd(r *Response) {
	o.release()
	o.setPlan(nil)
	o.body = nil
}

func (o *Observer) newBody(base, start int64, key string, size int64, mp4ct bool) *body {
	b := &body{base: base, start: start, key: key, size: size, mp4ct: mp4ct}
	b.w = Walker{
		MaxKeep: o.opts.MaxKeep,
		Keep: func(x Box) bool {
			wanted := x.Type == "moov" || (x.Type == "moof" && b.movie != nil && b.movie.Fragmented)
			if b.ended || !wanted {
				return false
			}
			n := x.Size - int64(x.Header)
			if x.Size < 0 || n > o.maxKeep() {
				return true // the Walker refuses it: too large
			}
			if !o.opts.Budget.take(n) {
				o.giveUp(FallbackBusy)
				return false
			}
			o.held += n
			return true
		},
		OnBox:  func(x Box) { o.onBox(b, x) },
		OnKept: func(x Box, payload []byte) { o.onKept(b, x, payload) },
	}
	return b
}

// startPlan plans a body whose movie is known, or at the default rate a
// video whose movie is not known yet.
func (o *Observer) startPlan(b *body) {
	if b.movie != nil {
		if !b.video {
			b.video = true
			o.stats.Videos.Add(1)
		}
		o.setPlan(NewPlan(b.movie, b.base, b.start, o.opts.Pace))
		o.stats.Plans.Add(1)
		if !b.movie.Fragmented {
			o.stats.BurstBytes.Add(o.plan.BurstBytes())
			o.stats.PlannedRate.Add(o.plan.Bitrate)
			b.ended = true // the tables say all there is to know
		}
		return
	}
	o.stats.fallback(FallbackMoovUnknown)
	o.setPlan(defaultPlan(b.base, b.start, o.opts.Pace))
}

// setPlan replaces the current plan. A fragmented movie's burst and rate
// are only known as its fragments come, so they are counted when its plan
// ends.
func (o *Observer) setPlan(p *Plan) {
	if old := o.plan; old != nil && old.Movie != nil && old.Movie.Fragmented {
		o.stats.BurstBytes.Add(old.BurstBytes())
		o.stats.PlannedRate.Add(old.Movie.Bitrate())
	}
	o.plan = p
}

// feed shows a body piece to its walker.
func (o *Observer) feed(p []byte) {
	b := o.body
	if b == nil || b.ended {
		return
	}
	b.w.Feed(p)
	err := b.w.Failed()
	if err != nil {
		o.release() // a box being kept will not be finished
	}
	if err != nil && !b.ended {
		b.ended = true
		switch {
		case !b.video && b.start > 0 && b.mp4ct && o.plan == nil:
			// A Range inside an MP4 whose moov is not known (yet).
			o.startPlan(b)
		case !b.video:
			// Not MP4 at all: nothing to pace.
		case errors.Is(err, ErrBoxTooBig):
			o.giveUp(FallbackTooLarge)
		default:
			o.giveUp(FallbackMalformed)
		}
	}
}

// giveUp counts a fallback and drops the plan made from this body's boxes:
// its bytes go at the connection's normal limits.
func (o *Observer) giveUp(reason string) {
	o.stats.fallback(reason)
	o.setPlan(nil)
	o.body.ended = true
}

func (o *Observer) onBox(b *body, x Box) {
	if b.ended {
		return // gave up inside the piece being fed
	}
	if x.Offset == 0 && b.start == 0 && !b.video {
		b.video = true
		o.stats.Videos.Add(1)
	}
	if x.Type == "mdat" && b.movie == nil {
		b.media = true
		if x.Size > 0 {
			o.opts.Cache.PutHint(b.key, b.size, b.start+x.End())
		}
		if o.plan == nil && b.start == 0 {
			o.startPlan(b) // media before the moov: the default rate until known
		}
	}
}

func (o *Observer) onKept(b *body, x Box, payload []byte) {
	defer o.release() // the payload is not kept past this call
	if b.ended {
		return
	}
	switch x.Type {
	case "moov":
		if b.movie != nil {
			return
		}
		m, err := DecodeMoov(payload, b.start+x.Offset, x.Header)
		if err != nil {
			if !b.video { // a tail Range that starts with a moov
				b.video = true
				o.stats.Videos.Add(1)
			}
			o.giveUp(fallbackReason(err))
			return
		}
		b.movie = m
		if !m.Fragmented {
			o.opts.Cache.Put(b.key, b.size, m)
		}
		if b.media || (x.Offset == 0 && b.start > 0) {
			// The moov after the media, or a tail Range for it: learned
			// for later requests, nothing left to pace here.
			b.ended = true
			return
		}
		if o.plan == nil || o.plan.Movie == nil {
			o.startPlan(b)
		}
	case "moof":
		if err := b.movie.AddMoof(payload, b.start+x.Offset); err != nil {
			o.giveUp(fallbackReason(err))
		}
	}
}

func (o *Observer) maxKeep() int64 {
	if o.opts.MaxKeep > 0 {
		return o.opts.MaxKeep
	}
	return DefaultMaxKeep
}

func fallbackReason(err error) string {
	switch {
	case errors.Is(err, ErrEncrypted):
		return FallbackEncrypted
	case errors.Is(err, ErrNoMedia):
		return FallbackNoMedia
	}
	return FallbackMalformed
}

// resourceKey names the file a request asks for: host and path, without
// the query (signed URLs differ per viewer for the same file).
func resourceKey(r Request) string {
	t := r.Target
	if i := strings.Index(t, "://"); i >= 0 { // absolute-form
		t = t[i+3:]
		if j := strings.IndexByte(t, '/'); j >= 0 {
			t = t[j:]
		}
	}
	if i := strings.IndexAny(t, "?#"); i >= 0 {
		t = t[:i]
	}
	if t == "" || r.Host == "" && !strings.HasPrefix(t, "/") {
		return ""
	}
	return strings.ToLower(r.Host) + t
}

// Cache keeps the movies learned from responses, by resource (host and
// path), least recently used first out. Safe for concurrent use; a nil
// *Cache keeps nothing.
type Cache struct {
	mu     sync.Mutex
	max    int
	ll     *list.List
	byKey  map[string]*list.Element
	movies int // entries with a movie, not only a hint
}

type cacheEntry struct {
	key   string
	size  int64
	movie *Movie // nil while only the hint is known
	next  int64  // file offset just past the first mdat, 0 if unknown
}

// NewCache returns a Cache of at most max movies (each at most MaxPoints
// curve points, about 130 KiB). max <= 0 returns nil: no cache.
func NewCache(max int) *Cache {
	if max <= 0 {
		return nil
	}
	return &Cache{max: max, ll: list.New(), byKey: map[string]*list.Element{}}
}

// Get returns the movie kept for key if its file size matches size (either
// may be -1, unknown), or nil.
func (c *Cache) Get(key string, size int64) *Movie {
	if c == nil || key == "" {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ent := c.get(key, size)
	if ent == nil {
		return nil
	}
	return ent.movie
}

// get returns the entry for key if its size matches. Requires c.mu held.
func (c *Cache) get(key string, size int64) *cacheEntry {
	e, ok := c.byKey[key]
	if !ok {
		return nil
	}
	ent := e.Value.(*cacheEntry)
	if size >= 0 && ent.size >= 0 && size != ent.size {
		return nil
	}
	c.ll.MoveToFront(e)
	return ent
}

// Hint returns where the first mdat of the file key ends, as an earlier
// response showed, or 0.
func (c *Cache) Hint(key string, size int64) int64 {
	if c == nil || key == "" {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if ent := c.get(key, size); ent != nil {
		return ent.next
	}
	return 0
}

// PutHint records where the first mdat of the file key ends.
func (c *Cache) PutHint(key string, size, next int64) {
	if c == nil || key == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if ent := c.get(key, size); ent != nil {
		ent.next = next
		return
	}
	c.put(&cacheEntry{key: key, size: size, next: next})
}

// Put keeps movie for key, a file of size bytes (-1 if unknown).
func (c *Cache) Put(key string, size int64, m *Movie) {
	if c == nil || key == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var next int64
	if ent := c.get(key, size); ent != nil {
		next = ent.next
	}
	c.put(&cacheEntry{key: key, size: size, movie: m, next: next})
}

// put adds or replaces an entry. Requires c.mu held.
func (c *Cache) put(ent *cacheEntry) {
	if ent.movie != nil {
		c.movies++
	}
	if e, ok := c.byKey[ent.key]; ok {
		if e.Value.(*cacheEntry).movie != nil {
			c.movies--
		}
		e.Value = ent
		c.ll.MoveToFront(e)
		return
	}
	c.byKey[ent.key] = c.ll.PushFront(ent)
	for c.ll.Len() > c.max {
		old := c.ll.Remove(c.ll.Back()).(*cacheEntry)
		delete(c.byKey, old.key)
		if old.movie != nil {
			c.movies--
		}
	}
}

// Len returns how many movies are kept (files known only by a hint are not
// counted).
func (c *Cache) Len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.movies
}
