package shaper

// LinkActivity is what a [Link] saw over one count: from one call of
// [Link.Activity] to the next.
type LinkActivity struct {
	// Members is how many members asked for bytes (Take, TakeUpTo or
	// Ask), each counted once; members still waiting when a count ends
	// count in the next one too.
	Members int
	// Waited reports whether a member had to wait for its grant: the link
	// (or a key's ceil) held it back, so it could have used more.
	Waited bool
	// Bytes is what the link granted, net of refunds, since it was made
	// (as [LinkStats].Bytes): the difference between two counts is what
	// moved in between.
	Bytes int64
}

// Activity ends the current count of the link's activity and returns it,
// starting the next. A caller polls it at a steady period, e.g. to report
// its demand of a budget shared with other processes (package
// shaper/cluster). It costs O(members waiting now).
func (l *Link) Activity() LinkActivity {
	l.mu.Lock()
	defer l.mu.Unlock()
	a := LinkActivity{Members: l.active, Waited: l.waited, Bytes: l.granted}
	l.period++
	l.active, l.waited = 0, l.waiting > 0
	for _, k := range l.keys {
		for m := k.q.head; m != nil; m = m.next {
			l.count(m)
		}
	}
	return a
}

// count counts m in the current period, once. Requires l.mu.
func (l *Link) count(m *Member) {
	if m.seen != l.period+1 {
		m.seen = l.period + 1
		l.active++
	}
}
