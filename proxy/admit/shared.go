package admit

import (
	"log/slog"
	"net/netip"
	"time"
)

// Shared shares one limit's counts with other processes: the instances
// of a cluster, each running its own [Set]. A [Limit] with a Shared
// counts, per key, what the other instances report besides its own:
//
//   - Conns: a key's open connections here plus RemoteConns.
//   - Rate: the new connections the others admitted (NewRemoteHits) are
//     charged to the key's excess here, as if they had come here.
//   - Window: the cluster's count in the current window (Hits, windows
//     aligned on a clock the instances share) replaces the local window.
//
// The Set reports its own: Hit for each connection admitted (when the
// limit has a rate or a window), AddConns(+1) when a connection takes a
// slot of Conns and AddConns(-1) when it gives it back. Keys are strings:
// the client's address ("192.0.2.7", "2001:db8::1") for BySourceIP, its
// network ("192.0.2.0/24") for ByCIDR, the listener's name for
// ByListener, and "*" for ByGlobal.
//
// A Shared is called while a decision holds the key's lock: its methods
// must be quick, must not block (no network call: batch and flush in the
// background, as shaper/cluster's Counter does), and must not call back
// into the Set. They are called from many goroutines at once. What the
// other instances did since their last report is missed: the bound of
// the error is the implementation's to document.
//
// A queued connection of a shared limit waits for a slot given back here,
// not on another instance.
type Shared interface {
	// Get returns key's counts. Its NewRemoteHits are taken: the next
	// Get returns only those recorded since.
	Get(key string) SharedCount
	// Hit records a connection of key admitted here.
	Hit(key string)
	// AddConns adds delta (+1 or -1) to key's open connections here.
	AddConns(key string, delta int)
}

// SharedCount is a key's counts as a [Shared] knows them.
type SharedCount struct {
	// RemoteConns are the key's open connections on the other instances.
	RemoteConns int64
	// Hits are the key's new connections in the current window, every
	// instance's (this one's included).
	Hits int64
	// NewRemoteHits are the new connections other instances admitted
	// since the last Get.
	NewRemoteHits int64
}

// sharedRef is a connection's key in a shared limit: what its admission
// reports, and its Hold gives back.
type sharedRef struct {
	s   Shared
	key string
}

// maxRemoteCharge bounds the remote hits charged to a rate at once, so
// that a key's excess stays within int64 whatever a Shared reports.
const maxRemoteCharge = 1 << 20

// sharedKey is addr's key in the shared limit ls, on listener.
func sharedKey(ls *limitState, addr netip.Addr, listener string) string {
	switch ls.by {
	case ByListener:
		return listener
	case ByGlobal:
		return "*"
	case ByCIDR:
		if !addr.IsValid() {
			return ""
		}
		bits := ls.bits
		if addr.Is6() {
			bits = ls.bits6
		}
		p, _ := addr.Prefix(bits)
		return p.String()
	}
	if !addr.IsValid() {
		return ""
	}
	return addr.String()
}

// charge returns a rate's tat after n connections admitted at t, as
// each admission moves it: to max(tat + iv, t).
func charge(tat, t, iv, n int64) int64 {
	n = min(n, maxRemoteCharge)
	return max(tat+iv, t) + (n-1)*iv
}

// shareKeyed reads a keyed shared limit's counts into ch and charges the
// others' new connections to its key's rate. Requires its shard's mu.
func (p *Policy) shareKeyed(ch *check, addr netip.Addr, t int64) {
	cfg := ch.cfg
	ch.sref = &sharedRef{s: cfg.Shared, key: sharedKey(ch.ls, addr, p.listener)}
	sc := cfg.Shared.Get(ch.sref.key)
	ch.rconns = int32(min(max(sc.RemoteConns, 0), 1<<30))
	ch.wfull = !cfg.Window.IsZero() && sc.Hits >= cfg.Window.N
	if cfg.iv > 0 && sc.NewRemoteHits > 0 {
		c := &ch.r.sh.cells[ch.idx]
		c.tat = charge(c.tat, t, cfg.iv, sc.NewRemoteHits)
	}
}

// shareGlobal is shareKeyed for a ByGlobal limit.
func (ch *check) shareGlobal(t int64) {
	cfg := ch.cfg
	ch.sref = &sharedRef{s: cfg.Shared, key: "*"}
	sc := cfg.Shared.Get(ch.sref.key)
	ch.rconns = int32(min(max(sc.RemoteConns, 0), 1<<30))
	ch.wfull = !cfg.Window.IsZero() && sc.Hits >= cfg.Window.N
	if cfg.iv > 0 && sc.NewRemoteHits > 0 {
		g := &ch.ls.g
		for {
			tat := g.tat.Load()
			if g.tat.CompareAndSwap(tat, charge(tat, t, cfg.iv, sc.NewRemoteHits)) {
				break
			}
		}
	}
}

// commit reports an admitted connection: a hit, and its slot if it took
// one now (a queued one reports it when granted).
func (r *sharedRef) commit(cfg *limitCfg, slot bool) {
	if cfg.iv > 0 || !cfg.Window.IsZero() {
		r.s.Hit(r.key)
	}
	if slot {
		r.s.AddConns(r.key, 1)
	}
}

// ImportBan installs a ban made elsewhere (another instance of a
// cluster): key's ban under the named policy lasts until until, or
// longer if it had a longer one. It never shortens a ban, does not call
// [Options.OnBan], and is logged as "ban import" when it starts or
// lengthens one. A past until does nothing. It returns an error wrapping
// [ErrNoBan] for an unknown policy.
func (s *Set) ImportBan(name string, key netip.Prefix, until, now time.Time) error {
	b, err := s.ban(name)
	if err != nil {
		return err
	}
	u, t := until.UnixNano(), now.UnixNano()
	if !key.IsValid() || u <= t {
		return nil
	}
	key = key.Masked()
	sh := b.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	k := sh.m[key]
	if k == nil {
		k = &banKey{}
		sh.m[key] = k
		b.keys.Add(1)
	}
	if b.liftIfOver(key, k, t) && k.until >= u {
		return nil // as long already
	}
	if k.until == 0 {
		k.since, k.repeats = t, k.repeats+1
		b.started.Add(1)
	}
	k.until = u
	b.set.log.Info("ban import", slog.String("ban", name), slog.String("key", key.String()),
		slog.Time("until", until), slog.Duration("dur", until.Sub(now)))
	return nil
}

// ImportLift lifts a ban lifted elsewhere, as [Set.LiftBan] does but
// without calling [Options.OnLift]. It reports whether key had a ban.
func (s *Set) ImportLift(name string, key netip.Prefix, now time.Time) (bool, error) {
	return s.liftBan(name, key, now, false)
}
