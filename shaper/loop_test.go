package shaper_test

import (
	"sync"
	"testing"
	"time"

	"github.com/sluiceproxy/sluice/shaper"
	"github.com/sluiceproxy/sluice/shaper/shapertest"
)

func TestLoopStep(t *testing.T) {
	for _, c := range []struct {
		name string
		gap  time.Duration
		n    int
		want time.Duration
	}{
		{"alone", 10 * time.Millisecond, 1, 1 << 20},                         // within 1 ms of its time
		{"eight at 1 MB/s, 10 KB grants", 10 * time.Millisecond, 8, 1 << 23}, // the 8.4 ms grid
		{"many", 10 * time.Millisecond, 500, shaper.MaxLoopStep},             // never beyond MaxLoopStep
		{"8 KiB grants at 1 MB/s", 8_192_000, 8, 1 << 22},                    // a power of two within the gap
		{"no gate of its own", 0, 5, 1},                                      // no grid
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := shaper.LoopStep(c.gap, c.n); got != c.want {
				t.Errorf("LoopStep(%v, %d) = %d, want %d", c.gap, c.n, got, c.want)
			}
		})
	}
}

func TestOnGrid(t *testing.T) {
	t0 := shapertest.Epoch
	step := time.Duration(1 << 20)
	on := shaper.OnGrid(t0, step)
	if on.UnixNano()%int64(step) != 0 || on.Before(t0) || on.Sub(t0) >= step {
		t.Fatalf("OnGrid(t0, %v) = t0+%v, want the next multiple of the step", step, on.Sub(t0))
	}
	if got := shaper.OnGrid(on, step); !got.Equal(on) {
		t.Errorf("OnGrid of a time on the grid moved it by %v", got.Sub(on))
	}
	if got := shaper.OnGrid(on.Add(1), step); got.Sub(on) != step {
		t.Errorf("OnGrid(on+1ns) = on+%v, want on+%v", got.Sub(on), step)
	}
}

// task is a Task that records when it is served and answers from a
// script, one Next per Serve.
type task struct {
	shaper.LoopSlot
	clk     *shapertest.Clock
	mu      sync.Mutex
	served  []time.Time
	script  []shaper.Next
	granted []int
	back    chan struct{}
	servedc chan struct{} // a value per Serve
}

func newTask(clk *shapertest.Clock, script ...shaper.Next) *task {
	return &task{clk: clk, script: script, back: make(chan struct{}, 1), servedc: make(chan struct{}, 16)}
}

func (k *task) Serve(int) shaper.Next {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.served = append(k.served, k.clk.Now())
	k.servedc <- struct{}{}
	if len(k.script) == 0 {
		return shaper.ServeBack
	}
	next := k.script[0]
	k.script = k.script[1:]
	return next
}

func (k *task) Granted(n int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.granted = append(k.granted, n)
}

func (k *task) HandBack() { k.back <- struct{}{} }

func (k *task) times() []time.Duration {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []time.Duration
	for _, at := range k.served {
		out = append(out, at.Sub(shapertest.Epoch))
	}
	return out
}

// TestLoopServesOnGrid: a task that says "again in 3 ms" is served at
// once, then on the grid (1 ms step for one task with a 10 ms gap), and
// handed back when its script ends; the loop's timer fired once per
// wait, and the loop ends with nothing left.
func TestLoopServesOnGrid(t *testing.T) {
	clk := shapertest.NewClock()
	l := shaper.NewLoop(clk)
	k := newTask(clk, shaper.ServeAfter(3*time.Millisecond, 10*time.Millisecond), shaper.ServeAfter(3*time.Millisecond, 10*time.Millisecond))
	l.Add(k)
	clk.BlockUntil(1) // served at once, then waiting on its timer
	step := shaper.LoopStep(10*time.Millisecond, 1)
	first := shaper.OnGrid(shapertest.Epoch.Add(3*time.Millisecond), step).Sub(shapertest.Epoch)
	clk.Advance(first - 1)
	if n := len(k.times()); n != 1 {
		t.Fatalf("served %d times before its time, want 1 (at the hand-in)", n)
	}
	clk.Advance(1)
	clk.BlockUntil(1)
	second := shaper.OnGrid(shapertest.Epoch.Add(first+3*time.Millisecond), step).Sub(shapertest.Epoch)
	clk.Advance(second - first)
	<-k.back
	got := k.times()
	want := []time.Duration{0, first, second}
	if len(got) != len(want) {
		t.Fatalf("served at %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Errorf("serve %d at %v, want %v", i, got[i], want[i])
		}
	}
	if st := l.Stats(); st.Tasks != 0 || st.HandIns != 1 || st.Wakes != 2 {
		t.Errorf("Stats = %+v, want no task, 1 hand-in, 2 wake-ups", st)
	}
}

// TestLoopParkGrantRecall: a parked task is served again only once a
// grant comes, which it receives; a recalled task is handed back once,
// and a grant for it afterwards is dropped.
func TestLoopParkGrantRecall(t *testing.T) {
	clk := shapertest.NewClock()
	l := shaper.NewLoop(clk)
	k := newTask(clk, shaper.ServePark, shaper.ServePark)
	l.Add(k)
	<-k.servedc
	l.Grant(k, 4096)
	<-k.servedc
	k.mu.Lock()
	if len(k.granted) != 1 || k.granted[0] != 4096 {
		t.Errorf("granted %v, want [4096]", k.granted)
	}
	k.mu.Unlock()
	l.Recall(k) // parked again: handed back
	<-k.back
	l.Grant(k, 99) // too late: dropped
	l.Recall(k)    // handed back already: nothing
	k2 := newTask(clk)
	l.Add(k2) // a later task still runs: the loop went on
	<-k2.back
	select {
	case <-k.back:
		t.Error("a recalled task was handed back twice")
	default:
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.granted) != 1 || len(k.served) != 2 {
		t.Errorf("after the recall: granted %v, served %d times; want [4096] and 2", k.granted, len(k.served))
	}
}
