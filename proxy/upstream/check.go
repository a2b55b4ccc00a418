package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/sluiceproxy/sluice/shaper"
)

// checker runs a pool's active checks: one goroutine, in rounds. A round
// checks every server at once (each check in a goroutine of its own that
// ends within the timeout, so one blackholed server delays no other),
// then applies the results under the pool's lock. Rounds start Interval
// apart, up to a tenth early; the first starts at a random instant
// within the first Interval, so pools do not check in step.
type checker struct {
	p      *Pool
	cfg    Check
	expect expect
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

// testHooks let tests of this package fix the jitter and see rounds end.
type testHooks struct {
	jitter    func(d time.Duration) time.Duration // in [0, d)
	roundDone func()                              // after a round's results are applied and the next round's timer is armed
}

// newChecker starts the checks of cfg; nil if cfg has none. Requires
// p.mu held.
func (p *Pool) newChecker(cfg Check) *checker {
	if cfg.Type == NoCheck || p.closed {
		return nil
	}
	exp, _ := parseExpect(cfg.Expect) // validated
	c := &checker{p: p, cfg: cfg, expect: exp, done: make(chan struct{})}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	go c.run()
	return c
}

// stop ends the checks and waits for the goroutine to end. It must not
// be called with p.mu held.
func (c *checker) stop() {
	if c == nil {
		return
	}
	c.cancel()
	<-c.done
}

func (c *checker) jitter(d time.Duration) time.Duration {
	if h := c.p.hooks; h != nil && h.jitter != nil {
		return h.jitter(d)
	}
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

func (c *checker) run() {
	defer close(c.done)
	clock := c.p.clock
	wait := c.jitter(c.cfg.Interval)
	for rounds := 0; ; rounds++ {
		var t shaper.Timer
		var due <-chan time.Time
		if wait > 0 {
			t, due = clock.NewTimer(wait)
		}
		if h := c.p.hooks; rounds > 0 && h != nil && h.roundDone != nil {
			h.roundDone()
		}
		if due != nil {
			select {
			case <-due:
			case <-c.ctx.Done():
				t.Stop()
				return
			}
		}
		start := clock.Now()
		c.round()
		if c.ctx.Err() != nil {
			return
		}
		period := c.cfg.Interval - c.jitter(c.cfg.Interval/10)
		wait = start.Add(period).Sub(clock.Now())
	}
}

var errCheckTimeout = errors.New("check timed out")

// round checks every server once and applies the results.
func (c *checker) round() {
	p := c.p
	p.mu.Lock()
	targets := make([]*server, 0, len(p.servers))
	for _, s := range p.servers {
		if !s.removed {
			targets = append(targets, s)
		}
	}
	p.mu.Unlock()
	ctx, cancel := context.WithCancelCause(c.ctx)
	t := p.clock.AfterFunc(c.cfg.Timeout, func() { cancel(errCheckTimeout) })
	errs := make([]error, len(targets))
	var wg sync.WaitGroup
	for i, s := range targets {
		wg.Go(func() {
			errs[i] = c.probe(ctx, s.addr)
			if errs[i] != nil && errors.Is(context.Cause(ctx), errCheckTimeout) {
				errs[i] = fmt.Errorf("%w after %s: %w", errCheckTimeout, c.cfg.Timeout, errs[i])
			}
		})
	}
	wg.Wait()
	t.Stop()
	cancel(nil)
	if c.ctx.Err() != nil {
		return // stopped: the results say nothing of the servers
	}
	p.mu.Lock()
	now := p.clock.Now()
	for i, s := range targets {
		p.checked(s, now, errs[i])
	}
	p.unlock()
}

// checked applies one check's result to s. Requires p.mu held.
func (p *Pool) checked(s *server, now time.Time, err error) {
	if s.removed {
		return
	}
	ck := p.cfg.Check
	s.lastCheck, s.lastCheckErr = now, err
	if err == nil {
		s.checkPass++
		s.checkFail = 0
		if s.down && s.checkPass >= ck.Rise {
			// Up again: checks passed Rise times in a row, which outweighs
			// the passive failures that may have ejected it meanwhile.
			s.down = false
			s.ejectedUntil, s.consec, s.ejections = time.Time{}, 0, 0
			p.settle(s, now, ReasonCheck, nil)
		}
		return
	}
	s.checkFail++
	s.checkPass = 0
	if !s.down && s.checkFail >= ck.Fall {
		s.down = true
		p.settle(s, now, ReasonCheck, err)
	}
}

// aLongTimeAgo is a deadline in the past: set on a conn, it ends its
// blocked reads and writes at once.
var aLongTimeAgo = time.Unix(1, 0)

// probe runs one check of the server at addr.
func (c *checker) probe(ctx context.Context, addr string) error {
	conn, err := c.p.dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if c.cfg.Type == TCPCheck {
		return nil
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(aLongTimeAgo) })
	defer stop()
	if _, err := io.WriteString(conn, c.cfg.Send); err != nil {
		return err
	}
	buf := make([]byte, 0, 512)
	for {
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			code, ok := parseStatusLine(buf[:i])
			if !ok {
				return fmt.Errorf("not an HTTP/1.x status line: %q", buf[:i])
			}
			if !c.expect.match(code) {
				return fmt.Errorf("status %d, want %s", code, c.expectString())
			}
			return nil
		}
		if len(buf) >= maxCheckResponseHeadSize {
			return fmt.Errorf("no status line in the first %d bytes", len(buf))
		}
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := conn.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("closed after %d bytes, before a status line", len(buf))
			}
			return err
		}
	}
}

func (c *checker) expectString() string {
	if c.cfg.Expect == "" {
		return "2xx or 3xx"
	}
	return c.cfg.Expect
}
