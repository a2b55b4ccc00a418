package shaper_test

import (
	"testing"
	"time"

	"github.com/sluiceproxy/sluice/shaper"
	"github.com/sluiceproxy/sluice/shaper/shapertest"
)

func TestLinkActivity(t *testing.T) {
	clock := shapertest.NewClock()
	link := shaper.NewLink(shaper.LinkLimit{Limit: shaper.Limit{Rate: 10_000, Burst: 1000}}, clock)
	ms := []*shaper.Member{link.Join(""), link.Join(""), link.Join("")}
	got := make(chan int, 1)
	notify := func(n int) { got <- n }
	check := func(step string, want shaper.LinkActivity) {
		t.Helper()
		if a := link.Activity(); a != want {
			t.Errorf("%s: Activity() = %+v, want %+v", step, a, want)
		}
	}
	check("idle", shaper.LinkActivity{})
	for i, m := range ms[:2] {
		if n, err := m.Ask(500, 500, notify); n != 500 || err != nil {
			t.Fatalf("member %d: Ask(500) = %d, %v, want 500 at once", i, n, err)
		}
	}
	// The bucket is empty: the third waits.
	if n, err := ms[2].Ask(500, 500, notify); n != 0 || err != nil {
		t.Fatalf("member 2: Ask(500) = %d, %v, want 0 (queued)", n, err)
	}
	// Asking again counts once.
	if n, err := ms[0].Ask(100, 100, notify); n != 0 || err != nil {
		t.Fatalf("member 0: Ask(100) = %d, %v, want 0 (queued)", n, err)
	}
	if n := ms[0].Withdraw(); n != 0 {
		t.Fatalf("Withdraw = %d, want 0", n)
	}
	check("three asked, one waits", shaper.LinkActivity{Members: 3, Waited: true, Bytes: 1000})
	check("the waiting one counts again", shaper.LinkActivity{Members: 1, Waited: true, Bytes: 1000})
	clock.Advance(50 * time.Millisecond)
	if n := <-got; n != 500 {
		t.Fatalf("grant = %d, want 500", n)
	}
	check("granted", shaper.LinkActivity{Members: 1, Waited: true, Bytes: 1500})
	check("idle again", shaper.LinkActivity{Bytes: 1500})
	for _, m := range ms {
		m.Leave()
	}
}
