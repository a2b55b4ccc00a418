package shaper_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluiceproxy/sluice/shaper"
	"github.com/sluiceproxy/sluice/shaper/shapertest"
)

// taker loops on g.Take(chunk) in a goroutine, counting granted bytes, until
// stopped.
type taker struct {
	got    atomic.Int64
	cancel context.CancelFunc
	done   chan error
}

func startTaker(g *shaper.Gate, chunk int) *taker {
	ctx, cancel := context.WithCancel(context.Background())
	tk := &taker{cancel: cancel, done: make(chan error, 1)}
	go func() {
		for {
			n, err := g.Take(ctx, chunk)
			if err != nil {
				tk.done <- err
				return
			}
			tk.got.Add(int64(n))
		}
	}()
	return tk
}

func (tk *taker) stop(t *testing.T) {
	t.Helper()
	tk.cancel()
	if err := <-tk.done; !errors.Is(err, context.Canceled) {
		t.Errorf("Take after cancel: err = %v, want context.Canceled", err)
	}
}

// TestExactBytes: a taker that always asks gets exactly burst + rate×t bytes
// by each instant t, at rates from 1 KiB/s to 1 GiB/s.
func TestExactBytes(t *testing.T) {
	for _, tc := range []struct {
		name         string
		rate, burst  int64
		chunk        int
		step         time.Duration
		steps        int
		wantPerSteps func(i int) int64 // bytes granted by t_i
	}{
		{"1KiB/s chunk 256", 1 << 10, 256, 256, time.Second, 9, nil},
		{"1KiB/s burst 4KiB", 1 << 10, 4 << 10, 1024, time.Second, 9, nil},
		{"1MB/s chunk 8KiB", 1_000_000, 8192, 8192, 100 * time.Millisecond, 9, nil},
		{"10MB/s", 10_000_000, 8192, 8192, 10 * time.Millisecond, 9, nil},
		{"100MB/s", 100_000_000, 64 << 10, 8192, time.Millisecond, 9, nil},
		{"1GiB/s", 1 << 30, 1 << 20, 64 << 10, time.Millisecond, 9, nil},
		{"odd rate 7 B/s", 7, 1, 1, 300 * time.Millisecond, 9, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := shapertest.NewClock()
			g := shaper.NewGate(shaper.Limit{Rate: tc.rate, Burst: tc.burst}, clk)
			tk := startTaker(g, tc.chunk)
			defer tk.stop(t)
			for i := 0; i <= tc.steps; i++ {
				clk.BlockUntil(1) // the taker has taken all it can and waits
				elapsed := time.Duration(i) * tc.step
				// The bucket holds burst at t0 and gains rate×t; the taker
				// has taken every whole grant of min(chunk, burst) in it.
				avail := tc.burst + tc.rate*int64(elapsed)/int64(time.Second)
				grant := min(int64(tc.chunk), tc.burst)
				want := avail / grant * grant
				if got := tk.got.Load(); got != want {
					t.Fatalf("t%d (%v): granted %d bytes, want %d", i, elapsed, got, want)
				}
				clk.AdvanceWith(tc.step, 1)
			}
		})
	}
}

func TestTakeSemantics(t *testing.T) {
	ctx := context.Background()
	clk := shapertest.NewClock()
	g := shaper.NewGate(shaper.Limit{Rate: 1000, Burst: 100}, clk)

	if n, err := g.Take(ctx, 0); n != 0 || err != nil {
		t.Errorf("Take(0) = %d, %v; want 0, nil", n, err)
	}
	// Full at start: a grant is capped at Burst.
	if n, _ := g.Take(ctx, 500); n != 100 {
		t.Errorf("Take(500) on a full 100-byte bucket = %d, want 100", n)
	}
	// Refund of an unused part is available at once.
	g.Refund(40)
	if n, _ := g.Take(ctx, 40); n != 40 {
		t.Errorf("Take(40) after Refund(40) = %d, want 40", n)
	}
	// Refunds never fill past Burst.
	clk.Advance(time.Hour)
	g.Refund(60)
	if n, _ := g.Take(ctx, 1000); n != 100 {
		t.Fatalf("Take(1000) after a refund into a full bucket = %d, want 100", n)
	}
	done := make(chan int)
	go func() { n, _ := g.Take(ctx, 1); done <- n }()
	clk.BlockUntil(1)
	clk.Advance(time.Millisecond) // 1 byte at 1000 B/s
	if n := <-done; n != 1 {
		t.Errorf("Take(1) = %d", n)
	}
	st := g.Stats()
	if want := int64(100 - 40 + 40 - 60 + 100 + 1); st.Bytes != want || st.Waited != time.Millisecond || st.Waiting {
		t.Errorf("Stats() = %+v, want %d bytes, 1ms waited, not waiting", st, want)
	}
}

func TestBurstEdges(t *testing.T) {
	ctx := context.Background()
	clk := shapertest.NewClock()
	g := shaper.NewGate(shaper.Limit{Rate: 1000, Burst: 100}, clk)
	g.Take(ctx, 100) // empty it
	for _, tc := range []struct {
		name    string
		advance time.Duration
		ask     int
		want    int
		blocks  bool
	}{
		{"one ns short of 50 bytes", 49_999_999, 50, 0, true},
		{"exactly 50 bytes", 1, 50, 50, false},
		{"a long pause saves only Burst", time.Minute, 1000, 100, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk.Advance(tc.advance)
			got := make(chan int, 1)
			tctx, cancel := context.WithCancel(ctx)
			go func() { n, _ := g.Take(tctx, tc.ask); got <- n }()
			if tc.blocks {
				clk.BlockUntil(1)
				cancel()
				if n := <-got; n != 0 {
					t.Fatalf("cancelled Take = %d, want 0", n)
				}
				return
			}
			defer cancel()
			if n := <-got; n != tc.want {
				t.Fatalf("Take(%d) = %d, want %d", tc.ask, n, tc.want)
			}
		})
	}
}

// TestRateChangeMidWait: a Take waiting at a slow rate is served at the new
// rate as soon as the rate changes, in both directions, with no saved-up
// burst beyond Burst.
func TestRateChangeMidWait(t *testing.T) {
	for _, tc := range []struct {
		name     string
		from, to int64
		// after waiting `before` at the old rate, the grant of chunk bytes
		// lands `after` the change.
		before, after time.Duration
	}{
		// 8192 B at 1 KiB/s takes 8 s; after 2 s (2048 B saved) the rate
		// becomes 1 MiB/s: the other 6144 B take 6144/1048576 s.
		{"up 1KiB/s to 1MiB/s", 1 << 10, 1 << 20, 2 * time.Second, 5859375 * time.Nanosecond},
		// 8192 B at 8 KiB/s takes 1 s; after 0.5 s (4096 B) the rate drops
		// to 1 KiB/s: the other 4096 B take 4 s.
		{"down 8KiB/s to 1KiB/s", 8 << 10, 1 << 10, 500 * time.Millisecond, 4 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			clk := shapertest.NewClock()
			g := shaper.NewGate(shaper.Limit{Rate: tc.from, Burst: 8192}, clk)
			g.Take(ctx, 8192) // empty
			got := make(chan int, 1)
			go func() { n, _ := g.Take(ctx, 8192); got <- n }()
			clk.BlockUntil(1)
			clk.Advance(tc.before)
			if err := g.SetLimit(shaper.Limit{Rate: tc.to, Burst: 8192}); err != nil {
				t.Fatal(err)
			}
			clk.BlockUntil(1) // re-armed at the new rate
			clk.Advance(tc.after - 1)
			select {
			case n := <-got:
				t.Fatalf("granted %d bytes 1ns early", n)
			default:
			}
			clk.Advance(1)
			clk.BlockUntil(0)
			if n := <-got; n != 8192 {
				t.Fatalf("Take = %d, want 8192", n)
			}
		})
	}
}

func TestSetLimitCapsSavedTokens(t *testing.T) {
	ctx := context.Background()
	clk := shapertest.NewClock()
	g := shaper.NewGate(shaper.Limit{Rate: 1000, Burst: 10_000}, clk)
	clk.Advance(time.Hour)
	g.SetLimit(shaper.Limit{Rate: 1000, Burst: 100})
	if n, _ := g.Take(ctx, 10_000); n != 100 {
		t.Errorf("after shrinking Burst to 100, Take = %d, want 100", n)
	}
	// Limited → unlimited → limited starts full at the new Burst.
	g.SetLimit(shaper.Limit{})
	if n, _ := g.Take(ctx, 1<<20); n != 1<<20 {
		t.Errorf("unlimited Take(1MiB) = %d", n)
	}
	g.SetLimit(shaper.Limit{Rate: 10, Burst: 50})
	if n, _ := g.Take(ctx, 100); n != 50 {
		t.Errorf("re-limited Take = %d, want a full 50", n)
	}
}

func TestUnlimitedToLimitedWakesNothingEarly(t *testing.T) {
	clk := shapertest.NewClock()
	g := shaper.NewGate(shaper.Limit{}, clk)
	if n, err := g.Take(context.Background(), 1<<30); n != 1<<30 || err != nil {
		t.Fatalf("unlimited Take = %d, %v", n, err)
	}
	if err := g.SetLimit(shaper.Limit{Rate: -1}); !errors.Is(err, shaper.ErrBadLimit) {
		t.Errorf("SetLimit(rate -1) = %v, want ErrBadLimit", err)
	}
	if err := g.SetLimit(shaper.Limit{Rate: 1, Burst: shaper.MaxBurst + 1}); !errors.Is(err, shaper.ErrBadLimit) {
		t.Errorf("SetLimit(burst too big) = %v, want ErrBadLimit", err)
	}
	if !g.Limit().Unlimited() {
		t.Errorf("a rejected SetLimit changed the limit to %+v", g.Limit())
	}
}

func TestCancelReturnsNothingTaken(t *testing.T) {
	clk := shapertest.NewClock()
	g := shaper.NewGate(shaper.Limit{Rate: 100, Burst: 100}, clk)
	g.Take(context.Background(), 100)
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() { _, err := g.Take(ctx, 100); res <- err }()
	clk.BlockUntil(1)
	clk.Advance(500 * time.Millisecond)
	cancel()
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Fatalf("Take = %v, want context.Canceled", err)
	}
	clk.BlockUntil(0) // the timer was stopped
	// The 50 bytes that accrued are still there.
	clk.Advance(500 * time.Millisecond)
	if n, _ := g.Take(context.Background(), 100); n != 100 {
		t.Errorf("Take after a cancelled wait = %d, want 100", n)
	}
	if st := g.Stats(); st.Waited != 500*time.Millisecond {
		t.Errorf("Waited = %v, want 500ms", st.Waited)
	}
}

func TestConcurrentTakersGetTheRateInTotal(t *testing.T) {
	clk := shapertest.NewClock()
	g := shaper.NewGate(shaper.Limit{Rate: 1000, Burst: 10}, clk)
	var wg sync.WaitGroup
	var total atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n, err := g.Take(ctx, 10)
				if err != nil {
					return
				}
				total.Add(int64(n))
			}
		}()
	}
	clk.BlockUntil(1)
	clk.AdvanceWith(time.Second, 1)
	clk.BlockUntil(1)
	cancel()
	wg.Wait()
	if got := total.Load(); got != 10+1000 {
		t.Errorf("4 takers got %d bytes in 1s, want burst+rate = 1010", got)
	}
}

func ExampleGate() {
	clk := shapertest.NewClock()
	g := shaper.NewGate(shaper.Limit{Rate: 1000, Burst: 100}, clk) // 1000 B/s
	ctx := context.Background()
	n, _ := g.Take(ctx, 8192) // the bucket starts full: one burst at once
	fmt.Println("granted", n)
	go func() {
		clk.BlockUntil(1)
		clk.Advance(100 * time.Millisecond)
	}()
	n, _ = g.Take(ctx, 100) // 100 more bytes take 100 ms
	fmt.Println("granted", n, "after", clk.Now().Sub(shapertest.Epoch))
	// Output:
	// granted 100
	// granted 100 after 100ms
}

// TestLateWakeKeepsTheRate: a Take woken late keeps the tokens that accrued
// while it waited (up to MaxCatchUp's worth beyond Burst), so timer latency
// does not lower the rate; an idle bucket still saves only Burst.
func TestLateWakeKeepsTheRate(t *testing.T) {
	clk := shapertest.NewClock()
	g := shaper.NewGate(shaper.Limit{Rate: 1000, Burst: 100}, clk)
	tk := startTaker(g, 100)
	defer tk.stop(t)
	clk.BlockUntil(1) // took the initial 100, waits for the next (due at 100ms)
	// Wake 10ms late: 110 tokens, 100 granted, 10 kept.
	clk.Jump(110 * time.Millisecond)
	clk.BlockUntil(1)
	if got := tk.got.Load(); got != 200 {
		t.Fatalf("after a late wake: granted %d, want 200", got)
	}
	// So the next grant is due at 200ms, not 210ms.
	clk.Advance(89 * time.Millisecond)
	clk.BlockUntil(1)
	if got := tk.got.Load(); got != 200 {
		t.Fatalf("granted %d at 199ms, want still 200", got)
	}
	clk.AdvanceWith(time.Millisecond, 1)
	if got := tk.got.Load(); got != 300 {
		t.Fatalf("granted %d at 200ms, want 300", got)
	}
	// Far later than MaxCatchUp: only Burst + 20ms worth is kept. (Jump,
	// not Advance: Advance fires the timer at its due time and may fire the
	// next one the woken Take arms before it has seen the late instant.)
	clk.Jump(time.Second)
	clk.BlockUntil(1)
	if got := tk.got.Load(); got != 400 {
		t.Fatalf("granted %d after a 1s-late wake, want 400 (100 + 20 kept)", got)
	}
	clk.AdvanceWith(80*time.Millisecond, 1) // 20 kept + 80 new
	if got := tk.got.Load(); got != 500 {
		t.Fatalf("granted %d, want 500", got)
	}
}

// TestTryTake: TryTake grants what Take would, at the same instants, and
// otherwise says exactly how long until it could; meanwhile the Gate counts
// as waiting, and the wait's time is counted when a grant or EndWait ends
// it. A late caller keeps the tokens that accrued, as with Take.
func TestTryTake(t *testing.T) {
	clk := shapertest.NewClock()
	g := shaper.NewGate(shaper.Limit{Rate: 1000, Burst: 100}, clk)
	try := func(n, wantN int, wantWait time.Duration) {
		t.Helper()
		got, wait := g.TryTake(n)
		if got != wantN || wait != wantWait {
			t.Fatalf("at %v: TryTake(%d) = %d, %v; want %d, %v", clk.Now().Sub(time.Unix(0, 0)), n, got, wait, wantN, wantWait)
		}
	}
	try(0, 0, 0)
	try(-1, 0, 0)
	try(500, 100, 0) // a full bucket: min(n, Burst)
	try(100, 0, 100*time.Millisecond)
	if st := g.Stats(); !st.Waiting || st.Bytes != 100 {
		t.Fatalf("after a wait was given: %+v, want waiting with 100 bytes", st)
	}
	clk.Advance(40 * time.Millisecond)
	try(100, 0, 60*time.Millisecond) // 40 there, 60 to come
	try(40, 40, 0)                   // what is there is granted
	if st := g.Stats(); st.Waiting || st.Waited != 40*time.Millisecond {
		t.Fatalf("after the grant: %+v, want not waiting, waited 40ms", st)
	}
	try(100, 0, 100*time.Millisecond)
	clk.Advance(110 * time.Millisecond) // 10ms late: 110 tokens
	try(100, 100, 0)
	try(100, 0, 90*time.Millisecond) // the 10 kept count
	clk.Advance(30 * time.Millisecond)
	g.EndWait()
	if st := g.Stats(); st.Waiting || st.Waited != 40*time.Millisecond+110*time.Millisecond+30*time.Millisecond {
		t.Fatalf("after EndWait: %+v, want not waiting, waited 180ms", st)
	}
	g.EndWait() // no wait: nothing changes
	if st := g.Stats(); st.Waited != 180*time.Millisecond {
		t.Fatalf("after a second EndWait: waited %v, want 180ms", st.Waited)
	}

	changed := g.Changed()
	select {
	case <-changed:
		t.Fatal("Changed is closed before any SetLimit")
	default:
	}
	if err := g.SetLimit(shaper.Limit{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	default:
		t.Fatal("SetLimit did not close Changed")
	}
	try(1<<20, 1<<20, 0) // unlimited: all of it
	if g.Changed() == changed {
		t.Fatal("Changed after a SetLimit is the closed channel")
	}
}

// TestTryTakeExactBytes: a caller that comes back exactly when told gets
// exactly burst + rate×t bytes by each instant t, as with Take.
func TestTryTakeExactBytes(t *testing.T) {
	for _, rate := range []int64{1 << 10, 1 << 20, 1 << 30} {
		t.Run(fmt.Sprint(rate), func(t *testing.T) {
			clk := shapertest.NewClock()
			const burst = 8192
			g := shaper.NewGate(shaper.Limit{Rate: rate, Burst: burst}, clk)
			start := clk.Now()
			var got int64
			for got < 64*burst {
				n, wait := g.TryTake(burst)
				if n == 0 {
					clk.Advance(wait)
					continue
				}
				got += int64(n)
				el := clk.Now().Sub(start)
				// Granted at the first nanosecond got - burst bytes
				// have accrued.
				if due := time.Duration(((got-burst)*int64(time.Second) + rate - 1) / rate); el != due {
					t.Fatalf("%d bytes granted at %v, want at %v", got, el, due)
				}
			}
		})
	}
}

// TestRefundKeepsCatchUp: a refund to a busy caller's bucket, which holds
// more than Burst (MaxCatchUp), loses nothing.
func TestRefundKeepsCatchUp(t *testing.T) {
	clk := shapertest.NewClock()
	g := shaper.NewGate(shaper.Limit{Rate: 1000, Burst: 100}, clk)
	if n, _ := g.TryTake(100); n != 100 {
		t.Fatalf("first TryTake = %d, want the full bucket", n)
	}
	if n, _ := g.TryTake(100); n != 0 {
		t.Fatalf("second TryTake = %d, want a wait", n)
	}
	clk.Advance(115 * time.Millisecond) // 115 tokens: 15 beyond Burst, kept while busy
	if n, _ := g.TryTake(100); n != 100 {
		t.Fatalf("TryTake after the wait = %d, want 100", n)
	}
	g.Refund(100) // none of it moved: 115 again
	for _, want := range []int{100, 15} {
		if n, wait := g.TryTake(want); n != want {
			t.Fatalf("after the refund: TryTake(%d) = %d, %v; want %d at once", want, n, wait, want)
		}
	}
	if n, wait := g.TryTake(1); n != 0 || wait != time.Millisecond {
		t.Fatalf("with the bucket spent: TryTake(1) = %d, %v; want a 1ms wait", n, wait)
	}
}
