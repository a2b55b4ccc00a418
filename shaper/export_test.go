package shaper

// Hooks for the link tests, which run in package shaper_test so that they
// can use shapertest's clock (shapertest imports shaper).

// Begin asks for a grant without blocking: a grant on the spot, or 0 with
// the ask queued; its grant then comes through Granted or Wait.
func (m *Member) Begin(n, upTo int) (int, error) { return m.ask(n, upTo, nil) }

// Granted returns a queued ask's grant if it has come.
func (m *Member) Granted() (int, bool) {
	select {
	case n := <-m.ch:
		return n, true
	default:
		return 0, false
	}
}

// Wait blocks for a queued ask's grant.
func (m *Member) Wait() int { return <-m.ch }

// Cancel takes back a queued ask, as Take does when its context ends.
func (m *Member) Cancel() { m.cancel(false) }

// Drain empties the link's bucket.
func (l *Link) Drain() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bucket.nt = 0
}
