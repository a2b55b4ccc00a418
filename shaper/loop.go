package shaper

import (
	"sync"
	"sync/atomic"
	"time"
)

// A Loop serves many [Task]s from one goroutine with one timer, as an event
// loop would: each is served when it is due, on a time grid shared by the
// tasks, so that a Loop wakes once for a batch of due tasks whatever their
// number. It can also drive [Link]s (see [Loop.Drive]): it then makes a
// link's grants when its own timer fires, and serves at once the tasks the
// grants were for.
//
// Why: a caller that waits on its own [Gate] wakes its goroutine for every
// grant, and at 1 MB/s a grant is 10 KB: a hundred wake-ups a second per
// connection. The Go scheduler wakes a thread, and often a second one to
// share the work, for each batch of them, which costs more than the bytes
// do. A Loop wakes once per batch of due grants.
//
// A task is handed in with [Loop.Add] and served (its Serve method called
// on the Loop's goroutine) until Serve says [ServeBack], or the owner
// asks for it back with [Loop.Recall]; either way the Loop calls its
// HandBack, once, and forgets it. A task waiting for a link's grant
// ([ServePark]) is out of the due order until [Loop.Grant] brings its
// grant. Between Add and HandBack the task's state belongs to the Loop's
// goroutine; ownership passes with those two calls, so a task needs no
// lock of its own.
//
// The Loop's goroutine exists only while it has something to serve or a
// link to drive; the next Add or drive starts it again. Time comes from
// the Loop's [Clock]. Its methods are safe for concurrent use.
type Loop struct {
	clock Clock

	mu      sync.Mutex
	running bool                 // a goroutine runs the loop
	asleep  bool                 // it waits for wakeAt (zero: for a kick only)
	wakeAt  time.Time            //
	in      []Task               // handed in
	out     []Task               // asked back
	granted []loopGrant          // link grants to parked tasks
	links   map[*Link]time.Time  // driven links that need a Dispatch, and when
	kick    chan struct{}        // wakes the goroutine while asleep
	due     indexHeap[*LoopSlot] // the goroutine's own (passed on under mu)
	timer   Timer                // made at the first wait
	wake    <-chan time.Time     // timer's channel
	timerAt time.Time            // what timer is armed for; zero once fired or stopped
	parked  int                  // tasks waiting for a link's grant, in no heap

	tasks, handIns, wakes atomic.Int64
}

// A Task is one flow a [Loop] serves: in sluice, one direction of a
// connection. Implementations embed a [LoopSlot].
type Task interface {
	// Serve moves what the task may move now, on the Loop's goroutine;
	// served is the number of tasks the Loop serves, for [ServeAfter]'s
	// grid. It returns what the Loop does with the task next.
	Serve(served int) Next
	// Granted gives a parked task the n bytes a link granted it (see
	// [Loop.Grant]), on the Loop's goroutine; the Loop then serves it.
	Granted(n int)
	// HandBack is called on the Loop's goroutine when the Loop lets the
	// task go (after [ServeBack], or a [Loop.Recall]); it is the task's
	// last call from the Loop until the next Add.
	HandBack()
	// slot returns the task's place in its Loop.
	slot() *LoopSlot
}

// LoopSlot is a [Task]'s place in a [Loop]; a Task embeds one. The zero
// value is a task in no Loop.
type LoopSlot struct {
	task   Task
	idx    int // in the due heap, plus one; 0 when not there
	at     time.Time
	parked bool
}

// slot is Task's method, promoted to every type that embeds a LoopSlot.
func (s *LoopSlot) slot() *LoopSlot { return s } //nolint:unused // called through Task; its implementations are in other packages

// Next is what a [Task]'s Serve tells its [Loop] to do with it.
type Next struct {
	kind      nextKind
	wait, gap time.Duration
}

type nextKind uint8

const (
	nextAgain nextKind = iota
	nextAfter
	nextPark
	nextBack
)

// What Serve may return.
var (
	// ServeAgain serves the task again in the Loop's next turn, after
	// the other tasks due now.
	ServeAgain = Next{kind: nextAgain}
	// ServePark keeps the task out of the due order until [Loop.Grant]
	// brings it a link's grant.
	ServePark = Next{kind: nextPark}
	// ServeBack hands the task back (see Task.HandBack).
	ServeBack = Next{kind: nextBack}
)

// ServeAfter serves the task again wait from now, late on the Loop's time
// grid by less than the grid's step (see [LoopStep]); gap is the time
// between the task's grants at its rate, which sizes the step.
func ServeAfter(wait, gap time.Duration) Next { return Next{kind: nextAfter, wait: wait, gap: gap} }

// loopGrant is a link's grant to a parked task.
type loopGrant struct {
	t Task
	n int
}

// NewLoop returns a Loop on clock (nil means the real clock). It holds no
// goroutine until it has work.
func NewLoop(clock Clock) *Loop {
	if clock == nil {
		clock = realClock{}
	}
	return &Loop{clock: clock, kick: make(chan struct{}, 1), links: map[*Link]time.Time{},
		due: newIndexHeap(func(a, b *LoopSlot) bool { return a.at.Before(b.at) }, func(s *LoopSlot, i int) { s.idx = i + 1 })}
}

// LoopStats are a Loop's counters.
type LoopStats struct {
	// Tasks is the number of tasks the Loop has now (parked ones
	// included).
	Tasks int64
	// HandIns counts Adds; Wakes counts timer wake-ups of the Loop's
	// goroutine.
	HandIns, Wakes int64
}

// Stats returns the Loop's counters.
func (l *Loop) Stats() LoopStats {
	return LoopStats{Tasks: l.tasks.Load(), HandIns: l.handIns.Load(), Wakes: l.wakes.Load()}
}

// Drive hands link's timer to the Loop (see [Link.SetDriver]): the Loop
// calls [Link.Dispatch] when the link next needs grants, on its own
// goroutine, and serves at once the tasks the grants go to. It must come
// before the link's first member joins.
func (l *Loop) Drive(link *Link) {
	link.SetDriver(func(at time.Time) { l.drive(link, at) })
}

// drive is link's driver: link needs a Dispatch at at, or none if at is
// zero. link's lock is held.
func (l *Loop) drive(link *Link, at time.Time) {
	l.mu.Lock()
	if at.IsZero() { // nobody waits on link
		delete(l.links, link)
		l.mu.Unlock()
		return
	}
	if cur, ok := l.links[link]; !ok || at.Before(cur) {
		l.links[link] = at
	}
	wake := l.asleep && (l.wakeAt.IsZero() || at.Before(l.wakeAt))
	l.wakeLocked(wake)
}

// Add hands t to the Loop, which serves it at once and then as it says.
// t must not be in a Loop already.
func (l *Loop) Add(t Task) {
	l.handIns.Add(1)
	s := t.slot()
	s.task = t
	l.mu.Lock()
	l.in = append(l.in, t)
	l.wakeLocked(l.asleep)
}

// Recall asks the Loop to hand t back as soon as it can: t's HandBack is
// called, once, unless it was called already.
func (l *Loop) Recall(t Task) {
	l.mu.Lock()
	l.out = append(l.out, t)
	l.wakeLocked(l.asleep)
}

// Grant brings a parked task the n bytes a link granted it: the Loop
// calls its Granted and serves it. A grant for a task no longer parked
// (recalled meanwhile) is dropped: whoever recalled it withdrew the ask.
// Grant is safe to call with a link's lock held (from an Ask's notify).
func (l *Loop) Grant(t Task, n int) {
	l.mu.Lock()
	l.granted = append(l.granted, loopGrant{t, n})
	l.wakeLocked(l.asleep)
}

// wakeLocked releases l.mu, and starts the loop's goroutine if none runs,
// or wakes it if wake.
func (l *Loop) wakeLocked(wake bool) {
	start := !l.running
	l.running = true
	l.mu.Unlock()
	switch {
	case start:
		go l.run()
	case wake:
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
}

// run is the Loop's goroutine. It ends when it serves no task, drives no
// link that needs a Dispatch, and none is handed in.
func (l *Loop) run() {
	var in, out []Task
	var granted []loopGrant
	var due []*Link
	for {
		// The links due first: their grants to this loop's tasks are
		// served in this turn.
		now := l.clock.Now()
		l.mu.Lock()
		l.asleep = false
		for link, at := range l.links {
			if !at.After(now) {
				due = append(due, link)
				delete(l.links, link)
			}
		}
		l.mu.Unlock()
		for _, link := range due {
			link.Dispatch()
		}
		clear(due)
		due = due[:0]

		l.mu.Lock()
		in, l.in = l.in, in[:0]
		out, l.out = l.out, out[:0]
		granted, l.granted = l.granted, granted[:0]
		if len(in) == 0 && len(out) == 0 && len(granted) == 0 && l.due.Len() == 0 && l.parked == 0 && len(l.links) == 0 {
			// The loop's own fields pass to the next goroutine under mu.
			if l.timer != nil {
				l.timer.Stop()
				l.timerAt = time.Time{}
			}
			l.running = false
			l.mu.Unlock()
			return
		}
		l.mu.Unlock()

		for _, t := range in {
			l.tasks.Add(1)
			s := t.slot()
			s.at = now
			l.due.Push(s)
		}
		for _, g := range granted {
			if s := g.t.slot(); s.parked {
				s.parked = false
				l.parked--
				g.t.Granted(g.n)
				s.at = now
				l.due.Push(s)
			}
		}
		for _, t := range out {
			switch s := t.slot(); {
			case s.idx > 0:
				l.due.Remove(s.idx - 1)
				l.handBack(t)
			case s.parked:
				s.parked = false
				l.parked--
				l.handBack(t)
			} // else it was handed back already
		}
		clear(in)
		clear(out)
		clear(granted)
		for l.due.Len() > 0 && !l.due.Peek().at.After(now) {
			s := l.due.Peek()
			switch next := s.task.Serve(l.due.Len() + l.parked); next.kind {
			case nextAgain:
				s.at = l.clock.Now()
				l.due.Fix(0)
			case nextAfter:
				s.at = OnGrid(l.clock.Now().Add(next.wait), LoopStep(next.gap, l.due.Len()+l.parked))
				l.due.Fix(0)
			case nextPark:
				l.due.Pop()
				s.parked = true
				l.parked++
			default:
				l.due.Pop()
				l.handBack(s.task)
			}
		}
		l.sleep()
	}
}

// handBack lets t go.
func (l *Loop) handBack(t Task) {
	l.tasks.Add(-1)
	t.HandBack()
}

// sleep waits until the first task or link is due, or for a kick: an Add,
// a Recall, a Grant, or an earlier drive. It returns at once if one came
// while the loop was awake.
func (l *Loop) sleep() {
	l.mu.Lock()
	if len(l.in) > 0 || len(l.out) > 0 || len(l.granted) > 0 {
		l.mu.Unlock()
		return
	}
	var wake time.Time
	if l.due.Len() > 0 {
		wake = l.due.Peek().at
	}
	for _, at := range l.links {
		if wake.IsZero() || at.Before(wake) {
			wake = at
		}
	}
	now := l.clock.Now()
	if wake.IsZero() && l.parked == 0 || !wake.IsZero() && !wake.After(now) {
		l.mu.Unlock()
		return // to end, unless handed more meanwhile; or due already
	}
	l.asleep, l.wakeAt = true, wake
	l.mu.Unlock()
	if wake.IsZero() {
		<-l.kick // parked tasks wait for their links' grants
		return
	}
	if !wake.Equal(l.timerAt) {
		// Exact: the tasks' times are on the grid. Not re-armed for the
		// same time: a timer moved earlier wakes the netpoller.
		d := wake.Sub(now)
		if l.timer == nil {
			l.timer, l.wake = exactTimer(l.clock, d)
		} else {
			l.timer.Reset(d)
		}
		l.timerAt = wake
	}
	select {
	case <-l.kick:
	case <-l.wake:
		l.timerAt = time.Time{}
		l.wakes.Add(1)
	}
}

// The Loop serves a task on the time grid ([OnGrid]): a task due at t is served at the
// next multiple of its step, a power of two of nanoseconds. Tasks then
// come due together and the Loop wakes once for them all: at 1 MB/s with
// 10 KB grants, at most 119 times a second however many connections it
// serves. A busy [Gate] keeps the tokens that accrue meanwhile
// ([MaxCatchUp]), so rates stay exact; a grant moves by less than the
// step, so the step bounds how uneven the flow is from one 100 ms window
// to the next (8.4 ms is 8.4%).
//
// Waking together only saves wake-ups when there are tasks to wake
// together: the step is the largest power of two at most the gap between
// a task's grants times the tasks the Loop serves over LoopBatch, and at
// most MaxLoopStep. One task alone (1 MB/s, 10 KB grants) is served
// within 1 ms of its time, as often as without a grid; eight or more, at
// 1 MB/s, on the 8.4 ms grid.
const (
	MaxLoopStep = 1 << 23 * time.Nanosecond // 8.4 ms
	LoopBatch   = 8
)

// LoopStep is the grid step of a task with gap between grants in a Loop
// that serves n tasks.
func LoopStep(gap time.Duration, n int) time.Duration {
	return GridStep(min(gap*time.Duration(n)/LoopBatch, MaxLoopStep))
}

// GrantGap is the time between grants of chunk bytes at rate bytes per
// second; 0 for no rate.
func GrantGap(chunk, rate int64) time.Duration {
	if rate <= 0 {
		return 0
	}
	return time.Duration(chunk * int64(time.Second) / rate)
}
