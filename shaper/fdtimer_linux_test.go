package shaper

import (
	"syscall"
	"testing"
	"time"
)

// TestFDTimer: the Loop's real-clock timer on Linux fires after its time,
// not before; a Reset moves it, also from far away to soon; Stop closes its
// timerfd and ends its goroutine, and a Reset after a Stop arms it again.
func TestFDTimer(t *testing.T) {
	const d = 5 * time.Millisecond
	start := time.Now()
	tm, ok := newFDTimer(d)
	if !ok {
		t.Fatal("no timerfd")
	}
	defer tm.Stop()
	select {
	case at := <-tm.c:
		if el := at.Sub(start); el < d {
			t.Errorf("fired after %v, before its %v", el, d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("did not fire")
	}

	tm.Reset(time.Hour)
	select {
	case <-tm.c:
		t.Fatal("fired an hour early") // a fire of the old time would have been received above
	case <-time.After(20 * time.Millisecond):
	}
	start = time.Now()
	if !tm.Reset(d) {
		t.Error("Reset of an armed timer reported it stopped")
	}
	if at := <-tm.c; at.Sub(start) < d {
		t.Errorf("after a Reset: fired after %v, before its %v", at.Sub(start), d)
	}

	done := tm.done
	if !tm.Stop() {
		t.Error("Stop of a running timer reported false")
	}
	select {
	case <-done:
	default:
		t.Error("Stop returned before the timer's goroutine ended")
	}
	if tm.f != nil || tm.Stop() {
		t.Error("a stopped timer still holds its timerfd")
	}
	if tm.Reset(d) {
		t.Error("Reset of a stopped timer reported it armed")
	}
	select {
	case <-tm.c:
	case <-time.After(10 * time.Second):
		t.Fatal("did not fire after a Reset that followed a Stop")
	}
}

// TestExactTimerReal: a Loop on the real clock gets a timerfd on Linux.
func TestExactTimerReal(t *testing.T) {
	tm, c := exactTimer(RealClock(), time.Millisecond)
	defer tm.Stop()
	if _, ok := tm.(*fdTimer); !ok {
		t.Errorf("exactTimer on the real clock is a %T, want *fdTimer", tm)
	}
	<-c
}

// TestFDTimerFallback: where no timerfd can be opened (the process is out
// of descriptors), a Reset arms a time.Timer instead, which fires and
// stops like the timerfd; once one can be opened again, the next Reset
// uses it.
func TestFDTimerFallback(t *testing.T) {
	tm, ok := newFDTimer(time.Hour)
	if !ok {
		t.Fatal("no timerfd")
	}
	defer tm.Stop()
	tm.Stop()
	made := newTimerfd
	newTimerfd = func() (int, error) { return -1, syscall.EMFILE }
	defer func() { newTimerfd = made }()
	if _, ok := newFDTimer(time.Millisecond); ok {
		t.Error("newFDTimer without a timerfd succeeded")
	}
	tm.Reset(time.Millisecond)
	if tm.f != nil || tm.fallback == nil {
		t.Fatal("no fallback timer armed")
	}
	select {
	case <-tm.c:
	case <-time.After(10 * time.Second):
		t.Fatal("the fallback timer did not fire")
	}
	tm.Reset(time.Hour)
	if !tm.Stop() {
		t.Error("Stop of an armed fallback timer reported false")
	}
	newTimerfd = made
	tm.Reset(time.Millisecond)
	if tm.f == nil {
		t.Error("a timerfd could be opened again, but the timer did not")
	}
	<-tm.c
}
